/**
 * The commands between the vault and its providers (src/domain/commands.ts): every kind
 * has a check of its body, a body as the vault sends it passes whole (fields the check
 * does not name included), and a malformed one is refused with INVALID_ARGUMENT naming the
 * first field that is wrong.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkCommandBody, Commands, isCommandKind } from '../../src/domain/commands.js';
import { OsrError } from '../../src/domain/errors.js';
import { validatePolicy } from '../../src/domain/policy.js';

const policy = validatePolicy({}, Date.now());
const placement = { hostId: 'b.h1', storage: { d0: 'b.gold' }, networks: { nic0: 'b.net1', nic1: null } };
const vm = { id: 'a.vm1', name: 'VM1', cloud: 'a.c1', host: 'a.h1', powerState: 'Running', disks: [{ id: 'd0', name: 'system', sizeBytes: 1 << 30, storageLocation: 'a.gold' }], nics: [{ id: 'nic0', vmNetwork: 'a.net1' }, { id: 'nic1' }], replicationId: 'r-1' };
const replica = { replicaVmId: 'b.vm1-replica', hostId: 'b.h1', agent: { address: '10.0.0.2', port: 8084, name: 'b-h1' }, nics: [{ id: 'nic0', vmNetwork: 'b.net1', ip: '10.2.1.10' }, { id: 'nic1', vmNetwork: null, ip: null }], reused: false };

/** A body of each kind, as the vault's workflows send it. */
const bodies: Record<string, unknown> = {
  [Commands.PrepareReplica]: { item: 'a.vm1', vm, sourceAgent: 'a-h1', placement, policy },
  [Commands.EnableReplication]: { item: 'a.vm1', vm, policy, target: { fabricId: 'b', ...replica } },
  [Commands.InitialReplication]: { item: 'a.vm1', method: { method: 'now' } },
  [Commands.Resync]: { item: 'a.vm1', vmId: 'a.vm1', requestedAt: new Date().toISOString() },
  [Commands.ConfirmDisks]: { item: 'a.vm1', vmId: 'a.vm1' },
  [Commands.DisableReplication]: { item: 'a.vm1', vmId: 'a.vm1' },
  [Commands.RemoveReplica]: { item: 'a.vm1', replicaVmId: null, delete: true },
  [Commands.ConnectNics]: { item: 'a.vm1', replicaVmId: 'b.vm1-replica', networks: { nic1: 'b.net2', nic0: null } },
  [Commands.StartTestFailover]: { item: 'a.vm1', replicaVmId: 'b.vm1-replica', point: 'p1', network: { mode: 'existing', vmNetwork: 'b.isolated' } },
  [Commands.CleanupTestFailover]: { item: 'a.vm1', testVmId: 'b.vm1-test' },
  [Commands.CreateTestNetwork]: { name: 'three-tier' },
  [Commands.RemoveTestNetwork]: { vmNetwork: 'b.drill-1' },
  [Commands.PrepareFailover]: { item: 'a.vm1', vmId: 'a.vm1' },
  [Commands.Promote]: { item: 'a.vm1', replicaVmId: 'b.vm1-replica', point: null },
  [Commands.ChangePoint]: { item: 'a.vm1', vmId: 'b.vm1-replica', point: 'p2' },
  [Commands.CommitFailover]: { item: 'a.vm1', vmId: 'b.vm1-replica' },
  [Commands.Fence]: { item: 'a.vm1', vmId: 'a.vm1', epoch: 2 },
  [Commands.Demote]: { item: 'a.vm1', vmId: 'a.vm1', epoch: 2, source: 'b-h1' },
  [Commands.RunScript]: {
    script: 'hooks/db.sh',
    context: { plan: { id: 'pl', name: 'three-tier' }, job: 'j1', failoverType: 'test', direction: 'primary-to-recovery', group: { name: 'db', index: 1 }, action: { name: 'check', phase: 'post' }, vms: { 'a.vm1': { name: 'VM1', state: 'Succeeded', vmId: 'a.vm1', recoveryPoint: { id: 'p1', at: '2024-01-01T00:00:00.000Z', consistency: 'crash' }, testVmId: null } } },
    timeoutSeconds: 300,
  },
};

const refused = (kind: string, body: unknown, field: string) => {
  assert.ok(isCommandKind(kind));
  assert.throws(
    () => checkCommandBody(kind, body),
    (e: unknown) => e instanceof OsrError && e.code === 'INVALID_ARGUMENT' && e.details?.field === (field || null) && e.message.startsWith(`the vault's ${kind} command is malformed: `),
    `${kind}: ${field}`,
  );
};

test('every kind has a body check, and a body as the vault sends it passes as it came', () => {
  for (const kind of Object.values(Commands)) {
    assert.ok(isCommandKind(kind), kind);
    const body = bodies[kind];
    assert.ok(body, `an example body of ${kind}`);
    assert.equal(checkCommandBody(kind, body), body, kind);
  }
  assert.deepEqual(Object.keys(bodies).sort(), Object.values(Commands).sort());
  assert.equal(isCommandKind('failover.teleport'), false);
  assert.equal(isCommandKind('toString'), false, 'not a property of every object');
});

test('fields a check does not name are let through; optional fields may be missing', () => {
  const b = { item: 'a.vm1', vmId: 'a.vm1', epoch: 2, note: 'from a newer vault' };
  assert.equal(checkCommandBody(Commands.Fence, b), b);
  checkCommandBody(Commands.PrepareReplica, { item: 'a.vm1', vm: { ...vm, replicationId: undefined }, placement, policy });
  checkCommandBody(Commands.Demote, { item: 'a.vm1', vmId: 'a.vm1', epoch: 2 });
  checkCommandBody(Commands.RemoveReplica, { item: 'a.vm1', replicaVmId: 'b.vm1-replica' });
  checkCommandBody(Commands.InitialReplication, { item: 'a.vm1', vmId: 'b.vm1', method: { method: 'offline', exportPath: '/x', importPath: '/y' } });
  checkCommandBody(Commands.StartTestFailover, { item: 'a.vm1', replicaVmId: 'b.r', point: 'p1', network: { mode: 'none' } });
});

test('a malformed body is refused with INVALID_ARGUMENT naming the first field that is wrong', () => {
  refused(Commands.Fence, undefined, '');
  refused(Commands.Fence, [], '');
  refused(Commands.Fence, { item: 'a.vm1', vmId: 'a.vm1' }, 'epoch');
  refused(Commands.Fence, { item: 'a.vm1', vmId: 'a.vm1', epoch: '2' }, 'epoch');
  refused(Commands.Fence, { item: '', vmId: 'a.vm1', epoch: 2 }, 'item');
  refused(Commands.PrepareReplica, { item: 'a.vm1', vm, policy }, 'placement');
  refused(Commands.PrepareReplica, { item: 'a.vm1', vm: { ...vm, disks: [{ id: 'd0', name: 'system', sizeBytes: '1G' }] }, placement, policy }, 'vm.disks[0].sizeBytes');
  refused(Commands.PrepareReplica, { item: 'a.vm1', vm, placement: { ...placement, networks: { nic0: 7 } }, policy }, 'placement.networks.nic0');
  refused(Commands.PrepareReplica, { item: 'a.vm1', vm, placement, policy: { ...policy, initialReplication: { method: 'scheduled' } } }, 'policy.initialReplication.startAt');
  refused(Commands.EnableReplication, { item: 'a.vm1', policy, target: { fabricId: 'b', ...replica, agent: { address: '10.0.0.2' } } }, 'target.agent.port');
  refused(Commands.Promote, { item: 'a.vm1', replicaVmId: 'b.r' }, 'point');
  refused(Commands.StartTestFailover, { item: 'a.vm1', replicaVmId: 'b.r', point: 'p1', network: { mode: 'bridged' } }, 'network.mode');
  refused(Commands.StartTestFailover, { item: 'a.vm1', replicaVmId: 'b.r', point: 'p1', network: { mode: 'existing' } }, 'network.vmNetwork');
  refused(Commands.RunScript, { script: 'x.sh', context: {}, timeoutSeconds: 10 }, 'context.plan');
  // a source VM's machine (a libvirt fabric's) is bounded field by field
  const machine = { vcpus: 2, memoryMiB: 512, nics: [{ network: 'prod-br', mac: '52:54:00:00:00:01' }] };
  checkCommandBody(Commands.PrepareReplica, { item: 'a.vm1', vm: { ...vm, machine }, placement, policy });
  refused(Commands.PrepareReplica, { item: 'a.vm1', vm: { ...vm, machine: { ...machine, vcpus: 0 } }, placement, policy }, 'vm.machine.vcpus');
  refused(Commands.PrepareReplica, { item: 'a.vm1', vm: { ...vm, machine: { ...machine, nics: [{ network: "x'/>" }] } }, placement, policy }, 'vm.machine.nics[0].network');
  refused(Commands.PrepareReplica, { item: 'a.vm1', vm: { ...vm, machine: 'big' }, placement, policy }, 'vm.machine');
});
