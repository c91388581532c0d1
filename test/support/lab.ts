/** Test support: real agent processes, NBD reads and writes, polling. */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import type { ReplicationHealth } from '../../src/agent/wire/replication-types.js';
import { digest } from '../../src/agent/io/checksum.js';
import { ensurePki, restartAgentProcess, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';

export function tempDir(prefix = 'osr-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A TCP port that was free on 127.0.0.1 a moment ago. */
export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 60_000, intervalMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ''}`);
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export interface Pair {
  dir: string;
  pkiDir: string;
  primary: RunningAgent;
  replica: RunningAgent;
  stop(): Promise<void>;
}

export interface PairOptions {
  nodeArgs?: string[];
  /** more `osr agent` flags for each side */
  primaryArgs?: string[];
  replicaArgs?: string[];
  /** the replica's data directory (default DIR/replica) */
  replicaDataDir?: string;
  /** the primary accepts replication too (reverse replication after a failover) */
  primaryListens?: boolean;
}

export async function startPair(dir = tempDir(), o: PairOptions = {}): Promise<Pair> {
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, ['primary', 'replica']);
  const nodeArgs = o.nodeArgs ?? [];
  const replica = await startAgentProcess({ name: 'replica', dataDir: o.replicaDataDir ?? path.join(dir, 'replica'), pkiDir, listenPort: 0, nodeArgs, extraArgs: o.replicaArgs, logFile: path.join(dir, 'replica.log') });
  const primary = await startAgentProcess({ name: 'primary', dataDir: path.join(dir, 'primary'), pkiDir, nbdTcpPort: 0, listenPort: o.primaryListens ? 0 : undefined, nodeArgs, extraArgs: o.primaryArgs, logFile: path.join(dir, 'primary.log') });
  const pair: Pair = {
    dir,
    pkiDir,
    primary,
    replica,
    async stop() {
      await Promise.all([stopAgentProcess(pair.primary, 'SIGKILL'), stopAgentProcess(pair.replica, 'SIGKILL')]);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
  return pair;
}

export interface DiskInfo {
  name: string;
  size: number;
  image: string;
  nbd: { unix: string; tcp: string | null };
}

export async function createVm(agent: RunningAgent, name: string, disks: string[]): Promise<DiskInfo[]> {
  await agent.api.post('/v1/vms', { name, disks });
  await agent.api.post(`/v1/vms/${name}/start`);
  return agent.api.get<DiskInfo[]>(`/v1/vms/${name}/disks`);
}

export function health(agent: RunningAgent, vm: string): Promise<ReplicationHealth> {
  return agent.api.get<ReplicationHealth>(`/v1/replications/${vm}`);
}

export async function waitForPoint(agent: RunningAgent, vm: string, seq: number | null, timeoutMs = 60_000): Promise<ReplicationHealth> {
  let last: ReplicationHealth | undefined;
  try {
    return await waitFor(`recovery point ${seq ?? 'any'} of ${vm}`, async () => {
      const h = (last = await health(agent, vm));
      if (h.latestPoint && (seq === null || h.latestPoint.seq >= seq)) return h;
      return undefined;
    }, timeoutMs);
  } catch (e) {
    // say where the replication stands: its state and last error explain most timeouts
    throw new Error(`${String(e)}; state ${last?.state}, last error ${JSON.stringify(last?.lastError)}, retry ${JSON.stringify(last?.retry)}`);
  }
}

/** Digest of a whole disk read through NBD. */
export async function nbdDigest(uri: string): Promise<{ digest: string; size: number; blocks: string[] }> {
  const c = await NbdClient.connect(uri);
  try {
    const blocks: string[] = [];
    const chunk = 1024 * 1024;
    for (let off = 0; off < c.size; off += chunk) blocks.push(digest(await c.read(off, Math.min(chunk, c.size - off))).toString('hex'));
    return { digest: digest(Buffer.from(blocks.join(''))).toString('hex'), size: c.size, blocks };
  } finally {
    await c.close();
  }
}

/** Digest of an image file in the same 1 MiB blocks as nbdDigest. */
export function fileDigest(file: string, size: number): { digest: string; size: number; blocks: string[] } {
  const fd = fs.openSync(file, 'r');
  try {
    const blocks: string[] = [];
    const chunk = 1024 * 1024;
    const buf = Buffer.alloc(chunk);
    for (let off = 0; off < size; off += chunk) {
      const n = Math.min(chunk, size - off);
      buf.fill(0);
      fs.readSync(fd, buf, 0, n, off);
      blocks.push(digest(buf.subarray(0, n)).toString('hex'));
    }
    return { digest: digest(Buffer.from(blocks.join(''))).toString('hex'), size, blocks };
  } finally {
    fs.closeSync(fd);
  }
}

/** Random writes, zeroes and trims through NBD; returns when all are acknowledged and flushed. */
export async function writePattern(uri: string, opts: { writes: number; maxLen?: number; seed?: number; zeroEvery?: number }): Promise<number> {
  const c = await NbdClient.connect(uri);
  let bytes = 0;
  try {
    const maxBlocks = (opts.maxLen ?? 65536) / 4096;
    for (let i = 0; i < opts.writes; i++) {
      const len = 4096 * (1 + crypto.randomInt(maxBlocks));
      const off = 4096 * crypto.randomInt(Math.floor((c.size - len) / 4096) + 1);
      if (opts.zeroEvery && i % opts.zeroEvery === opts.zeroEvery - 1) {
        if (i % 2 === 0) await c.writeZeroes(off, len);
        else await c.trim(off, len);
      } else {
        await c.write(off, crypto.randomBytes(len));
      }
      bytes += len;
    }
    await c.flush();
  } finally {
    await c.close();
  }
  return bytes;
}

/** Fill an image file with random bytes directly (before replication: like importing a disk). */
export function fillRandom(file: string, bytes: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    const chunk = 4 * 1024 * 1024;
    for (let off = 0; off < bytes; off += chunk) fs.writeSync(fd, crypto.randomBytes(Math.min(chunk, bytes - off)), 0, Math.min(chunk, bytes - off), off);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export interface OverlayInfo {
  id: string;
  point: number;
  openMs: number;
  disks: { name: string; size: number; nbd: { unix: string } }[];
}

export function openOverlay(agent: Pick<RunningAgent, 'api'>, vm: string, point?: number): Promise<OverlayInfo> {
  return agent.api.post<OverlayInfo>(`/v1/replicas/${vm}/overlays`, { point });
}

/** Digest of every disk of a recovery point, read through an overlay on the replica agent. */
export async function pointDigests(replica: Pick<RunningAgent, 'api'>, vm: string, seq: number): Promise<string[]> {
  const o = await openOverlay(replica, vm, seq);
  const out = [];
  for (const d of o.disks) out.push((await nbdDigest(d.nbd.unix)).digest);
  await replica.api.delete(`/v1/replicas/${vm}/overlays/${o.id}`);
  return out;
}

export { stopAgentProcess, startAgentProcess, restartAgentProcess };
