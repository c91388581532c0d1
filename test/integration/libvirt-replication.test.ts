/**
 * A libvirt domain replicated by osr end to end: `osr agent --host libvirt` on the KVM
 * host tracks the domain with QEMU dirty bitmaps (checkpoints and pull-mode backups read
 * over NBD) and replicates it to a replica agent over the usual wire. The tiny guest writes
 * fsynced records through its own kernel the whole time.
 *
 * - the initial copy and every delta reach the replica: a point holds every record
 *   acknowledged before its cycle and none after a gap;
 * - with the domain paused, a point equals its disks byte for byte;
 * - an app-consistent point is cut with the guest's file system frozen through
 *   qemu-guest-agent, and says so.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import type { ReplicationHealth } from '../../src/agent/wire/replication-types.js';
import { startPair, tempDir, waitFor, type Pair } from '../support/lab.js';
import { domainDiskHashes, libvirtSkip, recordsOnImage, startTinyDomain, virsh, type TinyDomain } from '../support/libvirt.js';

const skip = libvirtSkip();
const dir = tempDir('osr-libvirt-repl-');
const MiB = 1024 * 1024;
let pair: Pair | undefined;
let dom: TinyDomain | undefined;

before(async () => {
  if (skip) return;
  dom = await startTinyDomain(`osrt-repl-${process.pid}`, path.join(dir, 'domain'), { agent: true });
  pair = await startPair(path.join(dir, 'agents'), { primaryArgs: ['--host', 'libvirt', '--libvirt-domains', `^${dom.name}$`] });
});
after(async () => {
  await pair?.stop();
  await dom?.destroy();
});

async function health(): Promise<ReplicationHealth> {
  return pair!.primary.api.get<ReplicationHealth>(`/v1/replications/${dom!.name}`);
}

async function pointAfter(seq: number | null): Promise<number> {
  const h = await waitFor(
    `a recovery point after ${seq}`,
    async () => {
      const x = await health();
      if (x.lastError && x.lastError.code !== 'NETWORK_ERROR') throw new Error(`replication failed: ${x.lastError.code} ${x.lastError.message}`);
      return x.latestPoint && (seq === null || x.latestPoint.seq > seq) ? x : undefined;
    },
    240_000,
    250,
  );
  return h.latestPoint!.seq;
}

/** The disks of a point at the replica, read through an overlay over NBD; answers files and their hashes. */
async function pointDisks(seq: number): Promise<{ files: Record<string, string>; hashes: Record<string, string> }> {
  const overlay = await pair!.replica.api.post<{ id: string; disks: { name: string; nbd: { unix: string } }[] }>(`/v1/replicas/${dom!.name}/overlays`, { point: seq });
  const files: Record<string, string> = {};
  const hashes: Record<string, string> = {};
  try {
    for (const d of overlay.disks) {
      const c = await NbdClient.connect(d.nbd.unix);
      const file = path.join(dir, `point-${seq}-${d.name}.raw`);
      const fd = fs.openSync(file, 'w');
      const h = crypto.createHash('sha256');
      for (let off = 0; off < c.size; off += 4 * MiB) {
        const data = await c.read(off, Math.min(4 * MiB, c.size - off));
        h.update(data);
        fs.writeSync(fd, data, 0, data.length, off);
      }
      fs.closeSync(fd);
      await c.close();
      files[d.name] = file;
      hashes[d.name] = h.digest('hex');
    }
  } finally {
    await pair!.replica.api.delete(`/v1/replicas/${dom!.name}/overlays/${overlay.id}`);
  }
  return { files, hashes };
}


test('a libvirt domain replicates from its dirty bitmaps: every point holds a prefix of the guest\'s records; a paused domain\'s point equals its disks', { skip }, async () => {
  const { primary, replica } = pair!;
  const vms = await primary.api.get<{ name: string; id: string; running: boolean }[]>('/v1/vms');
  const mine = vms.find((v) => v.name === dom!.name);
  assert.ok(mine, `the agent does not list ${dom!.name}: ${JSON.stringify(vms)}`);
  assert.match(mine.id, /^[0-9a-f-]{36}$/, 'a domain\'s id is its libvirt UUID');
  assert.equal(mine.running, true);
  // QEMU serves the domain's disks to its guest, not the agent
  const disks = await primary.api.get<{ name: string; image: string; nbd: unknown }[]>(`/v1/vms/${dom!.name}/disks`);
  assert.deepEqual(disks.map((d) => [d.name, d.image, d.nbd]), [
    ['vda', dom!.images.vda, null],
    ['vdb', dom!.images.vdb, null],
  ]);

  // app-consistent points need the guest agent up: under load it answers some seconds after the guest's first records
  await waitFor('the guest agent', async () => {
    try {
      return JSON.parse(await virsh.run(['qemu-agent-command', dom!.name, '{"execute":"guest-ping"}'])).return !== undefined || undefined;
    } catch {
      return undefined;
    }
  }, 60_000, 500);
  await primary.api.post('/v1/replications', { vm: dom!.name, peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50, appConsistentFrequency: '1s' });
  const first = await pointAfter(null);
  const h1 = await health();
  assert.equal(h1.state, 'Replicating');

  // a cycle while the guest writes
  await waitFor('more records', async () => (dom!.acked() >= 20 ? true : undefined), 60_000, 200);
  const ackedBefore = dom!.acked();
  await primary.api.post(`/v1/replications/${dom!.name}/cycle`);
  const second = await pointAfter(first);
  const p2 = await pointDisks(second);
  const recs = recordsOnImage(p2.files.vda!);
  assert.deepEqual(recs, recs.map((_r, i) => i), 'records out of order or missing in the point');
  assert.ok(recs.at(-1)! >= ackedBefore, `record ${ackedBefore} was acknowledged before the cycle; the point ends at ${recs.at(-1)}`);

  // paused: the next point is the disks, byte for byte
  await virsh.run(['suspend', dom!.name]);
  try {
    await primary.api.post(`/v1/replications/${dom!.name}/cycle`);
    const third = await pointAfter(second);
    const p3 = await pointDisks(third);
    assert.deepEqual(p3.hashes, await domainDiskHashes(dom!.name, dir), 'the point is not the domain\'s disks');
  } finally {
    await virsh.run(['resume', dom!.name]);
  }
  // cycles asked for app-consistent points froze the guest through its agent (a freeze bounded at
  // 10 s can time out while a loaded TCG guest flushes: a few more cycles are asked for then)
  let points = await replica.api.get<{ seq: number; consistency: string }[]>(`/v1/replicas/${dom!.name}/points`);
  for (let more = 0; more < 3 && !points.some((p) => p.consistency === 'app-consistent'); more++) {
    await primary.api.post(`/v1/replications/${dom!.name}/cycle`);
    await pointAfter(points.at(-1)!.seq);
    points = await replica.api.get<{ seq: number; consistency: string }[]>(`/v1/replicas/${dom!.name}/points`);
  }
  const agentLog = () => {
    try {
      return fs.readFileSync(path.join(pair!.dir, 'primary.log'), 'utf8').split('\n').filter((l) => /freez|quiesce|agent/i.test(l)).slice(-5).join('\n');
    } catch {
      return '(no log)';
    }
  };
  assert.ok(points.some((p) => p.consistency === 'app-consistent'), `no app-consistent point: ${JSON.stringify(points.map((p) => p.consistency))}; the primary's log: ${agentLog()}`);
  // osr keeps one checkpoint of its own on the domain
  const cps = (await virsh.run(['checkpoint-list', dom!.name, '--name'])).split('\n').map((s) => s.trim()).filter(Boolean);
  assert.equal(cps.filter((c) => c.startsWith('osr-')).length, 1, `osr's checkpoints: ${cps.join(', ')}`);
});
