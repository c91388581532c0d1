/**
 * `osr lab up` (the compiled command, as a user runs it) leaves no stray process: a signal
 * at any moment of start-up or after stops everything it started, and the next `lab up`
 * works; a start-up whose launcher is killed leaves processes that `osr lab down` finds and
 * stops; a port in use is reported as PORT_IN_USE, with what to do.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, test } from 'node:test';
import YAML from 'yaml';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { readLabFile } from '../../src/lab/launcher.js';
import type { TopologySpec } from '../../src/lab/topology.js';
import { freePort, tempDir, waitFor } from '../support/lab.js';

const root = tempDir('osr-lab-int-');
const dir = path.join(root, 'lab');

function fabric(name: string, host: string): TopologySpec['fabrics'][number] {
  return {
    name,
    logicalNetworks: [`LN-${host}`],
    vmNetworks: [{ name: `VMNetwork-${host}`, logicalNetwork: `LN-${host}`, subnets: [{ name: 'Subnet1', cidr: '10.9.1.0/24' }] }],
    storage: { classifications: ['GOLD'], locations: [{ name: `${host}-gold`, classification: 'GOLD', kind: 'share' }] },
    clouds: [{ name: `Cloud-${host}`, hostGroups: [{ name: `HG-${host}`, hosts: [{ name: host, logicalNetworks: [`LN-${host}`], storageLocations: [`${host}-gold`] }] }] }],
    vms: [],
  };
}
const topologyFile = path.join(root, 'topology.yaml');
fs.writeFileSync(topologyFile, YAML.stringify({ name: 'interrupt-test', vault: { name: 'int-vault' }, fabrics: [fabric('Site-A', 'a-h1'), fabric('Site-B', 'b-h1')] } satisfies TopologySpec));

/** Processes of this lab, found by their command lines (every one names a path in the lab). */
function labProcesses(): { pid: number; cmd: string }[] {
  const out: { pid: number; cmd: string }[] = [];
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      const stat = fs.readFileSync(`/proc/${name}/stat`, 'utf8');
      if (/^[ZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3))) continue;
      const cmd = fs.readFileSync(`/proc/${name}/cmdline`, 'utf8').replaceAll('\0', ' ');
      if (cmd.includes(dir)) out.push({ pid: Number(name), cmd });
    } catch {
      // ended meanwhile
    }
  }
  return out;
}

async function noneLeft(): Promise<void> {
  await waitFor('no process of the lab', () => labProcesses().length === 0, 30_000, 100).catch((e: unknown) => {
    throw new Error(`${String(e)}: ${labProcesses().map((p) => `${p.pid} ${p.cmd}`).join('; ')}`);
  });
}

interface Launch {
  child: ChildProcess;
  out: () => string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function labUp(port: number, ...more: string[]): Launch {
  const child = spawn(process.execPath, [OSR_BIN, 'lab', 'up', '--dir', dir, '--topology', topologyFile, '--port', String(port), '--status-interval', '1s', ...more], { stdio: ['ignore', 'pipe', 'pipe'] });
  let text = '';
  child.stdout!.on('data', (b: Buffer) => (text += b.toString()));
  child.stderr!.on('data', (b: Buffer) => (text += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return { child, out: () => text, exited };
}

function osr(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync(process.execPath, [OSR_BIN, ...args], { encoding: 'utf8', timeout: 180_000 });
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

const recorded = () => readLabFile(dir)?.processes ?? [];

after(() => {
  osr('lab', 'down', '--dir', dir);
  for (const p of labProcesses()) process.kill(p.pid, 'SIGKILL');
  fs.rmSync(root, { recursive: true, force: true });
});

/** Start `lab up`, send SIGINT when `when` holds, and check that nothing of the lab is left. */
async function interruptWhen(what: string, when: (l: Launch) => boolean): Promise<string> {
  const l = labUp(await freePort());
  await waitFor(what, () => when(l) || l.child.exitCode !== null, 180_000, 10);
  assert.equal(l.child.exitCode, null, `lab up ended before ${what}:\n${l.out()}`);
  l.child.kill('SIGINT');
  const end = await l.exited;
  assert.ok(end.code === 130 || end.code === 0, `lab up ended with ${end.code ?? end.signal}:\n${l.out()}`);
  await noneLeft();
  assert.equal(readLabFile(dir), undefined, 'lab.json is removed once everything stopped');
  return l.out();
}

test('Ctrl-C right away stops lab up', async () => {
  const out = await interruptWhen('lab up to begin', (l) => l.out().includes('osr lab: topology'));
  assert.match(out, /SIGINT/);
});

test('Ctrl-C while the vault starts stops the vault', async () => {
  await interruptWhen('the vault to be spawned', () => recorded().some((p) => p.role === 'vault'));
});

test('Ctrl-C while the providers start stops the providers, their hosts and the vault', async () => {
  await interruptWhen('a provider to be spawned', () => recorded().some((p) => p.role === 'provider'));
});

test('Ctrl-C after the lab is up stops it; the next lab up works', async () => {
  const out = await interruptWhen('the lab to be up', (l) => l.out().includes('Owner token'));
  assert.match(out, /stopped; the lab's state stays/);
  const again = osr('lab', 'up', '--dir', dir, '--port', String(await freePort()), '--detach');
  assert.equal(again.status, 0, again.out);
  assert.ok(labProcesses().length >= 4, 'vault, two providers and their hosts run');
  const down = osr('lab', 'down', '--dir', dir);
  assert.equal(down.status, 0, down.out);
  await noneLeft();
});

test('SIGTERM and SIGHUP stop lab up too', async () => {
  for (const sig of ['SIGTERM', 'SIGHUP'] as const) {
    const l = labUp(await freePort());
    await waitFor('a provider to be spawned', () => recorded().some((p) => p.role === 'provider') || l.child.exitCode !== null, 180_000, 10);
    l.child.kill(sig);
    const end = await l.exited;
    assert.equal(end.code, 130, `${sig}: ${l.out()}`);
    await noneLeft();
  }
});

test('a start-up whose launcher was killed: lab up refuses, lab down stops what it left', async () => {
  const l = labUp(await freePort());
  await waitFor('a provider to be spawned', () => recorded().some((p) => p.role === 'provider') || l.child.exitCode !== null, 180_000, 10);
  l.child.kill('SIGKILL');
  await l.exited;
  assert.ok(labProcesses().length > 0, 'the killed launcher left its processes');
  assert.equal(readLabFile(dir)?.state, 'starting');
  const refused = osr('lab', 'up', '--dir', dir, '--port', String(await freePort()), '--detach');
  assert.notEqual(refused.status, 0);
  assert.match(refused.out, /ALREADY_EXISTS.*cut short.*osr lab down/s);
  const down = osr('lab', 'down', '--dir', dir);
  assert.equal(down.status, 0, down.out);
  assert.match(down.out, /cut short/);
  await noneLeft();
  assert.equal(osr('lab', 'down', '--dir', dir).out.trim(), `no lab runs in ${dir}`);
});

test('a port in use is PORT_IN_USE, with what to do; so it is for the vault itself', async () => {
  const taken = net.createServer();
  await new Promise<void>((r) => taken.listen(0, '127.0.0.1', r));
  const port = (taken.address() as net.AddressInfo).port;
  try {
    const r = osr('lab', 'up', '--dir', dir, '--port', String(port), '--detach');
    assert.equal(r.status, 2, r.out);
    assert.match(r.out, /error PORT_IN_USE: port \d+ on 127\.0\.0\.1 is in use/);
    assert.match(r.out, /osr lab down/);
    assert.match(r.out, /--port/);
    assert.doesNotMatch(r.out, /INTERNAL/);
    await noneLeft();
    const v = osr('vault', '--data-dir', path.join(root, 'vault'), '--listen', `127.0.0.1:${port}`);
    assert.equal(v.status, 2, v.out);
    assert.match(v.out, /error PORT_IN_USE: .*another process listens there/);
  } finally {
    await new Promise<void>((r) => taken.close(() => r()));
  }
});
