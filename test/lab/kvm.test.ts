/**
 * The lab on libvirt, end to end with real processes and real guests: `osr lab up
 * --topology kvm` starts a vault, a libvirt provider per site, an agent per KVM host and
 * the tiny Linux guests as libvirt domains; through the osr CLI a guest is protected,
 * drilled (its test VM boots on an isolated network, and the drill keeps what its console
 * showed), failed over with every record it acknowledged, committed, reprotected and
 * failed back home with what it wrote away; the lab stops and starts again where it was,
 * and `osr lab remove` leaves nothing of it in libvirt.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import YAML from 'yaml';
import { Virsh } from '../../src/agent/libvirt/virsh.js';
import { AgentClient } from '../../src/cli/agent-client.js';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { kvmLabTag } from '../../src/lab/kvm-lab.js';
import { labRemove, labStatus } from '../../src/lab/launcher.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import { tempDir, waitFor } from '../support/lab.js';
import { libvirtSkip } from '../support/libvirt.js';

const run = promisify(execFile);
type Obj = Record<string, unknown>;

const skip = libvirtSkip();
const dir = tempDir('osr-kvmlab-');
const tag = kvmLabTag(dir);
const virsh = new Virsh();
let api: VaultClient;

async function osr(...args: string[]): Promise<string> {
  try {
    return (await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 600_000 })).stdout;
  } catch (e) {
    const x = e as { stdout?: string; stderr?: string; message: string };
    throw new Error(`osr ${args.join(' ')}: ${x.message}\n${x.stdout ?? ''}\n${x.stderr ?? ''}`);
  }
}

const item = async (name: string) => (await api.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=100')).items.find((i) => i.name === name)!;
const domains = async () => (await virsh.run(['list', '--all', '--name'])).split('\n').map((s) => s.trim()).filter((n) => n.startsWith(`${tag}-`));
const running = async () => (await virsh.run(['list', '--name'])).split('\n').map((s) => s.trim()).filter((n) => n.startsWith(`${tag}-`));
const text = (file: string) => (fs.existsSync(file) ? fs.readFileSync(file, 'latin1') : '');
const lastAck = (file: string) => Number([...text(file).matchAll(/osr-guest: ack (\d+)/g)].at(-1)?.[1] ?? -1);

const mounts = (file: string) => [...text(file).matchAll(/osr-guest: mounted next=(\d+)/g)].map((m) => Number(m[1]));

/** The record count the guest found on its disk when it next mounted it, after the `seen` mounts its console shows already. */
function mountedNext(file: string, seen = 0): Promise<number> {
  return waitFor(`the guest to mount its file system (${file})`, () => {
    if (text(file).includes('osr-guest: mount failed')) throw new Error(`the file system did not mount: ${text(file).slice(-2000)}`);
    return mounts(file)[seen];
  }, 240_000, 500);
}

/** The console of the VM a host's agent promoted (its libvirt work directory). */
function promotedConsole(site: string, host: string): string {
  const root = path.join(dir, 'sites', site, 'hosts', host, 'libvirt');
  const found = fs.existsSync(root) ? fs.readdirSync(root).map((d) => path.join(root, d, 'console.log')).filter((f) => fs.existsSync(f)) : [];
  assert.equal(found.length, 1, `one promoted VM's console at ${host}: ${found.join(', ')}`);
  return found[0]!;
}

before(async () => {
  if (skip) return;
  const out = await osr('lab', 'up', '--dir', dir, '--topology', 'kvm', '--port', '0', '--detach', '--status-interval', '1s');
  assert.match(out, /Owner token osr_/);
  const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { vault: string; token: string; ca: string };
  api = new VaultClient(cfg.vault, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
});

after(async () => {
  api?.close();
  if (skip) return;
  if (process.env.OSR_TEST_KEEP_LAB) return;
  await labRemove(dir, () => undefined);
  assert.deepEqual(await domains(), [], 'lab remove leaves no domain of the lab');
  const nets = (await virsh.run(['net-list', '--all', '--name'])).split('\n').filter((n) => n.trim().startsWith(`${tag}-`));
  assert.deepEqual(nets, [], 'lab remove leaves no network of the lab');
  assert.ok(!fs.existsSync(dir));
});

describe('the lab on libvirt', { skip, timeout: 1_800_000 }, () => {
  test('lab up: a vault, a libvirt provider per site, an agent per KVM host, the guests as running domains', async () => {
    const s = await labStatus(dir);
    assert.equal(s.running, true, JSON.stringify(s.processes));
    assert.deepEqual(s.processes.map((p) => p.role).sort(), ['agent', 'agent', 'provider', 'provider', 'vault']);
    const fabrics = (await api.request<{ items: Obj[] }>('GET', '/api/v1/fabrics')).items;
    assert.deepEqual(fabrics.map((f) => [f.id, f.kind]).sort(), [['kvm-chicago', 'libvirt'], ['kvm-newyork', 'libvirt']]);
    assert.deepEqual((await running()).sort(), [`${tag}-ny-kvm01-db01`, `${tag}-ny-kvm01-web01`]);
    const vms = await waitFor('the guests in the inventory, running', async () => {
      const v = (await api.request<{ items: Obj[] }>('GET', '/api/v1/vms?fabric=kvm-newyork')).items;
      return v.length === 2 && v.every((x) => (x.properties as Obj).powerState === 'Running') ? v : undefined;
    }, 60_000, 500);
    assert.deepEqual(vms.map((v) => v.name).sort(), ['db01', 'web01']);
    await waitFor('web01 writing records', async () => (lastAck(path.join(dir, 'sites', 'kvm-newyork', 'consoles', 'web01.log')) >= 3 ? true : undefined), 240_000, 500);
  });

  test('protect a guest, drill it on an isolated network with its evidence kept, fail it over and back with every acknowledged record', async () => {
    await osr('policy', 'create', 'gold', '--copy-frequency', '30s', '--retention-hours', '1', '--host-os-version', 'any');
    await osr('pairing', 'create', '--policy', 'gold', '--source-cloud', 'kvm-newyork.GoldCloud1', '--target-cloud', 'kvm-chicago.GoldCloud2');
    await osr('mapping', 'create', 'network', '--source', 'kvm-newyork.VMNetwork1-NewYork', '--target', 'kvm-chicago.VMNetwork1-Chicago');
    await osr('mapping', 'create', 'storage', '--source', 'kvm-newyork.GOLD', '--target', 'kvm-chicago.GOLD_TARGET');
    await osr('item', 'enable', 'web01', '--wait');
    const protectedItem = await item('web01');
    assert.equal(protectedItem.state, 'Protected');
    assert.ok(protectedItem.lastRecoveryPointAt);
    // the providers reach their agents over the provider channel, so the replica was given to
    // New York's host by the vault's grant: it takes the VM only from a certificate of that fabric
    const chiSite = YAML.parse(text(path.join(dir, 'sites', 'kvm-chicago.yaml'))) as { hosts: { agent: string }[] };
    assert.match(chiSite.hosts[0]!.agent, /^https:\/\/127\.0\.0\.1:\d+$/);
    const chiAgent = (JSON.parse(text(path.join(dir, 'sites', 'kvm-chicago', 'agents.json'))) as { api: string }[])[0]!;
    const replicas = await new AgentClient(chiAgent.api).get<{ vm: string; source: string | null; sourceFabric: string | null }[]>('/v1/replicas');
    assert.deepEqual(replicas.map((r) => [r.vm, r.source, r.sourceFabric]), [['web01', 'ny-kvm01', 'kvm-newyork']]);

    // the drill: the point boots at Chicago on a network of its own while replication goes on
    await osr('item', 'test-failover', 'web01', '--network', 'temporary', '--wait');
    const testDomain = (await running()).find((d) => d.startsWith(`${tag}-chi-kvm01-osr-test-`));
    assert.ok(testDomain, `a test domain under the recovery host's prefix: ${(await running()).join(', ')}`);
    const netName = /<source network=['"]([^'"]+)['"]/.exec(await virsh.run(['dumpxml', testDomain]))?.[1];
    assert.ok(netName?.startsWith(`${tag}-chi-kvm01-osr-net-`), `the test domain is on the drill's network, not ${netName}`);
    assert.doesNotMatch(await virsh.run(['net-dumpxml', netName!]), /<forward/);
    const testConsole = path.join(dir, 'sites', 'kvm-chicago', 'hosts', 'chi-kvm01', 'drills', `${testDomain}.console`);
    await waitFor('the test VM\'s guest to mount the point and its agent to run', async () => (/osr-guest: agent on/.test(text(testConsole)) && /osr-guest: mounted/.test(text(testConsole)) ? true : undefined), 240_000, 500);
    await osr('item', 'test-failover-cleanup', 'web01', '--notes', 'the guest mounted its file system', '--wait');
    const drilled = await item('web01');
    const drill = drilled.replication.drills![0]!;
    assert.equal(drill.succeeded, true);
    assert.equal(drill.notes, 'the guest mounted its file system');
    assert.ok(drill.evidence, 'the drill keeps its evidence');
    assert.match(drill.evidence.console, /osr-guest: mounted/);
    assert.equal(drill.evidence.running, true);
    assert.ok(!(await domains()).includes(testDomain), 'cleanup removes the test domain');
    assert.ok(!(await virsh.run(['net-list', '--all', '--name'])).includes(netName!), 'cleanup removes the drill network');
    assert.match(await osr('item', 'show', 'web01'), /The last drill's test VM console[\s\S]*osr-guest: mounted/);

    // planned failover: the guest shuts down, its last writes go over, it runs at Chicago
    const nyConsole = path.join(dir, 'sites', 'kvm-newyork', 'consoles', 'web01.log');
    await osr('item', 'planned-failover', 'web01', '--wait');
    const ackedAtNy = lastAck(nyConsole);
    assert.ok(ackedAtNy >= 3);
    assert.deepEqual((await running()).filter((d) => d.endsWith('-web01')), [`${tag}-chi-kvm01-web01`]);
    const chiConsole = promotedConsole('kvm-chicago', 'chi-kvm01');
    const nextAtChi = await mountedNext(chiConsole);
    assert.ok(nextAtChi >= ackedAtNy + 1, `every record acknowledged at New York is on the disk at Chicago: acknowledged up to ${ackedAtNy}, the disk holds ${nextAtChi}`);
    await assert.rejects(virsh.run(['start', `${tag}-ny-kvm01-web01`]), /fenced|hook/i, 'the old primary is fenced');
    await osr('item', 'commit', 'web01', '--wait');
    await osr('item', 'reprotect', 'web01', '--wait');
    assert.equal((await item('web01')).replication.direction, 'recovery-to-primary');

    // failback: what it wrote at Chicago comes home, to the domain it left (its console goes on in the same file)
    await waitFor('records written at Chicago', async () => (lastAck(chiConsole) >= ackedAtNy + 3 ? true : undefined), 240_000, 500);
    const mountsAtNy = mounts(nyConsole).length;
    await osr('item', 'planned-failover', 'web01', '--wait');
    const ackedAtChi = lastAck(chiConsole);
    assert.deepEqual((await running()).filter((d) => d.endsWith('-web01')), [`${tag}-ny-kvm01-web01`]);
    const nextAtNy = await mountedNext(nyConsole, mountsAtNy);
    assert.ok(nextAtNy >= ackedAtChi + 1, `every record acknowledged at Chicago came home: acknowledged up to ${ackedAtChi}, the disk holds ${nextAtNy} (New York's mounts: ${mounts(nyConsole).join(', ')}, ${mountsAtNy} before the failback)`);
    await osr('item', 'commit', 'web01', '--wait');
    await osr('item', 'reprotect', 'web01', '--wait');
    const home = await item('web01');
    assert.equal(home.replication.direction, 'primary-to-recovery');
    assert.equal(home.replication.failovers?.length, 2);
  });

  test('the lab stops, powering its domains off, and starts again where it was', async () => {
    const before = (await running()).sort();
    await osr('lab', 'down', '--dir', dir);
    assert.deepEqual(await running(), [], 'lab down powers the lab\'s domains off');
    const state = JSON.parse(fs.readFileSync(path.join(dir, 'kvm.json'), 'utf8')) as { running: string[] };
    assert.deepEqual(state.running.sort(), before);
    await osr('lab', 'up', '--dir', dir, '--port', '0', '--detach', '--status-interval', '1s');
    const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { vault: string; token: string; ca: string };
    api.close();
    api = new VaultClient(cfg.vault, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
    assert.deepEqual((await running()).sort(), before, 'the domains that ran run again');
    const pointBefore = (await item('web01')).lastRecoveryPointAt;
    await waitFor('a new recovery point of web01', async () => {
      const i = await item('web01');
      return i.state === 'Protected' && i.lastRecoveryPointAt !== pointBefore ? i : undefined;
    }, 180_000, 1000);
  });
});
