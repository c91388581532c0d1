/**
 * Failover of a real libvirt domain between two `osr agent --host libvirt` processes on
 * one libvirtd (each owns the domains of its name prefix: osr-fa- is the primary site,
 * osr-fb- the recovery site). The tiny guest writes fsynced, numbered records through its
 * own kernel the whole time.
 *
 * - unplanned failover after kill -9 of the source QEMU and the source agent: the replica's
 *   domain boots from the point, its file system mounts and holds every record up to the
 *   point's instant and none after; a change of point restarts it from another; the
 *   commit folds its writes into the replica's images while the guest runs on;
 * - the fenced old primary cannot be started with `virsh start`;
 * - reprotect: the old primary's disks become the replica (converted once to raw images)
 *   and reverse replication sends only the blocks that differ;
 * - failback by planned failover: the domain is shut down, its last writes shipped, and
 *   the original domain at the primary site boots with every record the guest acknowledged.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { imageInfo } from '../../src/agent/libvirt/images.js';
import { readDomain } from '../../src/agent/libvirt/inventory.js';
import type { ReplicationHealth } from '../../src/agent/wire/replication-types.js';
import { restartAgentProcess, stopAgentProcess } from '../../src/lab/agent-process.js';
import { waitFor, type Pair } from '../support/lab.js';
import { libvirtSkip, qemuPid, recordsOnImage, startFailoverSites, virsh, type FailoverSites, type TinyDomain } from '../support/libvirt.js';

const skip = libvirtSkip();
let sites: FailoverSites | undefined;
let pair: Pair | undefined;
let dom: TinyDomain | undefined;
let VM = '';
let A = '';
let B = '';

before(async () => {
  if (skip) return;
  sites = await startFailoverSites('osr-fo', { primaryListens: true });
  ({ pair, dom, vm: VM, a: A, b: B } = sites);
});
after(async () => {
  await sites?.close();
});

type Api = Pair['primary']['api'];

async function pointAfter(api: Api, seq: number | null): Promise<number> {
  const h = await waitFor(
    `a recovery point after ${seq}`,
    async () => {
      const x = await api.get<ReplicationHealth>(`/v1/replications/${VM}`);
      if (x.lastError && !['NETWORK_ERROR', 'DOMAIN_BUSY'].includes(x.lastError.code)) throw new Error(`replication failed: ${x.lastError.code} ${x.lastError.message}`);
      return x.latestPoint && (seq === null || x.latestPoint.seq > seq) ? x : undefined;
    },
    300_000,
    250,
  );
  return h.latestPoint!.seq;
}

const domState = async (domain: string) => (await virsh.run(['domstate', domain])).trim();

const logTail = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, 'utf8').slice(-3000) : '(no log)');

/** Forget what a console showed so far (the guest is about to start again). */
const resetConsole = (file: string) => {
  if (fs.existsSync(file)) fs.truncateSync(file, 0);
};

/** The record count the guest found on its disk when it last mounted it (its console). */
async function mountedNext(consoleLog: string): Promise<number> {
  return waitFor(
    'the guest to mount its file system',
    () => {
      const text = fs.existsSync(consoleLog) ? fs.readFileSync(consoleLog, 'latin1') : '';
      if (text.includes('osr-guest: mount failed')) throw new Error(`the recovered file system did not mount: ${text.slice(-2000)}`);
      const m = [...text.matchAll(/osr-guest: mounted next=(\d+)/g)].at(-1);
      return m ? Number(m[1]) : undefined;
    },
    180_000,
    200,
  );
}

test('a libvirt domain fails over after kill -9 of QEMU and its agent, commits, is reprotected and fails back with every acknowledged record', { skip, timeout: 1_500_000 }, async () => {
  const { primary, replica } = pair!;
  const machine = (await readDomain(virsh, A)).machine;
  await primary.api.post('/v1/replications', { vm: VM, peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50 });
  const first = await pointAfter(primary.api, null);
  await waitFor('more records', async () => (dom!.acked() >= 15 ? true : undefined), 120_000, 200);
  const ackedBefore = dom!.acked();
  await primary.api.post(`/v1/replications/${VM}/cycle`);
  const second = await pointAfter(primary.api, first);

  // the disaster: the source's QEMU and agent die at once
  await waitFor('a few more records', async () => (dom!.acked() >= ackedBefore + 5 ? true : undefined), 120_000, 200);
  process.kill(qemuPid(A), 'SIGKILL');
  await stopAgentProcess(primary, 'SIGKILL');
  const ackedAtKill = dom!.acked();

  const promoted = await replica.api.post<{ epoch: number; point: { seq: number }; pending: boolean }>(`/v1/replicas/${VM}/promote`, { start: true, commit: false, machine });
  assert.equal(promoted.point.seq, second);
  assert.equal(promoted.pending, true);
  const vms = await replica.api.get<{ name: string; id: string }[]>('/v1/vms');
  const vmId = vms.find((v) => v.name === VM)?.id;
  assert.ok(vmId, `the recovery agent lists no ${VM}: ${JSON.stringify(vms)}`);
  const consoleB = path.join(replica.options.dataDir, 'libvirt', vmId, 'console.log');
  const next = await mountedNext(consoleB);
  assert.ok(next - 1 >= ackedBefore, `record ${ackedBefore} was acknowledged before the point's cycle; the failed-over disk holds ${next} records`);
  assert.ok(next - 1 <= ackedAtKill, `the failed-over disk holds ${next} records, more than the ${ackedAtKill + 1} written before the disaster`);
  assert.equal(await domState(B), 'running');
  // the guest runs from a layer over the replica's images: no osr process in its data path
  assert.match((await readDomain(virsh, B)).disks[0]!.file ?? '', /\.top\.qcow2$/);

  // another point: the domain restarts from it, what it wrote is discarded
  resetConsole(consoleB);
  await replica.api.post(`/v1/vms/${VM}/recovery-point`, { point: first });
  const nextFirst = await mountedNext(consoleB);
  assert.ok(nextFirst <= next, `point ${first} holds ${nextFirst} records, more than the later point's ${next}`);
  resetConsole(consoleB);
  await replica.api.post(`/v1/vms/${VM}/recovery-point`, { point: second });
  assert.equal(await mountedNext(consoleB), next, 'back on the later point, the guest finds its records again');

  // commit: the guest runs on, its writes folded into the replica's images
  const pidBefore = qemuPid(B);
  await waitFor('the failed-over guest to write', async () => (/osr-guest: ack \d+/.test(fs.readFileSync(consoleB, 'latin1')) ? true : undefined), 60_000, 200);
  const committed = await replica.api.post<{ pending: boolean }>(`/v1/vms/${VM}/commit`);
  assert.equal(committed.pending, false);
  assert.equal(qemuPid(B), pidBefore, 'the commit did not restart the guest');
  const afterCommit = await readDomain(virsh, B);
  assert.ok(afterCommit.disks.every((d) => !(d.file ?? '').includes('.top.')), `the domain still runs from its layers: ${JSON.stringify(afterCommit.disks)}`);
  const ackB = () => Math.max(-1, ...[...fs.readFileSync(consoleB, 'latin1').matchAll(/osr-guest: ack (\d+)/g)].map((m) => Number(m[1])));
  const acked1 = ackB();
  await waitFor('the guest to go on writing after the commit', async () => (ackB() >= acked1 + 3 ? true : undefined), 60_000, 200);

  // the old primary comes back: its replication learns of the newer epoch, and the domain is fenced
  pair!.primary = await restartAgentProcess(primary);
  const p2 = pair!.primary;
  await waitFor(
    'the old primary to be fenced',
    async () => {
      const list = await p2.api.get<{ name: string; fenced: unknown }[]>('/v1/vms');
      return list.find((v) => v.name === VM)?.fenced ? true : undefined;
    },
    120_000,
    500,
  ).catch((e: unknown) => {
    throw new Error(`${String(e)}; the old primary's log ends: ${logTail(path.join(pair!.dir, 'primary.log'))}`);
  });
  await waitFor('the fence in the domain\'s definition', async () => ((await readDomain(virsh, A)).fenceEpoch === promoted.epoch ? true : undefined), 30_000, 250);
  await assert.rejects(virsh.run(['start', A]), /fence|epoch|hook/i, 'libvirt started the fenced old primary');
  assert.equal(await domState(A), 'shut off');

  // reprotect: the old primary's disks become the replica, and only what differs is sent back
  const demoted = await p2.api.post<{ divergentBytes: number | null }>(`/v1/vms/${VM}/demote`, { epoch: promoted.epoch, source: 'replica' });
  assert.equal(demoted.divergentBytes, null, 'the writes since the last point are in QEMU\'s bitmap: every block is compared');
  await replica.api.post('/v1/replications', { vm: VM, peer: `127.0.0.1:${p2.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50 });
  const back = await pointAfter(replica.api, null);
  const h = await replica.api.get<ReplicationHealth & { resync: { differingBytes: number; totalBytes: number } | null }>(`/v1/replications/${VM}`);
  assert.ok(h.resync, 'reverse replication compared the disks');
  assert.ok(h.resync.differingBytes < h.resync.totalBytes / 4, `reverse replication sent ${h.resync.differingBytes} of ${h.resync.totalBytes} bytes`);

  // failback: a planned failover shuts the guest down, ships its last writes, and the original domain boots
  const ackedBeforeShutdown = ackB();
  const prepared = await replica.api.post<{ point: { seq: number } }>(`/v1/replications/${VM}/prepare-failover`, { timeout: '60s' });
  assert.ok(prepared.point.seq > back, `the planned failover shipped no point after ${back}: ${JSON.stringify(prepared)}; the log ends: ${logTail(path.join(pair!.dir, "replica.log"))}`);
  const ackedAtShutdown = ackB();
  assert.ok(ackedAtShutdown >= ackedBeforeShutdown);
  assert.equal(await domState(B), 'shut off');
  const home = await p2.api.post<{ point: { seq: number }; pending: boolean; epoch: number }>(`/v1/replicas/${VM}/promote`, { start: false, commit: true });
  assert.equal(home.point.seq, prepared.point.seq);
  const images = await Promise.all((await readDomain(virsh, A)).disks.map(async (d) => (await imageInfo(d.file!)).dataFile));
  assert.ok(images.every((f) => f !== undefined), `the original domain runs from the replica's images, wrapped: ${await virsh.run(['dumpxml', A, '--inactive'])}`);
  const recs = recordsOnImage(images[0]!);
  assert.deepEqual(recs, recs.map((_r, i) => i), 'records out of order or missing after failback');
  assert.ok(recs.length - 1 >= ackedAtShutdown, `record ${ackedAtShutdown} was acknowledged before the planned failover; the disk holds ${recs.length}`);
  const consoleA = dom!.console;
  resetConsole(consoleA);
  await virsh.run(['start', A]);
  assert.equal(await mountedNext(consoleA), recs.length, 'the original domain boots on its own disks with every record');

  // reprotect after the planned failback: the recovery site's domain stopped cleanly, so its
  // last writes are read from its bitmap and only the ranges either side wrote are sent
  const demotedB = await replica.api.post<{ divergentBytes: number | null }>(`/v1/vms/${VM}/demote`, { epoch: home.epoch, source: 'primary' });
  assert.equal(typeof demotedB.divergentBytes, 'number', 'a domain shut down cleanly has a bitmap that can be read');
  await p2.api.post('/v1/replications', { vm: VM, peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50 });
  await pointAfter(p2.api, null);
  const h2 = await p2.api.get<ReplicationHealth & { resync: { totalBytes: number } | null }>(`/v1/replications/${VM}`);
  const diskBytes = 80 * 1024 * 1024;
  assert.ok(h2.resync && h2.resync.totalBytes < diskBytes / 4, `reverse replication went over ${h2.resync?.totalBytes} bytes: more than the ranges written since the failback`);
});
