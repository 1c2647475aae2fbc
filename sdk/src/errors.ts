/** Base class of every error the client throws itself; `AbortError`s pass through untouched. */
export class KeygateError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * Keygate refused or failed the request itself (its answer carries `x-keygate-error`). The
 * upstream's own answers, whatever their status, come back as a `Response` instead.
 */
export class ProxyError extends KeygateError {
  /** HTTP status, e.g. 401. */
  readonly status: number;
  /** Stable machine-readable code, e.g. `REQUEST_OUT_OF_SESSION`. */
  readonly code: string;
  /** `namespace/name` of the route, when one matched. */
  readonly route: string | null;
  /** Seconds the server asked to wait (`Retry-After`), when it did. */
  readonly retryAfter: number | undefined;
  /** The answer, its body already read for the message. */
  readonly response: Response;

  constructor(response: Response, code: string, message: string, route: string | null) {
    super(`${code}: ${message}`);
    this.status = response.status;
    this.code = code;
    this.route = route;
    this.retryAfter = retryAfterSeconds(response.headers.get("retry-after"));
    this.response = response;
  }
}

/** The request never got an answer: offline, DNS, TLS, or refused by CORS (browsers do not say which). */
export class NetworkError extends KeygateError {}

/** No answer within the client's `timeoutMs`. */
export class TimeoutError extends KeygateError {}

/** `Retry-After` as seconds from now: a number of seconds, or an HTTP date. */
export function retryAfterSeconds(value: string | null, now = Date.now()): number | undefined {
  if (value === null || value.trim() === "") return undefined;
  if (/^\s*\d+\s*$/.test(value)) return Number(value);
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, Math.ceil((at - now) / 1000));
}

/**
 * Turns a Keygate error answer into a `ProxyError`; any other answer is returned as it is.
 * Keygate's own answers carry `x-keygate-error`, so an upstream's JSON error is never mistaken
 * for one.
 */
export async function raiseProxyError(response: Response): Promise<Response> {
  const code = response.headers.get("x-keygate-error");
  if (code === null) return response;
  let message = "";
  let route: string | null = null;
  try {
    const body = (await response.clone().json()) as { proxy_error?: { message?: string; route?: string | null } };
    message = body.proxy_error?.message ?? "";
    route = body.proxy_error?.route ?? null;
  } catch {
    // An unreadable body still has its code.
  }
  throw new ProxyError(response, code, message, route);
}
