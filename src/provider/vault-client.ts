/**
 * HTTPS to the vault, for providers (mutual TLS with the certificate registration gave)
 * and for anything holding an API token. Answers are JSON; an error answer becomes the
 * OsrError it carries ({code, message, details}), a broken connection NETWORK_ERROR.
 *
 * Before its first registration a provider does not know the vault's CA. The
 * registration key carries the CA's fingerprint: fetchPinnedCa() takes the CA from the
 * vault's TLS handshake only if it matches, and only then is the key sent.
 */
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import { ERROR_CODES, OsrError, toOsrError, type ErrorCode } from '../domain/errors.js';
import { checkVaultIdentity, formatFingerprint, type TlsMaterial } from '../pki/index.js';
import { newerTerm, parseVaultStatus, VaultRole, type VaultStatus } from '../domain/vault-status.js';


export interface VaultClientOptions {
  /** client certificate, key and the vault's CA (a provider) */
  tls?: TlsMaterial;
  /** the vault's CA only (a token holder, or a provider registering) */
  ca?: string;
  token?: string;
  timeoutMs?: number;
  /** more headers for every request (a provider's newest vault term) */
  headers?: () => Record<string, string>;
  /** a check of every answer's headers: an error refuses the answer (a provider refusing a vault of an older term) */
  checkAnswer?: (headers: Record<string, string | string[] | undefined>) => Error | undefined;
}

export class VaultClient {
  private readonly agent: https.Agent;
  readonly base: URL;

  constructor(
    url: string,
    private readonly o: VaultClientOptions = {},
  ) {
    this.base = new URL(url);
    this.agent = new https.Agent({
      keepAlive: true,
      maxSockets: 16,
      ca: o.tls?.ca ?? o.ca,
      ...(o.tls ? { cert: o.tls.cert, key: o.tls.key } : {}),
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
      // the usual name check, and the role: providers and the CLI talk only to a vault
      checkServerIdentity: checkVaultIdentity,
    });
  }

  private active = 0;
  private closing = false;

  close(): void {
    this.agent.destroy();
  }

  /** Close once the calls under way have their answers (a long-poll included); new calls are not expected. */
  closeWhenIdle(): void {
    this.closing = true;
    if (this.active === 0) this.agent.destroy();
  }

  private settled(): void {
    this.active--;
    if (this.closing && this.active === 0) this.agent.destroy();
  }

  /** A call to the vault; `text: true` answers a 2xx body as it was sent (a CSV export) instead of parsing JSON. */
  async request<T = unknown>(method: string, path: string, body?: unknown, opts: { timeoutMs?: number; signal?: AbortSignal; text?: boolean } = {}): Promise<T> {
    const url = new URL(path, this.base);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    this.active++;
    return new Promise<T>((resolve, reject) => {
      const req = https.request(
        url,
        {
          method,
          agent: this.agent,
          headers: {
            accept: 'application/json',
            ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}),
            ...(this.o.token ? { authorization: `Bearer ${this.o.token}` } : {}),
            ...this.o.headers?.(),
          },
          timeout: opts.timeoutMs ?? this.o.timeoutMs ?? 30_000,
          signal: opts.signal,
        },
        (res) => {
          const refused = this.o.checkAnswer?.(res.headers);
          if (refused) {
            res.resume();
            return reject(refused);
          }
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (e) => reject(toOsrError(e, 'NETWORK_ERROR')));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = res.statusCode ?? 0;
            if (opts.text && status >= 200 && status < 300) return resolve(text as T);
            let parsed: unknown = undefined;
            try {
              parsed = text === '' ? undefined : JSON.parse(text);
            } catch {
              if (status < 300) return reject(new OsrError('PROTOCOL_ERROR', `the vault answered ${method} ${url.pathname} with something that is not JSON`));
            }
            if (status >= 200 && status < 300) return resolve(parsed as T);
            const e = parsed as { code?: string; message?: string; details?: Record<string, unknown> } | undefined;
            const code: ErrorCode = e?.code && e.code in ERROR_CODES ? (e.code as ErrorCode) : status >= 500 ? 'INTERNAL' : 'INVALID_ARGUMENT';
            reject(new OsrError(code, e?.message ?? `the vault answered ${status} to ${method} ${url.pathname}`, { ...e?.details, status }));
          });
        },
      );
      req.on('timeout', () => req.destroy(new OsrError('NETWORK_ERROR', `the vault did not answer ${method} ${url.pathname} in time`)));
      req.on('error', (e) => reject(e instanceof OsrError ? e : toOsrError(e, 'NETWORK_ERROR')));
      req.end(payload);
    }).finally(() => this.settled());
  }

  /**
   * GET a file the vault sends (a backup) into `file` (created 0600, synced), at most
   * `maxBytes`; answers the response's headers. An error answer is the OsrError it carries.
   */
  async download(path: string, file: string, maxBytes: number): Promise<Record<string, string | string[] | undefined>> {
    const url = new URL(path, this.base);
    const res = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
      const req = https.request(url, { method: 'GET', agent: this.agent, headers: { ...(this.o.token ? { authorization: `Bearer ${this.o.token}` } : {}), ...this.o.headers?.() }, timeout: this.o.timeoutMs ?? 300_000 }, resolve);
      req.on('timeout', () => req.destroy(new OsrError('NETWORK_ERROR', `the vault did not answer GET ${url.pathname} in time`)));
      req.on('error', (e) => reject(e instanceof OsrError ? e : toOsrError(e, 'NETWORK_ERROR')));
      req.end();
    });
    const status = res.statusCode ?? 0;
    if (status < 200 || status >= 300) {
      const chunks: Buffer[] = [];
      for await (const c of res) if (Buffer.concat(chunks).length < 65536) chunks.push(c as Buffer);
      let e: { code?: string; message?: string } | undefined;
      try {
        e = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof e;
      } catch {
        e = undefined;
      }
      throw new OsrError(e?.code && e.code in ERROR_CODES ? (e.code as ErrorCode) : 'INTERNAL', e?.message ?? `the vault answered ${status} to GET ${url.pathname}`, { status });
    }
    const fh = await fsp.open(file, 'wx', 0o600);
    try {
      let n = 0;
      for await (const c of res) {
        n += (c as Buffer).length;
        if (n > maxBytes) throw new OsrError('PAYLOAD_TOO_LARGE', `the vault sent more than ${maxBytes} bytes for GET ${url.pathname}`);
        await fh.write(c as Buffer);
      }
      await fh.sync();
    } catch (e) {
      await fh.close().catch(() => undefined);
      await fsp.rm(file, { force: true });
      throw e instanceof OsrError ? e : toOsrError(e, 'NETWORK_ERROR');
    }
    await fh.close();
    return res.headers;
  }
}

/**
 * Connect to the vault, and return its CA certificate (PEM) if the handshake presented a
 * CA with this fingerprint that issued the vault's certificate. Nothing is sent.
 */
export function fetchPinnedCa(url: string, fingerprint: string): Promise<string> {
  const u = new URL(url);
  return new Promise<string>((resolve, reject) => {
    const host = u.hostname.replace(/^\[|\]$/g, '');
    const socket = tls.connect({ host, port: Number(u.port || 443), rejectUnauthorized: false, ...(net.isIP(host) === 0 ? { servername: host } : {}) });
    socket.setTimeout(15_000, () => socket.destroy(new OsrError('NETWORK_ERROR', `the vault at ${url} did not complete a TLS handshake in time`)));
    socket.once('error', (e) => reject(e instanceof OsrError ? e : toOsrError(e, 'NETWORK_ERROR')));
    socket.once('secureConnect', () => {
      try {
        const leaf = socket.getPeerCertificate(true);
        const chain: tls.DetailedPeerCertificate[] = [];
        for (let c: tls.DetailedPeerCertificate | undefined = leaf; c && c.raw && !chain.includes(c); c = c.issuerCertificate) chain.push(c);
        const pinned = chain.map((c) => new crypto.X509Certificate(c.raw)).find((c) => formatFingerprint(crypto.createHash('sha256').update(c.raw).digest()) === fingerprint.toUpperCase());
        if (!pinned) throw new OsrError('TLS_PEER_CERT_UNTRUSTED', `the server at ${url} did not present the CA the registration key names (${fingerprint}); it is not that vault`);
        const server = new crypto.X509Certificate(leaf.raw);
        if (!server.checkIssued(pinned) || !server.verify(pinned.publicKey)) throw new OsrError('TLS_PEER_CERT_UNTRUSTED', `the server certificate at ${url} was not issued by the CA the registration key names`);
        const refused = checkVaultIdentity(host, leaf);
        if (refused) throw refused instanceof OsrError ? refused : new OsrError('TLS_HANDSHAKE_FAILED', `the server at ${url}: ${refused.message}`);
        resolve(pinned.toString());
      } catch (e) {
        reject(e);
      } finally {
        socket.end();
      }
    });
  });
}

/** What each URL of a vault answered to GET /api/v1/vault: its status, or the code of why it did not. */
export interface VaultProbe {
  url: string;
  status?: VaultStatus;
  error?: string;
}

/** Ask each URL for its role and term (public; the server must hold a vault certificate from `ca`). */
export function probeVaults(urls: readonly string[], ca: string | undefined): Promise<VaultProbe[]> {
  return Promise.all(
    urls.map(async (url) => {
      const c = new VaultClient(url, { ca, timeoutMs: 5000 });
      try {
        return { url, status: parseVaultStatus(await c.request('GET', '/api/v1/vault'), url) };
      } catch (e) {
        return { url, error: toOsrError(e, 'NETWORK_ERROR').code };
      } finally {
        c.close();
      }
    }),
  );
}

/**
 * Of the answers, the primary of the newest term: of vault `vaultId` only, of term
 * `atLeast` or newer; `prefer` wins a tie (the URL in use). Undefined: none answers so.
 */
export function newestPrimary(probes: readonly VaultProbe[], o: { vaultId?: string; atLeast?: number; prefer?: string } = {}): { url: string; term: number } | undefined {
  let best: { url: string; term: number; since: string } | undefined;
  for (const p of probes) {
    const s = p.status;
    if (!s || s.role !== VaultRole.Primary || (o.vaultId !== undefined && s.id !== o.vaultId) || s.term < (o.atLeast ?? 0)) continue;
    if (!best || newerTerm(s, best) || (s.term === best.term && s.since === best.since && p.url === o.prefer)) best = { url: p.url, term: s.term, since: s.since };
  }
  return best && { url: best.url, term: best.term };
}
