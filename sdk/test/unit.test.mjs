// Unit tests of the client against a scripted `fetch`: queue order, the single retry, waits on
// 429, aborts at every stage, the CSRF header's reach, and that importing touches nothing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";

import { createKeygate, ProxyError, NetworkError, TimeoutError, HttpError } from "../dist/index.js";
import { retryAfterSeconds } from "../dist/errors.js";

const sha = (s) => createHash("sha256").update(s).digest("hex");

function keygateError(status, code, headers = {}) {
  return new Response(JSON.stringify({ proxy_error: { code, message: code.toLowerCase(), route: "default/api" } }), {
    status,
    headers: { "content-type": "application/json", "x-keygate-error": code, ...headers },
  });
}

/**
 * A fake Keygate with a hash chain: sessions, links accepted once, and hooks to refuse or delay.
 * `log` records every request it sees, in arrival order.
 */
function fakeKeygate({ onRequest } = {}) {
  const sessions = new Map(); // id -> expected next link
  const log = [];
  let created = 0;
  const fetch = async (url, init = {}) => {
    const u = new URL(url);
    const h = new Headers(init.headers);
    const entry = { path: u.pathname, method: init.method ?? "GET", headers: h, init };
    log.push(entry);
    if (u.pathname === "/api/session") {
      created++;
      const id = `session-${created}`;
      sessions.set(id, sha(id));
      return Response.json({ session_id: id });
    }
    const hook = onRequest && (await onRequest(entry, log));
    if (hook) return hook;
    const id = h.get("x-session-id");
    if (!sessions.has(id)) return keygateError(401, "SESSION_TIME_OUT");
    if (sessions.get(id) !== h.get("x-request-id")) return keygateError(401, "REQUEST_OUT_OF_SESSION");
    sessions.set(id, sha(h.get("x-request-id")));
    return new Response(`ok ${u.pathname}`, { headers: { "x-keygate-chain": "advanced" } });
  };
  return { fetch, log, sessions, created: () => created };
}

const chainOpts = { createPath: "/api/session", apiKey: "pk-web" };

test("importing the module touches no browser API", async () => {
  // The test runs in Node: no window, document, localStorage or navigator.locks. The import
  // above already succeeded; creating a client must not need them either.
  assert.equal(typeof globalThis.window, "undefined");
  const kg = createKeygate({ baseUrl: "https://kg.example", fetch: async () => new Response("x") });
  assert.equal(typeof kg.fetch, "function");
});

test("one session for many waiting calls, sent one at a time in call order", async () => {
  const server = fakeKeygate();
  const kg = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch: server.fetch });
  const answers = await Promise.all(Array.from({ length: 20 }, (_, i) => kg.fetch(`/api/item/${i}`)));
  assert.equal(server.created(), 1, "the session is created once");
  assert.deepEqual(
    await Promise.all(answers.map((r) => r.text())),
    Array.from({ length: 20 }, (_, i) => `ok /api/item/${i}`),
  );
  const order = server.log.filter((e) => e.path.startsWith("/api/item/")).map((e) => e.path);
  assert.deepEqual(order, Array.from({ length: 20 }, (_, i) => `/api/item/${i}`), "FIFO");
  // The links form the chain from the session id.
  let last = "session-1";
  for (const e of server.log.filter((e) => e.path.startsWith("/api/item/"))) {
    assert.equal(e.headers.get("x-request-id"), sha(last));
    assert.equal(e.headers.get("x-api-key"), "pk-web");
    last = e.headers.get("x-request-id");
  }
});

test("the next request leaves when the previous answer's headers arrive, not its body", async () => {
  let release;
  const slowBody = new ReadableStream({ start: (c) => (release = () => (c.enqueue(new TextEncoder().encode("late")), c.close())) });
  const server = fakeKeygate({
    onRequest: (e) => (e.path === "/api/slow" ? undefined : undefined),
  });
  const inner = server.fetch;
  server.fetch = async (url, init) => {
    const res = await inner(url, init);
    return new URL(url).pathname === "/api/slow" ? new Response(slowBody, { headers: res.headers }) : res;
  };
  const kg = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch: server.fetch });
  const slow = await kg.fetch("/api/slow");
  const next = await kg.fetch("/api/next");
  assert.equal(await next.text(), "ok /api/next", "sent while the first body is still open");
  release();
  assert.equal(await slow.text(), "late");
});

test("a lost session is replaced and the request retried once, never twice", async () => {
  const server = fakeKeygate();
  const kg = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch: server.fetch });
  await kg.fetch("/api/a");
  server.sessions.clear(); // the store forgot every session
  const res = await kg.fetch("/api/b");
  assert.equal(await res.text(), "ok /api/b");
  assert.equal(server.created(), 2);

  // A server that refuses every link: one retry, then the error.
  const refusing = fakeKeygate({ onRequest: () => keygateError(401, "REQUEST_OUT_OF_SESSION") });
  const kg2 = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch: refusing.fetch });
  await assert.rejects(kg2.fetch("/api/x"), (e) => e instanceof ProxyError && e.code === "REQUEST_OUT_OF_SESSION" && e.status === 401);
  assert.equal(refusing.log.filter((e) => e.path === "/api/x").length, 2);
  assert.equal(refusing.created(), 2);
});

test("a streaming body is never retried, and the error says so", async () => {
  const refusing = fakeKeygate({ onRequest: () => keygateError(401, "SESSION_TIME_OUT") });
  const kg = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch: refusing.fetch });
  const body = new ReadableStream({ start: (c) => (c.enqueue(new Uint8Array([1, 2])), c.close()) });
  await assert.rejects(kg.fetch("/api/upload", { method: "PUT", body }), (e) => {
    assert.ok(e instanceof ProxyError);
    assert.match(e.message, /not retried: the request body is a stream/);
    return true;
  });
  assert.equal(refusing.log.filter((e) => e.path === "/api/upload").length, 1);
});

test("the chain advances only on x-keygate-chain: advanced", async () => {
  let advance = false;
  const seen = [];
  const fetch = async (url, init) => {
    const path = new URL(url).pathname;
    if (path === "/api/session") return Response.json({ session_id: "s" });
    seen.push(new Headers(init.headers).get("x-request-id"));
    // An upstream 500 on an accepted request still advances; a refusal without the header does not.
    return advance ? new Response("boom", { status: 500, headers: { "x-keygate-chain": "advanced" } }) : new Response("not chained", { status: 200 });
  };
  const kg = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch });
  await kg.fetch("/api/1");
  await kg.fetch("/api/2");
  assert.equal(seen[0], seen[1], "no header: same link again");
  advance = true;
  assert.equal((await kg.fetch("/api/3")).status, 500, "upstream errors are answers, not exceptions");
  await kg.fetch("/api/4");
  assert.equal(seen[3], sha(seen[2]));
});

test("429 waits Retry-After (seconds or a date, capped) and resends the same link", async () => {
  let limited = 2;
  const times = [];
  const server = fakeKeygate({
    onRequest: (e) => {
      times.push([Date.now(), e.headers.get("x-request-id")]);
      if (limited-- > 0) return keygateError(429, "RATE_LIMITED", { "retry-after": limited === 1 ? "1" : new Date(Date.now() + 1000).toUTCString() });
    },
  });
  const kg = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch: server.fetch, retry: { maxRetryAfterMs: 150 } });
  const res = await kg.fetch("/api/limited");
  assert.equal(await res.text(), "ok /api/limited");
  assert.equal(times.length, 3);
  assert.equal(new Set(times.map(([, link]) => link)).size, 1, "the same link each time");
  assert.ok(times[1][0] - times[0][0] >= 140, "waited (capped at 150 ms)");
  assert.equal(retryAfterSeconds("7"), 7);
  assert.equal(retryAfterSeconds(new Date(Date.UTC(2030, 0, 1, 0, 0, 30)).toUTCString(), Date.UTC(2030, 0, 1)), 30);
  assert.equal(retryAfterSeconds("soon"), undefined);
});

test("an AbortSignal works while queued, while the session is created, in flight, and while waiting on 429", async (t) => {
  const pending = () => new Promise(() => {});
  const hang = (path) => (url, init) =>
    new URL(url).pathname === path
      ? new Promise((_, reject) => init.signal?.addEventListener("abort", () => reject(init.signal.reason)))
      : null;

  await t.test("in flight", async () => {
    const h = hang("/api/hang");
    const server = fakeKeygate({ onRequest: (e) => h(`https://kg.example${e.path}`, e.init) });
    const kg = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch: server.fetch });
    const ac = new AbortController();
    const p = kg.fetch("/api/hang", { signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    await assert.rejects(p, { name: "AbortError" });
    // The queue moves on.
    assert.equal(await (await kg.fetch("/api/after")).text(), "ok /api/after");
  });

  await t.test("queued behind another call", async () => {
    let release;
    const server = fakeKeygate({ onRequest: (e) => (e.path === "/api/first" ? new Promise((r) => (release = () => r(undefined))) : undefined) });
    const kg = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch: server.fetch });
    const first = kg.fetch("/api/first");
    const ac = new AbortController();
    const queued = kg.fetch("/api/queued", { signal: ac.signal });
    ac.abort();
    await assert.rejects(queued, { name: "AbortError" }, "rejected before its turn");
    while (!release) await new Promise((r) => setTimeout(r, 5));
    release();
    await first;
    assert.equal(server.log.filter((e) => e.path === "/api/queued").length, 0, "never sent");
  });

  await t.test("during session creation", async () => {
    const fetch = (url, init) =>
      new URL(url).pathname === "/api/session"
        ? new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(init.signal.reason)))
        : pending();
    const kg = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch });
    const ac = new AbortController();
    const p = kg.fetch("/api/x", { signal: ac.signal });
    setTimeout(() => ac.abort(), 20);
    await assert.rejects(p, { name: "AbortError" });
  });

  await t.test("while waiting out a 429", async () => {
    const server = fakeKeygate({ onRequest: () => keygateError(429, "RATE_LIMITED", { "retry-after": "30" }) });
    const kg = createKeygate({ baseUrl: "https://kg.example", chain: chainOpts, fetch: server.fetch, retry: { maxRetryAfterMs: 60_000 } });
    const ac = new AbortController();
    const started = Date.now();
    const p = kg.fetch("/api/x", { signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(p, { name: "AbortError" });
    assert.ok(Date.now() - started < 5000, "did not sit out the 30 s");
  });
});

test("typed errors: ProxyError with its fields, network, timeout", async () => {
  const kg = createKeygate({
    baseUrl: "https://kg.example",
    fetch: async (url) =>
      new URL(url).pathname === "/limited" ? keygateError(429, "RATE_LIMITED", { "retry-after": "3" }) : new Response("{}", { status: 404 }),
  });
  const e = await kg.fetch("/limited").catch((e) => e);
  assert.ok(e instanceof ProxyError);
  assert.deepEqual([e.status, e.code, e.route, e.retryAfter], [429, "RATE_LIMITED", "default/api", 3]);
  assert.equal(e.response.status, 429);
  // An upstream's own 404 is an answer, not a ProxyError; json() turns it into HttpError.
  assert.equal((await kg.fetch("/missing")).status, 404);
  await assert.rejects(kg.json("/missing"), (e) => e instanceof HttpError && e.status === 404);

  const offline = createKeygate({ baseUrl: "https://kg.example", fetch: async () => { throw new TypeError("Failed to fetch"); } });
  await assert.rejects(offline.fetch("/x"), (e) => e instanceof NetworkError && e.cause instanceof TypeError);

  const slow = createKeygate({
    baseUrl: "https://kg.example",
    timeoutMs: 30,
    fetch: (url, init) => new Promise((_, reject) => init.signal.addEventListener("abort", () => reject(init.signal.reason))),
  });
  // Node does not keep the process alive for AbortSignal.timeout's timer; this one does.
  const alive = setTimeout(() => {}, 5000);
  await assert.rejects(slow.fetch("/x"), (e) => e instanceof TimeoutError);
  clearTimeout(alive);
});

test("the CSRF header goes on unsafe methods to baseUrl only", async () => {
  const seen = [];
  const fetch = async (url, init) => {
    seen.push([new URL(url).origin + new URL(url).pathname, init.method, new Headers(init.headers).get("x-csrf-token"), new Headers(init.headers).get("x-requested-with")]);
    return new URL(url).pathname === "/login" ? Response.json({ user: "ada" }, { headers: { "x-keygate-csrf": "tok-1" } }) : new Response("ok");
  };
  const kg = createKeygate({ baseUrl: "https://kg.example", csrf: { mode: "doubleSubmit" }, fetch });
  assert.deepEqual(await kg.login("/login", { user: "ada", password: "pw" }), { user: "ada" });
  await kg.fetch("/api/x", { method: "POST", body: "{}" });
  await kg.fetch("/api/x");
  await kg.fetch("https://elsewhere.example/api/x", { method: "DELETE" });
  await kg.logout("/logout");
  await kg.fetch("/api/x", { method: "PUT" });
  assert.deepEqual(
    seen.map(([u, m, t]) => [u, m, t]),
    [
      ["https://kg.example/login", "POST", null],
      ["https://kg.example/api/x", "POST", "tok-1"],
      ["https://kg.example/api/x", "GET", null],
      ["https://elsewhere.example/api/x", "DELETE", null],
      ["https://kg.example/logout", "POST", "tok-1"],
      ["https://kg.example/api/x", "PUT", null],
    ],
  );
  seen.length = 0;
  const fixed = createKeygate({ baseUrl: "https://kg.example", csrf: { mode: "header", headerName: "x-requested-with", headerValue: "keygate" }, fetch });
  await fixed.fetch("/api/x", { method: "PATCH" });
  await fixed.fetch("/api/x", { method: "HEAD" });
  assert.deepEqual(seen.map(([, m, , f]) => [m, f]), [["PATCH", "keygate"], ["HEAD", null]]);
});

test("withDestination names the target for allowlist routes, and nothing else changes", async () => {
  const seen = [];
  const fetch = async (url, init) => (seen.push(new Headers(init.headers).get("x-target-url")), new Response("ok"));
  const kg = createKeygate({ baseUrl: "https://kg.example", fetch });
  await kg.withDestination("https://api.partner.example/v1").fetch("/ext/items");
  await kg.fetch("/ext/items");
  assert.deepEqual(seen, ["https://api.partner.example/v1", null]);
});

test("bodies stream both ways untouched", async () => {
  const fetch = async (url, init) => new Response(init.body);
  const kg = createKeygate({ baseUrl: "https://kg.example", fetch });
  const chunks = ["a", "b", "c"];
  const body = new ReadableStream({ pull: (c) => (chunks.length ? c.enqueue(new TextEncoder().encode(chunks.shift())) : c.close()) });
  const res = await kg.fetch("/echo", { method: "POST", body, duplex: "half" });
  assert.ok(res instanceof Response, "a native Response");
  assert.equal(await res.text(), "abc");
});
