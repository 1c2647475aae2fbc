// End to end in real headless Chromium (Debian's `chromium`, driven by playwright-core): pages
// served through Keygate on its own origin and from a second origin, real cookies, real CORS,
// the real proxy and upstream of world.mjs.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { createServer } from "node:http";
import { createHash } from "node:crypto";
import { chromium } from "playwright-core";

import { serveApp, startWorld } from "./world.mjs";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const PROOFS = (process.env.SDK_PROOFS ?? "hash,hmac,signature").split(",");
const PREFIX = { hash: "chain", hmac: "hmac", signature: "sig" };

let world, browser, pages, pagePort;

before(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH`);
  }
  // The second origin: the same pages, served by a plain static server on app.example.localhost.
  pages = createServer(serveApp);
  pagePort = await new Promise((r) => pages.listen(0, "127.0.0.1", () => r(pages.address().port)));
  world = await startWorld({ proofs: PROOFS, origins: [`http://app.example.localhost:${pagePort}`], cookie: { secure: true, hostPrefix: true } });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      // *.localhost names are secure contexts (WebCrypto needs one) and app/api share a site, so
      // the session cookie (SameSite=Lax) travels on the page's credentialed cross-origin calls.
      "--host-resolver-rules=MAP app.example.localhost 127.0.0.1, MAP api.example.localhost 127.0.0.1, MAP evil.localhost 127.0.0.1",
    ],
  });
  const pw = JSON.parse(readFileSync(new URL("../node_modules/playwright-core/package.json", import.meta.url), "utf8")).version;
  console.log(`Chromium ${browser.version()} driven by playwright-core ${pw}`);
});

after(async () => {
  await browser?.close();
  await world?.stop();
  pages?.close();
});

/** A fresh browser profile with the test page open at `url`, the SDK loaded. */
async function open(url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(url);
  await page.waitForFunction(() => document.title === "ready");
  return { context, page };
}

const sameOrigin = () => open(`${world.url}/app/index.html`);
const apiHost = () => `http://api.example.localhost:${world.port}`;

test("login → HttpOnly cookie → Bearer at the upstream → logout → 401", async () => {
  const { context, page } = await sameOrigin();
  const result = await page.evaluate(async () => {
    const kg = window.sdk.createKeygate({ baseUrl: location.origin, csrf: { mode: "doubleSubmit" } });
    const user = await kg.login("/api/login", { user: "ada", password: "correct horse" });
    const me = await kg.json("/api/me");
    const readable = document.cookie;
    await kg.logout("/api/logout");
    const after = await kg.fetch("/api/me").then(
      () => "answered",
      (e) => `${e.name} ${e.status} ${e.code}`,
    );
    return { user, me, readable, after };
  });
  assert.equal(result.user.user, "ada", "the browser gets the response pointer's subtree");
  assert.ok(!JSON.stringify(result.user).includes("tok-"), `without the token: ${JSON.stringify(result.user)}`);
  assert.match(result.me.authorization, /^Bearer tok-ada-/);
  assert.equal(result.me.cookie, null, "the browser's cookie never reaches the upstream");
  assert.ok(!result.readable.includes("__Host-sid="), `page script cannot read the session cookie: ${result.readable}`);
  assert.equal(result.after, "ProxyError 401 SESSION_REQUIRED");
  const sid = (await context.cookies()).find((c) => c.name === "__Host-sid");
  assert.equal(sid, undefined, "logout cleared the cookie");
  await context.close();
});

test("the session cookie is HttpOnly and a POST without the CSRF header is refused", async () => {
  const { context, page } = await sameOrigin();
  const result = await page.evaluate(async () => {
    const kg = window.sdk.createKeygate({ baseUrl: location.origin, csrf: { mode: "doubleSubmit" } });
    await kg.login("/api/login", { user: "ada", password: "correct horse" });
    const withSdk = (await kg.fetch("/api/items", { method: "POST", body: "{}" })).status;
    const raw = await fetch("/api/items", { method: "POST", body: "{}" });
    return { withSdk, raw: raw.status, code: raw.headers.get("x-keygate-error") };
  });
  assert.deepEqual(result, { withSdk: 200, raw: 403, code: "CSRF_FAILED" });
  const sid = (await context.cookies()).find((c) => c.name === "__Host-sid");
  assert.ok(sid?.httpOnly, "HttpOnly");
  await context.close();
});

for (const proof of PROOFS) {
  test(`${proof}: 20 parallel chain calls succeed on one session, in order; a captured request replayed from Node is refused`, async () => {
    const { context, page } = await sameOrigin();
    const first = world.state.count;
    const result = await page.evaluate(
      async ({ proof, prefix }) => {
        const kg = window.sdk.createKeygate({
          baseUrl: location.origin,
          chain: { createPath: `/${prefix}/session`, apiKey: "pk-web", proof },
          fetch: window.recordingFetch,
        });
        const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => kg.json(`/${prefix}/item/${i}`)));
        const keys = window.generatedKeys.map((k) => ({ extractable: k.privateKey.extractable }));
        let exported = "none";
        if (window.generatedKeys.length) {
          exported = await crypto.subtle.exportKey("pkcs8", window.generatedKeys[0].privateKey).then(
            () => "exported",
            (e) => e.name,
          );
        }
        return { paths: answers.map((a) => a.path), n: answers.map((a) => a.n), sent: window.sent, keys, exported };
      },
      { proof, prefix: PREFIX[proof] },
    );
    assert.deepEqual(result.paths, Array.from({ length: 20 }, (_, i) => `/item/${i}`));
    assert.deepEqual(result.n, Array.from({ length: 20 }, (_, i) => first + i + 1), "the upstream saw them in order");
    const creates = result.sent.filter((s) => s.url.endsWith(`/${PREFIX[proof]}/session`));
    assert.equal(creates.length, 1, "one session for all twenty");
    if (proof === "signature") {
      assert.deepEqual(result.keys, [{ extractable: false }], "the signing key cannot be read out");
      assert.equal(result.exported, "InvalidAccessError");
    }

    // An attacker holding every request the page sent replays the last one, then tries to go on.
    const last = result.sent.at(-1);
    const replay = await fetch(`${world.url}${new URL(last.url).pathname}`, { headers: last.headers });
    assert.equal(replay.status, 401);
    assert.equal(replay.headers.get("x-keygate-error"), "REQUEST_OUT_OF_SESSION");
    // The next link as the seed's hash chain would have it: computable from what was seen.
    const next = createHash("sha256").update(last.headers["x-request-id"]).digest("hex");
    const forged = await fetch(`${world.url}/${PREFIX[proof]}/forged`, { headers: { ...last.headers, "x-request-id": next } });
    if (proof === "hash") {
      assert.equal(forged.status, 200, "hash mode: whoever sees a link can compute the next");
    } else {
      assert.equal(forged.status, 401, `${proof}: seeing every request does not give the next one`);
    }
    await context.close();
  });
}

test("20 raw copies of one link sent at once from the page: exactly one is accepted", async () => {
  const { context, page } = await sameOrigin();
  const statuses = await page.evaluate(async () => {
    const made = await fetch("/chain/session", {
      method: "POST",
      headers: { "x-api-key": "pk-web", "content-type": "application/json" },
      body: JSON.stringify({ machine_id: crypto.randomUUID() }),
    }).then((r) => r.json());
    const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(made.session_id));
    const link = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
    const headers = { "x-api-key": "pk-web", "x-session-id": made.session_id, "x-request-id": link };
    return Promise.all(Array.from({ length: 20 }, () => fetch("/chain/copy", { headers }).then((r) => r.status)));
  });
  assert.equal(statuses.filter((s) => s === 200).length, 1, statuses.join(","));
  await context.close();
});

test("on a rate-limited route every call eventually succeeds", async () => {
  const { context, page } = await sameOrigin();
  const paths = await page.evaluate(async () => {
    const kg = window.sdk.createKeygate({
      baseUrl: location.origin,
      chain: { createPath: "/chain/session", apiKey: "pk-web" },
      retry: { rateLimitRetries: 50, maxRetryAfterMs: 1000 },
    });
    const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => kg.json(`/limited/r/${i}`)));
    return answers.map((a) => a.path);
  });
  assert.deepEqual(paths, Array.from({ length: 8 }, (_, i) => `/r/${i}`));
  await context.close();
});

test("from a second origin: CORS with credentials, the CSRF token from the login answer, chained calls", async () => {
  const { context, page } = await open(`http://app.example.localhost:${pagePort}/index.html`);
  const result = await page.evaluate(async (api) => {
    const kg = window.sdk.createKeygate({
      baseUrl: api,
      csrf: { mode: "doubleSubmit" },
      chain: { createPath: "/chain/session", apiKey: "pk-web" },
    });
    await kg.login("/api/login", { user: "grace", password: "correct horse" }, { chain: false });
    const me = await kg.json("/api/me", { chain: false });
    const posted = (await kg.fetch("/api/items", { method: "POST", body: "{}", chain: false })).status;
    const chained = await Promise.all(Array.from({ length: 5 }, (_, i) => kg.json(`/chain/x/${i}`)));
    // A refusal on a CORS route is readable from the page (the API key is not this app's).
    const stranger = window.sdk.createKeygate({ baseUrl: api, chain: { createPath: "/chain/session", apiKey: "pk-unknown" } });
    const refused = await stranger.fetch("/chain/x").then(
      () => null,
      (e) => ({ name: e.name, code: e.code, header: e.response?.headers.get("x-keygate-error") }),
    );
    return { me, posted, chained: chained.map((c) => c.path), refused };
  }, apiHost());
  assert.match(result.me.authorization, /^Bearer tok-grace-/, "the cookie travelled cross-origin with credentials");
  assert.equal(result.posted, 200, "the CSRF token came from the x-keygate-csrf header, not the cookie");
  assert.deepEqual(result.chained, Array.from({ length: 5 }, (_, i) => `/x/${i}`));
  assert.deepEqual(result.refused, { name: "ProxyError", code: "INVALID_API_KEY", header: "INVALID_API_KEY" }, "exposed to the page");
  await context.close();
});

test("a page from a refused origin gets a NetworkError", async () => {
  const { context, page } = await open(`http://evil.localhost:${pagePort}/index.html`);
  const error = await page.evaluate(async (api) => {
    const kg = window.sdk.createKeygate({ baseUrl: api, chain: { createPath: "/chain/session", apiKey: "pk-web" } });
    return kg.fetch("/chain/x").then(
      () => "answered",
      (e) => e.name,
    );
  }, apiHost());
  assert.equal(error, "NetworkError");
  await context.close();
});

test("tabs sharing one session (opt-in) never refuse each other, and a held lock times out", async () => {
  const context = await browser.newContext();
  const tabs = [];
  for (let i = 0; i < 3; i++) {
    const page = await context.newPage();
    await page.goto(`${world.url}/app/index.html`);
    await page.waitForFunction(() => document.title === "ready");
    tabs.push(page);
  }
  const run = (page, tab) =>
    page.evaluate(async (tab) => {
      const kg = window.sdk.createKeygate({
        baseUrl: location.origin,
        chain: { createPath: "/sig/session", apiKey: "pk-web", proof: "signature", shareAcrossTabs: true },
        fetch: window.recordingFetch,
      });
      const answers = await Promise.all(Array.from({ length: 10 }, (_, i) => kg.json(`/sig/tab${tab}/${i}`)));
      return { ok: answers.length, creates: window.sent.filter((s) => s.url.endsWith("/sig/session")).length };
    }, tab);
  const results = await Promise.all(tabs.map((page, i) => run(page, i)));
  assert.deepEqual(results.map((r) => r.ok), [10, 10, 10]);
  assert.equal(results.reduce((n, r) => n + r.creates, 0), 1, "one session (and one non-extractable signing key) for all three tabs");

  // A tab that holds the lock forever cannot block another: the waiting call fails, with a reason.
  await tabs[0].evaluate(() => {
    navigator.locks.request("keygate-chain:/sig/session", () => new Promise(() => {}));
  });
  const blocked = await tabs[1].evaluate(async () => {
    const kg = window.sdk.createKeygate({
      baseUrl: location.origin,
      chain: { createPath: "/sig/session", apiKey: "pk-web", proof: "signature", shareAcrossTabs: { lockTimeoutMs: 300 } },
    });
    return kg.fetch("/sig/blocked").then(
      () => "answered",
      (e) => `${e.name}: ${e.message}`,
    );
  });
  assert.match(blocked, /^KeygateError: another tab held the session lock for over 300 ms/);
  await context.close();
});

test("examples/spa/run: the example app works as its README says", async () => {
  const { spawn } = await import("node:child_process");
  const { proxyBinary } = await import("./world.mjs");
  const script = new URL("../../examples/spa/run", import.meta.url).pathname;
  // Its own process group, so the script and everything it started stop together.
  const run = spawn("bash", [script], { env: { ...process.env, KEYGATE_PROXY: proxyBinary() }, detached: true, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  run.stdout.on("data", (d) => (output += d));
  run.stderr.on("data", (d) => (output += d));
  try {
    const deadline = Date.now() + 120_000;
    while (!output.includes("The example app is at")) {
      assert.ok(run.exitCode === null, `examples/spa/run exited:\n${output}`);
      assert.ok(Date.now() < deadline, `examples/spa/run not ready:\n${output}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto("http://localhost:8080/app/");
    const click = async (id) => {
      const before = await page.textContent("#out");
      await page.click(`#${id}`);
      await page.waitForFunction((b) => document.getElementById("out").textContent !== b, before);
      return page.textContent("#out");
    };
    assert.match(await click("login"), /"user": "ada"/);
    assert.match(await click("me"), /"authorizationSeenByApi": "Bearer demo-token-for-ada"/);
    assert.match(await click("order"), /"order": 1/);
    const five = JSON.parse(await click("orders5"));
    assert.deepEqual(five.map((o) => o.order), [2, 3, 4, 5, 6]);
    assert.match(await click("partner"), /"partnerKeyArrived": true/);
    assert.match(await click("logout"), /logged out/);
    assert.match(await click("me"), /401 SESSION_REQUIRED/);
    await context.close();
  } finally {
    if (run.exitCode === null) {
      process.kill(-run.pid, "SIGINT");
      await new Promise((r) => run.on("exit", r));
    }
  }
});
