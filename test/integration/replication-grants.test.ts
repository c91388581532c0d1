/**
 * Replication grants (docs/design/agent-channel.md, Replication grants) with real agent
 * processes, real TLS and a real replication: over the provider channel an agent sets
 * replication up, gives a replica to a source and demotes a VM only on the vault's signed
 * word, and the words it checks are the vault CA's signature, this VM, this agent as the
 * end it plays, the other end's host, and the order grants were signed in. The primary
 * then replicates only to the host and fabric the grant names — not to a host of the same
 * name that a stolen provider key enrolled into its own fabric — and the replica takes the
 * VM only from its source's fabric.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { AgentClient } from '../../src/cli/agent-client.js';
import type { ReplicationGrant } from '../../src/domain/grants.js';
import { startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { createCa, issueCertificate, signGrant, type CaMaterial, type TlsMaterial } from '../../src/pki/index.js';
import type { ReplicationHealth } from '../../src/agent/wire/replication-types.js';
import { createVm, health, tempDir, waitFor, waitForPoint } from '../support/lab.js';
import { assertRejectsCode } from '../support/unit.js';

const dir = tempDir('osr-grant-');
let ca: CaMaterial;
const agents: RunningAgent[] = [];
const providerTls: Record<string, TlsMaterial> = {};

/** An agent with a certificate from the vault's CA for `name` of `fabricId`, serving the provider channel. */
async function agent(name: string, fabricId: string, o: { dirName?: string; listen?: boolean } = {}): Promise<RunningAgent> {
  const key = o.dirName ?? name;
  const pkiDir = path.join(dir, `pki-${key}`);
  fs.mkdirSync(pkiDir, { recursive: true });
  const own = await issueCertificate(ca, { commonName: name, role: 'agent', fabricId, ipAddresses: ['127.0.0.1'] });
  fs.writeFileSync(path.join(pkiDir, 'ca.crt'), ca.certPem);
  fs.writeFileSync(path.join(pkiDir, `${name}.crt`), own.certPem);
  fs.writeFileSync(path.join(pkiDir, `${name}.key`), own.keyPem, { mode: 0o600 });
  const a = await startAgentProcess({ name, dataDir: path.join(dir, key), pkiDir, ...(o.listen ? { listenPort: 0 } : {}), extraArgs: ['--provider-api', '127.0.0.1:0'], logFile: path.join(dir, `${key}.log`) });
  agents.push(a);
  return a;
}

/** The provider of `fabricId` reaching `a` over its channel (the client a provider uses). */
function channel(a: RunningAgent, fabricId: string, hostName: string): AgentClient {
  return new AgentClient(a.providerApi!, { channel: { tls: () => providerTls[fabricId]!, fabricId: () => fabricId, hostName } });
}

const grant = (g: Partial<ReplicationGrant> & Pick<ReplicationGrant, 'replicationId'>, by: CaMaterial = ca): string =>
  signGrant(by, { item: 'item-1', source: { fabricId: 'site-a', host: 'src1' }, target: { fabricId: 'site-b', host: 'dst1' }, issuedAt: new Date().toISOString(), ...g });

let src: RunningAgent;
let dst: RunningAgent;
let impostor: RunningAgent;
let vmId = '';

before(async () => {
  ca = await createCa({ commonName: 'grant test vault CA' });
  for (const f of ['site-a', 'site-b']) {
    const p = await issueCertificate(ca, { commonName: `prov-${f}`, role: 'provider', fabricId: f });
    providerTls[f] = { cert: p.certPem, key: p.keyPem, ca: ca.certPem };
  }
  [src, dst, impostor] = await Promise.all([
    agent('src1', 'site-a'),
    agent('dst1', 'site-b', { listen: true }),
    // what a stolen key of site-a's provider could get certified: a host of its own fabric named like the real replica host
    agent('dst1', 'site-a', { dirName: 'impostor', listen: true }),
  ]);
  await createVm(src, 'vm1', ['8M']);
  vmId = (await src.api.get<{ name: string; id: string }[]>('/v1/vms')).find((v) => v.name === 'vm1')!.id;
});

after(async () => {
  await Promise.all(agents.map((a) => stopAgentProcess(a, 'SIGKILL')));
  fs.rmSync(dir, { recursive: true, force: true });
});

const replicate = (to: RunningAgent, extra: Record<string, unknown>) => ({ vm: 'vm1', peer: `127.0.0.1:${to.replicationPort}`, copyFrequency: '1s', ...extra });

describe('replication grants over the provider channel', () => {
  test('the replica takes a source only on a grant that names it, this host and this VM', async () => {
    const p = channel(dst, 'site-b', 'dst1');
    const path_ = `/v1/replicas/${encodeURIComponent(vmId)}/source`;
    await assertRejectsCode(p.call('PUT', path_, { source: 'src1', claim: true }), 'AUTH_FAILED');
    const other = await createCa({ commonName: 'another vault' });
    await assertRejectsCode(p.call('PUT', path_, { source: 'src1', claim: true, grant: grant({ replicationId: vmId }, other) }), 'AUTH_FAILED');
    // altered after signing
    const good = grant({ replicationId: vmId });
    const [head, payload, sig] = good.split('.');
    const altered = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(payload!, 'base64url').toString()), target: { fabricId: 'site-b', host: 'dst2' } })).toString('base64url');
    await assertRejectsCode(p.call('PUT', path_, { source: 'src1', claim: true, grant: `${head}.${altered}.${sig}` }), 'AUTH_FAILED');
    // another VM, another target host, another source than the one named
    await assertRejectsCode(p.call('PUT', path_, { source: 'src1', claim: true, grant: grant({ replicationId: 'some-other-vm' }) }), 'AUTH_FAILED');
    await assertRejectsCode(p.call('PUT', path_, { source: 'src1', claim: true, grant: grant({ replicationId: vmId, target: { fabricId: 'site-b', host: 'dst2' } }) }), 'AUTH_FAILED');
    await assertRejectsCode(p.call('PUT', path_, { source: 'evil', claim: true, grant: good }), 'AUTH_FAILED');
    const owner = await p.call<{ source: string; sourceFabric?: string }>('PUT', path_, { source: 'src1', claim: true, grant: good });
    assert.equal(owner.source, 'src1');
    assert.equal(owner.sourceFabric, 'site-a');
  });

  test('a replica the vault did not give to a source is not opened by a first connection; a deleted one waits for a newer grant', async () => {
    const p = channel(dst, 'site-b', 'dst1');
    // no word from the vault for this VM: the impostor's replica host takes nothing either
    await createVm(src, 'vm2', ['4M']);
    await src.api.post('/v1/replications', replicate(dst, { vm: 'vm2', peerName: 'dst1' }));
    const h = await waitFor('the replica refuses an unnamed source', async () => {
      const x = await health(src, 'vm2');
      return x.lastError?.code === 'AUTH_FAILED' ? x : undefined;
    }, 30_000);
    assert.match(h.lastError!.message, /has not given the replica/);
    await src.api.delete('/v1/replications/vm2');
    const vm2 = (await src.api.get<{ name: string; id: string }[]>('/v1/vms')).find((v) => v.name === 'vm2')!.id;
    const g = grant({ replicationId: vm2 });
    await p.call('PUT', `/v1/replicas/${vm2}/source`, { source: 'src1', claim: true, grant: g });
    await src.api.post('/v1/replications', replicate(dst, { vm: 'vm2', peerName: 'dst1' }));
    await waitForPoint(src, 'vm2', null, 60_000);
    await src.api.delete('/v1/replications/vm2');
    // deleted: the same grant again does not give it back; a newer one does
    await p.delete(`/v1/replicas/${vm2}`);
    await assertRejectsCode(p.call('PUT', `/v1/replicas/${vm2}/source`, { source: 'src1', claim: true, grant: g }), 'AUTH_FAILED');
    await p.call('PUT', `/v1/replicas/${vm2}/source`, { source: 'src1', claim: true, grant: grant({ replicationId: vm2 }) });
  });

  test('the primary replicates only on a grant that names it, and only to the host and fabric the grant names', async () => {
    const p = channel(src, 'site-a', 'src1');
    await assertRejectsCode(p.post('/v1/replications', replicate(dst, { peerName: 'dst1' })), 'AUTH_FAILED');
    // a grant where this host is the target, not the source
    await assertRejectsCode(p.post('/v1/replications', replicate(dst, { grant: grant({ replicationId: vmId, source: { fabricId: 'site-b', host: 'dst1' }, target: { fabricId: 'site-a', host: 'src1' } }) })), 'AUTH_FAILED');
    // the peer named is not the grant's target
    await assertRejectsCode(p.post('/v1/replications', replicate(impostor, { peerName: 'evil1', grant: grant({ replicationId: vmId }) })), 'AUTH_FAILED');
    assert.deepEqual(await src.api.get<unknown[]>('/v1/replications'), [], 'nothing refused was set up');

    // pointed at the impostor's address: a host named dst1, but of site-a. The grant names dst1 of site-b.
    await p.post('/v1/replications', replicate(impostor, { grant: grant({ replicationId: vmId }) }));
    const refused = await waitFor('the impostor refused', async () => {
      const h = await health(src, 'vm1');
      return h.lastError?.code === 'AUTH_FAILED' ? h : undefined;
    }, 30_000);
    assert.match(refused.lastError!.message, /fabric site-a, not to fabric site-b/);
    assert.deepEqual(await impostor.api.get<unknown[]>('/v1/replicas'), [], 'the impostor got no replica');
    await p.delete('/v1/replications/vm1');

    // an older grant is refused once a newer one was taken
    const older = grant({ replicationId: vmId, issuedAt: new Date(Date.now() - 3_600_000).toISOString() });
    await assertRejectsCode(p.post('/v1/replications', replicate(dst, { grant: older })), 'AUTH_FAILED');

    // the real target: a recovery point at dst1, whose replica is src1's of site-a
    await p.post('/v1/replications', replicate(dst, { grant: grant({ replicationId: vmId }) }));
    const h: ReplicationHealth = await waitForPoint(src, 'vm1', null, 60_000);
    assert.ok(h.latestPoint);
    const replicas = await dst.api.get<{ vmId: string; source: string | null }[]>('/v1/replicas');
    assert.deepEqual(replicas.map((r) => [r.vmId, r.source]), [[vmId, 'src1']]);
  });

  test('a demote over the provider channel names the source and carries its grant', async () => {
    const p = channel(src, 'site-a', 'src1');
    await assertRejectsCode(p.post('/v1/vms/vm1/demote', { epoch: 2 }), 'AUTH_FAILED');
    await assertRejectsCode(p.post('/v1/vms/vm1/demote', { epoch: 2, source: 'dst1' }), 'AUTH_FAILED');
    // a grant for the other direction (src1 the source) is not a grant for the demote
    await assertRejectsCode(p.post('/v1/vms/vm1/demote', { epoch: 2, source: 'dst1', grant: grant({ replicationId: vmId }) }), 'AUTH_FAILED');
    // the right ends, but signed before the grant this agent replicates on: an old reprotect's grant replayed
    const replayed = grant({ replicationId: vmId, source: { fabricId: 'site-b', host: 'dst1' }, target: { fabricId: 'site-a', host: 'src1' }, issuedAt: new Date(Date.now() - 60_000).toISOString() });
    await assertRejectsCode(p.post('/v1/vms/vm1/demote', { epoch: 2, source: 'dst1', grant: replayed }), 'AUTH_FAILED', /not newer than the one this agent took/);
    const vms = await src.api.get<{ name: string }[]>('/v1/vms');
    assert.ok(vms.some((v) => v.name === 'vm1'), 'the VM was not demoted by a refused call');
    assert.equal((await health(src, 'vm1')).state, 'Replicating', 'and it still replicates: nothing was touched');
  });
});
