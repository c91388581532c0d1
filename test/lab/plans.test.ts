/**
 * Recovery plans end to end in the lab, with real processes: a three-group plan with a
 * manual action, scripts run by the recovery site's provider and a webhook goes through
 * test failover and cleanup (a drill with measured RTO), planned failover, a change of recovery point, commit, reverse
 * replication and failback; a vault killed with kill -9 in the middle of a plan run
 * finishes the run once it is started again, each VM's job started once.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import YAML from 'yaml';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { labDown, readLabFile } from '../../src/lab/launcher.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import type { TopologySpec } from '../../src/lab/topology.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import type { ActionContext, PlanDrill, PlanRunOutput } from '../../src/workflows/plan-run.js';
import { freePort, tempDir, waitFor } from '../support/lab.js';

const run = promisify(execFile);
interface Job {
  id: string;
  state: string;
  currentStep: string | null;
  waitingFor: { message?: string; action?: string } | null;
  output: PlanRunOutput | null;
  error: { code: string; message: string } | null;
  ranBy: string[];
}

const dir = tempDir('osr-plans-');
const marks = path.join(dir, 'marks');
let api: VaultClient;
let port = 0;

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 180_000 });
  return r.stdout;
}

const vms = ['db', 'api', 'web'];
const topology: TopologySpec = {
  name: 'plan-sites',
  vault: { name: 'plan-vault' },
  fabrics: [
    {
      name: 'VMM-NewYork',
      logicalNetworks: ['LN1-NY'],
      vmNetworks: [{ name: 'VMNetwork1-NY', logicalNetwork: 'LN1-NY', subnets: [{ name: 'Subnet1', cidr: '10.1.1.0/24', pool: { start: '10.1.1.10', end: '10.1.1.20' } }] }],
      storage: { classifications: ['GOLD'], locations: [{ name: 'ny-gold', classification: 'GOLD', kind: 'share' }] },
      clouds: [{ name: 'Cloud1', hostGroups: [{ name: 'NY', hosts: [{ name: 'ny-h1', logicalNetworks: ['LN1-NY'], storageLocations: ['ny-gold'] }] }] }],
      vms: vms.map((name) => ({ name, host: 'ny-h1', disks: [{ name: 'system', size: '8M', storage: 'ny-gold' }], nics: [{ network: 'VMNetwork1-NY' }], workload: { bytesPerSecond: 16 * 1024 } })),
    },
    {
      name: 'VMM-Chicago',
      logicalNetworks: ['LN1-CHI'],
      vmNetworks: [{ name: 'VMNetwork1-CHI', logicalNetwork: 'LN1-CHI', subnets: [{ name: 'Subnet1', cidr: '10.2.1.0/24', pool: { start: '10.2.1.10', end: '10.2.1.20' } }] }],
      storage: { classifications: ['GOLD_TARGET'], locations: [{ name: 'chi-gold', classification: 'GOLD_TARGET', kind: 'share' }] },
      clouds: [{ name: 'Cloud2', hostGroups: [{ name: 'CHI', hosts: [{ name: 'chi-h1', logicalNetworks: ['LN1-CHI'], storageLocations: ['chi-gold'] }] }] }],
      vms: [],
    },
  ],
};

const id = (vm: string) => `vmm-newyork.${vm}`;
const item = (vm: string) => api.request<ProtectedItem>('GET', `/api/v1/protected-items/${id(vm)}`);
const job = (jobId: string) => api.request<Job>('GET', `/api/v1/jobs/${jobId}`);
const waitJob = (jobId: string, states: string[], timeoutMs = 120_000) =>
  waitFor(`job ${jobId} ${states.join(' or ')}`, async () => {
    const j = await job(jobId);
    if (j.state === 'Failed' && !states.includes('Failed')) throw new Error(`job failed: ${JSON.stringify(j.error)}`);
    return states.includes(j.state) ? j : undefined;
  }, timeoutMs, 200);

/** What the scripts and the webhook received, in order. */
const contexts = (prefix: string): ActionContext[] =>
  fs
    .readdirSync(marks)
    .filter((f) => f.startsWith(prefix))
    .sort()
    .map((f) => JSON.parse(fs.readFileSync(path.join(marks, f), 'utf8')) as ActionContext);

const hooks: ActionContext[] = [];
let hookServer: http.Server;

before(async () => {
  fs.mkdirSync(marks, { recursive: true });
  hookServer = http.createServer((req, res) => {
    let body = '';
    req.on('data', (b: Buffer) => (body += b.toString()));
    req.on('end', () => {
      hooks.push(JSON.parse(body) as ActionContext);
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => hookServer.listen(0, '127.0.0.1', r));
  port = await freePort();
  const file = path.join(dir, 'topology.in.yaml');
  fs.writeFileSync(file, YAML.stringify(topology));
  await osr('lab', 'up', '--dir', dir, '--topology', file, '--port', String(port), '--detach', '--status-interval', '1s');
  const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { vault: string; token: string; ca: string };
  api = new VaultClient(cfg.vault, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
  // the plan's webhook listens on loopback: an Owner allows it (webhooks reach public addresses only by default)
  await api.request('PUT', '/api/v1/webhook-settings', { allow: ['127.0.0.1'] });
  // the recovery site's provider runs plan scripts from its scripts directory: Chicago's, and New York's for the failback
  for (const site of ['vmm-chicago', 'vmm-newyork']) {
    const scripts = path.join(dir, 'sites', site, 'provider', 'scripts');
    assert.ok(fs.existsSync(path.join(scripts, '..', 'registration.json')), 'the provider keeps its state there');
    fs.mkdirSync(scripts, { recursive: true });
    fs.writeFileSync(path.join(scripts, 'record.sh'), `#!/bin/sh\nset -e\ncat > "${marks}/record-$(date +%s%N).json"\necho recorded at ${site}\n`, { mode: 0o755 });
    fs.writeFileSync(path.join(scripts, 'slow.sh'), `#!/bin/sh\nset -e\ncp "$OSR_CONTEXT_FILE" "${marks}/slow-$(date +%s%N).json"\nsleep 4\n`, { mode: 0o755 });
  }
});

after(async () => {
  api?.close();
  hookServer?.close();
  await labDown(dir, () => undefined);
  assert.equal(readLabFile(dir), undefined);
});

describe('recovery plans', () => {
  test('three VMs protected; a three-group plan with a manual action, scripts and a webhook validates', async () => {
    await osr('policy', 'create', 'gold', '--copy-frequency', '30s', '--retention-hours', '1', '--host-os-version', 'any');
    await osr('pairing', 'create', '--policy', 'gold', '--source-cloud', 'vmm-newyork.cloud1', '--target-cloud', 'vmm-chicago.cloud2');
    await osr('mapping', 'create', 'network', '--source', 'vmm-newyork.vmnetwork1-ny', '--target', 'vmm-chicago.vmnetwork1-chi');
    await osr('mapping', 'create', 'storage', '--source', 'vmm-newyork.gold', '--target', 'vmm-chicago.gold_target');
    await osr('item', 'enable', ...vms, '--wait');
    const plan = {
      name: 'three-tier',
      shutdownGroup: true,
      groups: [
        { name: 'databases', items: [id('db')], pre: [{ name: 'check backups', kind: 'manual', target: 'confirm last night\'s database backup', failoverTypes: ['test'] }] },
        { name: 'services', items: [id('api')], pre: [{ name: 'slow', kind: 'script', target: 'slow.sh', failoverTypes: ['test'], timeoutSeconds: 60 }], post: [{ name: 'record', kind: 'script', target: 'record.sh', timeoutSeconds: 30, retries: 1 }] },
        { name: 'front', items: [id('web')], post: [{ name: 'notify', kind: 'webhook', target: `http://127.0.0.1:${(hookServer.address() as net.AddressInfo).port}/plan`, failoverTypes: ['planned', 'unplanned'], directions: ['primary-to-recovery'], timeoutSeconds: 10 }] },
      ],
      dependencies: { [id('web')]: [id('api')] },
    };
    fs.writeFileSync(path.join(dir, 'plan.yaml'), YAML.stringify(plan));
    await osr('plan', 'apply', '-f', path.join(dir, 'plan.yaml'));
    assert.match(await osr('plan', 'validate', 'three-tier'), /plan three-tier is ready to run/);
    // the export is stable: exported twice, the same bytes
    assert.equal(await osr('plan', 'export', 'three-tier'), await osr('plan', 'export', 'three-tier'));
  });

  test('test failover of the plan waits for its manual action, runs the groups in order with their scripts; cleanup records the drill', async () => {
    const started = JSON.parse(await osr('--json', 'plan', 'test-failover', 'three-tier', '--network', 'temporary')) as { jobId: string };
    const waiting = await waitJob(started.jobId, ['WaitingForInput']);
    assert.equal(waiting.waitingFor?.message, 'confirm last night\'s database backup');
    assert.match(waiting.currentStep ?? '', /Group 1 \(databases\) pre action: check backups \(manual\)/);
    assert.equal((await item('db')).state, 'Protected', 'nothing ran before the manual step was done');
    await assert.rejects(osr('plan', 'test-failover', 'three-tier'), /INVALID_STATE: .*has run .* WaitingForInput/);
    await osr('job', 'resume', started.jobId, '--comment', 'backup verified');
    const done = await waitJob(started.jobId, ['Succeeded']);
    const out = done.output!;
    assert.equal(out.operation, 'test-failover');
    assert.equal(out.failed, 0);
    assert.deepEqual(out.vms.map((v) => [v.name, v.group, v.state]), [['db', 'databases', 'Succeeded'], ['api', 'services', 'Succeeded'], ['web', 'front', 'Succeeded']]);
    for (const v of out.vms) {
      assert.ok(v.point?.id, `${v.name} ran from a point`);
      assert.ok(v.upAfterSeconds! > 0 && v.upAfterSeconds! < 60, `${v.name} up after ${v.upAfterSeconds} s`);
      assert.equal((await item(v.name)).state, 'TestFailoverComplete');
    }
    // one isolated network for the drill: the plan's test VMs reach each other on it
    assert.match(out.testNetwork ?? '', /^vmm-chicago\.osr-drill-three-tier$/);
    const testIps: string[] = [];
    for (const vm of vms) {
      const tf = (await item(vm)).replication.testFailover!;
      assert.equal(tf.testVm.nics[0]!.vmNetwork, out.testNetwork, `${vm}'s test VM is on the drill's network`);
      testIps.push(String(tf.testVm.nics[0]!.ip));
    }
    assert.equal(new Set(testIps).size, 3, `each test VM has its own address: ${testIps.join(', ')}`);
    // groups in order: the database before the services, the services before the front end
    const up = Object.fromEntries(out.vms.map((v) => [v.name, v.upAfterSeconds!]));
    assert.ok(up.db! <= up.api! && up.api! <= up.web!, JSON.stringify(up));
    assert.ok(out.rtoSeconds! >= up.web!);
    assert.deepEqual(out.actions.map((a) => [a.name, a.kind, a.comment ?? a.exitCode]), [['check backups', 'manual', 'backup verified'], ['slow', 'script', 0], ['record', 'script', 0]]);
    assert.equal(out.actions[2]!.output, 'recorded at vmm-chicago\n');
    // the script had the run's context: the groups that ran had their points
    const [ctx] = contexts('record-');
    assert.equal(ctx!.plan.name, 'three-tier');
    assert.equal(ctx!.failoverType, 'test');
    assert.equal(ctx!.direction, 'primary-to-recovery');
    assert.deepEqual(ctx!.group, { name: 'services', index: 2 });
    assert.deepEqual(ctx!.action, { name: 'record', phase: 'post' });
    assert.equal(ctx!.vms[id('db')]!.recoveryPoint!.id, out.vms[0]!.point!.id);
    assert.equal(ctx!.vms[id('api')]!.state, 'Succeeded');
    assert.equal(ctx!.vms[id('web')]!.state, 'NotStarted');
    assert.equal(hooks.length, 0, 'the webhook is for planned and unplanned failovers only');

    const cleanup = JSON.parse(await osr('--json', 'plan', 'test-failover-cleanup', 'three-tier', '--notes', 'all three answered')) as { jobId: string };
    await waitJob(cleanup.jobId, ['Succeeded']);
    for (const vm of vms) assert.equal((await item(vm)).state, 'Protected');
    await waitFor('the drill\'s network gone from the inventory', async () => !(await api.request<{ items: { id: string }[] }>('GET', '/api/v1/vm-networks?limit=1000')).items.some((n) => n.id === out.testNetwork), 20_000, 200);
    const drills = JSON.parse(await osr('--json', 'plan', 'drills', 'three-tier')) as PlanDrill[];
    assert.equal(drills.length, 1);
    assert.equal(drills[0]!.succeeded, true);
    assert.equal(drills[0]!.notes, 'all three answered');
    assert.equal(drills[0]!.testFailoverJob, started.jobId);
    assert.equal(drills[0]!.rtoSeconds, out.rtoSeconds);
    assert.deepEqual(drills[0]!.vms.map((v) => v.point?.id), out.vms.map((v) => v.point?.id));
    assert.match(await osr('plan', 'drills', 'three-tier'), /all three answered/);
  });

  test('planned failover of the plan, change of recovery point, commit, reverse replication, then failback and reverse again', async () => {
    const text = await osr('plan', 'planned-failover', 'three-tier', '--wait', '--interval', '200ms');
    assert.match(text, /plan three-tier: planned-failover \(primary-to-recovery\) succeeded; RTO/);
    for (const vm of vms) {
      const i = await item(vm);
      assert.equal(i.state, 'FailedOver', vm);
      assert.equal(i.replication.failover!.kind, 'planned');
    }
    // the webhook had the run's context; the scripts ran again (no manual step: it is for test failovers)
    assert.equal(hooks.length, 1);
    assert.equal(hooks[0]!.failoverType, 'planned');
    assert.equal(hooks[0]!.vms[id('web')]!.state, 'Succeeded');
    assert.equal(contexts('record-').length, 2);
    assert.equal(contexts('slow-').length, 1, 'the slow script runs for test failovers only');
    await assert.rejects(osr('plan', 'reprotect', 'three-tier'), /INVALID_STATE: .*nothing to reprotect/);
    // before the commit the points stay: one VM goes back to an older one, then the plan to the latest
    const points = JSON.parse(await osr('--json', 'item', 'points', id('db'))) as { items: { id: string; at: string }[] };
    assert.ok(points.items.length >= 2, 'a failed-over item keeps its points until the commit');
    const failedOverAt = (await item('db')).replication.failover!.point.id;
    const older = points.items.find((p) => p.id !== failedOverAt)!;
    await osr('item', 'change-recovery-point', id('db'), '--point', older.id, '--wait', '--interval', '200ms');
    const changed = (await item('db')).replication.failover!;
    assert.equal(changed.point.id, older.id);
    assert.deepEqual(changed.pointChanges?.map((c) => [c.from.id, c.to.id]), [[failedOverAt, older.id]]);
    assert.equal((await item('db')).state, 'FailedOver');
    const latest = await osr('plan', 'change-recovery-point', 'three-tier', '--point', 'latest', '--wait', '--interval', '200ms');
    assert.match(latest, /change-recovery-point \(primary-to-recovery\) succeeded/);
    assert.equal((await item('db')).replication.failover!.point.id, points.items[0]!.id);
    await osr('plan', 'commit', 'three-tier', '--wait', '--interval', '200ms');
    for (const vm of vms) assert.equal((await item(vm)).state, 'Committed');
    assert.deepEqual((JSON.parse(await osr('--json', 'item', 'points', id('db'))) as { items: unknown[] }).items, [], 'the commit drops the other points');
    await assert.rejects(osr('item', 'change-recovery-point', id('db'), '--point', 'latest'), /INVALID_STATE: .*is Committed/);
    await osr('plan', 'reprotect', 'three-tier', '--wait', '--interval', '200ms');
    for (const vm of vms) {
      const i = await item(vm);
      assert.equal(i.state, 'Protected');
      assert.equal(i.replication.direction, 'recovery-to-primary');
    }
    // failback: a planned failover of the reprotected plan; the webhook is for the first direction only
    await waitFor('recovery points of the reverse direction', async () => (await Promise.all(vms.map(item))).every((i) => i.readiness.ready), 60_000, 500);
    const back = await osr('plan', 'planned-failover', 'three-tier', '--wait', '--interval', '200ms');
    assert.match(back, /planned-failover \(recovery-to-primary\) succeeded/);
    assert.equal(hooks.length, 1);
    const record = contexts('record-');
    assert.equal(record.length, 3);
    assert.equal(record[2]!.direction, 'recovery-to-primary');
    const failback = JSON.parse(await osr('--json', 'job', 'list', '--kind', 'plan-run', '--limit', '1')) as { items: { id: string }[] } | { id: string }[];
    const last = await job((Array.isArray(failback) ? failback : failback.items)[0]!.id);
    assert.equal(last.output!.actions.find((a) => a.name === 'record')!.output, 'recorded at vmm-newyork\n', 'scripts run where the VMs come up');
    await osr('plan', 'commit', 'three-tier', '--wait', '--interval', '200ms');
    await osr('plan', 'reprotect', 'three-tier', '--wait', '--interval', '200ms');
    for (const vm of vms) {
      const i = await item(vm);
      assert.equal(i.state, 'Protected');
      assert.equal(i.replication.direction, 'primary-to-recovery');
      assert.equal(i.replication.sourceFabricId, 'vmm-newyork');
    }
  });

  test('a vault killed with kill -9 in the middle of a plan run finishes the run after it starts again', async () => {
    await waitFor('recovery points after the failback', async () => (await Promise.all(vms.map(item))).every((i) => i.readiness.ready), 60_000, 500);
    const lab = readLabFile(dir)!;
    const started = JSON.parse(await osr('--json', 'plan', 'test-failover', 'three-tier')) as { jobId: string };
    await waitJob(started.jobId, ['WaitingForInput']);
    await osr('job', 'resume', started.jobId, '--comment', 'ok');
    // the slow script runs at the provider: the vault dies meanwhile
    await waitFor('the slow script running', () => contexts('slow-').length === 2, 60_000, 100);
    process.kill(lab.vault.pid, 'SIGKILL');
    await waitFor('the vault gone', () => {
      try {
        process.kill(lab.vault.pid, 0);
        return false;
      } catch {
        return true;
      }
    }, 10_000, 50);
    // the same vault again, on its address and data
    const logFd = fs.openSync(path.join(dir, 'vault', 'vault.log'), 'a');
    const vault = spawn(process.execPath, [OSR_BIN, 'vault', '--name', 'plan-vault', '--data-dir', path.join(dir, 'vault'), '--listen', `127.0.0.1:${port}`, '--heartbeat-interval', '5s', '--heartbeat-lost-after', '30s', '--job-lease', '10s', '--job-concurrency', '256', '--log-level', 'warn'], { stdio: ['ignore', logFd, logFd], detached: true });
    fs.closeSync(logFd);
    vault.unref();
    fs.writeFileSync(path.join(dir, 'lab.json'), JSON.stringify({ ...lab, vault: { ...lab.vault, pid: vault.pid } }, null, 2));
    const done = await waitJob(started.jobId, ['Succeeded'], 180_000);
    // parked for the manual step and resumed by the first vault, then taken over by the restarted one
    assert.equal(new Set(done.ranBy).size, 2, `taken over by the restarted vault: ${done.ranBy.join(', ')}`);
    assert.notEqual(done.ranBy.at(-1), done.ranBy[0]);
    assert.equal(done.output!.failed, 0);
    assert.equal(contexts('slow-').length, 2, 'the script in flight was not run again');
    for (const vm of vms) {
      assert.equal((await item(vm)).state, 'TestFailoverComplete');
      const runs = await api.request<{ items: { id: string; createdBy: string | null }[] }>('GET', `/api/v1/jobs?kind=test-failover&target=${id(vm)}&limit=100`);
      assert.equal(runs.items.filter((r) => r.createdBy === `plan-run:${started.jobId}`).length, 1, `one test failover job of ${vm} for the run`);
    }
    const cleanup = JSON.parse(await osr('--json', 'plan', 'test-failover-cleanup', 'three-tier')) as { jobId: string };
    await waitJob(cleanup.jobId, ['Succeeded']);
    assert.equal((JSON.parse(await osr('--json', 'plan', 'drills', 'three-tier')) as PlanDrill[]).length, 2);
  });
});
