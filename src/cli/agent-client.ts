/** A small client for an agent's local API, used by the CLI, the demo, tests and benchmarks. */
import { OsrError, type ErrorCode } from '../domain/errors.js';

export class AgentClient {
  constructor(readonly baseUrl: string) {}

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.baseUrl}${path}`, {
        method,
        headers: body !== undefined ? { 'content-type': 'application/json' } : {},
        body: body !== undefined ? JSON.stringify(body) : undefined,
      });
    } catch (e) {
      throw new OsrError('NETWORK_ERROR', `cannot reach the agent at ${this.baseUrl}: ${(e as Error).message}`);
    }
    if (res.status === 204) return undefined as T;
    const text = await res.text();
    const data = text ? (JSON.parse(text) as unknown) : undefined;
    if (!res.ok) {
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
