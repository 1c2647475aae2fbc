// The package as an app's bundler sees it: its size, its exports, and its import being inert.
import { test } from "node:test";
import assert from "node:assert/strict";
import { gzipSync } from "node:zlib";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const root = fileURLToPath(new URL("..", import.meta.url));

test("at most 4 KB gzipped, bundled and minified as an app would ship it", async () => {
  const out = await build({ entryPoints: [`${root}/dist/index.js`], bundle: true, minify: true, format: "esm", write: false });
  const bytes = gzipSync(out.outputFiles[0].contents, { level: 9 }).length;
  console.log(`@keygate/client: ${out.outputFiles[0].contents.length} bytes minified, ${bytes} bytes gzipped`);
  assert.ok(bytes <= 4096, `${bytes} bytes gzipped`);
});

test("no runtime dependencies, ESM with type declarations, marked side-effect free", () => {
  const pkg = JSON.parse(readFileSync(`${root}/package.json`, "utf8"));
  assert.equal(pkg.dependencies, undefined);
  assert.equal(pkg.type, "module");
  assert.equal(pkg.sideEffects, false);
  assert.equal(pkg.exports["."].types, "./dist/index.d.ts");
  const types = readFileSync(`${root}/dist/index.d.ts`, "utf8");
  for (const name of ["createKeygate", "ProxyError", "NetworkError", "TimeoutError", "HttpError", "KeygateOptions"]) {
    assert.match(types, new RegExp(name), `${name} is declared`);
  }
});

test("a bundler drops the whole package when nothing is used: importing has no side effects", async () => {
  const out = await build({
    stdin: { contents: `import "${root}/dist/index.js";`, resolveDir: root },
    // Judge the code itself, not the package's sideEffects flag or pure annotations.
    ignoreAnnotations: true,
    bundle: true,
    minify: true,
    format: "esm",
    write: false,
  });
  assert.equal(out.outputFiles[0].text.trim(), "", out.outputFiles[0].text);
});
