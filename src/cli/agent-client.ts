/**
 * A small client for an agent's API, used by the CLI, the lab, the libvirt provider, tests
 * and benchmarks. The address is the agent's Unix socket (`unix:PATH`, or just a path);
 * for an agent started with `--api HOST:PORT`, `http://HOST:PORT` with the agent's token;
 * or, for the provider channel of an agent started with `--provider-api HOST:PORT`,
 * `https://HOST:PORT` with the provider's certificate (`channel`).
 */
import fs from 'node:fs';
import http from 'node:http';
import tls from 'node:tls';
import { OsrError, type ErrorCode } from '../domain/errors.js';
import { classifyTlsError, clientTlsOptions, readCertificateInfo, type TlsMaterial } from '../pki/index.js';

export type AgentAddress = { socketPath: string } | { host: string; port: number; https?: boolean };

/**
 * How a provider reaches an agent over the provider channel, and what it checks of it: a
 * certificate from the vault's CA with role agent, the host's name and the provider's
 * fabric; or, while the agent is not enrolled, its bootstrap certificate by the pinned
 * fingerprint, for the enrolment calls only (docs/design/agent-channel.md, Bootstrap).
 */
export interface AgentChannelOptions {
  /** the provider's certificate and key, and the vault's CA (read at each connection: a renewal is used at once) */
  tls: () => TlsMaterial;
  /** the host's name: the agent's certificate's common name */
  hostName: string;
  /** the provider's fabric: the agent's certificate must name it */
  fabricId: () => string;
  /** SHA-256 of the agent's bootstrap certificate (as it printed it), from the site file */
  agentFingerprint?: string | undefined;
  /** serials (lower-case hex) the vault's revocation list names: an agent presenting one is refused */
  revoked?: (() => ReadonlySet<string>) | undefined;
  /** whether the provider saw the host enrolled since the site file gave `agentFingerprint` (kept across its restarts): the bootstrap certificate is then refused */
  bootstrapSpent?: (() => boolean) | undefined;
  /** told when the agent presents its certificate from the vault's CA */
  onEnrolled?: (() => void) | undefined;
}

/** The calls made of an agent that is not enrolled yet: who it is, and its enrolment. */
export const BOOTSTRAP_CALLS: ReadonlySet<string> = new Set(['GET /v1/status', 'GET /v1/enrolment', 'POST /v1/enrolment/key', 'PUT /v1/enrolment/certificate', 'PUT /v1/enrolment/crl']);

/** `unix:PATH`, a path, `http://HOST:PORT` or `https://HOST:PORT`. */
export function parseAgentAddress(text: string): AgentAddress {
  if (/^https?:\/\//i.test(text)) {
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      throw new OsrError('INVALID_ARGUMENT', `"${text}" is not an agent address (unix:PATH, http://HOST:PORT or https://HOST:PORT)`);
    }
    if (url.pathname !== '/' || url.search !== '' || url.username !== '') throw new OsrError('INVALID_ARGUMENT', `"${text}" is not an agent address: give scheme, host and port only`);
    const host = url.hostname.replace(/^\[|\]$/g, '');
    if (url.protocol === 'https:') return { host, port: url.port ? Number(url.port) : 8085, https: true };
    return { host, port: url.port ? Number(url.port) : 80 };
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

  /** an agent reached over its provider channel checks the vault's replication grants (agent-replication.ts) */
  get takesGrants(): boolean {
    return this.options.channel !== undefined;
  }

  /** the agent presented a certificate of the vault's CA for its name and fabric: its bootstrap certificate is not taken again */
  private enrolledSeen = false;

  constructor(
    readonly baseUrl: string,
    private readonly options: { token?: string | undefined; channel?: AgentChannelOptions | undefined } = {},
  ) {
    this.address = parseAgentAddress(baseUrl);
    if ('https' in this.address && this.address.https === true && !options.channel) throw new OsrError('CONFIG_INVALID', `${baseUrl} is an agent's provider channel: only a provider reaches it, with its certificate`);
  }

  /**
   * A TLS connection to the agent's provider channel, checked before anything is sent:
   * the agent's certificate is from the vault's CA with role agent, the host's name and
   * the provider's fabric; or it is the pinned bootstrap certificate and `call` is an
   * enrolment call. Anything else ends the connection with TLS_PEER_CERT_UNTRUSTED.
   */
  private async channelSocket(a: { host: string; port: number }, call: string): Promise<tls.TLSSocket> {
    const c = this.options.channel!;
    const peer = `${a.host}:${a.port}`;
    const socket = tls.connect({
      ...clientTlsOptions(c.tls()),
      host: a.host,
      port: a.port,
      // the chain is checked by TLS; who the agent is, below (its name, not the address dialled)
      rejectUnauthorized: false,
      checkServerIdentity: () => undefined,
    });
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('secureConnect', () => resolve());
        socket.once('error', (e) => reject(classifyTlsError(e, 'client', { socket, peer })));
      });
    } catch (e) {
      socket.destroy();
      throw e;
    }
    const refuse = (why: string): never => {
      socket.destroy();
      throw new OsrError('TLS_PEER_CERT_UNTRUSTED', `the agent of host ${c.hostName} at ${peer} is refused: ${why}`, { host: c.hostName, peer });
    };
    const cert = socket.getPeerX509Certificate();
    if (!cert) return refuse('it presented no certificate');
    if (socket.authorized) {
      const info = readCertificateInfo(cert.toString());
      if (info.role !== 'agent') refuse(`its certificate has role ${info.role ?? '(none)'}, not agent`);
      if (info.commonName !== c.hostName) refuse(`its certificate names ${info.commonName}, not host ${c.hostName}`);
      const serial = cert.serialNumber.toLowerCase();
      // a revoked key is not trusted to be the host: not even to enrol it again (that is done on the host)
      if (c.revoked?.().has(serial)) refuse(`its certificate (serial ${serial}) was revoked by the vault; enrol it anew on the host: remove its DATA/pki, start it with --ca (the vault's CA), put the bootstrapFingerprint it prints in the site file and restart the provider`);
      if (info.fabricId === c.fabricId()) {
        if (!this.enrolledSeen) c.onEnrolled?.();
        this.enrolledSeen = true;
        return socket;
      }
      return refuse(`its certificate names fabric ${info.fabricId ?? '(none)'}, not this provider's fabric ${c.fabricId()}`);
    }
    const fingerprint = cert.fingerprint256;
    if (c.agentFingerprint === undefined) return refuse(`its certificate is not from the vault's CA (${String(socket.authorizationError)}), and the site file gives no agentFingerprint to enrol it by (the agent prints its bootstrapFingerprint when it starts)`);
    if (fingerprint.toUpperCase() !== c.agentFingerprint.toUpperCase()) return refuse(`its certificate's fingerprint ${fingerprint} is not the site file's agentFingerprint ${c.agentFingerprint}`);
    if (this.enrolledSeen || c.bootstrapSpent?.() === true) return refuse('it presented its bootstrap certificate after it was enrolled (a host enrolled anew prints a new bootstrapFingerprint: put it in the site file)');
    if (!BOOTSTRAP_CALLS.has(call)) return refuse(`it is not enrolled yet: ${call} waits until it holds a certificate from the vault's CA`);
    return socket;
  }

  async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body !== undefined ? Buffer.from(JSON.stringify(body)) : undefined;
    const headers: http.OutgoingHttpHeaders = { host: 'socketPath' in this.address ? 'localhost' : hostHeader(this.address) };
    if (payload) Object.assign(headers, { 'content-type': 'application/json', 'content-length': payload.length });
    if (this.options.token) headers.authorization = `Bearer ${this.options.token}`;
    const a = this.address;
    const socket = 'https' in a && a.https === true ? await this.channelSocket(a, `${method} ${path.split('?')[0]}`) : undefined;
    let res: { status: number; text: string };
    try {
      res = await new Promise((resolve, reject) => {
        // a connection made (and checked) already is used as it is: no pool
        const target = socket ? { createConnection: () => socket } : { ...a, agent: false as const };
        const req = http.request({ ...target, method, path, headers }, (r) => {
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
  put<T>(path: string, body?: unknown): Promise<T> {
    return this.call<T>('PUT', path, body ?? {});
  }
  delete<T>(path: string): Promise<T> {
    return this.call<T>('DELETE', path);
  }
}

function hostHeader(a: { host: string; port: number }): string {
  return `${a.host.includes(':') ? `[${a.host}]` : a.host}:${a.port}`;
}
