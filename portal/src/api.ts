/**
 * The portal's client of the vault's public REST API (/api/v1), the same API the CLI
 * uses. The API token lives in the tab's session storage: closing the tab signs out.
 * Errors arrive as {code, message, details} and are thrown as ApiError, so a form can
 * show the vault's own message and the field it names.
 */
const TOKEN_KEY = 'osr.token';
export const API = '/api/v1';

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: Record<string, unknown>,
  ) {
    super(message);
  }
  /** the problems a refused operation lists (details.problems), as lines */
  get problems(): string[] {
    const p = this.details?.problems;
    if (!Array.isArray(p)) return [];
    return p.map((x) => (typeof x === 'string' ? x : typeof x === 'object' && x !== null && 'message' in x ? `${(x as { item?: string }).item ? `${(x as { item?: string }).item}: ` : ''}${String((x as { message: unknown }).message)}` : JSON.stringify(x)));
  }
  /** the field a validation error names, if any */
  get field(): string | undefined {
    const f = this.details?.field;
    return typeof f === 'string' ? f : undefined;
  }
}

export function getToken(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}
export function setToken(t: string | null): void {
  if (t === null) sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, t);
}

const signedOut = new Set<() => void>();
/** called when the vault no longer accepts the token */
export function onSignedOut(f: () => void): () => void {
  signedOut.add(f);
  return () => signedOut.delete(f);
}

export type Query = Record<string, string | number | boolean | undefined | null>;

export function apiUrl(path: string, query?: Query): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  const s = q.toString();
  return `${API}${path}${s ? `?${s}` : ''}`;
}

export async function request<T>(method: string, path: string, body?: unknown, query?: Query, token = getToken()): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  let res: Response;
  try {
    res = await fetch(apiUrl(path, query), { method, headers, body: body === undefined ? null : JSON.stringify(body) });
  } catch (e) {
    throw new ApiError(0, 'UNAVAILABLE', `the vault cannot be reached (${(e as Error).message}); is it running?`);
  }
  const text = await res.text();
  let data: unknown = undefined;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = text;
    }
  }
  if (!res.ok) {
    const d = (typeof data === 'object' && data !== null ? data : {}) as { code?: string; message?: string; details?: Record<string, unknown> };
    const err = new ApiError(res.status, d.code ?? `HTTP_${res.status}`, d.message ?? (typeof data === 'string' && data ? data : res.statusText), d.details);
    if (res.status === 401 && token === getToken()) for (const f of signedOut) f();
    throw err;
  }
  return data as T;
}

export interface List<T> {
  items: T[];
  next: string | null;
}

/** an operation started as a job: 202 with the job's id */
export interface Accepted {
  jobId: string;
  kind: string;
  state: string;
  url: string;
}

export const api = {
  get: <T>(path: string, query?: Query) => request<T>('GET', path, undefined, query),
  post: <T>(path: string, body?: unknown, query?: Query) => request<T>('POST', path, body ?? {}, query),
  put: <T>(path: string, body: unknown) => request<T>('PUT', path, body),
  patch: <T>(path: string, body: unknown) => request<T>('PATCH', path, body),
  del: <T>(path: string, query?: Query) => request<T>('DELETE', path, undefined, query),
  /** every page of a list */
  async all<T extends { id: string }>(path: string, query?: Query): Promise<T[]> {
    const out: T[] = [];
    let after: string | null = null;
    for (;;) {
      const page: List<T> = await request<List<T>>('GET', path, undefined, { ...query, limit: 1000, ...(after ? { after } : {}) });
      out.push(...page.items);
      if (!page.next || page.items.length === 0) return out;
      after = page.next;
    }
  },
};
