// The example page: the SDK does the protocol work, the page only says what it wants.
import { createKeygate, ProxyError } from "./sdk/index.js";

const kg = createKeygate({
  baseUrl: location.origin,
  csrf: { mode: "doubleSubmit" },
  chain: { createPath: "/orders/session", apiKey: "pk-shop-web", proof: "hmac" },
});
const out = document.getElementById("out");
const show = (value) => (out.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 2));
const on = (id, action) =>
  document.getElementById(id).addEventListener("click", () =>
    action().then(show, (e) => show(e instanceof ProxyError ? `${e.status} ${e.code}: ${e.message}` : `${e.name}: ${e.message}`)),
  );

const value = (id) => document.getElementById(id).value;
on("login", () => kg.login("/api/login", { user: value("user"), password: value("password") }, { chain: false }));
on("me", () => kg.json("/api/me", { chain: false }));
on("logout", () => kg.logout("/api/logout", { chain: false }).then(() => "logged out"));
on("order", () => kg.json("/orders/new", { method: "POST", body: "{}" }));
on("orders5", () => Promise.all(Array.from({ length: 5 }, () => kg.json("/orders/new", { method: "POST", body: "{}" }))));
on("partner", () => kg.withDestination("http://partner.localhost:9100/partner").json("/partner/status", { chain: false }));
