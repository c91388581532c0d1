/**
 * A libvirt failover survives kill -9 of the recovery agent at each of its steps
 * (docs/design/failover.md, crash points): killed once the copy-on-write layers are made,
 * the restarted agent defines and starts the domain; killed once the domain is defined, it
 * starts it; killed with one disk's layer folded into its image, it finishes the commit —
 * and the guest, which QEMU keeps running meanwhile, never restarts.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { imageInfo } from '../../src/agent/libvirt/images.js';
import { readDomain } from '../../src/agent/libvirt/inventory.js';
import type { ReplicationHealth } from '../../src/agent/wire/replication-types.js';
import { restartAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
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
  sites = await startFailoverSites('osr-fc');
  ({ pair, dom, vm: VM, a: A, b: B } = sites);
});
after(async () => {
  await sites?.close();
});


/** The agent, restarted with OSR_TEST_CRASH_AT set to `at` (or unset). */
async function restart(a: RunningAgent, at?: string): Promise<RunningAgent> {
  await stopAgentProcess(a, 'SIGKILL');
  return restartAgentProcess(a, { env: at ? { OSR_TEST_CRASH_AT: at } : {} });
}

/** The call fails because the agent killed itself at its crash point. */
async function crashes(a: RunningAgent, call: Promise<unknown>): Promise<void> {
  await assert.rejects(call);
  await waitFor('the agent to die at its crash point', async () => (a.child.exitCode !== null || a.child.signalCode !== null ? true : undefined), 60_000, 100);
}

test('a libvirt promotion and its commit finish after kill -9 of the recovery agent at each step, the guest never restarted', { skip, timeout: 900_000 }, async () => {
  const machine = (await readDomain(virsh, A)).machine;
  await pair!.primary.api.post('/v1/replications', { vm: VM, peer: `127.0.0.1:${pair!.replica.replicationPort}`, copyFrequency: '1h', retentionHours: 24, maxPoints: 50 });
  await waitFor('a first point', async () => ((await pair!.primary.api.get<ReplicationHealth>(`/v1/replications/${VM}`)).latestPoint ? true : undefined), 300_000, 250);
  await waitFor('records', async () => (dom!.acked() >= 10 ? true : undefined), 120_000, 200);
  await pair!.primary.api.post(`/v1/replications/${VM}/cycle`);
  await waitFor('a second point', async () => (((await pair!.primary.api.get<ReplicationHealth>(`/v1/replications/${VM}`)).latestPoint?.seq ?? 0) >= 2 ? true : undefined), 120_000, 250);
  process.kill(qemuPid(A), 'SIGKILL');
  await stopAgentProcess(pair!.primary, 'SIGKILL');

  // killed with the layers made: the restart defines the domain and starts it
  let replica = await restart(pair!.replica, 'libvirt:layers-made');
  await crashes(replica, replica.api.post(`/v1/replicas/${VM}/promote`, { start: true, commit: false, machine }));
  // the restart goes on with the promotion, and is killed once the domain is defined; the next one starts it
  await assert.rejects(restart(replica, 'libvirt:defined'), /before it started/);
  replica = await restart(replica);
  pair!.replica = replica;
  await waitFor('the failed-over domain to run', async () => ((await virsh.run(['domstate', B])).trim() === 'running' ? true : undefined), 120_000, 250);
  const vmId = (await replica.api.get<{ name: string; id: string }[]>('/v1/vms')).find((v) => v.name === VM)!.id;
  const consoleB = path.join(replica.options.dataDir, 'libvirt', vmId, 'console.log');
  await waitFor('the guest to mount and write', async () => (/osr-guest: mounted[\s\S]*osr-guest: ack/.test(fs.existsSync(consoleB) ? fs.readFileSync(consoleB, 'latin1') : '') ? true : undefined), 180_000, 200);
  const pid = qemuPid(B);
  // the replica under a running failover is not deleted, nor written by a primary
  await assert.rejects(replica.api.delete(`/v1/replicas/${VM}`), (e: { code?: string }) => e.code === 'INVALID_STATE');

  // killed with one disk's layer folded in: the restart finishes the commit
  replica = await restart(replica, 'libvirt:disk-committed');
  await crashes(replica, replica.api.post(`/v1/vms/${VM}/commit`));
  // the restart goes on with the commit: the next disk's fold kills it again; the one after finishes
  await assert.rejects(restart(replica, 'libvirt:disk-committed'), /before it started/);
  replica = await restart(replica);
  pair!.replica = replica;
  await waitFor('the commit to be finished', async () => ((await replica.api.get<{ name: string; origin?: { pending?: boolean } | null }[]>('/v1/vms')).find((v) => v.name === VM)?.origin?.pending === undefined ? true : undefined), 120_000, 250);
  assert.equal(qemuPid(B), pid, 'the guest was restarted');
  const disks = (await readDomain(virsh, B)).disks;
  assert.ok(disks.every((d) => !(d.file ?? '').includes('.top.')), `the domain still runs from its layers: ${JSON.stringify(disks)}`);
  // the committed commit again is answered as it is
  assert.equal((await replica.api.post<{ pending: boolean }>(`/v1/vms/${VM}/commit`)).pending, false);

  // a restart after the commit: the domain is the agent's VM, its images no replica
  replica = await restart(replica);
  pair!.replica = replica;
  const listed = (await replica.api.get<{ name: string; origin?: { pending?: boolean } | null }[]>('/v1/vms')).find((v) => v.name === VM);
  assert.ok(listed && listed.origin && !listed.origin.pending, `after a restart the committed VM is not the agent's: ${JSON.stringify(listed)}`);
  const replicas = await replica.api.get<{ vm?: string; vmName?: string }[]>('/v1/replicas');
  assert.ok(!JSON.stringify(replicas).includes(`"${VM}"`), `the committed VM's images are served as a replica again: ${JSON.stringify(replicas)}`);
  assert.equal(qemuPid(B), pid, 'the guest was restarted');

  // the guest's file system, from the replica's images, holds its records in order
  await virsh.run(['destroy', B]);
  const raw = (await imageInfo(disks[0]!.file!)).dataFile!;
  const recs = recordsOnImage(raw);
  assert.deepEqual(recs, recs.map((_r, i) => i), 'records out of order or missing after the commit');
});
