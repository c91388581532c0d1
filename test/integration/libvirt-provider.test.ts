/**
 * `osr provider --fabric libvirt` end to end with a vault: the provider process registers
 * with a registration key, enrols the KVM host's agent with the vault's CA through the
 * agent's API, and the vault's inventory holds the domain as the site file maps it — its
 * disks' formats and its machine — under a fabric of kind libvirt without raw disks.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ensurePki, OSR_BIN, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { tempDir, waitFor } from '../support/lab.js';
import { libvirtSkip, startTinyDomain, type TinyDomain } from '../support/libvirt.js';
import { startVault, type TestVault } from '../support/vault.js';

const skip = libvirtSkip();
const dir = tempDir('osr-lvd-provider-');
const tag = `lvd-p${process.pid}`;
let v: TestVault | undefined;
let dom: TinyDomain | undefined;
let agent: RunningAgent | undefined;
let provider: ChildProcess | undefined;

type Obj = Record<string, unknown>;

before(async () => {
  if (skip) return;
  v = await startVault({ dataDir: path.join(dir, 'vault') });
  dom = await startTinyDomain(`${tag}-db`, path.join(dir, 'domain'), { idle: true });
  const pkiDir = path.join(dir, 'pki');
  await ensurePki(pkiDir, [`${tag}-kvm`]);
  agent = await startAgentProcess({ name: `${tag}-kvm`, dataDir: path.join(dir, 'agent'), pkiDir, listenPort: 0, extraArgs: ['--host', 'libvirt', '--libvirt-domains', `^${dom.name}$`], logFile: path.join(dir, 'agent.log') });
  fs.writeFileSync(
    path.join(dir, 'site.yaml'),
    `name: ${tag}
dir: provider
hosts:
  - { name: ${agent.name}, agent: '${agent.apiUrl}', addresses: [127.0.0.1], replicationPort: ${agent.replicationPort} }
clouds:
  - { name: Gold, hostGroups: [{ name: Rack1, hosts: [${agent.name}] }] }
`,
  );
});

after(async () => {
  if (provider && provider.exitCode === null) {
    const exited = new Promise((r) => provider!.once('exit', r));
    provider.kill('SIGTERM');
    await exited;
  }
  if (agent) await stopAgentProcess(agent, 'SIGKILL');
  await dom?.destroy().catch(() => undefined);
  await v?.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('osr provider --fabric libvirt registers, enrols the host\'s agent and reports its domain with disks\' formats and machine', { skip }, async () => {
  const key = (await v!.api.request<Obj>('POST', '/api/v1/registration-keys')).key as string;
  const log = fs.openSync(path.join(dir, 'provider.log'), 'a');
  provider = spawn(process.execPath, [OSR_BIN, 'provider', '--fabric', 'libvirt', '--config', path.join(dir, 'site.yaml'), '--vault', v!.url, '--registration-key', key, '--inventory-interval', '2s', '--status-interval', '2s'], { stdio: ['ignore', 'ignore', log] });
  fs.closeSync(log);
  const fabric = await waitFor('the libvirt fabric registered with its capabilities', async () => {
    const f = ((await v!.api.request<{ items: Obj[] }>('GET', '/api/v1/fabrics')).items).find((x) => x.name === tag);
    return f && f.capabilities ? f : undefined;
  }, 60_000, 250).catch((e: unknown) => {
    throw new Error(`${(e as Error).message}; the provider's log: ${fs.readFileSync(path.join(dir, 'provider.log'), 'utf8').slice(-2000)}`);
  });
  assert.equal(fabric.kind, 'libvirt');
  assert.equal((fabric.capabilities as Obj).rawDisks, false);
  assert.equal((fabric.capabilities as Obj).testFailover, true);

  const vm = await waitFor('the domain in the vault\'s inventory', async () => ((await v!.api.request<{ items: Obj[] }>('GET', `/api/v1/vms?fabric=${encodeURIComponent(fabric.id as string)}`)).items).find((x) => x.name === dom!.name), 60_000, 250);
  const props = vm.properties as { disks: { id: string; format?: string }[]; machine?: { vcpus: number; memoryMiB: number; kernelBoot?: { kernel: string } }; replicationId?: string; powerState: string };
  assert.deepEqual(props.disks.map((d) => [d.id, d.format]), [['vda', 'qcow2'], ['vdb', 'qcow2']]);
  assert.equal(props.machine?.vcpus, 1);
  assert.equal(props.machine?.memoryMiB, 256);
  assert.ok(props.machine?.kernelBoot?.kernel.startsWith('/'));
  assert.match(props.replicationId ?? '', /^[0-9a-f-]{36}$/);
  assert.equal(props.powerState, 'Running');

  const enrolment = await agent!.api.get<{ caCertificate: string; certificate: { commonName: string } }>('/v1/enrolment');
  assert.equal(enrolment.caCertificate.trim(), v!.vault.ctx.identity.ca.certPem.trim(), 'the agent holds a certificate of the vault\'s CA');
  assert.equal(enrolment.certificate.commonName, agent!.name);
});
