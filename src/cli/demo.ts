/**
 * The two-agent demo (what `npm start` runs until the full lab exists): a primary host in
 * New York and a replica host in Chicago on this machine, a lab VM with two disks and a
 * workload writing to them over NBD, replicated every copy cycle. Ctrl-C stops it cleanly.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient } from '../agent/nbd/nbd-client.js';
import type { ReplicationHealth } from '../agent/replication-types.js';
import { DEFAULT_REPLICATION_PORT } from '../agent/wire.js';
import { ensurePki, startAgentProcess, stopAgentProcess, type RunningAgent } from '../lab/agent-process.js';
import { formatBytes, formatSeconds, progressBar } from './format.js';

export interface DemoOptions {
  dir: string;
  frequencyMs: number;
  durationMs?: number | undefined;
}

const VM = 'web01';

export async function runDemo(o: DemoOptions): Promise<void> {
  fs.mkdirSync(o.dir, { recursive: true });
  const pkiDir = path.join(o.dir, 'pki');
  await ensurePki(pkiDir, ['newyork-host1', 'chicago-host1']);
  console.log(`osr demo in ${o.dir}: starting agents newyork-host1 (primary) and chicago-host1 (replica)…`);
  const agents: RunningAgent[] = [];
  let stopping = false;
  const running: { workload?: Promise<void> } = {};
  const stop = async () => {
    if (stopping) return;
    stopping = true;
    console.log('\nstopping: workload, then agents (clean shutdown)…');
    await running.workload?.catch(() => undefined);
    await Promise.all(agents.map((a) => stopAgentProcess(a, 'SIGTERM')));
    console.log(`stopped. State is kept in ${o.dir}; run again to continue where it left off.`);
  };
  process.once('SIGINT', () => void stop().then(() => process.exit(0)));
  process.once('SIGTERM', () => void stop().then(() => process.exit(0)));

  const replica = await startAgentProcess({ name: 'chicago-host1', dataDir: path.join(o.dir, 'chicago-host1'), pkiDir, listenPort: DEFAULT_REPLICATION_PORT });
  agents.push(replica);
  const primary = await startAgentProcess({ name: 'newyork-host1', dataDir: path.join(o.dir, 'newyork-host1'), pkiDir });
  agents.push(primary);
  console.log(`  newyork-host1 API ${primary.apiUrl}\n  chicago-host1 API ${replica.apiUrl}, replication port ${replica.replicationPort}`);

  const vms = await primary.api.get<{ name: string }[]>('/v1/vms');
  if (!vms.some((v) => v.name === VM)) await primary.api.post('/v1/vms', { name: VM, disks: ['1G', '512M'] });
  await primary.api.post(`/v1/vms/${VM}/start`);
  const reps = await primary.api.get<ReplicationHealth[]>('/v1/replications');
  if (!reps.some((r) => r.vm === VM)) await primary.api.post('/v1/replications', { vm: VM, peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: `${o.frequencyMs}ms`, retentionHours: 1, maxPoints: 12, compression: true });
  const disks = await primary.api.get<{ name: string; size: number; nbd: { unix: string } }[]>(`/v1/vms/${VM}/disks`);
  console.log(`VM ${VM}: ${disks.map((d) => `${d.name} ${formatBytes(d.size)}`).join(', ')}; guest I/O at\n${disks.map((d) => `  ${d.nbd.unix}`).join('\n')}`);
  console.log(`replicating every ${formatSeconds(o.frequencyMs / 1000)}; a workload writes ~1 MiB/s. Ctrl-C stops.\n`);

  running.workload = runWorkload(disks.map((d) => d.nbd.unix), () => stopping);
  const started = Date.now();
  while (!stopping) {
    await new Promise((r) => setTimeout(r, 2000));
    if (stopping) break;
    try {
      const h = await primary.api.get<ReplicationHealth>(`/v1/replications/${VM}`);
      const pts = await replica.api.get<unknown[]>(`/v1/replicas/${VM}/points`).catch(() => []);
      const p = h.initial && !h.initial.completedAt ? h.initial : null;
      const line = p
        ? `${h.state} ${progressBar(p.doneBytes / Math.max(1, p.totalBytes), 20)} ${formatBytes(p.rateBytesPerSec)}/s ETA ${formatSeconds(p.etaSeconds)} disk ${p.currentDisk ?? '-'}`
        : `${h.state} ${h.health}  RPO ${formatSeconds(h.rpoSeconds)}  latest point #${h.latestPoint?.seq ?? '-'}  points at replica ${pts.length}  pending ${formatBytes(h.pendingLogBytes)}${h.lastError ? `  last error ${h.lastError.code}` : ''}`;
      console.log(`${new Date().toISOString().slice(11, 19)}  ${line}`);
    } catch (e) {
      if (!stopping) console.log(`status unavailable: ${(e as Error).message}`);
    }
    if (o.durationMs !== undefined && Date.now() - started >= o.durationMs) await stop();
  }
}

/** A guest workload: random 4-64 KiB writes to every disk, a flush now and then. */
async function runWorkload(uris: string[], stopped: () => boolean): Promise<void> {
  const clients = await Promise.all(uris.map((u) => NbdClient.connect(u)));
  try {
    let n = 0;
    while (!stopped()) {
      const c = clients[n % clients.length];
      const len = 4096 * (1 + crypto.randomInt(16));
      const off = 4096 * crypto.randomInt(Math.floor((c.size - len) / 4096));
      await c.write(off, crypto.randomBytes(len));
      if (++n % 32 === 0) {
        await c.flush();
        await new Promise((r) => setTimeout(r, 500));
      }
    }
    for (const c of clients) await c.flush();
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
  }
}
