// The example's backend on 127.0.0.1:9100: a login that answers a token, an orders API, a
// "partner" API, and the page itself under /app/ (with the SDK's build under /app/sdk/).
import { createServer } from "node:http";
import { existsSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { join } from "node:path";

const here = fileURLToPath(new URL(".", import.meta.url));
const sdk = join(here, "..", "..", "sdk", "dist");
let orders = 0;

const json = (res, status, body) => res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(body));

createServer((req, res) => {
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const path = new URL(req.url, "http://x").pathname;
    if (path === "/api/login") {
      const { user, password } = JSON.parse(Buffer.concat(chunks).toString() || "{}");
      if (password !== "demo") return json(res, 401, { error: "wrong password (it is: demo)" });
      return json(res, 200, { profile: { user }, session: { token: `demo-token-for-${user}` } });
    }
    if (path === "/api/me") {
      return json(res, 200, { youAre: req.headers.authorization ? "signed in" : "anonymous", authorizationSeenByApi: req.headers.authorization ?? null });
    }
    if (path.startsWith("/orders")) return json(res, 200, { order: ++orders, at: new Date().toISOString() });
    if (path.startsWith("/partner")) return json(res, 200, { partner: "ok", partnerKeyArrived: !!req.headers["x-partner-key"] });
    if (path.startsWith("/app/")) {
      const rel = path.slice(5) || "index.html";
      const file = rel.startsWith("sdk/") ? join(sdk, rel.slice(4)) : join(here, "page", rel);
      if (rel.includes("..") || !existsSync(file)) return json(res, 404, { error: "not found" });
      const type = file.endsWith(".html") ? "text/html; charset=utf-8" : "text/javascript";
      return res.writeHead(200, { "content-type": type }).end(readFileSync(file));
    }
    json(res, 404, { error: "not found" });
  });
}).listen(9100, "127.0.0.1", () => console.log("example upstream on http://127.0.0.1:9100"));
