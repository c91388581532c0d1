/**
 * Who may use the agent's local API (docs/agent-api.md, Access).
 *
 * - By default the API listens on a Unix socket, DATA/run/api.sock, mode 0600 in a
 *   directory of mode 0700 owned by the agent's user: the kernel lets no other local user
 *   connect, so the socket needs no credential.
 * - On loopback TCP (`osr agent --api HOST:PORT`) any local process can connect, so every
 *   request carries `Authorization: Bearer TOKEN`, compared in constant time; the token is
 *   read from a 0600 file (DATA/api-token, made on first start, or `--api-token-file`).
 * - Either way the Host header must name this agent (`localhost`, or the loopback address
 *   and port it is bound to): a web page whose name was rebound to 127.0.0.1 sends its own.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { OsrError } from '../domain/errors.js';

/** Loopback names the TCP API may be bound to. */
const LOOPBACK_HOSTS = new Set(['127.0.0.1', '::1', 'localhost']);

export function isLoopbackHost(host: string): boolean {
  return LOOPBACK_HOSTS.has(host.toLowerCase());
}

/**
 * Make `dir` a directory only the agent's user can enter (0700). An existing one must be a
 * real directory (not a symbolic link) owned by this user; its mode is tightened.
 */
export function ensurePrivateDir(dir: string): void {
  try {
    fs.mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new OsrError('CONFIG_INVALID', `${dir} must be a directory, not ${st.isSymbolicLink() ? 'a symbolic link' : 'a file'}: remove it and start the agent again`);
  if (typeof process.getuid === 'function' && st.uid !== process.getuid()) {
    throw new OsrError('CONFIG_INVALID', `${dir} belongs to user ${st.uid}, not to the agent's user ${process.getuid()}: remove it or change its owner`);
  }
  if ((st.mode & 0o777) !== 0o700) fs.chmodSync(dir, 0o700);
}

/** True when something answers on the Unix socket at `socketPath`. */
function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.connect({ path: socketPath });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
}

/**
 * Serve `app` on the Unix socket `socketPath` (in a private directory), mode 0600. A file
 * left there by an agent that stopped uncleanly is removed only if it is a socket nobody
 * answers on; anything else there is refused.
 */
export async function listenOnUnixSocket(app: FastifyInstance, socketPath: string): Promise<string> {
  ensurePrivateDir(path.dirname(socketPath));
  let st: fs.Stats | undefined;
  try {
    st = fs.lstatSync(socketPath);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
  if (st) {
    if (!st.isSocket()) throw new OsrError('CONFIG_INVALID', `${socketPath} exists and is not a socket: remove it and start the agent again`);
    if (await socketAnswers(socketPath)) throw new OsrError('CONFIG_INVALID', `another process answers on ${socketPath}: an agent already runs with this data directory (stop it, or give this one another --data-dir)`);
    fs.unlinkSync(socketPath);
  }
  await app.listen({ path: socketPath });
  fs.chmodSync(socketPath, 0o600);
  return socketPath;
}

/** A token read from a file only the agent's user may read. */
function readTokenFile(file: string): string {
  const st = fs.lstatSync(file);
  if (!st.isFile()) throw new OsrError('CONFIG_INVALID', `the API token file ${file} is not a regular file`);
  if ((st.mode & 0o077) !== 0) throw new OsrError('CONFIG_INVALID', `the API token file ${file} can be read by other users (mode ${(st.mode & 0o777).toString(8)}): chmod 600 ${file}`);
  const token = fs.readFileSync(file, 'utf8').trim();
  if (token.length < 32 || /\s/.test(token)) throw new OsrError('CONFIG_INVALID', `the API token in ${file} must be at least 32 characters without spaces`);
  return token;
}

/**
 * The token of the TCP API: read from `file`; when `create` and the file does not exist,
 * a new random token is written there first (mode 0600, never through a symbolic link).
 */
export function loadApiToken(file: string, create: boolean): string {
  if (create) {
    const token = crypto.randomBytes(32).toString('base64url');
    try {
      const fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
      try {
        fs.writeSync(fd, `${token}\n`);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      return token;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
  }
  try {
    return readTokenFile(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new OsrError('CONFIG_INVALID', `the API token file ${file} does not exist`);
    throw e;
  }
}

function digest(text: string): Buffer {
  return crypto.createHash('sha256').update(text).digest();
}

export type ApiAccess =
  | { kind: 'unix' }
  /** `port` is the port bound to; `token` what every request must present */
  | { kind: 'tcp'; host: string; port: number; token: string };

/** The Host header values this API answers to. */
export function allowedHosts(access: ApiAccess): Set<string> {
  if (access.kind === 'unix') return new Set(['localhost']);
  const bound = access.host.includes(':') ? `[${access.host}]` : access.host;
  return new Set(['localhost', `localhost:${access.port}`, `${bound.toLowerCase()}:${access.port}`]);
}

/** Refuse, before any route runs, requests for another host and (on TCP) without the token. */
export function addAccessChecks(app: FastifyInstance, access: () => ApiAccess): void {
  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    const a = access();
    const hosts = allowedHosts(a);
    const host = (req.headers.host ?? '').toLowerCase();
    if (!hosts.has(host)) {
      throw new OsrError('HOST_NOT_ALLOWED', `the agent's local API answers only to ${[...hosts].join(', ')} in the Host header, not to "${req.headers.host ?? ''}"`);
    }
    if (a.kind === 'unix') return;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    if (!m) {
      void reply.header('www-authenticate', 'Bearer');
      throw new OsrError('AUTH_FAILED', "the agent's local API on TCP needs its token: send Authorization: Bearer TOKEN (osr --agent-token-file FILE)");
    }
    if (!crypto.timingSafeEqual(digest(m[1]), digest(a.token))) throw new OsrError('AUTH_FAILED', "the token does not match the agent's API token");
  });
}
