/** Steps shared by the failover and fault tests: replicate a VM, and check a replica is in step. */
import assert from 'node:assert/strict';
import type { RunningAgent } from '../../src/lab/agent-process.js';
import { fileDigest, health, pointDigests, waitFor, waitForPoint, type DiskInfo } from './lab.js';

export function disksOf(agent: RunningAgent, vm: string): Promise<DiskInfo[]> {
  return agent.api.get<DiskInfo[]>(`/v1/vms/${vm}/disks`);
}

export const digestsOf = (disks: DiskInfo[]) => disks.map((d) => fileDigest(d.image, d.size).digest);

/** Replicate `vm` from one agent to the other and wait for the first point (or the reverse resync's). */
export async function replicate(from: RunningAgent, to: RunningAgent, vm: string, extra: Record<string, unknown> = {}) {
  await from.api.post('/v1/replications', { vm, peer: `127.0.0.1:${to.replicationPort}`, copyFrequency: '1h', maxPoints: 50, ...extra });
  return waitForPoint(from, vm, null, 120_000);
}

/** A cycle now; the replica's new latest point must equal the source's disks. */
export async function assertInStep(from: RunningAgent, to: RunningAgent, vm: string): Promise<void> {
  const h0 = await waitFor(`${vm} replicating`, async () => {
    const h = await health(from, vm);
    return h.state === 'Replicating' && h.latestPoint ? h : undefined;
  }, 120_000);
  await from.api.post(`/v1/replications/${vm}/cycle`);
  const h = await waitForPoint(from, vm, h0.latestPoint!.seq + 1);
  assert.deepEqual(await pointDigests(to, vm, h.latestPoint!.seq), digestsOf(await disksOf(from, vm)), `the replica of ${vm} at ${to.name} differs from its source`);
}
