/**
 * The consistency-group benchmark (`npm run bench -- group`): 20 VMs on two primary agents
 * (10 each), all in one group, replicated to one replica agent; every VM's guest writes
 * 2 MB/s over NBD while a coordinator cuts the group every second for 3 minutes. Measured:
 * how long each cut held the guests' writes (the agents' hold to release), the
 * coordinator's whole round (holds and swaps), how far behind the newest group point the
 * replica holds is, and CPU and RSS of the agents. The peer: the same VMs replicated on
 * their own in continuous mode (a cut a second each, no coordination), same load, same run.
 *
 * Units: ms, MB = 1e6 bytes. Details and results: docs/benchmarks.md.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { NbdClient } from '../src/agent/nbd/nbd-client.js';
import { cutId, groupPoints, type MemberPoint } from '../src/domain/groups.js';
import { groupCut, type GroupCutResult } from '../src/drivers/agent-replication.js';
import { ensurePki } from '../src/lab/agent-process.js';
import { parseMs, type Flags } from './lib/args.js';
import { sleep, startAgent, tempDir, type BenchAgent } from './lib/lab.js';
import { machineFacts } from './lib/machine.js';
import { ProcessSampler, type ProcessUsage } from './lib/proc.js';
import { max, mean, percentile, round } from './lib/stats.js';
import { fmt, formatTable, type Cell } from './lib/table.js';
import { churn, randomPool } from './replication.js';

export interface GroupBenchOptions {
  vms: number;
  minutes: number;
  /** a cut this often */
  intervalMs: number;
  /** each agent holds the writes at most this long */
  holdMs: number;
  diskBytes: number;
  churnMBps: number;
  resultsDir: string;
}

export const TARGETS = { heldP99Ms: 50 } as const;

export function groupOptions(flags: Flags, resultsDir: string): GroupBenchOptions {
  return {
    vms: flags.number('vms', 20, (n) => Number.isInteger(n) && n >= 2 && n <= 200),
    minutes: flags.number('minutes', 3, (n) => n > 0),
    intervalMs: parseMs(flags.string('interval', '1s')),
    holdMs: flags.number('hold-ms', 200, (n) => Number.isInteger(n) && n >= 1 && n <= 1000),
    diskBytes: 256 * 1024 * 1024,
    churnMBps: flags.number('churn', 2, (n) => n >= 0),
    resultsDir,
  };
}

interface RunResult {
  mode: 'group' | 'alone';
  cuts: { made: number; failed: number; heldMs: { p50: number; p99: number; max: number }; coordinatorMs: { p50: number; p99: number; max: number } } | null;
  /** now minus the newest point that is an instant of every VM (group) or of each VM (alone), sampled every second, s */
  lagSeconds: { samples: number; p50: number; p99: number; max: number };
  primaries: ProcessUsage[];
  replica: ProcessUsage;
  churnMBps: number;
}

async function run(o: GroupBenchOptions, pkiDir: string, mode: 'group' | 'alone', log: (s: string) => void): Promise<RunResult> {
  const { dir, remove } = tempDir(`group-${mode}`);
  const agents: BenchAgent[] = [];
  const clients: NbdClient[] = [];
  try {
    const replica = await startAgent({ name: 'replica', dataDir: path.join(dir, 'replica'), pkiDir, listenPort: 0, logFile: path.join(dir, 'replica.log'), extraArgs: ['--log-level', 'warn'] });
    agents.push(replica);
    const primaries = [await startAgent({ name: 'primary', dataDir: path.join(dir, 'p1'), pkiDir, logFile: path.join(dir, 'p1.log'), extraArgs: ['--log-level', 'warn'] }), await startAgent({ name: 'primary2', dataDir: path.join(dir, 'p2'), pkiDir, logFile: path.join(dir, 'p2.log'), extraArgs: ['--log-level', 'warn'] })];
    agents.push(...primaries);
    const peer = `127.0.0.1:${replica.replicationPort}`;
    const names = Array.from({ length: o.vms }, (_, i) => `vm${String(i + 1).padStart(2, '0')}`);
    const home = (i: number) => primaries[i % 2]!;
    for (const [i, vm] of names.entries()) {
      await home(i).api.post('/v1/vms', { name: vm, disks: [o.diskBytes] });
      await home(i).api.post(`/v1/vms/${vm}/start`);
      const copy = mode === 'group' ? { group: 'g1', copyFrequency: '1h' } : { copyFrequency: 'continuous', pointInterval: `${Math.max(1000, o.intervalMs)}ms` };
      await home(i).api.post('/v1/replications', { vm, peer, ...copy, retentionHours: 1, maxPoints: 4000, compression: false });
    }
    for (const [i, vm] of names.entries()) {
      for (;;) {
        const h = await home(i).api.get<{ latestPoint: unknown }>(`/v1/replications/${vm}`);
        if (h.latestPoint) break;
        await sleep(100);
      }
      const [d] = await home(i).api.get<{ nbd: { unix: string } }[]>(`/v1/vms/${vm}/disks`);
      clients.push(await NbdClient.connect(d!.nbd.unix));
    }
    const members = primaries.map((p, k) => ({ api: p.api, vms: names.filter((_, i) => i % 2 === k) }));
    const samplers = [...primaries, replica].map((a) => new ProcessSampler(a.child.pid!, 1000).start());
    const startMs = Date.now() + 200;
    const endMs = startMs + o.minutes * 60_000;
    const pool = randomPool();
    const writers = o.churnMBps > 0 ? names.map((vm, i) => churn(vm, clients[i]!, o.churnMBps * 1e6, startMs, endMs, pool)) : [];
    const cuts: GroupCutResult[] = [];
    let failed = 0;
    const coordinator =
      mode === 'group'
        ? (async () => {
            for (let k = 0; Date.now() < endMs; k++) {
              try {
                cuts.push(await groupCut(members, 'g1', cutId(Date.now(), crypto.randomBytes(3).toString('hex')), o.holdMs));
              } catch {
                failed++;
              }
              const next = startMs + (k + 1) * o.intervalMs;
              if (next > Date.now()) await sleep(next - Date.now());
            }
          })()
        : Promise.resolve();
    // the newest instant of the group (group: the newest cut every member's replica holds; alone: the oldest of the VMs' latest points)
    const lag: number[] = [];
    for (let k = 1; startMs + k * 1000 <= endMs; k++) {
      const wait = startMs + k * 1000 - Date.now();
      if (wait > 0) await sleep(wait);
      const listed: Record<string, MemberPoint[]> = {};
      for (const vm of names) listed[vm] = await replica.api.get<MemberPoint[]>(`/v1/replicas/${vm}/points`);
      const newest = mode === 'group' ? (groupPoints(listed)[0]?.timeMs ?? null) : Math.min(...names.map((vm) => listed[vm]!.at(-1)?.timeMs ?? 0));
      if (newest !== null) lag.push((Date.now() - newest) / 1000);
      if (k % 30 === 0) log(`  ${k} s: ${mode === 'group' ? `${cuts.length} cuts, writes held p99 ${fmt(percentile(cuts.map((c) => c.heldMs), 99), 1)} ms, ` : ''}lag p50 ${fmt(percentile(lag.slice(-30), 50), 1)} s`);
    }
    const churned = await Promise.all(writers);
    await coordinator;
    const usage = samplers.map((s) => s.stop());
    const held = cuts.map((c) => c.heldMs);
    const coord = cuts.map((c) => c.coordinatorMs);
    const seconds = max(churned.map((c) => c.seconds));
    return {
      mode,
      cuts: mode === 'group' ? { made: cuts.length, failed, heldMs: { p50: percentile(held, 50), p99: percentile(held, 99), max: max(held) }, coordinatorMs: { p50: percentile(coord, 50), p99: percentile(coord, 99), max: max(coord) } } : null,
      lagSeconds: { samples: lag.length, p50: percentile(lag, 50), p99: percentile(lag, 99), max: max(lag) },
      primaries: usage.slice(0, 2),
      replica: usage[2]!,
      churnMBps: seconds > 0 ? churned.reduce((n, c) => n + c.bytes, 0) / 1e6 / seconds : 0,
    };
  } finally {
    await Promise.all(clients.map((c) => c.close().catch(() => undefined)));
    await Promise.all(agents.map((a) => a.stop()));
    await remove();
  }
}

export async function runGroupBench(o: GroupBenchOptions): Promise<void> {
  const log = (s: string) => console.log(s);
  const machine = machineFacts();
  log(`consistency-group benchmark: ${machine.cpus} CPUs (${machine.cpuModel}), node ${machine.node}; ${o.vms} VMs on 2 primary agents, ${o.churnMBps} MB/s each, ${o.minutes} min`);
  const { dir: pkiRoot, remove } = tempDir('group-pki');
  const pkiDir = path.join(pkiRoot, 'pki');
  await ensurePki(pkiDir, ['primary', 'primary2', 'replica']);
  try {
    log(`\n1. one group, cut every ${o.intervalMs} ms (hold at most ${o.holdMs} ms)`);
    const group = await run(o, pkiDir, 'group', log);
    log(`\n2. the same VMs alone, continuous (a cut a second each)`);
    const alone = await run(o, pkiDir, 'alone', log);
    const cpu = (r: RunResult) => mean(r.primaries.map((u) => u.cpuPercentMean));
    const rows: Cell[][] = [
      [`cuts made / failed (${fmt(o.minutes, 1)} min, every ${o.intervalMs} ms)`, `${group.cuts!.made} / ${group.cuts!.failed}`, null, null],
      [`guest writes held per cut p50 / p99 / max, ms`, `${fmt(group.cuts!.heldMs.p50, 1)} / ${fmt(group.cuts!.heldMs.p99, 1)} / ${fmt(group.cuts!.heldMs.max, 1)}`, null, `target p99 ≤ ${TARGETS.heldP99Ms} ms`],
      [`coordinator's round (holds and swaps) p50 / p99, ms`, `${fmt(group.cuts!.coordinatorMs.p50, 1)} / ${fmt(group.cuts!.coordinatorMs.p99, 1)}`, null, null],
      [`newest instant of all VMs behind now p50 / p99, s`, `${fmt(group.lagSeconds.p50, 1)} / ${fmt(group.lagSeconds.p99, 1)}`, `alone ${fmt(alone.lagSeconds.p50, 1)} / ${fmt(alone.lagSeconds.p99, 1)} (no instant of all)`, null],
      [`primary agents CPU mean, % of a core (each)`, fmt(cpu(group), 0), `alone ${fmt(cpu(alone), 0)}`, null],
      [`primary agents RSS max, MB`, fmt(max(group.primaries.map((u) => u.rssMBMax)), 0), `alone ${fmt(max(alone.primaries.map((u) => u.rssMBMax)), 0)}`, null],
      [`replica agent CPU mean, % of a core`, fmt(group.replica.cpuPercentMean, 0), `alone ${fmt(alone.replica.cpuPercentMean, 0)}`, null],
      [`churn achieved, MB/s (all VMs)`, fmt(group.churnMBps, 1), `alone ${fmt(alone.churnMBps, 1)}`, `target ${fmt(o.churnMBps * o.vms, 1)}`],
    ];
    log('');
    log(formatTable(['metric', 'group', 'peer', 'target'], rows));
    const usage = (u: ProcessUsage) => ({ cpuPercentMean: round(u.cpuPercentMean, 1), rssMBMax: round(u.rssMBMax, 1) });
    const result = {
      benchmark: 'group',
      schema: 1,
      machine,
      options: o,
      targets: TARGETS,
      heldP99Ms: round(group.cuts!.heldMs.p99, 2),
      heldTargetMet: group.cuts!.heldMs.p99 <= TARGETS.heldP99Ms,
      group: { ...group, primaries: group.primaries.map(usage), replica: usage(group.replica) },
      alone: { ...alone, primaries: alone.primaries.map(usage), replica: usage(alone.replica) },
    };
    fs.mkdirSync(o.resultsDir, { recursive: true });
    const out = path.join(o.resultsDir, 'group.json');
    fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
    log(`\nresults: ${path.relative(process.cwd(), out) || out}`);
  } finally {
    await remove();
  }
}
