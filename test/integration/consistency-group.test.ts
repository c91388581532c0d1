/**
 * A consistency group across two hosts, with real agent processes: VM B writes record i
 * only after VM A acknowledged its record i. The group is cut at one instant on both
 * hosts; after both primaries are killed mid-write, the newest point every member holds
 * never has B ahead of A. Two VMs replicated on their own, written the same way, can be:
 * the test shows that too.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { cutId, groupPoints } from '../../src/domain/groups.js';
import { groupCut, type GroupCutResult } from '../../src/drivers/agent-replication.js';
import { ensurePki, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { assertRejectsCode } from '../support/unit.js';
import { createVm, openOverlay, startPair, tempDir, waitForPoint, type Pair } from '../support/lab.js';

const BLOCK = 4096;
const DISK = 4 << 20;
const BLOCKS = DISK / BLOCK;

let pair: Pair;
let second: RunningAgent;
before(async () => {
  const dir = tempDir('osr-group-');
  await ensurePki(path.join(dir, 'pki'), ['primary', 'replica', 'primary2']);
  pair = await startPair(dir);
  second = await startAgentProcess({ name: 'primary2', dataDir: path.join(dir, 'primary2'), pkiDir: pair.pkiDir, nbdTcpPort: 0, logFile: path.join(dir, 'primary2.log') });
});
after(async () => {
  if (second) await stopAgentProcess(second, 'SIGKILL');
  await pair?.stop();
});

/** Record i: block i mod BLOCKS stamped with i at both ends. */
const record = (i: number) => {
  const b = Buffer.alloc(BLOCK);
  b.writeUInt32LE(i, 0);
  b.writeUInt32LE(i, BLOCK - 4);
  return b;
};

/** The newest record a point holds. */
async function newestRecord(vm: string, seq: number): Promise<number> {
  const o = await openOverlay(pair.replica, vm, seq);
  const c = await NbdClient.connect(o.disks[0]!.nbd.unix);
  const data = await c.read(0, DISK);
  await c.close();
  await pair.replica.api.delete(`/v1/replicas/${vm}/overlays/${o.id}`);
  let newest = 0;
  for (let b = 0; b < BLOCKS; b++) {
    const head = data.readUInt32LE(b * BLOCK);
    assert.equal(head, data.readUInt32LE(b * BLOCK + BLOCK - 4), `torn record in block ${b} of ${vm} point ${seq}`);
    newest = Math.max(newest, head);
  }
  return newest;
}

test('a group cut is one instant on two hosts: after both primaries die, B is never ahead of A; VMs replicated alone can be', async () => {
  const { primary, replica } = pair;
  const peer = `127.0.0.1:${replica.replicationPort}`;
  const uris = new Map<string, string>();
  for (const [agent, vm] of [[primary, 'ga'], [second, 'gb'], [primary, 'sa'], [second, 'sb']] as const) uris.set(vm, (await createVm(agent, vm, ['4M']))[0]!.nbd.unix);
  await primary.api.post('/v1/replications', { vm: 'ga', peer, group: 'g1', copyFrequency: '1h', maxPoints: 1000 });
  await second.api.post('/v1/replications', { vm: 'gb', peer, group: 'g1', copyFrequency: '1h', maxPoints: 1000 });
  // alone: A copies when asked, B every 300 ms
  await primary.api.post('/v1/replications', { vm: 'sa', peer, copyFrequency: '1h', maxPoints: 1000 });
  await second.api.post('/v1/replications', { vm: 'sb', peer, copyFrequency: '300ms', maxPoints: 1000 });
  for (const [agent, vm] of [[primary, 'ga'], [second, 'gb'], [primary, 'sa'], [second, 'sb']] as const) await waitForPoint(agent, vm, null);

  // a cut names members of its group only; it is held once prepared, at most a second
  await assertRejectsCode(primary.api.post('/v1/cuts', { id: 'c0', group: 'g1', vms: ['sa'] }), 'INVALID_ARGUMENT');
  await primary.api.post('/v1/cuts', { id: 'c0', group: 'g1', vms: ['ga'] });
  await assertRejectsCode(primary.api.post('/v1/cuts/c0/swap'), 'INVALID_STATE');
  await assertRejectsCode(primary.api.post('/v1/cuts/c0/hold', { holdMs: 5000 }), 'INVALID_ARGUMENT');
  assert.deepEqual(await primary.api.delete('/v1/cuts/c0'), { cut: 'c0', aborted: true });
  // a hold the coordinator does not follow up expires: the writes go on and the swap is refused
  await primary.api.post('/v1/cuts', { id: 'c1', group: 'g1', vms: ['ga'] });
  await primary.api.post('/v1/cuts/c1/hold', { holdMs: 20 });
  await new Promise((r) => setTimeout(r, 60));
  await assertRejectsCode(primary.api.post('/v1/cuts/c1/swap'), 'CUT_EXPIRED');
  await assertRejectsCode(primary.api.post('/v1/cuts/c1/swap'), 'NOT_FOUND');
  // a VM is in one open cut at most, however the cuts race or name it
  const raced = await Promise.allSettled([primary.api.post('/v1/cuts', { id: 'c2', group: 'g1', vms: ['ga'] }), primary.api.post('/v1/cuts', { id: 'c3', group: 'g1', vms: ['ga'] })]);
  assert.equal(raced.filter((r) => r.status === 'fulfilled').length, 1, 'one of two racing cuts of a VM is refused');
  const ga = (await primary.api.get<{ id: string; vm: string }[]>('/v1/replications')).find((r) => r.vm === 'ga')!;
  await Promise.all(['c2', 'c3'].map((c) => primary.api.delete(`/v1/cuts/${c}`)));
  await assertRejectsCode(primary.api.post('/v1/cuts', { id: 'c4', group: 'g1', vms: ['ga', ga.id] }), 'INVALID_ARGUMENT');

  const members = [
    { api: primary.api, vms: ['ga'] },
    { api: second.api, vms: ['gb'] },
  ];
  const cuts: GroupCutResult[] = [];
  let stop = false;
  const coordinator = (async () => {
    while (!stop) {
      try {
        cuts.push(await groupCut(members, 'g1', cutId(Date.now(), crypto.randomBytes(3).toString('hex')), 200));
      } catch {
        if (stop) return; // the hosts are gone
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  })();

  const clients = new Map<string, NbdClient>();
  for (const [vm, uri] of uris) clients.set(vm, await NbdClient.connect(uri));
  let written = 0;
  const writer = (async () => {
    try {
      for (let i = 1; !stop; i++) {
        // B's record i only after A's record i was acknowledged; the same for the pair alone
        await clients.get('ga')!.write((i % BLOCKS) * BLOCK, record(i));
        await clients.get('gb')!.write((i % BLOCKS) * BLOCK, record(i));
        await clients.get('sa')!.write((i % BLOCKS) * BLOCK, record(i));
        await clients.get('sb')!.write((i % BLOCKS) * BLOCK, record(i));
        written = i;
      }
    } catch {
      // the hosts are gone
    }
  })();
  await new Promise((r) => setTimeout(r, 1500));
  await primary.api.post('/v1/replications/sa/cycle');
  await new Promise((r) => setTimeout(r, 2500));
  // both primary sites die mid-write
  await Promise.all([stopAgentProcess(primary, 'SIGKILL'), stopAgentProcess(second, 'SIGKILL')]);
  stop = true;
  await Promise.all([coordinator, writer]);
  for (const c of clients.values()) await c.close().catch(() => undefined);
  assert.ok(written > 100, `${written} records written`);
  assert.ok(cuts.length >= 5, `${cuts.length} group cuts`);
  for (const c of cuts) assert.deepEqual(Object.keys(c.points).sort(), ['ga', 'gb']);

  type Listed = { seq: number; timeMs: number; cut?: string };
  const listed = async (vm: string) => replica.api.get<Listed[]>(`/v1/replicas/${vm}/points`);
  const groups = groupPoints({ ga: await listed('ga'), gb: await listed('gb') });
  assert.ok(groups.length >= 3, `${groups.length} group points at the replica`);
  const latest = groups[0]!;
  const a = await newestRecord('ga', latest.points.ga!);
  const b = await newestRecord('gb', latest.points.gb!);
  assert.ok(a > 0, 'the group point holds records');
  assert.ok(b <= a, `in the group's latest point B holds record ${b}, A only ${a}`);
  assert.ok(a - b <= 1, `B is at most one record behind A at one instant (A ${a}, B ${b})`);
  // an older group point too
  const older = groups[Math.floor(groups.length / 2)]!;
  const [oa, ob] = [await newestRecord('ga', older.points.ga!), await newestRecord('gb', older.points.gb!)];
  assert.ok(ob <= oa && oa - ob <= 1, `older group point: A ${oa}, B ${ob}`);

  // alone, each replica's latest point is its own instant: B's is seconds after A's
  const sa = (await listed('sa')).at(-1)!;
  const sb = (await listed('sb')).at(-1)!;
  const [ra, rb] = [await newestRecord('sa', sa.seq), await newestRecord('sb', sb.seq)];
  assert.ok(rb > ra, `without the group, B's latest point (record ${rb}) is ahead of A's (record ${ra})`);

  const held = cuts.map((c) => c.heldMs).sort((x, y) => x - y);
  const p99 = held[Math.min(held.length - 1, Math.ceil(held.length * 0.99) - 1)]!;
  console.log(`# ${cuts.length} group cuts; writes held p50 ${held[Math.floor(held.length / 2)]!.toFixed(1)} ms, p99 ${p99.toFixed(1)} ms; records A ${a} B ${b}; alone A ${ra} B ${rb}`);
});
