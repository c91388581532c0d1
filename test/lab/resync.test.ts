/**
 * Resynchronization on request through the vault, with real processes: a protected VM's
 * disks change, some of it behind replication's back (written into the image directly,
 * as another tool would); `POST /protected-items/{id}/resync` starts a job that has the
 * primary site's host compare every block with the replica and send those that differ.
 * The item is Resynchronizing meanwhile and Protected afterwards, the job reports the
 * bytes compared, and the resync's point at the replica equals the source disks. A
 * cancelled resync gives the item back the state it started from and its restart
 * converges; a resync of an item in another state, or of no item, is refused.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import YAML from 'yaml';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { AgentClient } from '../../src/cli/agent-client.js';
import { FINISHED_STATES, type JobView } from '../../src/cli/job-watch.js';
import { OsrError } from '../../src/domain/errors.js';
import type { ProtectedItem, VaultEvent } from '../../src/domain/resources.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { labAgents, labDown, readLabFile } from '../../src/lab/launcher.js';
import type { TopologySpec } from '../../src/lab/topology.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import { fileDigest, openOverlay, pointDigests, tempDir, waitFor, type DiskInfo } from '../support/lab.js';
import { site } from '../support/topology.js';

const run = promisify(execFile);
const dir = tempDir('osr-resync-');
let api: VaultClient;
const MiB = 1 << 20;
const DISK = 16 * MiB;
const ID = 'primary.db';

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 120_000 });
  return r.stdout;
}

const item = () => api.request<ProtectedItem>('GET', `/api/v1/protected-items/${ID}`);
const job = (id: string) => api.request<JobView>('GET', `/api/v1/jobs/${id}`);
const resync = (id = ID) => api.request<{ jobId: string; kind: string; state: string; url: string }>('POST', `/api/v1/protected-items/${encodeURIComponent(id)}/resync`);
const events = async () => (await api.request<{ items: VaultEvent[] }>('GET', `/api/v1/protected-items/${ID}/events?limit=100`)).items;
const agentAt = (host: string) => new AgentClient(labAgents(dir).find((a) => a.host === host)!.api);

interface ResyncDetail {
  fraction: number;
  bytesDone: number;
  bytesTotal: number;
  differingBytes: number;
}
interface ResyncOutput {
  resync: { id: string; reason: string; bytesTotal: number; differingBytes: number; startedAt: string; completedAt: string };
  recoveryPoint: { id: string; at: string } | null;
}

/** Follow a job until it ends, noting each state the item is seen in meanwhile. */
async function follow(jobId: string): Promise<{ job: JobView; states: Set<string> }> {
  const states = new Set<string>();
  const ended = await waitFor(
    `job ${jobId} to end`,
    async () => {
      states.add((await item()).state);
      const j = await job(jobId);
      return FINISHED_STATES.includes(j.state) ? j : undefined;
    },
    40_000,
    50,
  );
  return { job: ended, states };
}

/** The refusal an API call answered: its code and HTTP status. */
async function refusal(p: Promise<unknown>): Promise<OsrError> {
  const e = await p.then(
    () => assert.fail('the call was accepted'),
    (x: unknown) => x,
  );
  assert.ok(e instanceof OsrError, String(e));
  return e;
}

/** Overwrite `count` scattered 64 KiB ranges of an image file directly: changes replication never sees. */
function scribble(file: string, count: number): { offset: number; data: Buffer }[] {
  const out: { offset: number; data: Buffer }[] = [];
  const fd = fs.openSync(file, 'r+');
  try {
    for (let i = 0; i < count; i++) {
      const offset = (i * 4 + 1) * MiB + 4096 * crypto.randomInt(64);
      const data = crypto.randomBytes(64 * 1024);
      fs.writeSync(fd, data, 0, data.length, offset);
      out.push({ offset, data });
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return out;
}

/** The bytes of one disk of a recovery point at the replica, read through an overlay. */
async function readPoint(replica: AgentClient, vm: string, seq: number, disk: string, ranges: { offset: number; length: number }[]): Promise<Buffer[]> {
  const o = await openOverlay({ api: replica }, vm, seq);
  try {
    const c = await NbdClient.connect(o.disks.find((d) => d.name === disk)!.nbd.unix);
    try {
      const out: Buffer[] = [];
      for (const r of ranges) out.push(await c.read(r.offset, r.length));
      return out;
    } finally {
      await c.close();
    }
  } finally {
    await replica.delete(`/v1/replicas/${vm}/overlays/${o.id}`);
  }
}

before(async () => {
  const topology: TopologySpec = {
    name: 'resync',
    fabrics: [
      site('Primary', 'p-host', [{ name: 'db', host: 'p-host', disks: [{ name: 'system', size: '16M', storage: 'p-host-store' }, { name: 'data', size: '16M', storage: 'p-host-store' }], nics: [], workload: false }]),
      site('Recovery', 'r-host', []),
    ],
  };
  const file = path.join(dir, 'topology.in.yaml');
  fs.writeFileSync(file, YAML.stringify(topology));
  await osr('lab', 'up', '--dir', dir, '--topology', file, '--port', '0', '--detach', '--status-interval', '1s');
  const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { vault: string; token: string; ca: string };
  api = new VaultClient(cfg.vault, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
  await osr('policy', 'create', 'fast', '--copy-frequency', '30s', '--retention-hours', '1');
  await osr('pairing', 'create', '--policy', 'fast', '--source-cloud', 'primary.primary-cloud', '--target-cloud', 'recovery.recovery-cloud');
  await osr('item', 'enable', 'db', '--wait');
});

after(async () => {
  api?.close();
  await labDown(dir, () => undefined);
  assert.equal(readLabFile(dir), undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('resync on request', () => {
  test('a resync job compares every block, sends what differs, and leaves the item Protected with its replica equal to the source', async () => {
    assert.equal((await item()).state, 'Protected');
    const primary = agentAt('p-host');
    const replica = agentAt('r-host');
    const disks = await primary.get<DiskInfo[]>('/v1/vms/db/disks');
    assert.equal(disks.length, 2);

    // a write the guest makes (tracked), and changes made behind replication's back
    const guest = { offset: 5 * MiB, data: crypto.randomBytes(MiB) };
    const c = await NbdClient.connect((await osr('lab', 'nbd-uri', 'db', 'system', '--dir', dir)).trim());
    await c.write(guest.offset, guest.data);
    await c.flush();
    await c.close();
    const outside = scribble(disks[1]!.image, 3);
    const outsideBytes = outside.reduce((n, w) => n + w.data.length, 0);
    // replication never ships those: the replica's latest point does not hold them
    const before = await primary.get<{ latestPoint: { seq: number } }>('/v1/replications/db');
    const held = await readPoint(replica, 'db', before.latestPoint.seq, 'disk1', outside.map((w) => ({ offset: w.offset, length: w.data.length })));
    assert.ok(outside.every((w, i) => !held[i]!.equals(w.data)), 'the changes made outside replication are not at the replica yet');

    const r = await resync();
    assert.equal(r.kind, 'resync');
    assert.equal(r.url, `/api/v1/jobs/${r.jobId}`);
    const during = await item();
    assert.equal(during.state, 'Resynchronizing');
    assert.equal(during.activeJobId, r.jobId);
    // one job at a time: a second request meanwhile is refused, naming the running job
    const twice = await refusal(resync());
    assert.equal(twice.code, 'INVALID_STATE');
    assert.equal(twice.details?.status, 409);
    assert.equal(twice.details?.jobId, r.jobId);

    const { job: done, states } = await follow(r.jobId);
    assert.equal(done.state, 'Succeeded', JSON.stringify(done.error));
    assert.equal(done.target, ID);
    assert.ok(states.has('Resynchronizing'), `the item went through Resynchronizing (seen: ${[...states].join(', ')})`);
    assert.equal(done.progress, 1);
    const task = done.tasks!.find((t) => t.name === 'Resynchronize')!;
    assert.equal(task.state, 'Succeeded');
    assert.equal(task.progress, 1);
    const detail = task.detail as ResyncDetail;
    assert.equal(detail.bytesTotal, 2 * DISK, 'every block of both disks is compared');
    assert.equal(detail.bytesDone, detail.bytesTotal);
    assert.ok(detail.differingBytes >= outsideBytes && detail.differingBytes < detail.bytesTotal, `${detail.differingBytes} bytes differed (${outsideBytes} written outside replication)`);
    const output = done.output as ResyncOutput;
    assert.equal(output.resync.reason, 'asked for');
    assert.equal(output.resync.differingBytes, detail.differingBytes);
    assert.ok(output.recoveryPoint, 'the job answers the resync\'s point');

    const afterwards = await item();
    assert.equal(afterwards.state, 'Protected');
    assert.equal(afterwards.activeJobId, null);
    assert.equal(afterwards.progress, null);
    const completed = (await events()).find((e) => e.kind === 'resync.completed' && e.details?.job === r.jobId);
    assert.ok(completed, 'a resync.completed event');
    assert.equal(completed.severity, 'Info');
    assert.equal(completed.details?.differingBytes, detail.differingBytes);

    // the resync's point at the replica: the source's disks, byte for byte
    const seq = Number(output.recoveryPoint.id);
    assert.ok(seq > before.latestPoint.seq);
    assert.deepEqual(await pointDigests({ api: replica }, 'db', seq), disks.map((d) => fileDigest(d.image, d.size).digest), 'the replica equals the source after the resync');
    const [back] = await readPoint(replica, 'db', seq, 'disk0', [{ offset: guest.offset, length: guest.data.length }]);
    assert.ok(back!.equals(guest.data), 'the guest\'s write is at the replica');
    const fixed = await readPoint(replica, 'db', seq, 'disk1', outside.map((w) => ({ offset: w.offset, length: w.data.length })));
    assert.ok(outside.every((w, i) => fixed[i]!.equals(w.data)), 'the changes made outside replication are at the replica');
    // and the vault learns of the point with the recovery site's next report
    await waitFor('the resync\'s point among the item\'s points', async () => (await api.request<{ items: { id: string }[] }>('GET', `/api/v1/protected-items/${ID}/recovery-points`)).items.some((p) => p.id === output.recoveryPoint!.id), 20_000, 200);
  });

  test('osr item resync --wait follows the job; disks in step with their replica send nothing', async () => {
    const out = await osr('item', 'resync', 'db', '--wait', '--interval', '200ms');
    const jobId = /resync of db: job ([0-9a-f-]{36})/.exec(out)?.[1];
    assert.ok(jobId, out);
    assert.match(out, /Succeeded .* done/);
    const done = await job(jobId);
    assert.equal(done.state, 'Succeeded');
    const detail = done.tasks!.find((t) => t.name === 'Resynchronize')!.detail as ResyncDetail;
    assert.equal(detail.bytesTotal, 2 * DISK);
    assert.equal(detail.differingBytes, 0, 'nothing differs: nothing is sent');
    assert.equal((await item()).state, 'Protected');
    // --json answers the job as JSON
    const started = JSON.parse((await osr('--json', 'item', 'resync', ID)).trim()) as { jobId: string; kind: string };
    assert.equal(started.kind, 'resync');
    assert.equal((await follow(started.jobId)).job.state, 'Succeeded');
  });

  test('a cancelled resync gives the item back the state it started from; its restart converges', async () => {
    const r = await resync();
    await api.request('POST', `/api/v1/jobs/${r.jobId}/cancel`);
    const { job: cancelled } = await follow(r.jobId);
    assert.equal(cancelled.state, 'Cancelled');
    const back = await item();
    assert.equal(back.state, 'Protected');
    assert.equal(back.activeJobId, null);
    const failed = (await events()).find((e) => e.kind === 'resync.failed' && e.details?.job === r.jobId);
    assert.ok(failed, 'a resync.failed event');
    assert.equal(failed.severity, 'Warning');
    assert.match(failed.message, /was cancelled/);

    await api.request('POST', `/api/v1/jobs/${r.jobId}/restart`);
    const { job: restarted, states } = await follow(r.jobId);
    assert.equal(restarted.state, 'Succeeded', JSON.stringify(restarted.error));
    assert.ok(states.has('Resynchronizing'), `the restarted job took the item again (seen: ${[...states].join(', ')})`);
    assert.equal(restarted.progress, 1);
    assert.equal((await item()).state, 'Protected');
    assert.ok((await events()).some((e) => e.kind === 'resync.completed' && e.details?.job === r.jobId));
  });

  test('a resync is refused for an item in another state, and for no item', async () => {
    const missing = await refusal(resync('primary.nope'));
    assert.equal(missing.code, 'NOT_FOUND');
    assert.equal(missing.details?.status, 404);
    await assert.rejects(osr('item', 'resync', 'nope'), /NOT_FOUND/);

    await osr('item', 'test-failover', ID, '--wait');
    assert.equal((await item()).state, 'TestFailoverComplete');
    const wrong = await refusal(resync());
    assert.equal(wrong.code, 'INVALID_STATE');
    assert.equal(wrong.details?.status, 409);
    assert.match(wrong.message, /is TestFailoverComplete; resync starts from Protected or ResyncRequired/);
    assert.equal((await item()).state, 'TestFailoverComplete', 'a refused resync leaves the item as it was');
    await osr('item', 'test-failover-cleanup', ID, '--wait');
    assert.equal((await item()).state, 'Protected');
  });
});
