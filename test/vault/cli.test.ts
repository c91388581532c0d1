/**
 * The osr CLI's vault commands against a real vault over HTTPS, run as child processes of
 * the compiled CLI: policies, pairings and mappings, protection of two VMs followed to
 * Protected, jobs watched (progress with bytes and ETA, exit codes of failed jobs),
 * recovery plans applied and exported byte for byte, tokens, keys, audit, alerts, and where
 * the connection settings come from (flag, then environment, then config file).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, test } from 'node:test';
import { DEFAULT_VAULT_URL } from '../../src/cli/vault-client-config.js';
import { OsrError } from '../../src/domain/errors.js';
import { DEFAULT_VAULT_PORT } from '../../src/vault/server.js';
import { tempDir, waitFor } from '../support/lab.js';
import { gate, initialProgress, siteInventory, startVault, TestProvider, type TestVault } from '../support/vault.js';

type Obj = Record<string, unknown>;
const OSR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli/osr.js');

let v: TestVault;
let ny: TestProvider;
let chi: TestProvider;
let home: string;
let work: string;
let configFile: string;
let caFile: string;
const providers: TestProvider[] = [];
let enableFailures = 0;
const slowInitial = gate();

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The environment of a CLI run: nothing of this shell's OSR_* settings, a home of its own. */
function cliEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, HOME: home };
  for (const k of Object.keys(env)) if (k.startsWith('OSR_')) delete env[k];
  for (const [k, val] of Object.entries(extra)) if (val !== undefined) env[k] = val;
  return env;
}

function start(args: string[], o: { env?: Record<string, string | undefined>; cwd?: string } = {}) {
  const proc = spawn(process.execPath, [OSR, ...args], { cwd: o.cwd ?? work, env: cliEnv({ OSR_CONFIG: configFile, ...o.env }), stdio: ['ignore', 'pipe', 'pipe'] });
  const r: Run = { code: null, stdout: '', stderr: '' };
  proc.stdout.on('data', (b: Buffer) => (r.stdout += b.toString()));
  proc.stderr.on('data', (b: Buffer) => (r.stderr += b.toString()));
  const done = new Promise<Run>((resolve, reject) => {
    proc.once('error', reject);
    proc.once('close', (code) => resolve({ ...r, code }));
  });
  return { proc, run: r, done };
}

/** Run `osr ARGS` (with the test's config file unless told otherwise). */
const osr = (args: string[], o: { env?: Record<string, string | undefined>; cwd?: string } = {}) => start(args, o).done;

async function ok(args: string[], o: { env?: Record<string, string | undefined>; cwd?: string } = {}): Promise<string> {
  const r = await osr(args, o);
  assert.equal(r.code, 0, `osr ${args.join(' ')} exited ${r.code}:\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

const json = async <T = Obj>(args: string[], o: { env?: Record<string, string | undefined>; cwd?: string } = {}): Promise<T> => JSON.parse(await ok(['--json', ...args], o)) as T;

/** A run that fails with this code: non-zero exit, `error CODE:` on stderr. */
async function fails(args: string[], code: string, o: { env?: Record<string, string | undefined>; cwd?: string } = {}): Promise<Run> {
  const r = await osr(args, o);
  assert.notEqual(r.code, 0, `osr ${args.join(' ')} should fail with ${code}:\n${r.stdout}`);
  assert.match(r.stderr, new RegExp(`^error ${code}: `, 'm'), `osr ${args.join(' ')}: ${r.stderr}`);
  return r;
}

before(async () => {
  v = await startVault({ name: 'contoso-cli' });
  const key = async () => (await v.api.request<Obj>('POST', '/api/v1/registration-keys')).key as string;
  ny = await TestProvider.start(v.url, await key(), {
    fabric: 'VMM-NewYork',
    inventory: siteInventory('ny', ['GoldCloud1'], 3),
    handlers: {
      // VM2's protection fails once, then its initial replication reports bytes and waits
      'replication.enable': async (cmd) => {
        if (cmd.body.vm?.name === 'GoldCloud1-VM2' && enableFailures++ === 0) throw new OsrError('NETWORK_ERROR', 'the host did not answer');
        return {};
      },
      'replication.initial': async (cmd, progress) => {
        if (cmd.body.item === 'vmm-newyork.goldcloud1-vm2') {
          await progress(initialProgress(0.5, 1024, { rateBytesPerSec: 256, etaSeconds: 2 }));
          await slowInitial.wait;
        }
        await progress(initialProgress(1, 1024));
        return { recoveryPoint: { id: 'p1', at: new Date().toISOString(), consistency: 'crash' } };
      },
    },
  });
  chi = await TestProvider.start(v.url, await key(), { fabric: 'VMM-Chicago', inventory: siteInventory('chi', ['GoldCloud2'], 0) });
  providers.push(ny, chi);
  await waitFor('inventory', async () => (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/clouds')).items.length === 2, 10_000);

  home = tempDir('osr-cli-home-');
  work = tempDir('osr-cli-work-');
  const conf = tempDir('osr-cli-conf-');
  caFile = path.join(conf, 'vault-ca.pem');
  fs.writeFileSync(caFile, v.vault.ctx.identity.ca.certPem);
  configFile = path.join(conf, 'osr.yaml');
  // the CA by a path relative to the file
  fs.writeFileSync(configFile, `vault: ${v.url}\ntoken: ${v.token}\nca: vault-ca.pem\n`);
});

after(async () => {
  slowInitial.open();
  for (const p of providers) await p.stop().catch(() => undefined);
  await v?.close();
});

describe('osr vault client commands', () => {
  test('connection: settings from the config file; the vault answers', async () => {
    const c = await json(['connection']);
    assert.equal(c.vault, v.url);
    assert.equal(c.vaultFrom, 'file');
    assert.equal(c.tokenFrom, 'file');
    assert.equal(c.ca, caFile);
    assert.equal(c.configFile, configFile);
    assert.equal((c.health as Obj).vault, 'contoso-cli');
    assert.match(String(c.token), /^osr_000000000000_…$/, 'the secret is not shown');
  });

  test('fabrics and inventory', async () => {
    const [fabrics, table, clouds, nyAll, vm, protectable] = await Promise.all([
      json<{ items: Obj[] }>(['fabric', 'list']),
      ok(['fabric', 'show', 'vmm-newyork']),
      json<{ items: Obj[] }>(['inventory', 'list', '--kind', 'cloud']),
      json<{ items: Obj[] }>(['inventory', 'list', '--fabric', 'vmm-newyork']),
      json(['inventory', 'show', 'vmm-newyork.goldcloud1-vm0']),
      json<{ items: Obj[] }>(['inventory', 'protectable', '--cloud', 'vmm-newyork.goldcloud1']),
      fails(['inventory', 'show', 'vmm-newyork.nothing'], 'NOT_FOUND'),
    ]);
    assert.deepEqual(fabrics.items.map((f) => f.id).sort(), ['vmm-chicago', 'vmm-newyork']);
    assert.match(table, /^Providers$/m);
    assert.deepEqual(clouds.items.map((c) => c.id).sort(), ['vmm-chicago.goldcloud2', 'vmm-newyork.goldcloud1']);
    assert.equal(nyAll.items.filter((o) => o.kind === 'vm').length, 3);
    assert.ok(nyAll.items.every((o) => o.fabricId === 'vmm-newyork'));
    assert.equal(vm.kind, 'vm');
    assert.equal(vm.name, 'GoldCloud1-VM0');
    assert.equal(protectable.items.length, 3);
  });

  test('policies: create with flags, update keeps what is not given, ASR rules refuse bad values', async () => {
    const p = await json(['policy', 'create', 'gold', '--copy-frequency', '30s', '--retention-hours', '4', '--app-consistent-every', '1', '--host-os-version', 'lab-1']);
    assert.deepEqual(p.settings, {
      copyFrequencySeconds: 30,
      copyMode: 'cycles',
      retentionHours: 4,
      appConsistentFrequencyHours: 1,
      authentication: 'certificate',
      port: 8084,
      compression: true,
      initialReplication: { method: 'now' },
      deleteReplicaOnDisable: true,
      hostOsVersion: 'lab-1',
    });
    const u = await json(['policy', 'update', 'gold', '--retention-hours', '6', '--no-compression']);
    assert.equal(u.id, p.id);
    assert.equal((u.settings as Obj).retentionHours, 6);
    assert.equal((u.settings as Obj).compression, false);
    assert.equal((u.settings as Obj).copyFrequencySeconds, 30, 'unchanged');
    const r = await fails(['policy', 'create', 'bad', '--copy-frequency', '1m'], 'POLICY_INVALID');
    assert.match(r.stderr, /copy frequency 60 s is not offered/);
    // from a file, as `policy show --json` prints one
    const file = path.join(work, 'silver.yaml');
    fs.writeFileSync(file, 'name: silver\nsettings:\n  copyFrequencySeconds: 900\n  retentionHours: 2\n');
    const s = await json(['policy', 'create', '-f', file, '--port', '9000']);
    assert.equal(s.name, 'silver');
    assert.equal((s.settings as Obj).copyFrequencySeconds, 900);
    assert.equal((s.settings as Obj).port, 9000);
    // continuous: a point every 10 s; back to cycles, the copy frequency it kept
    const live = await json(['policy', 'create', 'live', '--copy-frequency', 'continuous', '--point-interval', '10s']);
    assert.deepEqual([(live.settings as Obj).copyMode, (live.settings as Obj).pointIntervalSeconds], ['continuous', 10]);
    assert.match(await ok(['policy', 'show', 'live']), /copy frequency:\s+continuous, a point every 10s/);
    await fails(['policy', 'update', 'live', '--point-interval', '2m'], 'POLICY_INVALID');
    const back = await json(['policy', 'update', 'live', '--copy-frequency', '15m']);
    assert.deepEqual([(back.settings as Obj).copyMode, (back.settings as Obj).pointIntervalSeconds, (back.settings as Obj).copyFrequencySeconds], ['cycles', undefined, 900]);
    await ok(['policy', 'delete', 'live']);
    const list = await ok(['policy', 'list']);
    assert.match(list, /^ID\s+NAME\s+COPY\s+RETENTION/m);
    assert.match(list, /\bgold\b.*\b30s\b.*\b6h\b/);
    await ok(['policy', 'delete', 'silver']);
    await fails(['policy', 'show', 'silver'], 'NOT_FOUND');
  });

  test('pairing and mappings', async () => {
    const pairing = await json(['pairing', 'create', '--policy', 'gold', '--source-cloud', 'vmm-newyork.goldcloud1', '--target-cloud', 'vmm-chicago.goldcloud2']);
    assert.equal(pairing.sourceCloudId, 'vmm-newyork.goldcloud1');
    assert.equal((await json(['pairing', 'show', String(pairing.id)])).targetCloudId, 'vmm-chicago.goldcloud2');
    assert.match(await ok(['pairing', 'list']), /\bgold\b.*vmm-newyork\.goldcloud1.*vmm-chicago\.goldcloud2/);
    await json(['mapping', 'create', 'network', '--source', 'vmm-newyork.vmnet1', '--target', 'vmm-chicago.vmnet1']);
    const storage = await json(['mapping', 'create', 'storage', '--source', 'vmm-newyork.gold', '--target', 'vmm-chicago.silver']);
    const maps = await json<{ items: Obj[] }>(['mapping', 'list']);
    assert.deepEqual(maps.items.map((m) => [m.type, m.sourceId, m.targetId]), [
      ['network', 'vmm-newyork.vmnet1', 'vmm-chicago.vmnet1'],
      ['storage', 'vmm-newyork.gold', 'vmm-chicago.silver'],
    ]);
    await fails(['mapping', 'create', 'storage', '--source', 'vmm-newyork.gold', '--target', 'vmm-chicago.gold'], 'ALREADY_EXISTS');
    await fails(['mapping', 'create', 'disk', '--source', 'a', '--target', 'b'], 'INVALID_ARGUMENT');
    // removed and mapped again
    await ok(['mapping', 'delete', 'storage', String(storage.id)]);
    await json(['mapping', 'create', 'storage', '--source', 'vmm-newyork.gold', '--target', 'vmm-chicago.silver']);
  });

  test('enable protection of two VMs (by id and by name) with --wait: both Protected', async () => {
    const r = await osr(['item', 'enable', 'vmm-newyork.goldcloud1-vm0', 'GoldCloud1-VM1', '--wait', '--interval', '100ms']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /vmm-newyork\.goldcloud1-vm0\s+\S+\s+started/);
    assert.match(r.stdout, /vmm-newyork\.goldcloud1-vm0 {2}Succeeded/);
    assert.match(r.stdout, /vmm-newyork\.goldcloud1-vm1 {2}Succeeded/);
    const items = await json<{ items: Obj[] }>(['item', 'list']);
    assert.deepEqual(items.items.map((i) => [i.id, i.state, i.health]).sort(), [
      ['vmm-newyork.goldcloud1-vm0', 'Protected', 'Healthy'],
      ['vmm-newyork.goldcloud1-vm1', 'Protected', 'Healthy'],
    ]);
    const [table, points, events, shown] = await Promise.all([
      ok(['item', 'list']),
      json<{ items: Obj[] }>(['item', 'points', 'GoldCloud1-VM0']),
      json<{ items: Obj[] }>(['item', 'events', 'vmm-newyork.goldcloud1-vm0']),
      json(['item', 'show', 'GoldCloud1-VM1']),
      // a VM protected already
      fails(['item', 'enable', 'GoldCloud1-VM0'], 'ALREADY_EXISTS'),
    ]);
    assert.match(table.split('\n')[0]!, /^ID\s+NAME\s+STATE\s+HEALTH\s+RPO\s+LATEST POINT\s+READY\s+POLICY$/);
    assert.match(table, /GoldCloud1-VM0\s+Protected\s+Healthy\s+\S+\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+yes\s+gold/);
    assert.equal(points.items[0]!.id, 'p1');
    assert.ok(events.items.some((e) => e.kind === 'protection.enabled'));
    assert.equal(shown.id, 'vmm-newyork.goldcloud1-vm1');
    // the capacity planner, before any churn is measured: the disks, the storage, no bandwidth yet
    const [capacity, capacityText] = await Promise.all([json<{ items: { name: string; measured: boolean; replicaStorageBytes: number; diskBytes: number }[]; totals: { items: number; bandwidthForRpo: { rpoSeconds: number }[] } }>(['capacity', '--rpo', '30s,10m']), ok(['capacity'])]);
    assert.deepEqual(capacity.items.map((i) => [i.name, i.measured]).sort(), [['GoldCloud1-VM0', false], ['GoldCloud1-VM1', false]]);
    assert.ok(capacity.items.every((i) => i.replicaStorageBytes === i.diskBytes && i.diskBytes > 0));
    assert.deepEqual(capacity.totals.bandwidthForRpo.map((b) => b.rpoSeconds), [30, 600]);
    assert.match(capacityText.split('\n')[0]!, /^ITEM\s+DISKS\s+CHURN\s+PEAK\s+RPO 60S\s+RPO 5M\s+RPO 15M\s+RPO 60M\s+INITIAL\s+STORAGE\s+RESYNC IN$/);
    assert.match(capacityText, /GoldCloud1-VM0\s+\S+ \S+\s+not measured/);
    assert.match(capacityText, /2 VM\(s\), 0 with measured churn/);
    await fails(['capacity', '--rpo', '5s'], 'INVALID_ARGUMENT');
    const samples = await json<{ items: unknown[] }>(['item', 'samples', 'GoldCloud1-VM0', '--since', '2h']);
    assert.ok(Array.isArray(samples.items));
    assert.equal((shown.replication as Obj).policyId, (await v.api.request<{ items: Obj[] }>('GET', '/api/v1/policies')).items.find((p) => p.name === 'gold')!.id);
  });

  test('jobs: list, show, watch of a finished job exits 0, export as CSV and JSON', async () => {
    const jobs = await json<{ items: Obj[] }>(['job', 'list', '--kind', 'enable-protection', '--state', 'Succeeded']);
    assert.equal(jobs.items.length, 2);
    const id = String(jobs.items[0]!.id);
    const out = path.join(work, 'jobs.json');
    const [w, show, csv, , old] = await Promise.all([
      osr(['job', 'watch', id]),
      ok(['job', 'show', id]),
      ok(['job', 'export', '--format', 'csv', '--kind', 'enable-protection']),
      ok(['job', 'export', '--format', 'json', '--since', '1h', '-o', out]),
      json<{ items: Obj[] }>(['job', 'list', '--until', '2000-01-01T00:00:00Z']),
      fails(['job', 'show', 'no-such-job'], 'NOT_FOUND'),
    ]);
    assert.equal(w.code, 0, w.stderr);
    assert.match(w.stdout, new RegExp(`^job ${id} {2}Succeeded \\[#+\\] 100\\.0% {2}done$`, 'm'));
    assert.match(show, /Prerequisites check\s+Succeeded/);
    assert.match(show, /Finalize protection\s+Succeeded/);
    const lines = csv.trimEnd().split(/\r?\n/);
    assert.equal(lines[0], 'id,kind,target,state,progress,currentStep,attempts,createdBy,createdAt,startedAt,endedAt,errorCode,errorMessage');
    assert.equal(lines.length, 3);
    // the network mapping made earlier started a job that reconnects replicas
    assert.deepEqual((JSON.parse(fs.readFileSync(out, 'utf8')) as Obj[]).map((j) => j.kind).sort(), ['enable-protection', 'enable-protection', 'reconnect-replicas']);
    assert.equal(old.items.length, 0);
  });

  test('a failed job exits with its code; restarted, its watch shows bytes and ETA and exits 0', async () => {
    // the job's error code is the one the provider reported
    const r = await fails(['item', 'enable', 'GoldCloud1-VM2', '--wait', '--interval', '100ms'], 'NETWORK_ERROR');
    assert.match(r.stderr, /failed in task "Create replication": the host did not answer/);
    const item = await json(['item', 'show', 'GoldCloud1-VM2']);
    assert.equal(item.state, 'ProtectionFailed');
    const failed = await json<{ items: Obj[] }>(['job', 'list', '--target', 'vmm-newyork.goldcloud1-vm2']);
    const id = String(failed.items[0]!.id);
    assert.equal(failed.items[0]!.state, 'Failed');
    await fails(['job', 'watch', id], 'NETWORK_ERROR');
    await ok(['job', 'restart', id]);
    const watcher = start(['job', 'watch', id, '--interval', '100ms']);
    await waitFor('bytes and ETA in the watch', () => /Running .*512 B\/1\.0 KiB {2}256 B\/s {2}ETA 2s/.test(watcher.run.stdout), 20_000);
    assert.match(watcher.run.stdout, /Initial replication/);
    slowInitial.open();
    const done = await watcher.done;
    assert.equal(done.code, 0, done.stderr);
    assert.match(done.stdout, /Succeeded \[#+\] 100\.0% {2}done$/m);
    assert.equal((await json(['item', 'show', 'vmm-newyork.goldcloud1-vm2'])).state, 'Protected');
  });

  test('recovery plans: apply creates or updates by name, export round-trips byte for byte', async () => {
    const plan = [
      'name: web-tier',
      'description: the web shop',
      'shutdownGroup: true',
      'groups:',
      '  - name: data',
      '    items:',
      '      - vmm-newyork.goldcloud1-vm0',
      '    post:',
      '      - name: check the database',
      '        kind: manual',
      '        target: "Check: replication of the DB is current"',
      '        failoverTypes:',
      '          - planned',
      '          - unplanned',
      '  - name: web',
      '    items:',
      '      - vmm-newyork.goldcloud1-vm1',
      '      - vmm-newyork.goldcloud1-vm2',
      '    pre:',
      '      - name: warm caches',
      '        kind: script',
      '        target: /opt/dr/warm.sh',
      '        timeoutSeconds: 300',
      '        retries: 1',
      'dependencies:',
      '  vmm-newyork.goldcloud1-vm2:',
      '    - vmm-newyork.goldcloud1-vm1',
      '',
    ].join('\n');
    const file = path.join(work, 'plan.yaml');
    fs.writeFileSync(file, plan);
    assert.match(await ok(['plan', 'apply', '-f', file]), /recovery plan web-tier created/);
    assert.equal(await ok(['plan', 'export', 'web-tier']), plan);
    // a changed plan applied again replaces it
    const changed = plan.replace('description: the web shop', 'description: the web shop, tier 1');
    fs.writeFileSync(file, changed);
    assert.match(await ok(['plan', 'apply', '-f', file]), /recovery plan web-tier updated/);
    const exported = path.join(work, 'exported.yaml');
    await ok(['plan', 'export', 'web-tier', '-o', exported]);
    assert.equal(fs.readFileSync(exported, 'utf8'), changed);
    const plans = await json<{ items: Obj[] }>(['plan', 'list']);
    assert.deepEqual(plans.items.map((p) => p.name), ['web-tier']);
    assert.match(await ok(['plan', 'show', 'web-tier']), /^2\s+web\s+vmm-newyork\.goldcloud1-vm1, vmm-newyork\.goldcloud1-vm2\s+script:warm caches/m);
    // create and update by name from a file, then delete
    const other = path.join(work, 'other.json');
    fs.writeFileSync(other, JSON.stringify({ name: 'other', groups: [{ name: 'g', items: ['vmm-newyork.goldcloud1-vm0'] }] }));
    await ok(['plan', 'create', '-f', other]);
    await fails(['plan', 'create', '-f', other], 'ALREADY_EXISTS');
    fs.writeFileSync(other, JSON.stringify({ name: 'other', groups: [{ name: 'g', items: ['x'] }, { name: 'g', items: ['y'] }] }));
    await fails(['plan', 'update', 'other', '-f', other], 'INVALID_ARGUMENT');
    await ok(['plan', 'delete', 'other']);
    await fails(['plan', 'show', 'other'], 'NOT_FOUND');
  });

  test('tokens, registration keys, audit, events and alerts', async () => {
    const t = await json(['token', 'create', '--role', 'Reader', '--name', 'dashboards']);
    assert.match(String(t.secret), /^osr_/);
    const [tokens, read] = await Promise.all([
      json<{ items: Obj[] }>(['token', 'list']),
      // the Reader reads, and may not configure
      json<{ items: Obj[] }>(['--token', String(t.secret), 'policy', 'list']),
      fails(['--token', String(t.secret), 'policy', 'create', 'x'], 'FORBIDDEN'),
    ]);
    assert.ok(tokens.items.some((x) => x.name === 'dashboards' && x.role === 'Reader'));
    assert.equal(read.items.length, 1);
    await ok(['token', 'revoke', String(t.id)]);
    await fails(['--token', String(t.secret), 'policy', 'list'], 'UNAUTHENTICATED');

    const keyFile = path.join(work, 'provider.key');
    const k = await json(['registration-key', 'create', '-o', keyFile]);
    assert.equal(fs.statSync(keyFile).mode & 0o777, 0o600);
    assert.ok(fs.readFileSync(keyFile, 'utf8').length > 40);
    await ok(['registration-key', 'revoke', String(k.id)]);
    assert.match(await ok(['registration-key', 'list']), new RegExp(`${String(k.id)}.*revoked`));

    const [audit, events, alerts, active] = await Promise.all([
      json<{ items: Obj[] }>(['audit', 'list', '--limit', '500']),
      json<{ items: Obj[] }>(['event', 'list', '--target', 'vmm-newyork.goldcloud1-vm2']),
      json<{ items: Obj[] }>(['alert', 'list', '--target', 'vmm-newyork.goldcloud1-vm2']),
      json<{ items: Obj[] }>(['alert', 'list', '--state', 'Active']),
    ]);
    assert.ok(audit.items.some((a) => a.path === '/api/v1/policies' && a.method === 'POST' && a.status === 201));
    assert.ok(audit.items.some((a) => a.code === 'FORBIDDEN'), 'refused calls are audited too');
    assert.ok(events.items.some((e) => e.kind === 'protection.failed'));
    assert.equal(alerts.items[0]!.kind, 'ItemCritical');
    assert.ok(active.items.length >= 1);
    await Promise.all(active.items.map((a) => ok(['alert', 'resolve', String(a.id)])));
    assert.equal((await json<{ items: Obj[] }>(['alert', 'list', '--state', 'Active'])).items.length, 0);

    const pw = path.join(work, 'smtp-password');
    fs.writeFileSync(pw, 's3cret\n');
    const s = await json(['alert', 'settings', 'set', '--webhook', 'https://hooks.example.com/osr', '--email', 'dr@example.com', '--smtp-host', 'mail.example.com', '--smtp-from', 'osr@example.com', '--smtp-password-file', pw]);
    assert.deepEqual(s, { webhooks: ['https://hooks.example.com/osr'], emails: ['dr@example.com'], smtp: { host: 'mail.example.com', port: 587, secure: false, from: 'osr@example.com', password: '********' } });
    // a change elsewhere keeps the stored password
    await ok(['alert', 'settings', 'set', '--no-webhooks']);
    const stored = await v.vault.ctx.store.activity.setting<Obj>('alerts', {});
    assert.deepEqual(stored.webhooks, []);
    assert.equal((stored.smtp as Obj).password, 's3cret');
    assert.match(await ok(['alert', 'settings', 'show']), /mail\.example\.com:587 from osr@example\.com with a password/);
    // another SMTP host without a password: the stored one is not sent there
    await ok(['alert', 'settings', 'set', '--smtp-host', 'mail.elsewhere.example']);
    assert.equal(((await v.vault.ctx.store.activity.setting<Obj>('alerts', {})).smtp as Obj).password, undefined);

    // what webhooks may reach beyond public addresses
    assert.match(await ok(['webhook', 'allowed']), /public addresses only/);
    assert.deepEqual(await json(['webhook', 'allow', '127.0.0.1', '10.20.0.0/16']), { allow: ['127.0.0.1', '10.20.0.0/16'] });
    assert.deepEqual(await json(['webhook', 'disallow', '127.0.0.1']), { allow: ['10.20.0.0/16'] });
    assert.equal(await ok(['webhook', 'allowed']), '10.20.0.0/16\n');
  });

  test('disable protection keeping the replica', async () => {
    const out = await ok(['item', 'disable', 'GoldCloud1-VM1', '--keep-replica', '--wait', '--interval', '100ms']);
    assert.match(out, /Succeeded/);
    await fails(['item', 'show', 'vmm-newyork.goldcloud1-vm1'], 'NOT_FOUND');
    const remove = chi.received.filter((c) => c.kind === 'replica.remove').at(-1)!;
    assert.deepEqual(remove.body, { item: 'vmm-newyork.goldcloud1-vm1', replicaVmId: 'replica-GoldCloud1-VM1', delete: false });
    await fails(['item', 'disable', 'GoldCloud1-VM0', '--keep-replica', '--delete-replica'], 'INVALID_ARGUMENT');
  });

  test('a missing token is refused with UNAUTHENTICATED before any call', async () => {
    const noToken = path.join(work, 'no-token.yaml');
    fs.writeFileSync(noToken, `vault: ${v.url}\nca: ${caFile}\n`);
    const [r, bare] = await Promise.all([
      fails(['item', 'list'], 'UNAUTHENTICATED', { env: { OSR_CONFIG: noToken } }),
      // without any config file at all: the default places are searched
      fails(['job', 'list'], 'UNAUTHENTICATED', { env: { OSR_CONFIG: undefined } }),
      fails(['--config', path.join(work, 'nothing.yaml'), 'job', 'list'], 'CONFIG_INVALID'),
      fails(['--vault', 'http://127.0.0.1:1', 'job', 'list'], 'CONFIG_INVALID'),
    ]);
    assert.equal(r.code, 2, 'a usage error');
    assert.match(r.stderr, /give --token, set OSR_TOKEN/);
    assert.match(bare.stderr, new RegExp(`vault at ${DEFAULT_VAULT_URL.replace(/\./g, '\\.')}: .*${path.join(home, '.config', 'osr', 'config.yaml').replace(/\./g, '\\.')}`));
    assert.equal(new URL(DEFAULT_VAULT_URL).port, String(DEFAULT_VAULT_PORT), "the client's default is the server's");
  });

  test('settings: a flag beats the environment, which beats the config file', async () => {
    const reader = await v.api.request<Obj>('POST', '/api/v1/tokens', { name: 'env-reader', role: 'Reader' });
    const file = path.join(work, 'precedence.yaml');
    fs.writeFileSync(file, `vault: https://127.0.0.1:1\ntoken: osr_ffffffffffff_not-a-token\nca: ${caFile}\n`);
    const env = { OSR_CONFIG: file };
    const noCa = path.join(work, 'no-ca.yaml');
    fs.writeFileSync(noCa, `vault: ${v.url}\ntoken: ${v.token}\n`);
    const [, , , list, c, , withEnvCa] = await Promise.all([
      // the file alone: its vault does not answer
      fails(['token', 'list'], 'NETWORK_ERROR', { env }),
      // the environment's vault, the file's token
      fails(['token', 'list'], 'UNAUTHENTICATED', { env: { ...env, OSR_VAULT: v.url } }),
      // the environment's token (a Reader) over the file's
      fails(['token', 'list'], 'FORBIDDEN', { env: { ...env, OSR_VAULT: v.url, OSR_TOKEN: String(reader.secret) } }),
      // the flags' over both
      json<{ items: Obj[] }>(['--vault', v.url, '--token', v.token, 'token', 'list'], { env: { ...env, OSR_VAULT: 'https://127.0.0.1:2', OSR_TOKEN: String(reader.secret) } }),
      json(['--vault', 'https://127.0.0.1:3', 'connection', '--offline'], { env: { ...env, OSR_VAULT: 'https://127.0.0.1:2', OSR_TOKEN: String(reader.secret) } }),
      // without the vault's CA the system's CAs do not trust it; the CA from the environment or the flag
      fails(['fabric', 'list'], 'NETWORK_ERROR', { env: { OSR_CONFIG: noCa } }),
      json<{ items: Obj[] }>(['fabric', 'list'], { env: { OSR_CONFIG: noCa, OSR_VAULT_CA: caFile } }),
      ok(['--vault-ca', caFile, 'fabric', 'list'], { env: { OSR_CONFIG: noCa } }),
    ]);
    assert.ok(list.items.length >= 2);
    assert.deepEqual([c.vault, c.vaultFrom, c.tokenFrom, c.caFrom], ['https://127.0.0.1:3', 'flag', 'env', 'file']);
    assert.equal(withEnvCa.items.length, 2);
    // the lab's file, found from the current directory when nothing names one
    const lab = tempDir('osr-cli-lab-');
    fs.mkdirSync(path.join(lab, '.osr', 'lab'), { recursive: true });
    fs.writeFileSync(path.join(lab, '.osr', 'lab', 'osr.yaml'), `vault: ${v.url}\ntoken: ${v.token}\nca: |\n${v.vault.ctx.identity.ca.certPem.trimEnd().replace(/^/gm, '  ')}\n`);
    const fromLab = await json(['connection'], { env: { OSR_CONFIG: undefined }, cwd: lab });
    assert.equal(fromLab.configFile, path.join(fs.realpathSync(lab), '.osr', 'lab', 'osr.yaml'));
    assert.equal(fromLab.ca, 'inline PEM');
    assert.equal((fromLab.health as Obj).status, 'ok');
    // ~/.config/osr/config.yaml comes before the lab's file
    fs.mkdirSync(path.join(home, '.config', 'osr'), { recursive: true });
    fs.writeFileSync(path.join(home, '.config', 'osr', 'config.yaml'), `vault: https://127.0.0.1:4\n`);
    try {
      const fromHome = await json(['connection', '--offline'], { env: { OSR_CONFIG: undefined }, cwd: lab });
      assert.equal(fromHome.vault, 'https://127.0.0.1:4');
    } finally {
      fs.rmSync(path.join(home, '.config'), { recursive: true });
    }
  });

  test('fabric delete is refused while its VMs are protected', async () => {
    const r = await fails(['fabric', 'delete', 'vmm-newyork'], 'INVALID_STATE');
    assert.match(r.stderr, /still has protected items/);
    assert.equal((await json<{ items: Obj[] }>(['fabric', 'list'])).items.length, 2);
  });
});
