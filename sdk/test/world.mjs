// A real world for the SDK's integration and browser tests: a real `keygate-proxy` (the binary
// cargo built) serving manifests written here, in front of a real upstream on loopback that
// logs in, answers API calls in the order it receives them, and serves the test pages.
import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const sdkRoot = fileURLToPath(new URL("..", import.meta.url));
const repoRoot = join(sdkRoot, "..");

/** The keygate-proxy binary: $KEYGATE_PROXY, or cargo's debug build. */
export function proxyBinary() {
  const bin =
    process.env.KEYGATE_PROXY ?? join(process.env.CARGO_TARGET_DIR ?? join(repoRoot, "target"), "debug", "keygate-proxy");
  if (!existsSync(bin)) {
    throw new Error(`${bin} is missing: build it with \`cargo build -p keygate-proxy\` (or set KEYGATE_PROXY)`);
  }
  return bin;
}

const listen = (server) =>
  new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(server.address().port)));

/** A free loopback port (bound, then released). */
async function freePort() {
  const s = createServer();
  const port = await listen(s);
  await new Promise((r) => s.close(r));
  return port;
}

const TYPES = { ".html": "text/html; charset=utf-8", ".js": "text/javascript", ".mjs": "text/javascript" };

/** Serves the SDK's dist/ under `/sdk/` and test/pages/ under `/`: the app a browser loads. */
export function serveApp(req, res) {
  const path = new URL(req.url, "http://x").pathname;
  const file = path.startsWith("/sdk/") ? join(sdkRoot, "dist", path.slice(5)) : join(sdkRoot, "test", "pages", path.slice(1) || "index.html");
  if (path.includes("..") || !existsSync(file)) {
    res.writeHead(404).end("not found");
    return;
  }
  const ext = file.slice(file.lastIndexOf("."));
  res.writeHead(200, { "content-type": TYPES[ext] ?? "application/octet-stream" }).end(readFileSync(file));
}

/** The upstream API: `POST /login`, `/logout`, and every other path answered with what it saw. */
function upstream(state) {
  return createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const path = new URL(req.url, "http://x").pathname;
      if (path.startsWith("/app/")) {
        req.url = req.url.slice(4);
        return serveApp(req, res);
      }
      if (path === "/login") {
        const { user, password } = JSON.parse(Buffer.concat(chunks).toString() || "{}");
        if (password !== "correct horse") {
          res.writeHead(401, { "content-type": "application/json" }).end(JSON.stringify({ error: "bad password" }));
          return;
        }
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ result: { user, session: { token: `tok-${user}-${state.tokenSecret}` } } }));
        return;
      }
      const n = ++state.count;
      state.seen.push({ n, path, headers: req.headers, body: Buffer.concat(chunks).toString() });
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify({ n, path, authorization: req.headers.authorization ?? null, cookie: req.headers.cookie ?? null }));
    });
  });
}

/**
 * Starts the upstream and a keygate-proxy in front of it. `origins` are the page origins the
 * routes' CORS rules allow. Routes:
 * - `/api/*` → upstream, `auth: cookie` (login at `/api/login`, logout at `/api/logout`), CSRF double-submit;
 * - `/chain/*`, `/hmac/*`, `/sig/*` → upstream, session chain in each proof mode (create at `<prefix>/session`, inside the route so it takes its CORS rules);
 * - `/limited/*` → upstream, chained and limited to 2 requests/s;
 * - `/app/*` → the test pages, no auth.
 */
export async function startWorld({ origins = [], proofs = ["hash"], cookie = {} } = {}) {
  const state = { count: 0, seen: [], tokenSecret: "s3cr3t-upstream-token" };
  const up = upstream(state);
  const upPort = await listen(up);
  const port = await freePort();
  const admin = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "keygate-sdk-"));
  const cors = origins.length
    ? `  cors: {allowOrigins: [${origins.map((o) => `'${o}'`).join(", ")}], allowCredentials: true}\n`
    : "";
  const chainPolicy = (name, proof) => `apiVersion: keygate.dev/v1alpha1
kind: SessionChainPolicy
metadata: {name: ${name}, namespace: default}
spec:
  createPath: /${name}/session
  apiKeysSecretRef: {name: app-keys}
${proof === "hash" ? "" : `  proof: ${proof}\n`}${proof === "hmac" ? "  chainKeySecretRef: {name: chain-key, key: key}\n" : ""}---
`;
  const route = (name, prefix, extra) => `apiVersion: keygate.dev/v1alpha1
kind: ProxyRoute
metadata: {name: ${name}, namespace: default}
spec:
  pathPrefix: ${prefix}
  upstream: http://127.0.0.1:${upPort}${prefix === "/app" ? "/app" : ""}
${cors}${extra}---
`;
  const modes = { hash: "chain", hmac: "hmac", signature: "sig" };
  let yaml = `apiVersion: v1
kind: Secret
metadata: {name: app-keys, namespace: default}
stringData: {web: pk-web}
---
apiVersion: v1
kind: Secret
metadata: {name: chain-key, namespace: default}
stringData: {key: 0123456789abcdef0123456789abcdef-chain-secret}
---
apiVersion: keygate.dev/v1alpha1
kind: CookieTranslation
metadata: {name: login, namespace: default}
spec:
  cookie: {name: sid, secure: ${cookie.secure ?? true}, sameSite: ${cookie.sameSite ?? "Lax"}, hostPrefix: ${cookie.hostPrefix ?? false}}
  header: {name: Authorization, template: 'Bearer {token}'}
  sessionStart: {path: /api/login, tokenPointer: /result/session/token, responsePointer: /result}
  logout: {path: /api/logout}
---
`;
  yaml += route("api", "/api", "  auth: cookie\n  cookieTranslationRef: login\n  csrf: {mode: doubleSubmit}\n");
  for (const proof of proofs) {
    yaml += chainPolicy(modes[proof], proof);
    yaml += route(modes[proof], `/${modes[proof]}`, `  auth: sessionChain\n  sessionChainRef: ${modes[proof]}\n`);
  }
  yaml += route(
    "limited",
    "/limited",
    "  auth: sessionChain\n  sessionChainRef: chain\n  rateLimit: {requestsPerSecond: 2, burst: 2, per: route}\n",
  );
  yaml += route("app", "/app", "");
  writeFileSync(join(dir, "keygate.yaml"), yaml);

  const logs = [];
  const proxy = spawn(
    proxyBinary(),
    ["serve", "--manifests", dir, "--listen", `127.0.0.1:${port}`, "--admin-listen", `127.0.0.1:${admin}`, "--workers", "1"],
    { env: { ...process.env, RUST_LOG: "debug" }, stdio: ["ignore", "pipe", "pipe"] },
  );
  proxy.stdout.on("data", (d) => logs.push(d.toString()));
  proxy.stderr.on("data", (d) => logs.push(d.toString()));
  const exited = new Promise((r) => proxy.on("exit", r));
  const deadline = Date.now() + 15_000;
  for (;;) {
    const ready = await fetch(`http://127.0.0.1:${admin}/readyz`).then((r) => r.ok, () => false);
    if (ready) break;
    if (proxy.exitCode !== null || Date.now() > deadline) {
      throw new Error(`keygate-proxy did not become ready:\n${logs.join("")}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    port,
    url: `http://localhost:${port}`,
    state,
    logs,
    async stop() {
      proxy.kill("SIGTERM");
      await exited;
      await new Promise((r) => up.close(r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
