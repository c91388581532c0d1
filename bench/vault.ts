/**
 * `npm run bench -- vault`: the vault's API under load, on SQLite and on PostgreSQL.
 * Each database is loaded with 10,000 protected items (and their VMs in the inventory)
 * and 1,000 finished jobs with their tasks; an `osr vault` process serves it, and
 * autocannon sends list and get calls (protected items, jobs) at a fixed rate over HTTPS
 * for a while. Reported: latency p50/p99 (corrected for coordinated omission), the rate
 * achieved, errors, and the vault process's RSS. Targets: p99 ≤ 50 ms, RSS ≤ 300 MB.
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import autocannon from 'autocannon';
import { openStore } from '../src/store/index.js';
import { Dialect } from '../src/store/database.js';
import { Flags } from './lib/args.js';
import { machineFacts } from './lib/machine.js';
import { ProcessSampler } from './lib/proc.js';
import { formatTable, fmt } from './lib/table.js';
import { createTestDatabase, type TestDatabase } from '../test/support/databases.js';
import { siteInventory, spawnVault } from '../test/support/vault.js';

export interface VaultBenchOptions {
  items: number;
  jobs: number;
  rate: number;
  durationSeconds: number;
  connections: number;
  dialects: Dialect[];
  resultsDir: string;
}

export function vaultOptions(flags: Flags, resultsDir: string): VaultBenchOptions {
  const only = flags.optionalString('only');
  return {
    items: flags.number('items', 10_000, (n) => Number.isInteger(n) && n > 0),
    jobs: flags.number('jobs', 1000, (n) => Number.isInteger(n) && n > 0),
    rate: flags.number('rate', 200),
    durationSeconds: flags.number('duration', 30),
    connections: flags.number('connections', 10, (n) => Number.isInteger(n) && n > 0),
    dialects: only === 'sqlite' ? [Dialect.Sqlite] : only === 'postgres' ? [Dialect.Postgres] : [Dialect.Sqlite, Dialect.Postgres],
    resultsDir,
  };
}

interface Entry {
  dialect: Dialect;
  loadSeconds: number;
  requests: number;
  errors: number;
  non2xx: number;
  requestsPerSecond: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
  rssMB: number;
  rssMBMean: number;
  cpuPercentMean: number;
  /** GET /protected-items/summary (the dashboard's, every 5 s per open page), one at a time after the load */
  summaryP50Ms: number;
  summaryMaxMs: number;
}

/** Fill a fresh database: two fabrics, a policy and pairing, `items` VMs all protected, `jobs` finished jobs. */
async function load(t: TestDatabase, o: VaultBenchOptions): Promise<{ itemIds: string[]; jobIds: string[] }> {
  const store = await openStore({ database: t.database, dataDir: t.dataDir });
  try {
    const cert = { certSerial: '00', certFingerprint: 'bench', proxy: null, inventoryScope: 'all' as const, version: '0.1.0', fabricKind: 'lab' };
    await store.fabrics.registerProvider({ providerId: 'prov-a', fabricName: 'Site-A', serverName: 'a', ...cert });
    await store.fabrics.registerProvider({ providerId: 'prov-b', fabricName: 'Site-B', serverName: 'b', ...cert });
    await store.fabrics.replaceInventory('site-a', siteInventory('a', ['Cloud1'], o.items));
    await store.fabrics.replaceInventory('site-b', siteInventory('b', ['Cloud2'], 0));
    const policy = await store.config.createPolicy('bench', { copyFrequencySeconds: 300, retentionHours: 4, appConsistentFrequencyHours: 1, authentication: 'certificate', port: 8084, compression: true, initialReplication: { method: 'now' }, deleteReplicaOnDisable: true, hostOsVersion: 'any' });
    const pairing = await store.config.createPairing({ policyId: policy.id, sourceCloudId: 'site-a.cloud1', targetCloudId: 'site-b.cloud2' });
    const db = store.database.db;
    const now = Date.now();
    const itemIds = Array.from({ length: o.items }, (_, i) => `site-a.cloud1-vm${i}`);
    for (let i = 0; i < itemIds.length; i += 500) {
      await db
        .insertInto('protected_items')
        .values(
          itemIds.slice(i, i + 500).map((id, k) => ({
            id,
            name: `Cloud1-VM${i + k}`,
            fabric_id: 'site-a',
            pairing_id: pairing.id,
            state: 'Protected',
            health: (i + k) % 50 === 0 ? 'Warning' : 'Healthy',
            health_reasons: '[]',
            rpo_seconds: 120 + ((i + k) % 300),
            last_point_at: now - 60_000,
            // a third never drilled, a third drilled 40 days ago (due), a third last week
            last_drill_at: (i + k) % 3 === 0 ? null : now - ((i + k) % 3 === 1 ? 40 : 7) * 86_400_000,
            replication: JSON.stringify({ sourceFabricId: 'site-a', targetFabricId: 'site-b', targetCloudId: 'site-b.cloud2', policyId: policy.id, placement: { hostId: 'site-b.cloud2-h1', storage: { d0: 'site-b.gold-share' }, networks: { nic0: 'site-b.vmnet1' } } }),
            progress: null,
            active_job_id: null,
            created_at: now - 86_400_000,
            updated_at: now - 60_000,
          })),
        )
        .execute();
    }
    const jobIds = Array.from({ length: o.jobs }, () => randomUUID());
    const tasks = ['Prerequisites check', 'Create replication', 'Initial replication', 'Finalize protection'];
    for (let i = 0; i < jobIds.length; i += 250) {
      const slice = jobIds.slice(i, i + 250);
      await db
        .insertInto('jobs')
        .values(
          slice.map((id, k) => ({
            id,
            kind: 'enable-protection',
            target: itemIds[(i + k) % itemIds.length]!,
            state: 'Succeeded',
            input: JSON.stringify({ vmId: itemIds[(i + k) % itemIds.length], pairingId: pairing.id }),
            output: null,
            error: null,
            progress: 1,
            current_step: 'Finalize protection',
            attempts: 1,
            created_at: now - 3_600_000 + i + k,
            updated_at: now,
            locked_by: null,
            locked_until: null,
            step: 4,
            data: JSON.stringify({ vaults: ['bench'] }),
            waiting_for: null,
            cancel_requested: 0,
            created_by: 'bench',
            started_at: now - 3_600_000,
            ended_at: now - 3_000_000,
          })),
        )
        .execute();
      await db
        .insertInto('job_tasks')
        .values(slice.flatMap((id) => tasks.map((name, position) => ({ job_id: id, position, name, state: 'Succeeded', started_at: now - 3_600_000, ended_at: now - 3_000_000, error: null, progress: 1, detail: null }))))
        .execute();
    }
    return { itemIds, jobIds };
  } finally {
    await store.close();
  }
}

async function runOne(dialect: Dialect, o: VaultBenchOptions): Promise<Entry> {
  const t = await createTestDatabase(dialect);
  const started = performance.now();
  try {
    const { itemIds, jobIds } = await load(t, o);
    const loadSeconds = (performance.now() - started) / 1000;
    const vault = await spawnVault(['--database', t.database, '--data-dir', t.dataDir, '--no-jobs']);
    try {
      const pick = <T>(a: T[]) => a[Math.floor(Math.random() * a.length)]!;
      const paths = [
        () => `/api/v1/protected-items?limit=100&after=${encodeURIComponent(pick(itemIds))}`,
        () => `/api/v1/protected-items/${encodeURIComponent(pick(itemIds))}`,
        () => `/api/v1/jobs?limit=100`,
        () => `/api/v1/jobs/${pick(jobIds)}`,
        () => `/api/v1/protected-items?health=Warning&limit=50`,
      ];
      const sampler = new ProcessSampler(vault.proc.pid!, 500).start();
      // warm up: connections, prepared statements, JIT
      await autocannon({ url: vault.url, connections: 2, amount: 200, headers: { authorization: `Bearer ${vault.token}` }, tlsOptions: { rejectUnauthorized: false } } as autocannon.Options);
      const r = await autocannon({
        url: vault.url,
        connections: o.connections,
        overallRate: o.rate,
        duration: o.durationSeconds,
        headers: { authorization: `Bearer ${vault.token}` },
        tlsOptions: { rejectUnauthorized: false },
        requests: [
          {
            setupRequest: (req: autocannon.Request) => {
              req.path = pick(paths)();
              return req;
            },
          },
        ],
      } as autocannon.Options);
      const usage = sampler.stop();
      const summary = await autocannon({ url: `${vault.url}/api/v1/protected-items/summary`, connections: 1, amount: 20, headers: { authorization: `Bearer ${vault.token}` }, tlsOptions: { rejectUnauthorized: false } } as autocannon.Options);
      return {
        dialect,
        loadSeconds,
        requests: r.requests.total,
        errors: r.errors + r.timeouts,
        non2xx: r.non2xx,
        requestsPerSecond: r.requests.average,
        p50Ms: r.latency.p50,
        p90Ms: r.latency.p90,
        p99Ms: r.latency.p99,
        maxMs: r.latency.max,
        rssMB: usage.peakRssMB,
        rssMBMean: usage.rssMBMean,
        cpuPercentMean: usage.cpuPercentMean,
        summaryP50Ms: summary.latency.p50,
        summaryMaxMs: summary.latency.max,
      };
    } finally {
      await vault.kill();
    }
  } finally {
    await t.drop();
  }
}

export async function runVaultBench(o: VaultBenchOptions): Promise<void> {
  const machine = machineFacts();
  console.log(`vault API: ${o.items} protected items, ${o.jobs} jobs; list and get calls at ${o.rate}/s for ${o.durationSeconds} s over ${o.connections} HTTPS connections`);
  const entries: Entry[] = [];
  for (const d of o.dialects) {
    console.log(`  ${d}: loading and serving…`);
    entries.push(await runOne(d, o));
  }
  console.log(
    formatTable(
      ['database', 'load s', 'requests', 'errors', 'req/s', 'p50 ms', 'p90 ms', 'p99 ms (≤ 50)', 'max ms', 'RSS peak MB (≤ 300)', 'CPU % mean', 'summary p50 / max ms'],
      entries.map((e) => [e.dialect, fmt(e.loadSeconds), e.requests, e.errors + e.non2xx, fmt(e.requestsPerSecond), e.p50Ms, e.p90Ms, e.p99Ms, e.maxMs, fmt(e.rssMB), fmt(e.cpuPercentMean), `${e.summaryP50Ms} / ${e.summaryMaxMs}`]),
    ),
  );
  const result: Record<string, unknown> = {
    benchmark: 'vault',
    at: new Date().toISOString(),
    machine,
    options: { ...o, resultsDir: undefined },
    targets: { p99Ms: 50, rssMB: 300 },
  };
  for (const e of entries) result[e.dialect] = { ...e, meetsTargets: e.p99Ms <= 50 && e.rssMB <= 300 && e.errors + e.non2xx === 0 };
  fs.mkdirSync(o.resultsDir, { recursive: true });
  const out = path.join(o.resultsDir, 'vault.json');
  fs.writeFileSync(out, `${JSON.stringify(result, null, 2)}\n`);
  console.log(`written ${out}`);
}
