/**
 * A small client for an agent's local API, used by the CLI, the lab, tests and benchmarks.
 * The address is the agent's Unix socket (`unix:PATH`, or just a path) or, for an agent
 * started with `--api HOST:PORT`, `http://HOST:PORT` with the agent's token.
 */
import fs from 'node:fs';
import http from 'node:http';
import { OsrError, type ErrorCode } from '../domain/errors.js';

export type AgentAddress = { socketPath: string } | { host: string; port: number };

/** `unix:PATH`, a path, or `http://HOST:PORT`. */
export function parseAgentAddress(text: string): AgentAddress {
  if (/^https?:\/\//i.test(text)) {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new OsrError('INVALID_ARGUMENT', `"${text}" is not an agent address (unix:PATH or http://HOST:PORT)`);
    }
    if (url.protocol !== 'http:') throw new OsrError('INVALID_ARGUMENT', `the agent's local API speaks http on loopback, not ${url.protocol.slice(0, -1)} (${text})`);
    return { host: url.hostname.replace(/^\[|\]$/g, ''), port: url.port ? Number(url.port) : 80 };
  }
  const socketPath = text.startsWith('unix:') ? text.slice('unix:'.length) : text;
  if (!socketPath) throw new OsrError('INVALID_ARGUMENT', `"${text}" is not an agent address (unix:PATH or http://HOST:PORT)`);
  return { socketPath };
}

/** The token in `file` (as `osr agent` writes it, or as given to `--api-token-file`). */
export function readAgentToken(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `cannot read the agent's API token from ${file}: ${(e as Error).message}`);
  }
}

export class AgentClient {
  private readonly address: AgentAddress;

  constructor(
    readonly baseUrl: string,
    private readonly options: { token?: string | undefined } = {},
  ) {
    this.address = parseAgentAddress(baseUrl);
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body !== undefined ? Buffer.from(JSON.stringify(body)) : undefined;
    const headers: http.OutgoingHttpHeaders = { host: 'socketPath' in this.address ? 'localhost' : hostHeader(this.address) };
    if (payload) Object.assign(headers, { 'content-type': 'application/json', 'content-length': payload.length });
    if (this.options.token) headers.authorization = `Bearer ${this.options.token}`;
    let res: { status: number; text: string };
    try {
      res = await new Promise((resolve, reject) => {
        const req = http.request({ ...this.address, method, path, headers, agent: false }, (r) => {
          const chunks: Buffer[] = [];
          r.on('data', (c: Buffer) => chunks.push(c));
          r.on('end', () => resolve({ status: r.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
          r.on('error', reject);
        });
        req.on('error', reject);
        req.end(payload);
      });
    } catch (e) {
      throw new OsrError('NETWORK_ERROR', `cannot reach the agent at ${this.baseUrl}: ${(e as Error).message}`);
    }
    if (res.status === 204) return undefined as T;
    let data: unknown;
    try {
      data = res.text ? (JSON.parse(res.text) as unknown) : undefined;
    } catch {
      throw new OsrError('INTERNAL', `the agent at ${this.baseUrl} answered HTTP ${res.status} with no JSON: ${res.text.slice(0, 200)}`);
    }
    if (res.status < 200 || res.status > 299) {
      const e = data as { code?: ErrorCode; message?: string; details?: Record<string, unknown> } | undefined;
      throw new OsrError(e?.code ?? 'INTERNAL', e?.message ?? `HTTP ${res.status}`, e?.details);
    }
    return data as T;
  }

  get<T>(path: string): Promise<T> {
    return this.call<T>('GET', path);
  }
  post<T>(path: string, body?: unknown): Promise<T> {
    return this.call<T>('POST', path, body ?? {});
  }
  delete<T>(path: string): Promise<T> {
    return this.call<T>('DELETE', path);
  }
}

function hostHeader(a: { host: string; port: number }): string {
  return `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}
