/**
 * A replication group through the vault, with real processes: two VMs on two hosts of the
 * primary site are protected in one group (`osr item enable --replication-group`), a pair
 * beside them on their own. VM B writes record i only after VM A acknowledged its record
 * i, and the same for the pair. The primary site is killed with kill -9 mid-write and a
 * recovery plan holding all four is failed over, unplanned, to the latest point: the
 * group's VMs fail over at one cut, where B is never ahead of A; the pair alone fails
 * over at each VM's own latest point, where B is ahead of A.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import YAML from 'yaml';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { AgentClient } from '../../src/cli/agent-client.js';
import type { ProtectedItem, RecoveryPoint } from '../../src/domain/resources.js';
import type { ListAnswer } from '../../src/cli/api-common.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { isAlive, labAgents, labDown, readLabFile } from '../../src/lab/launcher.js';
import type { TopologySpec } from '../../src/lab/topology.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import { tempDir, waitFor } from '../support/lab.js';
import { labWithPairing, site } from '../support/topology.js';

const run = promisify(execFile);
const dir = tempDir('osr-rgroup-');
const BLOCK = 4096;
const DISK = 8 << 20;
const BLOCKS = DISK / BLOCK;
let api: VaultClient;

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 180_000 });
  return r.stdout;
}

const item = (vm: string) => api.request<ProtectedItem>('GET', `/api/v1/protected-items/primary.${vm}`);
const points = async (vm: string) => (await api.request<ListAnswer<RecoveryPoint>>('GET', `/api/v1/protected-items/primary.${vm}/recovery-points`)).items;

/** Record i: block i mod BLOCKS stamped with i at both ends. */
const record = (i: number) => {
  const b = Buffer.alloc(BLOCK);
  b.writeUInt32LE(i, 0);
  b.writeUInt32LE(i, BLOCK - 4);
  return b;
};

/** The newest record on a VM's disk as it runs now (after the failover: at the recovery site). */
async function newestRecord(vm: string): Promise<number> {
  const c = await NbdClient.connect((await osr('lab', 'nbd-uri', vm, '--dir', dir)).trim());
  const data = await c.read(0, DISK);
  await c.close();
  let newest = 0;
  for (let b = 0; b < BLOCKS; b++) {
    const head = data.readUInt32LE(b * BLOCK);
    assert.equal(head, data.readUInt32LE(b * BLOCK + BLOCK - 4), `torn record in block ${b} of ${vm}`);
    newest = Math.max(newest, head);
  }
  return newest;
}

before(async () => {
  const vm = (name: string, host: string) => ({ name, host, disks: [{ name: 'data', size: '8M', storage: `${host}-store` }], nics: [], workload: false as const });
  const primary = site('Primary', 'p-host1', [vm('ga', 'p-host1'), vm('gb', 'p-host2'), vm('sa', 'p-host1'), vm('sb', 'p-host2')]);
  // a second host, with its own storage: the group spans two hosts' agents
  primary.storage.locations.push({ name: 'p-host2-store', classification: 'GOLD', kind: 'share' });
  primary.clouds[0]!.hostGroups[0]!.hosts.push({ name: 'p-host2', logicalNetworks: [], storageLocations: ['p-host2-store'] });
  const topology: TopologySpec = { name: 'rgroup', fabrics: [primary, site('Recovery', 'r-host', [])] };
  api = await labWithPairing(dir, topology, osr, 'cycles', ['--copy-frequency', '30s', '--retention-hours', '1']);
});

after(async () => {
  api?.close();
  await labDown(dir, () => undefined);
  assert.equal(readLabFile(dir), undefined);
});

test('a replication group fails over at one cut: B never ahead of A; the pair alone, each at its latest point, has B ahead', async () => {
  // a bad group name is refused before any job
  await assert.rejects(osr('item', 'enable', 'ga', '--replication-group', '../etc'), /INVALID_ARGUMENT|must match pattern/);
  await osr('item', 'enable', 'ga', 'gb', '--replication-group', 'billing', '--wait');
  await osr('item', 'enable', 'sa', 'sb', '--wait');
  assert.equal((await item('ga')).replication.group, 'billing');
  assert.equal((await item('sa')).replication.group, undefined);
  assert.match(await osr('item', 'show', 'ga'), /replication group:\s+billing/);
  fs.writeFileSync(path.join(dir, 'plan.yaml'), YAML.stringify({ name: 'app', groups: [{ name: 'first', items: ['primary.ga', 'primary.sa'] }, { name: 'second', items: ['primary.gb', 'primary.sb'] }] }));
  await osr('plan', 'apply', '-f', path.join(dir, 'plan.yaml'));

  const uris = new Map<string, string>();
  for (const vm of ['ga', 'gb', 'sa', 'sb']) uris.set(vm, (await osr('lab', 'nbd-uri', vm, '--dir', dir)).trim());
  const clients = new Map<string, NbdClient>();
  for (const [vm, uri] of uris) clients.set(vm, await NbdClient.connect(uri));
  let stop = false;
  let written = 0;
  const writer = (async () => {
    try {
      for (let i = 1; !stop; i++) {
        // B's record i only after A's record i was acknowledged; the same for the pair alone
        for (const vm of ['ga', 'gb', 'sa', 'sb']) await clients.get(vm)!.write((i % BLOCKS) * BLOCK, record(i));
        written = i;
      }
    } catch {
      // the hosts are gone
    }
  })();
  const writingSince = Date.now();

  // the provider cuts the group at the policy's frequency: points of one cut on both VMs
  const cut = await waitFor(
    'a group cut made while the guests write, reported for both VMs',
    async () => {
      const [a, b] = [await points('ga'), await points('gb')];
      const cuts = new Set(b.map((p) => p.cut));
      return a.find((p) => p.cut !== undefined && cuts.has(p.cut) && Date.parse(p.at) > writingSince + 1000)?.cut;
    },
    120_000,
    500,
  );
  assert.match(cut!, /^cut-/);
  // the pair alone: B's latest point a few seconds after A's (each VM's point is its own instant)
  const agentOf = (host: string) => new AgentClient(labAgents(dir).find((a) => a.host === host)!.api);
  const latest = async (host: string, vm: string) => (await agentOf(host).get<{ latestPoint: { seq: number; time: string } | null }>(`/v1/replications/${vm}`)).latestPoint ?? { seq: 0, time: new Date(0).toISOString() };
  const cycle = async (host: string, vm: string) => {
    const was = (await latest(host, vm)).seq;
    await agentOf(host).post(`/v1/replications/${vm}/cycle`);
    return waitFor(`a new point of ${vm}`, async () => {
      const p = await latest(host, vm);
      return p.seq > was ? p : undefined;
    }, 30_000, 100);
  };
  await cycle('p-host1', 'sa');
  await new Promise((r) => setTimeout(r, 2000));
  // a cycle of A's own (every 30 s) may land meanwhile: B's point is made again until it is the newer
  for (let tries = 0; ; tries++) {
    const b = await cycle('p-host2', 'sb');
    if (Date.parse(b.time) > Date.parse((await latest('p-host1', 'sa')).time) + 1000) break;
    assert.ok(tries < 3, 'B\'s point is made after A\'s');
    await new Promise((r) => setTimeout(r, 1500));
  }

  // the primary site dies mid-write
  const lab = readLabFile(dir)!;
  const provider = lab.providers.find((p) => p.fabric === 'Primary')!;
  const agents = labAgents(dir).filter((a) => a.fabric === 'Primary');
  process.kill(provider.pid, 'SIGKILL');
  for (const a of agents) process.kill(a.pid, 'SIGKILL');
  stop = true;
  await writer;
  for (const c of clients.values()) await c.close().catch(() => undefined);
  await waitFor('the primary site gone', () => !isAlive(provider.pid) && agents.every((a) => !isAlive(a.pid)), 10_000, 50);
  assert.ok(written > 100, `${written} records written`);

  const out = await osr('plan', 'unplanned-failover', 'app', '--source-timeout', '3s', '--wait');
  assert.match(out, /unplanned-failover \(primary-to-recovery\) succeeded/);
  const [ga, gb] = [await item('ga'), await item('gb')];
  for (const i of [ga, gb]) assert.equal(i.state, 'FailedOver', i.name);
  // one cut for the group, whichever plan group each member is in
  const chosen = ga.replication.failover!.point.cut;
  assert.ok(chosen !== undefined && chosen === gb.replication.failover!.point.cut, `the group's VMs failed over at one cut: ${JSON.stringify([ga.replication.failover!.point, gb.replication.failover!.point])}`);
  const events = await api.request<ListAnswer<{ kind: string; message: string }>>('GET', `/api/v1/events?target=${encodeURIComponent((await api.request<ListAnswer<{ id: string; name: string }>>('GET', '/api/v1/recovery-plans')).items.find((p) => p.name === 'app')!.id)}`);
  assert.ok(events.items.some((e) => e.kind === 'plan.group-point' && e.message.includes(chosen)), 'the run names the cut it chose');

  const [a, b] = [await newestRecord('ga'), await newestRecord('gb')];
  assert.ok(a > 0, 'the group point holds records');
  assert.ok(b <= a, `at the group's point B holds record ${b}, A only ${a}`);
  assert.ok(a - b <= 1, `B is at most one record behind A at one instant (A ${a}, B ${b})`);
  const [sa, sb] = [await newestRecord('sa'), await newestRecord('sb')];
  assert.ok(sb > sa, `without the group, B's latest point (record ${sb}) is ahead of A's (record ${sa})`);
  console.log(`# ${written} records written; group at ${chosen}: A ${a} B ${b}; alone: A ${sa} B ${sb}`);
});
