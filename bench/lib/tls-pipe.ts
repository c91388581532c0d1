/**
 * The transport's floor: bytes from memory through one mutual-TLS 1.3 connection between
 * two processes, with the agents' certificates and TLS options, and nothing else done with
 * them (no disk, no framing, no checksums). What osr's initial copy costs above this is
 * osr's own; what rsync's plaintext daemon protocol is faster than this, no TLS copy can be.
 *
 * Run as a child: `node tls-pipe.js sink PKI_DIR` prints {"port"} and, after one connection
 * ended, {"bytes","seconds","cpuSeconds"}; `node tls-pipe.js source PKI_DIR PORT BYTES`
 * sends BYTES and prints {"cpuSeconds"}.
 */
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { clientTlsOptions, loadTlsMaterial, serverTlsOptions } from '../../src/pki/index.js';

export interface TlsPipeRun {
  bytes: number;
  seconds: number;
  mbps: number;
  cpuSecondsSender: number;
  cpuSecondsReceiver: number;
  cipher: string | null;
}

const cpu = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

async function material(pkiDir: string, name: string) {
  return loadTlsMaterial({ certFile: path.join(pkiDir, `${name}.crt`), keyFile: path.join(pkiDir, `${name}.key`), caFile: path.join(pkiDir, 'ca.crt') });
}

async function sink(pkiDir: string): Promise<void> {
  const server = tls.createServer(serverTlsOptions(await material(pkiDir, 'replica')), (sock) => {
    let bytes = 0;
    let t0 = 0;
    let c0 = 0;
    sock.on('data', (b: Buffer) => {
      if (bytes === 0) {
        t0 = performance.now();
        c0 = cpu();
      }
      bytes += b.length;
    });
    sock.on('end', () => {
      const out = { bytes, seconds: (performance.now() - t0) / 1000, cpuSeconds: cpu() - c0, cipher: sock.getCipher().standardName ?? null };
      process.stdout.write(`${JSON.stringify(out)}\n`, () => process.exit(0));
    });
  });
  server.listen(0, '127.0.0.1', () => process.stdout.write(`${JSON.stringify({ port: (server.address() as { port: number }).port })}\n`));
}

async function source(pkiDir: string, port: number, total: number): Promise<void> {
  const sock = tls.connect({ host: '127.0.0.1', port, ...clientTlsOptions(await material(pkiDir, 'primary')) });
  await new Promise<void>((resolve, reject) => sock.once('secureConnect', resolve).once('error', reject));
  const c0 = cpu();
  const bufs = [crypto.randomBytes(4 << 20), crypto.randomBytes(4 << 20)];
  for (let sent = 0, i = 0; sent < total; i++) {
    const b = bufs[i % 2].subarray(0, Math.min(bufs[0].length, total - sent));
    sent += b.length;
    if (!sock.write(b)) await new Promise((r) => sock.once('drain', r));
  }
  await new Promise<void>((resolve) => sock.end(resolve));
  process.stdout.write(`${JSON.stringify({ cpuSeconds: cpu() - c0 })}\n`);
}

function runChild(args: string[]): { lines: AsyncIterator<string>; done: Promise<number> } {
  const child = spawn(process.execPath, [fileURLToPath(import.meta.url), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  const queue: string[] = [];
  let wake: (() => void) | undefined;
  let buf = '';
  child.stdout!.on('data', (d: Buffer) => {
    buf += d.toString();
    for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
      queue.push(buf.slice(0, i));
      buf = buf.slice(i + 1);
      wake?.();
    }
  });
  const done = new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
  const lines: AsyncIterator<string> = {
    async next() {
      while (queue.length === 0) {
        if (child.exitCode !== null) return { done: true, value: undefined };
        await new Promise<void>((r) => {
          wake = r;
          void done.then(() => r());
        });
      }
      return { done: false, value: queue.shift()! };
    },
  };
  return { lines, done };
}

/** One run: a sink and a source process, `bytes` through mutual TLS between them. */
export async function tlsPipeRun(pkiDir: string, bytes: number): Promise<TlsPipeRun> {
  const s = runChild(['sink', pkiDir]);
  const first = await s.lines.next();
  if (first.done) throw new Error('the TLS sink did not start');
  const { port } = JSON.parse(first.value) as { port: number };
  const src = runChild(['source', pkiDir, String(port), String(bytes)]);
  const sent = await src.lines.next();
  const got = await s.lines.next();
  await Promise.all([s.done, src.done]);
  if (sent.done || got.done) throw new Error('the TLS pipe did not finish');
  const r = JSON.parse(got.value) as { bytes: number; seconds: number; cpuSeconds: number; cipher: string | null };
  if (r.bytes !== bytes) throw new Error(`the TLS sink received ${r.bytes} of ${bytes} bytes`);
  return {
    bytes,
    seconds: r.seconds,
    mbps: bytes / 1e6 / r.seconds,
    cpuSecondsSender: (JSON.parse(sent.value) as { cpuSeconds: number }).cpuSeconds,
    cpuSecondsReceiver: r.cpuSeconds,
    cipher: r.cipher,
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [mode, pkiDir, a, b] = process.argv.slice(2);
  if (mode === 'sink') await sink(pkiDir);
  else if (mode === 'source') await source(pkiDir, Number(a), Number(b));
  else throw new Error('usage: tls-pipe.js sink PKI_DIR | source PKI_DIR PORT BYTES');
}
