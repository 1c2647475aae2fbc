// The SDK against a real keygate-proxy and a real upstream on loopback, in Node: the chain in
// every proof mode, the single retry after a lost session, waits on rate limits, and Keygate's
// refusals as typed errors.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import { createKeygate, ProxyError } from "../dist/index.js";
import { startWorld } from "./world.mjs";

const PROOFS = (process.env.SDK_PROOFS ?? "hash,hmac,signature").split(",");
const PREFIX = { hash: "chain", hmac: "hmac", signature: "sig" };
let world;

before(async () => {
  world = await startWorld({ proofs: PROOFS });
});
after(() => world?.stop());

const client = (proof, extra = {}) =>
  createKeygate({
    baseUrl: world.url,
    chain: { createPath: `/${PREFIX[proof]}/session`, apiKey: "pk-web", proof },
    ...extra,
  });

for (const proof of PROOFS) {
  test(`${proof}: 20 parallel calls all succeed on one session, in call order`, async () => {
    const kg = client(proof);
    const first = world.state.count;
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) => kg.json(`/${PREFIX[proof]}/item/${i}`, i % 2 ? { method: "POST", body: JSON.stringify({ i }) } : {})),
    );
    assert.deepEqual(
      answers.map((a) => a.path),
      Array.from({ length: 20 }, (_, i) => `/item/${i}`),
    );
    assert.deepEqual(
      answers.map((a) => a.n),
      Array.from({ length: 20 }, (_, i) => first + i + 1),
      "the upstream saw them in call order",
    );
    const seen = world.state.seen.slice(-20);
    assert.ok(
      seen.every((s) => !s.headers["x-session-id"] && !s.headers["x-request-id"] && !s.headers["x-api-key"]),
      "the chain's headers never reach the upstream",
    );
  });
}

test("a link spent by someone else: a new session and one retry, transparently", async () => {
  const { createHash } = await import("node:crypto");
  const sent = [];
  const recording = (url, init) => (sent.push({ url, headers: new Headers(init.headers) }), fetch(url, init));
  const kg = createKeygate({ baseUrl: world.url, chain: { createPath: "/chain/session", apiKey: "pk-web" }, fetch: recording });
  await kg.fetch("/chain/one");
  // A racer spends the SDK's next link before the SDK sends it.
  const last = sent.at(-1).headers;
  const next = createHash("sha256").update(last.get("x-request-id")).digest("hex");
  const raced = await fetch(`${world.url}/chain/racer`, {
    headers: { "x-api-key": "pk-web", "x-session-id": last.get("x-session-id"), "x-request-id": next },
  });
  assert.equal(raced.status, 200);
  const res = await kg.fetch("/chain/two");
  assert.equal(res.status, 200);
  const creates = sent.filter((s) => s.url.endsWith("/chain/session")).length;
  const tries = sent.filter((s) => s.url.endsWith("/chain/two")).length;
  assert.deepEqual([creates, tries], [2, 2], "one new session, one retry");
});

test("20 raw copies of one link: exactly one is accepted", async () => {
  const create = await fetch(`${world.url}/chain/session`, {
    method: "POST",
    headers: { "x-api-key": "pk-web", "content-type": "application/json" },
    body: JSON.stringify({ machine_id: "m" }),
  }).then((r) => r.json());
  const { createHash } = await import("node:crypto");
  const link = createHash("sha256").update(create.session_id).digest("hex");
  const headers = { "x-api-key": "pk-web", "x-session-id": create.session_id, "x-request-id": link };
  const codes = await Promise.all(
    Array.from({ length: 20 }, () => fetch(`${world.url}/chain/copy`, { headers }).then((r) => r.status)),
  );
  assert.equal(codes.filter((c) => c === 200).length, 1, codes.join(","));
  assert.equal(codes.filter((c) => c === 401).length, 19);
});

test("on a rate-limited chain route every call eventually succeeds", async () => {
  const kg = createKeygate({
    baseUrl: world.url,
    chain: { createPath: "/chain/session", apiKey: "pk-web" },
    retry: { rateLimitRetries: 50, maxRetryAfterMs: 1000 },
  });
  const answers = await Promise.all(Array.from({ length: 8 }, (_, i) => kg.json(`/limited/r/${i}`)));
  assert.deepEqual(
    answers.map((a) => a.path),
    Array.from({ length: 8 }, (_, i) => `/r/${i}`),
  );
});

test("Keygate's refusals are ProxyErrors with code, status and route", async () => {
  const kg = createKeygate({ baseUrl: world.url, chain: { createPath: "/chain/session", apiKey: "not-a-key" } });
  await assert.rejects(kg.fetch("/chain/x"), (e) => e instanceof ProxyError && e.code === "INVALID_API_KEY" && e.status === 401);
  const plain = createKeygate({ baseUrl: world.url });
  await assert.rejects(plain.fetch("/nowhere"), (e) => e instanceof ProxyError && e.code === "ROUTE_NOT_FOUND" && e.route === null);
  await assert.rejects(plain.fetch("/api/me"), (e) => e instanceof ProxyError && e.code === "SESSION_REQUIRED" && e.route === "default/api");
});

test("nothing secret in the proxy's logs", () => {
  const logs = world.logs.join("");
  assert.ok(logs.length > 0, "logs were captured");
  assert.ok(!logs.includes("pk-web"), "app key");
  assert.ok(!logs.includes(world.state.tokenSecret), "upstream token");
});
