/**
 * Disks changed under protection, through the vault, with real processes: a disk added to
 * a protected lab VM while it runs joins its next points; a shrink makes the item's health
 * Critical with the reason DISK_CHANGE_UNCONFIRMED until `osr item confirm-disks`, after
 * which the next point has the shrunk disk and the older points keep theirs.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { AgentClient } from '../../src/cli/agent-client.js';
import type { ProtectedItem, RecoveryPoint } from '../../src/domain/resources.js';
import type { ListAnswer } from '../../src/cli/api-common.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { labAgents, labDown, readLabFile } from '../../src/lab/launcher.js';
import type { TopologySpec } from '../../src/lab/topology.js';
import type { VaultClient } from '../../src/provider/vault-client.js';
import { tempDir, waitFor } from '../support/lab.js';
import { labWithPairing, site } from '../support/topology.js';

const run = promisify(execFile);
const dir = tempDir('osr-diskchange-');
const MiB = 1024 * 1024;
let api: VaultClient;

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 180_000 });
  return r.stdout;
}

const item = () => api.request<ProtectedItem>('GET', '/api/v1/protected-items/primary.dk');
const points = async () => (await api.request<ListAnswer<RecoveryPoint>>('GET', '/api/v1/protected-items/primary.dk/recovery-points')).items;

before(async () => {
  const topology: TopologySpec = { name: 'diskchange', fabrics: [site('Primary', 'p-host', [{ name: 'dk', host: 'p-host', disks: [{ name: 'data', size: '8M', storage: 'p-host-store' }], nics: [], workload: false }]), site('Recovery', 'r-host', [])] };
  api = await labWithPairing(dir, topology, osr, 'cycles', ['--copy-frequency', '30s', '--retention-hours', '1']);
});

after(async () => {
  api?.close();
  await labDown(dir, () => undefined);
  assert.equal(readLabFile(dir), undefined);
});

test('a disk added and a disk shrunk under protection: the shrink waits for osr item confirm-disks, with the reason on the item', async () => {
  await osr('item', 'enable', 'dk', '--wait');
  const agent = new AgentClient(labAgents(dir).find((a) => a.host === 'p-host')!.api);
  const replica = new AgentClient(labAgents(dir).find((a) => a.host === 'r-host')!.api);
  const replicaPoints = async () => (await replica.get<{ seq: number; disks?: { name: string; size: number }[] }[]>('/v1/replicas/dk/points'));
  const newPoint = async (what: string, shape: { name: string; size: number }[]) => {
    await agent.post('/v1/replications/dk/cycle');
    return waitFor(what, async () => {
      const latest = (await replicaPoints()).at(-1);
      return JSON.stringify(latest?.disks) === JSON.stringify(shape) ? latest : undefined;
    }, 120_000, 250);
  };

  const first = (await agent.get<{ name: string }[]>('/v1/vms/dk/disks'))[0]!.name;
  // a disk added while the VM runs: copied alone, in the next points
  const added = await agent.post<{ name: string }>('/v1/vms/dk/disks', { size: '4M' });
  await newPoint('a point with the added disk', [{ name: first, size: 8 * MiB }, { name: added.name, size: 4 * MiB }]);

  // a shrink: the replication waits, and the item says why
  await agent.post('/v1/vms/dk/stop');
  await agent.put(`/v1/vms/dk/disks/${first}`, { size: '4M' });
  await agent.post('/v1/replications/dk/cycle');
  const waiting = await waitFor('the item to show the shrink waiting', async () => {
    const i = await item();
    return i.healthReasons.find((r) => r.code === 'DISK_CHANGE_UNCONFIRMED') ? i : undefined;
  }, 60_000, 250);
  assert.equal(waiting.health, 'Critical');
  assert.match(waiting.healthReasons.find((r) => r.code === 'DISK_CHANGE_UNCONFIRMED')!.message, new RegExp(`${first} shrunk from 8388608 to 4194304 bytes`));
  const before = (await replicaPoints()).at(-1)!;

  // confirmed through the vault: the job tells the primary's host, and the next point has the shrunk disk
  const said = await osr('item', 'confirm-disks', 'dk', '--wait');
  assert.match(said, /disk change of dk confirmed/);
  const shrunk = await newPoint('a point with the shrunk disk', [{ name: first, size: 4 * MiB }, { name: added.name, size: 4 * MiB }]);
  assert.ok(shrunk.seq > before.seq);
  assert.deepEqual((await replicaPoints()).find((p) => p.seq === before.seq)?.disks, [{ name: first, size: 8 * MiB }, { name: added.name, size: 4 * MiB }], 'the older point keeps the larger disk');
  await waitFor('the reason to clear', async () => ((await item()).healthReasons.some((r) => r.code === 'DISK_CHANGE_UNCONFIRMED') ? undefined : true), 60_000, 250);
  const events = await api.request<ListAnswer<{ kind: string; message: string }>>('GET', '/api/v1/events?target=primary.dk');
  assert.ok(events.items.some((e) => e.kind === 'item.disks-confirmed' && e.message.includes(`${first} shrunk`)), 'the confirmation is an event');
  assert.ok((await points()).length > 0);
  // nothing waits any more: a second confirmation's job fails with INVALID_STATE
  await assert.rejects(osr('item', 'confirm-disks', 'dk', '--wait'), /INVALID_STATE|no disk change/);
});
