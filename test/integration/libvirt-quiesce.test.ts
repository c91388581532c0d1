/**
 * App-consistent points through qemu-guest-agent: the guest's file system is frozen while
 * the point is cut (its writes wait) and always thawed after, even when cutting failed; a
 * guest without an agent gets a crash-consistent point and the reason.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { withFrozenFilesystems } from '../../src/agent/libvirt/quiesce.js';
import { tempDir, waitFor } from '../support/lab.js';
import { libvirtSkip, startTinyDomain, virsh, type TinyDomain } from '../support/libvirt.js';

const skip = libvirtSkip();
const dir = tempDir('osr-libvirt-quiesce-');
let withAgent: TinyDomain | undefined;
let without: TinyDomain | undefined;

before(async () => {
  if (skip) return;
  withAgent = await startTinyDomain(`osrt-qga-${process.pid}`, path.join(dir, 'qga'), { agent: true });
  without = await startTinyDomain(`osrt-noqga-${process.pid}`, path.join(dir, 'noqga'));
});
after(async () => {
  await withAgent?.destroy();
  await without?.destroy();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('the file system is frozen while the point is cut, and thawed after; the guest agent answers a ping', { skip }, async () => {
  const d = withAgent!;
  await waitFor('the guest agent', async () => {
    try {
      return JSON.parse(await virsh.run(['qemu-agent-command', d.name, '{"execute":"guest-ping"}'])).return !== undefined || undefined;
    } catch {
      return undefined;
    }
  }, 60_000, 500);
  const out = await withFrozenFilesystems(virsh, d.name, async () => {
    const at = d.acked();
    await sleep(2000);
    // writes wait while frozen: at most the one in flight was acknowledged
    return { during: d.acked() - at };
  });
  assert.equal(out.frozen, true, out.reason);
  assert.ok(out.result.during <= 1, `the guest acknowledged ${out.result.during} records while frozen`);
  const after = d.acked();
  await waitFor('writes after the thaw', async () => (d.acked() > after + 3 ? true : undefined), 30_000, 200);
});

test('a failed cut still thaws the guest', { skip }, async () => {
  const d = withAgent!;
  await assert.rejects(
    withFrozenFilesystems(virsh, d.name, async () => {
      throw new Error('the backup could not begin');
    }),
    /could not begin/,
  );
  const after = d.acked();
  await waitFor('writes after the thaw', async () => (d.acked() > after + 3 ? true : undefined), 30_000, 200);
});

test('without a guest agent: a crash-consistent point, and the reason', { skip }, async () => {
  const d = without!;
  const out = await withFrozenFilesystems(virsh, d.name, async () => 'cut', { timeoutMs: 5000 });
  assert.deepEqual([out.result, out.frozen], ['cut', false]);
  assert.match(out.reason ?? '', /agent/i);
  const after = d.acked();
  await waitFor('writes going on', async () => (d.acked() > after + 3 ? true : undefined), 30_000, 200);
});
