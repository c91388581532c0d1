/**
 * A KVM host's facts read from its libvirtd: domains with state, memory, vCPUs, disks and
 * NICs; networks (isolated or forwarding); storage pools. Drill networks are isolated,
 * made once per name and removed without a trace.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ensureIsolatedNetwork, readHostInventory, removeNetwork } from '../../src/agent/libvirt/inventory.js';
import { tempDir } from '../support/lab.js';
import { libvirtSkip, startTinyDomain, virsh, type TinyDomain } from '../support/libvirt.js';

const skip = libvirtSkip();
const dir = tempDir('osr-libvirt-inv-');
const tag = `osrt${process.pid % 100000}`;
let dom: TinyDomain | undefined;

before(async () => {
  if (skip) return;
  dom = await startTinyDomain(`osrt-inv-${process.pid}`, path.join(dir, 'domain'));
  fs.mkdirSync(path.join(dir, 'pool'));
  await virsh.withXml(`<pool type='dir'><name>${tag}-pool</name><target><path>${path.join(dir, 'pool')}</path></target></pool>`, (f) => ['pool-define', f]);
  await virsh.run(['pool-start', `${tag}-pool`]);
});
after(async () => {
  await dom?.destroy();
  if (!skip) {
    await virsh.run(['pool-destroy', `${tag}-pool`]).catch(() => undefined);
    await virsh.run(['pool-undefine', `${tag}-pool`]).catch(() => undefined);
    await removeNetwork(virsh, `${tag}-drill`).catch(() => undefined);
  }
});

test('the host\'s domains, networks and pools, as libvirt has them', { skip }, async () => {
  const inv = await readHostInventory(virsh, { domains: (n) => n === dom!.name });
  assert.equal(inv.domains.length, 1);
  const d = inv.domains[0]!;
  assert.deepEqual([d.name, d.running, d.state, d.memoryMiB, d.vcpus, d.autostart], [dom!.name, true, 'running', 256, 1, false]);
  assert.match(d.uuid, /^[0-9a-f-]{36}$/);
  assert.deepEqual(d.disks.map((k) => [k.target, k.format, k.file]), [
    ['vda', 'qcow2', dom!.images.vda],
    ['vdb', 'qcow2', dom!.images.vdb],
  ]);
  const pool = inv.pools.find((p) => p.name === `${tag}-pool`)!;
  assert.deepEqual([pool.type, pool.path, pool.active], ['dir', path.join(dir, 'pool'), true]);
  assert.ok(pool.capacityBytes > 0 && pool.availableBytes > 0 && pool.availableBytes <= pool.capacityBytes);
});

test('a drill\'s network is isolated, made once, and removed without a trace', { skip }, async () => {
  const name = `${tag}-drill`;
  const a = await ensureIsolatedNetwork(virsh, name);
  const b = await ensureIsolatedNetwork(virsh, name);
  assert.equal(a.bridge, b.bridge);
  assert.ok(a.bridge.length > 0);
  const net = (await readHostInventory(virsh, { domains: () => false })).networks.find((n) => n.name === name)!;
  assert.deepEqual([net.active, net.forward, net.bridge], [true, undefined, a.bridge]);
  await removeNetwork(virsh, name);
  await removeNetwork(virsh, name);
  assert.equal((await readHostInventory(virsh, { domains: () => false })).networks.some((n) => n.name === name), false);
  assert.equal(fs.existsSync(`/sys/class/net/${a.bridge}`), false, 'the bridge is gone');
});
