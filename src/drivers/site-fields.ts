/**
 * Checks of a fabric's site file fields (YAML), shared by the fabrics' drivers: a wrong
 * field is refused with CONFIG_INVALID naming it.
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { OsrError } from '../domain/errors.js';
import { isSafeName } from '../domain/names.js';

export const fail = (field: string, why: string) => new OsrError('CONFIG_INVALID', `site file: ${field} ${why}`, { field });
export type Node = Record<string, unknown>;

export function mapping(v: unknown, field: string): Node {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw fail(field, 'must be a mapping');
  return v as Node;
}
export function list(v: unknown, field: string, required = false): unknown[] {
  if (v === undefined || v === null) {
    if (required) throw fail(field, 'is missing: it must be a list');
    return [];
  }
  if (!Array.isArray(v)) throw fail(field, 'must be a list');
  return v;
}
export function text(v: unknown, field: string): string {
  if (typeof v !== 'string' || v.trim() === '') throw fail(field, 'must be a non-empty string');
  if (v.length > 200) throw fail(field, 'is longer than 200 characters');
  return v;
}
export function optionalText(v: unknown, field: string): string | undefined {
  return v === undefined || v === null ? undefined : text(v, field);
}
/** A name that becomes an id, a file name or XML: a safe name (domain/names.ts). */
export function safe(v: unknown, field: string): string {
  const s = text(v, field);
  if (!isSafeName(s) || s.length > 63) throw fail(field, `"${s}" is not a name osr can use: 1 to 63 of A-Z a-z 0-9 . _ - , not starting with a dot`);
  return s;
}
export function unique(values: string[], field: string): void {
  const seen = new Set<string>();
  for (const v of values) {
    if (seen.has(v)) throw fail(field, `names "${v}" twice`);
    seen.add(v);
  }
}

/**
 * Read a file that holds a secret: a regular file (a symbolic link is not followed), owned
 * by this process's user or root, that no one else may read, of at most `maxBytes`. Read
 * from the descriptor that was checked, so a file swapped in between is not read.
 */
export function readOwnerOnlyFile(file: string, what: string, o: { code?: 'CONFIG_INVALID' | 'INVALID_ARGUMENT'; maxBytes?: number } = {}): string {
  const refuse = (why: string) => new OsrError(o.code ?? 'CONFIG_INVALID', `${what}: ${file} ${why}`);
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (e) {
    throw refuse(`cannot be opened (${(e as NodeJS.ErrnoException).code ?? 'error'}; a symbolic link is not followed)`);
  }
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw refuse('is not a regular file');
    const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
    if (uid !== undefined && st.uid !== uid && st.uid !== 0) throw refuse(`is owned by user ${st.uid}, not by this user or root`);
    if ((st.mode & 0o077) !== 0) throw refuse(`may be read by others (mode ${(st.mode & 0o777).toString(8)}): a secret's file is chmod 600`);
    const max = o.maxBytes ?? 64 * 1024;
    if (st.size > max) throw refuse(`is ${st.size} bytes; a secret's file is at most ${max}`);
    const buf = Buffer.alloc(st.size);
    let n = 0;
    while (n < buf.length) {
      const r = fs.readSync(fd, buf, n, buf.length - n, n);
      if (r === 0) break;
      n += r;
    }
    const text = buf.subarray(0, n).toString('utf8').trim();
    if (text === '') throw refuse('is empty');
    return text;
  } finally {
    fs.closeSync(fd);
  }
}

/** A site file's YAML text as a document (CONFIG_INVALID when it is not YAML). */
export function parseSiteYaml(text: string): unknown {
  try {
    return YAML.parse(text);
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `site file is not valid YAML: ${(e as Error).message}`);
  }
}

/** the port an agent takes replication on when the site file names none (osr agent's default) */
export const DEFAULT_REPLICATION_PORT = 8084;

/** A host whose osr agent the provider drives: how it reaches the agent, and where peers reach it for replication. */
export interface AgentHostConfig {
  /** the host's name: its agent's certificate's common name */
  name: string;
  /**
   * how the provider reaches the host's agent: its provider channel (`https://HOST:PORT`,
   * `osr agent --provider-api`, agent-channel.md), or, on the provider's own machine, its
   * local API (`unix:PATH`, or `http://127.0.0.1:PORT` with `agentTokenFile`)
   */
  agent: string;
  agentTokenFile?: string | undefined;
  /**
   * with https: the SHA-256 fingerprint of the agent's bootstrap certificate (the
   * `bootstrapFingerprint` it printed), by which the provider enrols an agent that has no
   * certificate from the vault's CA yet; colon-separated upper-case hex
   */
  agentFingerprint?: string | undefined;
  /** what peers dial for replication (the first), and what the agent's certificate names */
  addresses: string[];
  replicationPort: number;
}

/** How the provider reaches an agent: its provider channel, or its local API on this machine. */
function agentAddress(v: unknown, field: string): string {
  const a = text(v, field);
  if (a.startsWith('unix:') && a.length > 'unix:'.length && !a.includes('\0')) return a;
  if (/^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):\d+\/?$/.test(a)) return a;
  const m = /^https:\/\/(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253}):(\d{1,5})\/?$/.exec(a);
  if (m && Number(m[2]) >= 1 && Number(m[2]) <= 65535) return a.replace(/\/$/, '');
  throw fail(field, `"${a}" is not an agent address the provider can reach: give the agent's provider channel, https://HOST:PORT (osr agent --provider-api), or on this machine its local API, unix:PATH (its api.sock) or http://127.0.0.1:PORT`);
}

/** A SHA-256 fingerprint, as colon-separated upper-case hex (as osr agent prints it); plain hex is taken too. */
function fingerprintOf(v: unknown, field: string): string {
  const t = text(v, field).trim();
  const hex = t.replace(/:/g, '');
  if (!/^[0-9A-Fa-f]{64}$/.test(hex) || (t.includes(':') && !/^([0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2}$/.test(t))) throw fail(field, `"${t}" is not a SHA-256 fingerprint (32 bytes in hex, as the agent printed its bootstrapFingerprint)`);
  return hex.toUpperCase().match(/../g)!.join(':');
}

/** The agent-host fields of a site file's entry (`name`, `agent`, `agentTokenFile`, `agentFingerprint`, `addresses`, `replicationPort`); relative paths from `base`. */
export function agentHostOf(h: Node, field: string, base: string): AgentHostConfig {
  const name = safe(h.name, `${field}.name`);
  const agent = agentAddress(h.agent, `${field}.agent`);
  const tokenFile = optionalText(h.agentTokenFile, `${field}.agentTokenFile`);
  if (agent.startsWith('http:') && tokenFile === undefined) throw fail(`${field}.agentTokenFile`, `is missing: the agent at ${agent} needs its API token (the file osr agent --api writes)`);
  if (agent.startsWith('https:') && tokenFile !== undefined) throw fail(`${field}.agentTokenFile`, `is for the local API: the provider channel at ${agent} takes the provider's certificate, no token`);
  const fingerprint = h.agentFingerprint === undefined || h.agentFingerprint === null ? undefined : fingerprintOf(h.agentFingerprint, `${field}.agentFingerprint`);
  if (fingerprint !== undefined && !agent.startsWith('https:')) throw fail(`${field}.agentFingerprint`, 'is for an agent reached over its provider channel (https://HOST:PORT)');
  const addresses = list(h.addresses, `${field}.addresses`, true).map((a, i) => {
    const s = text(a, `${field}.addresses[${i}]`);
    if (!/^[A-Za-z0-9.:-]{1,253}$/.test(s)) throw fail(`${field}.addresses[${i}]`, `"${s}" is not a DNS name or IP address`);
    return s;
  });
  if (addresses.length === 0) throw fail(`${field}.addresses`, 'needs the address peers dial for replication');
  const port = h.replicationPort ?? DEFAULT_REPLICATION_PORT;
  if (typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535) throw fail(`${field}.replicationPort`, 'must be a port number from 1 to 65535');
  return {
    name,
    agent: agent.startsWith('unix:') ? `unix:${path.resolve(base, agent.slice('unix:'.length))}` : agent,
    ...(tokenFile !== undefined ? { agentTokenFile: path.resolve(base, tokenFile) } : {}),
    ...(fingerprint !== undefined ? { agentFingerprint: fingerprint } : {}),
    addresses,
    replicationPort: port,
  };
}
