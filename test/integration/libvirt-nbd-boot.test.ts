/**
 * QEMU boots from osr's NBD server, both ways round: a libvirt domain whose disks are an
 * agent's disks over NBD writes through its own kernel while the agent replicates them;
 * then a second domain boots from a recovery point of the replica (a writable overlay
 * served by the replica's agent, as a test failover does), mounts the file system the
 * point holds, and writes on from the records the point has, while replication goes on.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { xmlText } from '../../src/agent/libvirt/virsh.js';
import { NbdClient, parseNbdUri } from '../../src/agent/nbd/nbd-client.js';
import { tinyGuest } from '../../src/lab/tiny-guest.js';
import { createVm, startPair, tempDir, waitFor, waitForPoint, type Pair } from '../support/lab.js';
import { libvirtSkip, recordsOnImage, removeDomain, virsh } from '../support/libvirt.js';

const skip = libvirtSkip();
const dir = tempDir('osr-libvirt-nbd-');
const MiB = 1024 * 1024;
let pair: Pair | undefined;
const domains: string[] = [];

before(async () => {
  if (skip) return;
  pair = await startPair(path.join(dir, 'agents'));
});
after(async () => {
  for (const d of domains) await removeDomain(d).catch(() => undefined);
  await pair?.stop();
});

/** A domain running the tiny guest from NBD disks (unix sockets); answers a reader of its acknowledged records. */
async function bootFromNbd(name: string, uris: string[]): Promise<{ acked(): number; console: string }> {
  const guest = await tinyGuest();
  const consoleLog = path.join(dir, `${name}.console`);
  const disks = uris.map((uri, i) => {
    const t = parseNbdUri(uri);
    if (!('socketPath' in t)) throw new Error(`not a unix socket: ${uri}`);
    return `<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/><source protocol='nbd' name='${xmlText(t.exportName)}'><host transport='unix' socket='${xmlText(t.socketPath)}'/></source><target dev='vd${String.fromCharCode(97 + i)}' bus='virtio'/></disk>`;
  });
  const xml = `<domain type='qemu'><name>${xmlText(name)}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>${xmlText(guest.kernel)}</kernel><initrd>${xmlText(guest.initrd)}</initrd><cmdline>${xmlText(`${guest.cmdline} osr.interval=0.1`)}</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>${disks.join('')}<serial type='file'><source path='${xmlText(consoleLog)}'/><target port='0'/></serial></devices></domain>`;
  await removeDomain(name);
  domains.push(name);
  await virsh.withXml(xml, (f) => ['define', f]);
  await virsh.run(['start', name]);
  const acked = () => {
    const all = [...(fs.existsSync(consoleLog) ? fs.readFileSync(consoleLog, 'latin1') : '').matchAll(/osr-guest: ack (\d+)/g)];
    return all.length > 0 ? Number(all.at(-1)![1]) : -1;
  };
  return { acked, console: consoleLog };
}

test('a domain writes through osr\'s NBD server while the agent replicates; another boots from a recovery point of the replica', { skip }, async () => {
  const { primary, replica } = pair!;
  // the guest's system disk: an ext4 file system written into the agent's disk over NBD
  const vmDisks = await createVm(primary, 'kvm1', ['64M', '16M']);
  const fsImage = path.join(dir, 'fs.raw');
  fs.writeFileSync(fsImage, '');
  fs.truncateSync(fsImage, 64 * MiB);
  execFileSync('mkfs.ext4', ['-q', '-F', fsImage]);
  const c = await NbdClient.connect(vmDisks[0]!.nbd.unix);
  const img = fs.readFileSync(fsImage);
  for (let off = 0; off < img.length; off += MiB) {
    const chunk = img.subarray(off, off + MiB);
    if (chunk.some((b) => b !== 0)) await c.write(off, chunk);
  }
  await c.flush();
  await c.close();

  const src = await bootFromNbd(`osr-test-nbd-src-${process.pid}`, vmDisks.map((d) => d.nbd.unix));
  await waitFor('the guest writing records through osr\'s NBD server', async () => (src.acked() >= 10 ? true : undefined), 180_000, 200);
  await primary.api.post('/v1/replications', { vm: 'kvm1', peer: `127.0.0.1:${replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50 });
  const first = await waitForPoint(primary, 'kvm1', null, 180_000);
  const ackedBefore = src.acked();
  await primary.api.post('/v1/replications/kvm1/cycle');
  const h = await waitForPoint(primary, 'kvm1', first.latestPoint!.seq + 1, 180_000);
  const seq = h.latestPoint!.seq;

  // a test failover's domain: the point opened writable at the replica, served over NBD
  const overlay = await replica.api.post<{ id: string; disks: { name: string; nbd: { unix: string } }[] }>('/v1/replicas/kvm1/overlays', { point: seq });
  const drill = await bootFromNbd(`osr-test-nbd-drill-${process.pid}`, overlay.disks.map((d) => d.nbd.unix));
  const mounted = await waitFor('the drill guest to mount the point\'s file system', async () => {
    const m = /osr-guest: mounted next=(\d+)/.exec(fs.existsSync(drill.console) ? fs.readFileSync(drill.console, 'latin1') : '');
    if (/mount failed/.test(fs.existsSync(drill.console) ? fs.readFileSync(drill.console, 'latin1') : '')) throw new Error('the drill guest could not mount the point');
    return m ? Number(m[1]) : undefined;
  }, 180_000, 200);
  // the point holds every record acknowledged before the cycle that made it
  assert.ok(mounted - 1 >= ackedBefore, `the point ends at record ${mounted - 1}; ${ackedBefore} was acknowledged before its cycle`);
  await waitFor('the drill guest writing on', async () => (drill.acked() >= mounted + 3 ? true : undefined), 120_000, 200);

  // replication goes on beneath the drill, and the source guest never stopped
  const before = src.acked();
  await primary.api.post('/v1/replications/kvm1/cycle');
  await waitForPoint(primary, 'kvm1', seq + 1, 180_000);
  assert.ok(src.acked() >= before);

  // the drill's writes stay in its overlay: the point itself is unchanged
  await removeDomain(`osr-test-nbd-drill-${process.pid}`);
  await replica.api.delete(`/v1/replicas/kvm1/overlays/${overlay.id}`);
  const again = await replica.api.post<{ id: string; disks: { name: string; nbd: { unix: string } }[] }>('/v1/replicas/kvm1/overlays', { point: seq });
  const r = await NbdClient.connect(again.disks[0]!.nbd.unix);
  const copy = path.join(dir, 'point.raw');
  const fd = fs.openSync(copy, 'w');
  for (let off = 0; off < r.size; off += 4 * MiB) fs.writeSync(fd, await r.read(off, Math.min(4 * MiB, r.size - off)), 0, undefined, off);
  fs.closeSync(fd);
  await r.close();
  await replica.api.delete(`/v1/replicas/kvm1/overlays/${again.id}`);
  const records = recordsOnImage(copy);
  assert.deepEqual(records, records.map((_r, i) => i));
  assert.equal(records.length, mounted, 'the drill\'s writes reached the point');
});
