// @keygate/client: calls Keygate routes from a browser. `createKeygate` returns a small client
// whose `fetch` adds what each route needs (the session chain's headers, the CSRF echo, the
// destination header) and turns Keygate's own refusals into typed errors; the upstream's
// answers come back as native `Response`s with their bodies streaming. Importing the module
// does nothing: every browser API is touched only when a call is made.

import { Chain, type Attempt, type ChainOptions } from "./chain.js";
import { KeygateError, NetworkError, TimeoutError, raiseProxyError } from "./errors.js";

export { KeygateError, NetworkError, ProxyError, TimeoutError } from "./errors.js";
export type { ChainOptions, Proof } from "./chain.js";

export type CsrfOptions =
  /** Echo the readable CSRF cookie (or the token from the login answer) in `x-csrf-token`. */
  | { mode: "doubleSubmit"; cookieName?: string; headerName?: string }
  /** Send a fixed header, e.g. `x-requested-with: keygate`. */
  | { mode: "header"; headerName: string; headerValue: string };

export interface KeygateOptions {
  /** Where Keygate serves, e.g. `https://api.app.example`; relative paths resolve against it. */
  baseUrl: string;
  csrf?: CsrfOptions;
  /** Session-chain settings; with them every call (but `{ chain: false }`) is chained. */
  chain?: ChainOptions;
  /** `429 RATE_LIMITED` answers are waited out (`Retry-After`, capped) and sent again. */
  retry?: { rateLimitRetries?: number; maxRetryAfterMs?: number };
  /** Whole-call limit in ms (queueing, retries and waits included); none by default. */
  timeoutMs?: number;
  /** The header allowlist routes read the destination from; default `x-target-url`. */
  destinationHeader?: string;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
}

export interface KeygateInit extends RequestInit {
  /** `false` sends this call outside the session chain. */
  chain?: boolean;
}

export interface Keygate {
  /** Keygate's refusals throw `ProxyError`; every upstream answer resolves, whatever its status. */
  fetch(input: string | URL, init?: KeygateInit): Promise<Response>;
  /** `fetch`, then the JSON body; a non-2xx upstream answer throws `HttpError`. */
  json<T = unknown>(input: string | URL, init?: KeygateInit): Promise<T>;
  /** Cookie translation's session start: POSTs `credentials` and returns what the browser may see. */
  login<T = unknown>(path: string, credentials: unknown, init?: KeygateInit): Promise<T>;
  /** Ends the cookie session. */
  logout(path: string, init?: KeygateInit): Promise<void>;
  /** The same client, naming `url` as the destination of allowlist routes. */
  withDestination(url: string): Keygate;
}

/** An upstream answered with a non-2xx status to `json` or `login`. */
export class HttpError extends KeygateError {
  constructor(readonly response: Response) {
    super(`the upstream answered ${response.status}`);
  }
  get status(): number {
    return this.response.status;
  }
}

const SAFE = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);

export function createKeygate(options: KeygateOptions): Keygate {
  const base = new URL(options.baseUrl, globalThis.location?.href);
  // fetch rejects with a TypeError for every network failure, CORS refusals included; only
  // those become NetworkErrors, not a TypeError from anywhere else.
  const doFetch = (url: string, init: RequestInit) =>
    (options.fetch ?? globalThis.fetch)(url, init).catch((e: unknown) => {
      if (e instanceof TypeError) throw new NetworkError(`the request to ${new URL(url).origin} failed: ${e.message}`, { cause: e });
      throw e;
    });
  const csrf = options.csrf;
  let csrfToken: string | null = null;
  let chain: Chain | undefined;
  const retry = {
    retries: options.retry?.rateLimitRetries ?? 10,
    maxWaitMs: options.retry?.maxRetryAfterMs ?? 10_000,
  };

  /** The header that proves the call comes from the page, on unsafe methods to Keygate only. */
  function csrfHeader(url: URL, method: string): [string, string] | undefined {
    if (!csrf || SAFE.has(method) || url.origin !== base.origin) return undefined;
    if (csrf.mode === "header") return [csrf.headerName, csrf.headerValue];
    const token = csrfToken ?? readCookie(csrf.cookieName);
    return token ? [csrf.headerName ?? "x-csrf-token", token] : undefined;
  }

  async function call(input: string | URL, init: KeygateInit, extra: Record<string, string>): Promise<Response> {
    const url = new URL(input, base);
    const method = (init.method ?? "GET").toUpperCase();
    const headers = new Headers(init.headers);
    for (const [k, v] of Object.entries(extra)) headers.set(k, v);
    const guard = csrfHeader(url, method);
    if (guard) headers.set(guard[0], guard[1]);

    const timeout = options.timeoutMs ? AbortSignal.timeout(options.timeoutMs) : undefined;
    const signals = [init.signal, timeout].filter((s): s is AbortSignal => !!s);
    const signal = signals.length > 1 ? AbortSignal.any(signals) : signals[0];
    const body = init.body ?? null;
    const attempt: Attempt = {
      url: url.href,
      method,
      replayable: !(body instanceof ReadableStream),
      bodyBytes: () => {
        if (body instanceof ReadableStream) {
          throw new KeygateError("proof: signature signs the body, so it cannot be a stream");
        }
        return new Request(url, { method, body }).arrayBuffer();
      },
      send: (chainHeaders) => {
        const h = new Headers(headers);
        for (const [k, v] of Object.entries(chainHeaders)) h.set(k, v);
        const sent: RequestInit & { duplex?: string } = { credentials: "include", ...init, method, headers: h, signal };
        if (body instanceof ReadableStream) sent.duplex = "half";
        return doFetch(url.href, sent);
      },
    };
    try {
      const useChain = options.chain && init.chain !== false;
      if (useChain) {
        chain ??= new Chain(options.chain!, (path, i) => doFetch(new URL(path, base).href, { credentials: "include", ...i }), retry);
      }
      return await raiseProxyError(await (useChain ? chain!.run(attempt, signal) : attempt.send({})));
    } catch (e) {
      if (timeout?.aborted && !init.signal?.aborted) {
        throw new TimeoutError(`no answer within ${options.timeoutMs} ms`, { cause: e });
      }
      throw e;
    }
  }

  function client(extra: Record<string, string>): Keygate {
    const self: Keygate = {
      fetch: (input, init = {}) => call(input, init, extra),
      async json<T>(input: string | URL, init: KeygateInit = {}) {
        const res = await call(input, init, extra);
        if (!res.ok) throw new HttpError(res);
        return (await res.json()) as T;
      },
      async login<T>(path: string, credentials: unknown, init: KeygateInit = {}) {
        const res = await call(
          path,
          {
            chain: false,
            ...init,
            method: "POST",
            headers: { "content-type": "application/json", ...Object.fromEntries(new Headers(init.headers)) },
            body: JSON.stringify(credentials),
          },
          extra,
        );
        if (!res.ok) throw new HttpError(res);
        // A page on another origin cannot read Keygate's CSRF cookie, so the token comes back here too.
        csrfToken = res.headers.get("x-keygate-csrf") ?? csrfToken;
        return (await res.json()) as T;
      },
      async logout(path: string, init: KeygateInit = {}) {
        await call(path, { chain: false, ...init, method: "POST" }, extra);
        csrfToken = null;
      },
      withDestination: (url) => client({ ...extra, [options.destinationHeader ?? "x-target-url"]: url }),
    };
    return self;
  }

  return client({});
}

function readCookie(name: string | undefined): string | null {
  if (!name || typeof document === "undefined") return null;
  for (const part of document.cookie.split(";")) {
    const [k, ...v] = part.trim().split("=");
    if (k === name) return decodeURIComponent(v.join("=")).replace(/^"|"$/g, "");
  }
  return null;
}
