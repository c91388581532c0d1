/**
 * Fencing that libvirt itself enforces: a fenced domain cannot be started, not even with
 * `virsh start` by hand; its autostart is off; lifting the fence lets it start again. A
 * domain without osr's fence starts as usual with the hook in place.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { FENCE_HOOK, fenceDomain, fenceOf, installFenceHook, unfenceDomain } from '../../src/agent/libvirt/fence.js';
import { tempDir, waitFor } from '../support/lab.js';
import { libvirtSkip, startTinyDomain, virsh, type TinyDomain } from '../support/libvirt.js';

const skip = libvirtSkip();
const dir = tempDir('osr-libvirt-fence-');
let dom: TinyDomain | undefined;

before(async () => {
  if (skip) return;
  const hook = installFenceHook();
  assert.equal(hook.changed, false, 'the fence hook was not in place when libvirtd started: run scripts/libvirt-up.sh');
  dom = await startTinyDomain(`osrt-fence-${process.pid}`, path.join(dir, 'domain'));
});
after(async () => {
  await dom?.destroy();
});

const state = async (name: string) => (await virsh.run(['domstate', name])).trim();

test('the hook is installed once, whole and executable; the shipped copy is the same script', { skip }, () => {
  const again = installFenceHook();
  assert.equal(again.changed, false);
  assert.equal(fs.readFileSync(again.file, 'utf8'), FENCE_HOOK);
  assert.equal(fs.statSync(again.file).mode & 0o777, 0o755);
  const shipped = new URL('../../../deploy/libvirt/50-osr-fence', import.meta.url);
  assert.equal(fs.readFileSync(shipped, 'utf8'), FENCE_HOOK, 'deploy/libvirt/50-osr-fence differs from the hook osr installs');
});

test('a fenced domain is refused by libvirt, even from virsh start; lifting the fence lets it run', { skip }, async () => {
  const d = dom!;
  await virsh.run(['autostart', d.name]);
  await virsh.run(['destroy', d.name]);
  await fenceDomain(virsh, d.name, 7);
  assert.equal(await fenceOf(virsh, d.name), 7);
  assert.match(await virsh.run(['dominfo', d.name]), /Autostart:\s+disable/);

  await assert.rejects(virsh.run(['start', d.name]), (e: Error) => {
    assert.match(e.message, /fenced/);
    assert.match(e.message, /epoch 7/);
    return true;
  });
  assert.equal(await state(d.name), 'shut off');

  // fencing twice is the same fence; a later epoch replaces it
  await fenceDomain(virsh, d.name, 9);
  assert.equal(await fenceOf(virsh, d.name), 9);

  await unfenceDomain(virsh, d.name);
  await unfenceDomain(virsh, d.name);
  assert.equal(await fenceOf(virsh, d.name), undefined);
  const acked = d.acked();
  await virsh.run(['start', d.name]);
  assert.equal(await state(d.name), 'running');
  await waitFor('the guest writing again', async () => (d.acked() > acked ? true : undefined), 120_000, 200);
});
