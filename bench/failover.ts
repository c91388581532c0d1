/**
 * `npm run bench -- failover`: a recovery plan of 100 VMs in 7 groups (`--vms`, `--groups`,
 * `--hosts`), in a lab of real processes (a vault, two providers, an agent per host).
 * Measured, from the API call until the plan's job ended: its test failover and cleanup
 * (several runs: medians), then one planned failover (each group's VMs shut down, their
 * final delta shipped, promoted and the old primaries fenced). Targets: the 100-VM test
 * failover in ≤ 10 s; `--vms 1000 --groups 10 --hosts 8`, test failover and cleanup in
 * ≤ 15 s each (ASR's promise is 2 hours for a plan). Written to bench/results/failover.json.
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { labDown, labUp } from '../src/lab/launcher.js';
import type { TopologySpec } from '../src/lab/topology.js';
import type { VaultClient } from '../src/provider/vault-client.js';
import type { PlanRunOutput } from '../src/workflows/plan-run.js';
import { Flags } from './lib/args.js';
import { onCleanup, sleep, tempDir } from './lib/lab.js';
import { machineFacts } from './lib/machine.js';
import { ProcessSampler } from './lib/proc.js';
import { max, median, round } from './lib/stats.js';
import { fmt, formatTable } from './lib/table.js';

export interface FailoverBenchOptions {
  vms: number;
  groups: number;
  hosts: number;
  runs: number;
  diskSize: string;
  resultsDir: string;
}

export function failoverOptions(flags: Flags, resultsDir: string): FailoverBenchOptions {
  return {
    vms: flags.number('vms', 100, (n) => Number.isInteger(n) && n > 0 && n <= 1000),
    groups: flags.number('groups', 7, (n) => Number.isInteger(n) && n > 0),
    hosts: flags.number('hosts', 4, (n) => Number.isInteger(n) && n > 0 && n <= 32),
    runs: flags.number('runs', 3, (n) => Number.isInteger(n) && n > 0),
    diskSize: flags.optionalString('disk') ?? '4M',
    resultsDir,
  };
}

/** Targets: a 100-VM plan's test failover in ≤ 10 s; a 1,000-VM plan's test failover and its cleanup in ≤ 15 s each. */
function targets(vms: number): { testFailoverSeconds: number; cleanupSeconds: number | null } {
  return vms > 100 ? { testFailoverSeconds: 15, cleanupSeconds: 15 } : { testFailoverSeconds: 10, cleanupSeconds: null };
}

function topology(o: FailoverBenchOptions): TopologySpec {
  const hosts = (site: string) => Array.from({ length: o.hosts }, (_, i) => `${site}-h${i + 1}`);
  return {
    name: 'bench-failover',
    vault: { name: 'bench-vault' },
    fabrics: [
      {
        name: 'Site-A',
        logicalNetworks: ['LN-A'],
        vmNetworks: [{ name: 'Net-A', logicalNetwork: 'LN-A', subnets: [{ name: 'Subnet1', cidr: '10.1.0.0/16', pool: { start: '10.1.0.10', end: '10.1.3.250' } }] }],
        storage: { classifications: ['GOLD'], locations: [{ name: 'a-gold', classification: 'GOLD', kind: 'share' }] },
        clouds: [{ name: 'CloudA', hostGroups: [{ name: 'A', hosts: hosts('a').map((name) => ({ name, logicalNetworks: ['LN-A'], storageLocations: ['a-gold'] })) }] }],
        vms: Array.from({ length: o.vms }, (_, i) => ({ name: `vm${String(i + 1).padStart(3, '0')}`, host: hosts('a')[i % o.hosts]!, disks: [{ name: 'system', size: o.diskSize, storage: 'a-gold' }], nics: [{ network: 'Net-A' }], workload: false })),
      },
      {
        name: 'Site-B',
        logicalNetworks: ['LN-B'],
        vmNetworks: [{ name: 'Net-B', logicalNetwork: 'LN-B', subnets: [{ name: 'Subnet1', cidr: '10.2.0.0/16', pool: { start: '10.2.0.10', end: '10.2.3.250' } }] }],
        storage: { classifications: ['GOLD_T'], locations: [{ name: 'b-gold', classification: 'GOLD_T', kind: 'share' }] },
        clouds: [{ name: 'CloudB', hostGroups: [{ name: 'B', hosts: hosts('b').map((name) => ({ name, logicalNetworks: ['LN-B'], storageLocations: ['b-gold'] })) }] }],
        vms: [],
      },
    ],
  };
}

interface Job {
  id: string;
  state: string;
  tasks?: { name: string; startedAt: string | null; endedAt: string | null }[];
  error: { code: string; message: string } | null;
  output: PlanRunOutput | null;
}

/** Start a plan operation and time it until its job ended; fails on a failed job. */
async function timed(api: VaultClient, planId: string, op: string, body: object = {}): Promise<{ seconds: number; output: PlanRunOutput; tasks: { name: string; seconds: number | null }[] }> {
  const t0 = performance.now();
  const { jobId } = await api.request<{ jobId: string }>('POST', `/api/v1/recovery-plans/${planId}/${op}`, body);
  for (;;) {
    const j = await api.request<Job>('GET', `/api/v1/jobs/${jobId}`);
    if (j.state === 'Succeeded') {
      const tasks = (j.tasks ?? []).map((t) => ({ name: t.name, seconds: t.startedAt && t.endedAt ? round((Date.parse(t.endedAt) - Date.parse(t.startedAt)) / 1000, 3) : null }));
      return { seconds: (performance.now() - t0) / 1000, output: j.output!, tasks };
    }
    if (j.state === 'Failed' || j.state === 'Cancelled') throw new Error(`${op} of the plan ${j.state}: ${j.error?.code}: ${j.error?.message}`);
    await sleep(50);
  }
}

async function waitAll(api: VaultClient, what: string, ok: (items: { state: string; readiness: { ready: boolean } }[]) => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await api.request<{ items: { state: string; readiness: { ready: boolean } }[] }>('GET', '/api/v1/protected-items?limit=1000');
    if (ok(r.items)) return;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(r.items.reduce<Record<string, number>>((m, i) => ({ ...m, [i.state]: (m[i.state] ?? 0) + 1 }), {}))}`);
    await sleep(500);
  }
}

export async function runFailoverBench(o: FailoverBenchOptions): Promise<void> {
  const machine = machineFacts();
  console.log(`failover: a plan of ${o.vms} VMs in ${o.groups} groups on ${o.hosts} hosts per site (disks ${o.diskSize}); ${o.runs} test failover runs, then a planned failover`);
  const { dir } = tempDir('failover');
  const topoFile = path.join(dir, 'topology.in.yaml');
  fs.writeFileSync(topoFile, YAML.stringify(topology(o)));
  const lab = await labUp({ dir: path.join(dir, 'lab'), topology: topoFile, detach: true, port: 0, statusInterval: '2s', out: () => undefined });
  onCleanup(() => labDown(path.join(dir, 'lab'), () => undefined).then(() => undefined));
  const api = lab.api;
  const vault = new ProcessSampler(lab.info.vault.pid).start();
  try {
    const policy = await api.request<{ id: string }>('POST', '/api/v1/policies', { name: 'bench', settings: { copyFrequencySeconds: 300, retentionHours: 1, hostOsVersion: 'any' } });
    const pairing = await api.request<{ id: string }>('POST', '/api/v1/cloud-pairings', { policyId: policy.id, sourceCloudId: 'site-a.clouda', targetCloudId: 'site-b.cloudb' });
    await api.request('POST', '/api/v1/network-mappings', { sourceId: 'site-a.net-a', targetId: 'site-b.net-b' });
    await api.request('POST', '/api/v1/storage-mappings', { sourceId: 'site-a.gold', targetId: 'site-b.gold_t' });
    const ids = Array.from({ length: o.vms }, (_, i) => `site-a.vm${String(i + 1).padStart(3, '0')}`);
    const t0 = performance.now();
    for (const id of ids) await api.request('POST', '/api/v1/protected-items', { vmId: id, pairingId: pairing.id });
    await waitAll(api, 'every VM protected with a recovery point', (items) => items.length === o.vms && items.every((i) => i.state === 'Protected' && i.readiness.ready), 30 * 60_000);
    const protectSeconds = (performance.now() - t0) / 1000;
    console.log(`  ${o.vms} VMs protected in ${fmt(protectSeconds)} s`);
    const per = Math.ceil(o.vms / o.groups);
    const groups = Array.from({ length: o.groups }, (_, g) => ({ name: `group-${g + 1}`, items: ids.slice(g * per, (g + 1) * per) })).filter((g) => g.items.length > 0);
    const plan = await api.request<{ id: string }>('POST', '/api/v1/recovery-plans', { name: 'bench-plan', shutdownGroup: true, groups });

    const test: number[] = [];
    const cleanup: number[] = [];
    const rto: number[] = [];
    for (let r = 0; r < o.runs; r++) {
      const t = await timed(api, plan.id, 'test-failover');
      const c = await timed(api, plan.id, 'test-failover-cleanup', { notes: `bench run ${r + 1}` });
      test.push(t.seconds);
      cleanup.push(c.seconds);
      rto.push(t.output.rtoSeconds ?? NaN);
      console.log(`  run ${r + 1}: test failover ${fmt(t.seconds, 2)} s (plan RTO ${fmt(t.output.rtoSeconds, 2)} s), cleanup ${fmt(c.seconds, 2)} s`);
    }
    const planned = await timed(api, plan.id, 'planned-failover');
    console.log(`  planned failover ${fmt(planned.seconds, 2)} s (plan RTO ${fmt(planned.output.rtoSeconds, 2)} s): ${planned.tasks.map((t) => `${t.name.replace(/:.*$/, '')} ${fmt(t.seconds, 2)} s`).join(', ')}`);
    const usage = vault.stop();

    const testFailoverSeconds = median(test);
    const cleanupSeconds = median(cleanup);
    const target = targets(o.vms);
    const rows: (string | number | null)[][] = [
      ['test failover (API call → job done)', round(testFailoverSeconds, 2), round(Math.min(...test), 2), round(max(test), 2), `≤ ${target.testFailoverSeconds}`, round((2 * 3600) / testFailoverSeconds, 0)],
      ['  plan RTO (start → last VM running)', round(median(rto), 2), round(Math.min(...rto), 2), round(max(rto), 2), null, null],
      ['test failover cleanup', round(cleanupSeconds, 2), round(Math.min(...cleanup), 2), round(max(cleanup), 2), target.cleanupSeconds === null ? null : `≤ ${target.cleanupSeconds}`, null],
      ['planned failover (1 run)', round(planned.seconds, 2), null, null, null, round((2 * 3600) / planned.seconds, 0)],
    ];
    console.log(formatTable([`${o.vms}-VM plan, ${o.groups} groups, ${o.hosts} hosts a site`, 'median s', 'min s', 'max s', 'target s', '× faster than ASR\'s 2 h'], rows));
    const result = {
      benchmark: 'failover',
      at: new Date().toISOString(),
      machine,
      options: { ...o, resultsDir: undefined },
      target: { ...target, peer: 'ASR recovery plan: 2 hours' },
      protectSeconds: round(protectSeconds, 1),
      testFailoverSeconds: round(testFailoverSeconds, 3),
      testFailoverRuns: test.map((x) => round(x, 3)),
      testFailoverPlanRtoSeconds: round(median(rto), 3),
      cleanupSeconds: round(cleanupSeconds, 3),
      cleanupRuns: cleanup.map((x) => round(x, 3)),
      plannedFailoverSeconds: round(planned.seconds, 3),
      plannedFailoverPlanRtoSeconds: round(planned.output.rtoSeconds ?? NaN, 3),
      plannedFailoverTasks: planned.tasks,
      vault: { peakRssMB: round(usage.peakRssMB, 1), cpuSeconds: round(usage.cpuSeconds, 2) },
      meetsTarget: testFailoverSeconds <= target.testFailoverSeconds && (target.cleanupSeconds === null || cleanupSeconds <= target.cleanupSeconds),
    };
    fs.mkdirSync(o.resultsDir, { recursive: true });
    const out = path.join(o.resultsDir, 'failover.json');
    fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
    console.log(`written ${out}`);
  } finally {
    vault.stop();
  }
}
