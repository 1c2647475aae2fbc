// The client half of Keygate's session chain: one session, requests one at a time in call
// order, each carrying the next link. The server accepts each link once, so two requests of a
// session in flight at once would race for the same link; the FIFO queue is what keeps a busy
// page from refusing itself.

import { KeygateError, ProxyError, raiseProxyError, retryAfterSeconds } from "./errors.js";

export type Proof = "hash" | "hmac" | "signature";

export interface ChainOptions {
  /** Keygate's session-create path, e.g. `/api/session`. */
  createPath: string;
  /** The app's (public) API key. */
  apiKey: string;
  /** The policy's `proof`; default `hash`. */
  proof?: Proof;
  /** Header names, when the policy renames them. */
  headers?: { apiKey?: string; sessionId?: string; requestId?: string };
  /** Sent at session creation; default a random UUID per client. */
  machineId?: string;
  /**
   * Share one session among this origin's tabs (Web Locks + IndexedDB); default off: one
   * session per tab. A `signature` key is shared as the non-extractable key it is.
   */
  shareAcrossTabs?: boolean | { lockName?: string; lockTimeoutMs?: number; holdTimeoutMs?: number };
}

/** A request ready to be sent again: its body is kept, never a consumed stream. */
export interface Attempt {
  url: string;
  method: string;
  /** Whether the body can be sent a second time. */
  replayable: boolean;
  /** Bytes of the body, for `signature` (which signs its digest). */
  bodyBytes(): Promise<ArrayBuffer>;
  /** Sends it with these extra headers. */
  send(extra: Record<string, string>): Promise<Response>;
}

interface Session {
  id: string;
  last: string;
  /** `hmac`: the chain key, hex. */
  key?: string;
  /** `signature`: the non-extractable private key. */
  signer?: CryptoKey;
}

/** Codes after which the session is gone and a new one may be tried, once. */
const SESSION_GONE = new Set(["REQUEST_OUT_OF_SESSION", "SESSION_TIME_OUT", "INVALID_SESSION"]);

const utf8 = (s: string) => new TextEncoder().encode(s);
const hex = (b: ArrayBuffer) => Array.from(new Uint8Array(b), (x) => x.toString(16).padStart(2, "0")).join("");
const unhex = (h: string) => new Uint8Array(h.match(/../g)!.map((x) => parseInt(x, 16)));
const b64url = (b: ArrayBuffer) =>
  btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const sha256 = async (data: BufferSource) => hex(await crypto.subtle.digest("SHA-256", data));

/** Waits `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    signal?.throwIfAborted();
    const done = () => {
      signal?.removeEventListener("abort", stop);
      resolve();
    };
    const timer = setTimeout(done, ms);
    const stop = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    signal?.addEventListener("abort", stop, { once: true });
  });
}

/** `p`, or the signal's reason as soon as it aborts: a queued call does not wait for its turn to be cancelled. */
function abortable<T>(p: Promise<T>, signal?: AbortSignal): Promise<T> {
  if (!signal) return p;
  return new Promise((resolve, reject) => {
    const stop = () => reject(signal.reason);
    if (signal.aborted) return stop();
    signal.addEventListener("abort", stop, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener("abort", stop));
  });
}

export class Chain {
  private tail: Promise<unknown> = Promise.resolve();
  private session: Session | undefined;
  private readonly keys = new Map<string, Promise<CryptoKey>>();
  private readonly proof: Proof;
  private readonly names: { apiKey: string; sessionId: string; requestId: string };
  private readonly machineId: string;
  private readonly shared: { lockName: string; lockTimeoutMs: number; holdTimeoutMs: number } | undefined;

  constructor(
    private readonly opts: ChainOptions,
    private readonly post: (url: string, init: RequestInit) => Promise<Response>,
    private readonly rateLimit: { retries: number; maxWaitMs: number },
  ) {
    if (!globalThis.crypto?.subtle) {
      throw new KeygateError("the session chain needs WebCrypto, which browsers offer only to secure contexts (https:// or localhost)");
    }
    this.proof = opts.proof ?? "hash";
    this.names = {
      apiKey: opts.headers?.apiKey ?? "x-api-key",
      sessionId: opts.headers?.sessionId ?? "x-session-id",
      requestId: opts.headers?.requestId ?? "x-request-id",
    };
    this.machineId = opts.machineId ?? crypto.randomUUID();
    const share = opts.shareAcrossTabs;
    this.shared = share
      ? {
          lockName: (typeof share === "object" && share.lockName) || `keygate-chain:${opts.createPath}`,
          lockTimeoutMs: (typeof share === "object" && share.lockTimeoutMs) || 10_000,
          holdTimeoutMs: (typeof share === "object" && share.holdTimeoutMs) || 30_000,
        }
      : undefined;
  }

  /** Sends `attempt` when its turn comes; resolves with the answer's headers. */
  run(attempt: Attempt, signal?: AbortSignal): Promise<Response> {
    const turn = this.tail.then(() => {
      signal?.throwIfAborted();
      return this.shared ? this.underLock(attempt, signal) : this.exchange(attempt, signal);
    });
    this.tail = turn.catch(() => undefined);
    return abortable(turn, signal);
  }

  /**
   * The cross-tab variant: the session lives in IndexedDB and a Web Lock serializes tabs.
   * IndexedDB, not localStorage: another tab may read localStorage before this tab's write
   * reaches it, and would send a spent link; a transaction that has completed is what every
   * tab reads next. Both waits are bounded — a tab that never gets the lock fails, and a holder
   * whose request hangs gives the lock up and drops the session — so no tab blocks the others.
   */
  private async underLock(attempt: Attempt, signal?: AbortSignal): Promise<Response> {
    const { lockName, lockTimeoutMs, holdTimeoutMs } = this.shared!;
    const waiting = AbortSignal.timeout(lockTimeoutMs);
    const lockSignal = signal ? AbortSignal.any([signal, waiting]) : waiting;
    try {
      return await navigator.locks.request(lockName, { signal: lockSignal }, async () => {
        this.session = await stored("readonly", (s) => s.get(lockName));
        const work = this.exchange(attempt, signal);
        const released = new AbortController();
        const held = sleep(holdTimeoutMs, released.signal).then(() => {
          this.session = undefined;
          throw new KeygateError(`no answer within ${holdTimeoutMs} ms; the shared session is abandoned`);
        });
        try {
          return await Promise.race([work, held]);
        } finally {
          released.abort();
          const session = this.session;
          await stored("readwrite", (s) => (session ? s.put(session, lockName) : s.delete(lockName)));
        }
      });
    } catch (e) {
      if (waiting.aborted && !signal?.aborted) {
        throw new KeygateError(`another tab held the session lock for over ${lockTimeoutMs} ms`, { cause: e });
      }
      throw e;
    }
  }

  /** One request: links, the single retry on a lost session, waits on `429`. */
  private async exchange(attempt: Attempt, signal?: AbortSignal): Promise<Response> {
    let retried = false;
    for (let limited = 0; ; ) {
      const session = (this.session ??= await this.create(signal));
      const link =
        this.proof === "hmac"
          ? hex(await crypto.subtle.sign("HMAC", await this.hmacKey(session.key!), utf8(session.last)))
          : await sha256(utf8(session.last));
      const extra: Record<string, string> = {
        [this.names.apiKey]: this.opts.apiKey,
        [this.names.sessionId]: session.id,
        [this.names.requestId]: link,
      };
      if (session.signer) extra["x-keygate-signature"] = await this.sign(session.signer, attempt, link);
      const res = await attempt.send(extra);
      // Only this header moves the chain on: an error status may still have spent the link.
      if (res.headers.get("x-keygate-chain") === "advanced") session.last = link;
      const code = res.headers.get("x-keygate-error");
      if (code !== null && SESSION_GONE.has(code)) {
        this.session = undefined;
        if (!retried && attempt.replayable) {
          retried = true;
          continue;
        }
        await raiseProxyError(res).catch((e: ProxyError) => {
          if (!attempt.replayable) e.message += " (not retried: the request body is a stream and cannot be sent again)";
          throw e;
        });
      }
      if (code === "RATE_LIMITED" && attempt.replayable && limited < this.rateLimit.retries) {
        limited++;
        const seconds = retryAfterSeconds(res.headers.get("retry-after")) ?? 1;
        // The link was not spent (rate limits come before the chain), so the same one goes again.
        await sleep(Math.min(seconds * 1000, this.rateLimit.maxWaitMs), signal);
        continue;
      }
      return res;
    }
  }

  private async create(signal?: AbortSignal): Promise<Session> {
    const body: Record<string, string> = { machine_id: this.machineId };
    let signer: CryptoKey | undefined;
    if (this.proof === "signature") {
      // Non-extractable: script on the page can use the key but never read it out.
      const pair = await crypto.subtle.generateKey({ name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
      body.public_key = b64url(await crypto.subtle.exportKey("raw", pair.publicKey));
      signer = pair.privateKey;
    }
    const res = await raiseProxyError(
      await this.post(this.opts.createPath, {
        method: "POST",
        headers: { "content-type": "application/json", [this.names.apiKey]: this.opts.apiKey },
        body: JSON.stringify(body),
        signal,
      }),
    );
    if (!res.ok) throw new KeygateError(`session create answered ${res.status}`);
    const made = (await res.json()) as { session_id: string; chain_key?: string };
    return { id: made.session_id, last: made.session_id, key: made.chain_key, signer };
  }

  /** The chain key as a non-extractable HMAC key, imported once per key. */
  private hmacKey(key: string): Promise<CryptoKey> {
    let k = this.keys.get(key);
    if (!k) {
      k = crypto.subtle.importKey("raw", unhex(key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
      this.keys.set(key, k);
    }
    return k;
  }

  private async sign(signer: CryptoKey, attempt: Attempt, link: string): Promise<string> {
    const url = new URL(attempt.url);
    const text = ["keygate-chain-v1", attempt.method, url.pathname + url.search, await sha256(await attempt.bodyBytes()), link];
    return b64url(await crypto.subtle.sign({ name: "ECDSA", hash: "SHA-256" }, signer, utf8(text.join("\n"))));
  }
}

/** One IndexedDB request in its own transaction, resolved once the transaction has completed. */
function stored<T>(mode: IDBTransactionMode, op: (store: IDBObjectStore) => IDBRequest): Promise<T> {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("keygate-chain", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("sessions");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const db = open.result;
      const tx = db.transaction("sessions", mode);
      const req = op(tx.objectStore("sessions"));
      tx.oncomplete = () => (db.close(), resolve(req.result as T));
      tx.onerror = tx.onabort = () => (db.close(), reject(tx.error));
    };
  });
}
