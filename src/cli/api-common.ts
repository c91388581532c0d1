/**
 * What the vault client commands share: the connection (vault-client-config.ts), calls
 * under /api/v1 with paging, output as tables or the API's JSON, files in YAML or JSON,
 * and looking objects up by id or by name.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { parse as parseYaml } from 'yaml';
import { OsrError } from '../domain/errors.js';
import { newestPrimary, probeVaults, VaultClient } from '../provider/vault-client.js';
import { resolveVaultConnection, type VaultConnection, type VaultFlags } from './vault-client-config.js';

export const API_PREFIX = '/api/v1';

export type Query = Record<string, string | number | boolean | undefined>;
export interface ListAnswer<T> {
  items: T[];
  next: string | null;
}

export function withQuery(p: string, q: Query = {}): string {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined) params.set(k, String(v));
  const s = params.toString();
  return s ? `${p}?${s}` : p;
}

/** The vault's REST API as the CLI calls it: paths are relative to /api/v1. */
export class CliApi {
  private client: VaultClient;
  private chosen: Promise<void> | undefined;

  constructor(readonly connection: VaultConnection) {
    this.client = new VaultClient(connection.url, { ca: connection.ca, token: connection.token });
  }

  close(): void {
    this.client.close();
  }

  /**
   * Given several URLs of one vault (its processes at two sites), the first call goes to
   * the one that answers as the primary of the newest term; if none does, to the first.
   */
  private choose(): Promise<void> {
    this.chosen ??= (async () => {
      const urls = this.connection.urls;
      if (urls.length < 2) return;
      const best = newestPrimary(await probeVaults(urls, this.connection.ca), { prefer: this.connection.url });
      if (!best || best.url === this.connection.url) return;
      this.client.close();
      this.client = new VaultClient(best.url, { ca: this.connection.ca, token: this.connection.token });
      this.connection.url = best.url;
    })();
    return this.chosen;
  }

  async request<T>(method: string, p: string, body?: unknown, q?: Query): Promise<T> {
    await this.choose();
    return this.client.request<T>(method, withQuery(`${API_PREFIX}${p}`, q), body);
  }
  get<T>(p: string, q?: Query): Promise<T> {
    return this.request<T>('GET', p, undefined, q);
  }
  post<T>(p: string, body?: unknown, q?: Query): Promise<T> {
    return this.request<T>('POST', p, body, q);
  }
  put<T>(p: string, body: unknown): Promise<T> {
    return this.request<T>('PUT', p, body);
  }
  delete<T>(p: string, q?: Query): Promise<T> {
    return this.request<T>('DELETE', p, undefined, q);
  }

  /**
   * A paged list (`{items, next}`, `?after=`), followed page by page until `limit` items
   * (every item when no limit is given). The answer keeps the API's shape.
   */
  async list<T>(p: string, q: Query = {}, limit?: number): Promise<ListAnswer<T>> {
    const items: T[] = [];
    let after = q.after as string | undefined;
    for (;;) {
      const pageSize = limit === undefined ? 1000 : Math.min(1000, limit - items.length);
      const r = await this.get<ListAnswer<T>>(p, { ...q, after, limit: pageSize });
      items.push(...r.items);
      if (!r.next || (limit !== undefined && items.length >= limit)) return { items, next: r.next };
      after = r.next;
    }
  }

  /** A file the vault sends (a backup) into `file`; answers the response's headers. */
  async download(p: string, file: string, maxBytes: number): Promise<Record<string, string | string[] | undefined>> {
    await this.choose();
    return this.client.download(`${API_PREFIX}${p}`, file, maxBytes);
  }

  /** A call whose answer is not JSON (a CSV export): its text as sent. */
  async text(p: string, q?: Query): Promise<string> {
    await this.choose();
    return this.client.request<string>('GET', withQuery(`${API_PREFIX}${p}`, q), undefined, { text: true, timeoutMs: 60_000 });
  }
}

/** The global options the client commands read. */
export interface GlobalOptions extends VaultFlags {
  json: boolean;
}

export const globals = (program: Command): GlobalOptions => program.opts<GlobalOptions>();
export const asJson = (program: Command): boolean => globals(program).json === true;

export function connection(program: Command): VaultConnection {
  return resolveVaultConnection(globals(program));
}

/** Run `fn` with an API client holding a token; the client is closed afterwards. */
export async function withApi<T>(program: Command, fn: (api: CliApi) => Promise<T>, given?: VaultConnection): Promise<T> {
  const c = given ?? connection(program);
  if (!c.token) {
    throw new OsrError(
      'UNAUTHENTICATED',
      `no API token for the vault at ${c.url}: give --token, set OSR_TOKEN, or put "token:" in a config file (${c.configFile ? `${c.configFile} has none` : `none found at ${c.searched.join(', ')}`})`,
    );
  }
  const api = new CliApi(c);
  try {
    return await fn(api);
  } finally {
    api.close();
  }
}

/** Print the API's JSON with --json, otherwise the text for people. */
export function print(program: Command, data: unknown, human: () => string): void {
  console.log(asJson(program) ? JSON.stringify(data, null, 2) : human());
}

/** An ISO time as people read it: to the second, in UTC. */
export function when(iso: string | null | undefined): string | null {
  if (!iso) return null;
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  return new Date(t).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

/** Age of a time, e.g. "3m ago". */
export function ago(iso: string | null | undefined, now = Date.now()): string | null {
  if (!iso) return null;
  const s = Math.max(0, (now - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)}s ago`;
  if (s < 5400) return `${Math.round(s / 60)}m ago`;
  if (s < 172_800) return `${(s / 3600).toFixed(1)}h ago`;
  return `${Math.round(s / 86_400)}d ago`;
}

/** Fields of one object, one per line, for `show` commands. */
export function fields(rows: [string, unknown][]): string {
  const width = Math.max(...rows.map(([k]) => k.length));
  const cell = (v: unknown) => (v === null || v === undefined ? '-' : typeof v === 'object' ? JSON.stringify(v) : String(v));
  return rows.map(([k, v]) => `${`${k}:`.padEnd(width + 2)}${cell(v)}`).join('\n');
}

/** A YAML or JSON file (JSON is YAML); "-" reads standard input. */
export function readDocument(file: string): unknown {
  let text: string;
  try {
    text = file === '-' ? fs.readFileSync(0, 'utf8') : fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new OsrError('NOT_FOUND', `cannot read ${file}: ${(e as Error).message}`, { file });
  }
  try {
    return parseYaml(text) as unknown;
  } catch (e) {
    throw new OsrError('INVALID_ARGUMENT', `${file} is neither YAML nor JSON: ${(e as Error).message}`, { file });
  }
}

export function readObject(file: string): Record<string, unknown> {
  const doc = readDocument(file);
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new OsrError('INVALID_ARGUMENT', `${file} must hold a mapping (an object)`, { file });
  return doc as Record<string, unknown>;
}

export const isNotFound = (e: unknown): boolean => e instanceof OsrError && e.code === 'NOT_FOUND';

/**
 * Get an object by id, or else by name among `list()`'s objects: exactly one must have
 * that name.
 */
export async function byIdOrName<T extends { id: string; name: string }>(what: string, idOrName: string, get: (id: string) => Promise<T>, list: () => Promise<T[]>): Promise<T> {
  try {
    return await get(idOrName);
  } catch (e) {
    if (!isNotFound(e)) throw e;
  }
  const named = (await list()).filter((o) => o.name === idOrName);
  if (named.length === 1) return named[0]!;
  if (named.length > 1) throw new OsrError('INVALID_ARGUMENT', `${named.length} ${what}s are named ${idOrName}: give the id (${named.map((o) => o.id).join(', ')})`);
  throw new OsrError('NOT_FOUND', `no ${what} has the id or name ${idOrName}`);
}

/** A whole number option. */
export function int(text: string | undefined, name: string, min = 0, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new OsrError('INVALID_ARGUMENT', `${name} must be a whole number from ${min} to ${max}, not ${text}`, { field: name });
  return n;
}
