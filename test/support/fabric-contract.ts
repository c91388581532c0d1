/**
 * The fabric contract: every call of a FabricDriver, of both parts (management and
 * replication), against a real fabric a factory makes, each run twice to prove it
 * converges — a command delivered again, or sent again by a vault that restarted mid-job,
 * changes nothing the second time (provider.md). It protects one VM the way the vault's
 * jobs do (a replica VM, replication, a replica kept and taken up again, test failovers,
 * a drill network, a planned failover with a change of point and a commit, fence, demote,
 * reverse replication) and checks what the port promises, not how a fabric does it.
 *
 * test/integration/fabric-contract-lab.test.ts runs it on the lab; another fabric's driver
 * runs it with a factory of its own. Fabric-specific checks stay in that fabric's tests.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test as nodeTest, type TestContext } from 'node:test';
import { validatePolicy } from '../../src/domain/policy.js';
import type { InventoryDocument } from '../../src/domain/resources.js';
import type { DriverContext, FabricDriver, RecoveryPointInfo, ReplicaVm, ReplicaVmSpec, ReplicationStatus } from '../../src/fabric/driver.js';
import { createCa, createCrl, issueCertificate, type CaMaterial } from '../../src/pki/index.js';
import { waitFor } from './lab.js';

/** What the suite needs to know of a fabric: everything else it learns from the driver. */
export interface ContractFabric {
  /** a driver over the fabric; called again for a restart (the fabric's state is kept, its processes are new) */
  driver(): FabricDriver;
  /** a running VM (the fabric's id) that the suite protects, fails over and reprotects; it must be off-limits to anything else */
  vmId: string;
  /** where its replica goes at the recovery site: a host, a storage location per disk id, a VM network per NIC id */
  placement: { hostId: string; storage: Record<string, string>; networks: Record<string, string | null> };
  /** another VM network of the recovery site, which a replica's NIC moves to and back */
  otherNetwork: string;
  /** how long an initial copy or a resync may take (default 120 s) */
  timeoutMs?: number;
  /** the fabric's own clean-up once the driver stopped (default: nothing) */
  close?(): Promise<void>;
}

/** The vault's id of the protected item (`<fabric id>.<local id>`). */
const ITEM = 'contract.item';
const quiet = { info() {}, warn() {}, error() {} };

/** An inventory as a second read must find it: free space moves with every write, so it is left out. */
function stable(doc: InventoryDocument): InventoryDocument {
  return { ...doc, storageLocations: doc.storageLocations.map(({ freeBytes: _f, ...l }) => l) };
}

/** The VM `id` of the inventory. */
function vmOf(doc: InventoryDocument, id: string): InventoryDocument['vms'][number] {
  const v = doc.vms.find((x) => x.id === id);
  assert.ok(v, `the inventory has no VM ${id}: ${doc.vms.map((x) => x.id).join(', ')}`);
  return v;
}

const rejectsWith = (code: string) => (e: unknown) => (e as { code?: string }).code === code;

/**
 * Steps a fabric cannot pass yet, by the start of their title, with the reason: they run
 * as `todo` (reported, not failing the run). A fabric's factory says which, and why.
 */
export interface ContractOptions {
  todo?: Record<string, string>;
}

/** Register the contract's tests for the fabric `make` gives. */
export function fabricContract(name: string, make: () => Promise<ContractFabric> | ContractFabric, o: ContractOptions = {}): void {
  const todoOf = (title: string): { todo?: string } => {
    const hit = Object.entries(o.todo ?? {}).find(([prefix]) => title.startsWith(prefix));
    return hit ? { todo: hit[1] } : {};
  };
  const test = (title: string, fn: (t: TestContext) => Promise<void> | void) => nodeTest(title, todoOf(title), fn);
  describe(`fabric contract: ${name}`, () => {
    let fabric: ContractFabric;
    let driver: FabricDriver;
    let ca: CaMaterial;
    let enrolments = 0;
    let changes = 0;
    const ctx = (): DriverContext => ({
      vaultCa: ca.certPem,
      clock: { now: () => Date.now() },
      inventoryChanged: () => void changes++,
      log: quiet,
      enrolAgent: async (host, publicKeyPem) => {
        enrolments++;
        const c = await issueCertificate(ca, { commonName: host, role: 'agent', publicKeyPem, fabricId: 'contract-fabric' });
        return { certificate: c.certPem, caCertificate: ca.certPem, notAfter: c.notAfter.toISOString() };
      },
    });
    const policy = validatePolicy({ copyFrequencySeconds: 30, retentionHours: 1 }, Date.now());
    const timeout = () => fabric.timeoutMs ?? 120_000;

    // what earlier steps made, for the later ones
    let spec: ReplicaVmSpec;
    let replica: ReplicaVm;
    let lastPoint: RecoveryPointInfo;
    let promoted: { vmId: string; epoch: number; point: RecoveryPointInfo };

    /** Replication of `vmId` is in step: the first copy (or the resync that replaces it) is done and its point is at the replica. */
    const replicating = (vmId: string): Promise<ReplicationStatus> =>
      waitFor(`replication of ${vmId} in step`, async () => {
        const s = await driver.replication.replicationStatus(vmId);
        return s.initial?.done && s.latestPoint ? s : undefined;
      }, timeout(), 200);

    before(async () => {
      ca = await createCa({ commonName: 'contract vault CA' });
      fabric = await make();
      driver = fabric.driver();
      await driver.management.start(ctx());
    });
    after(async () => {
      await driver?.management.stop();
      await fabric?.close?.();
    });

    test('capabilities: the driver declares each one', () => {
      const c = driver.capabilities;
      assert.ok(Array.isArray(c.initialReplication) && c.initialReplication.includes('now'), 'every fabric replicates at once');
      assert.ok(c.copyFrequenciesSeconds.length > 0);
      for (const flag of ['appConsistentPoints', 'testFailover', 'rawDisks', 'changedBlockTracking', 'nbdExport', 'resyncOnRequest'] as const) assert.equal(typeof c[flag], 'boolean', flag);
    });

    test('inventory read twice is the same; a stop and a start keep it; an unknown VM is VM_NOT_FOUND', async () => {
      const first = stable(await driver.management.inventory());
      assert.deepEqual(stable(await driver.management.inventory()), first);
      assert.equal(vmOf(first, fabric.vmId).powerState, 'Running');
      const enrolled = enrolments;
      await driver.management.stop();
      driver = fabric.driver();
      await driver.management.start(ctx());
      assert.equal(enrolments, enrolled, 'hosts enrolled with the same CA keep their certificates');
      assert.deepEqual(stable(await driver.management.inventory()), first);
      await assert.rejects(driver.management.setPower('no-such-vm', 'start'), rejectsWith('VM_NOT_FOUND'));
      await assert.rejects(driver.replication.replicationStatus('no-such-vm'), rejectsWith('VM_NOT_FOUND'));
    });

    test('revocation list handed twice: nothing revoked and nothing due, no host enrols again', async (t) => {
      if (!driver.management.revocationList) return t.skip('the fabric takes no revocation list');
      const crl = await createCrl(ca, [], { nextUpdate: new Date(Date.now() + 86_400_000) });
      const enrolled = enrolments;
      await driver.management.revocationList(crl);
      await driver.management.revocationList(crl);
      assert.equal(enrolments, enrolled);
    });

    test('power: stop, shutdown and start, each twice, end where asked', async () => {
      const power = async () => vmOf(await driver.management.inventory(), fabric.vmId).powerState;
      for (const [action, state] of [['stop', 'Off'], ['start', 'Running'], ['shutdown', 'Off'], ['start', 'Running']] as const) {
        assert.deepEqual(await driver.management.setPower(fabric.vmId, action), { powerState: state });
        assert.deepEqual(await driver.management.setPower(fabric.vmId, action), { powerState: state });
        assert.equal(await power(), state, `after ${action}`);
      }
    });

    test('replica VM: made once, the same answer the second time; it shows as the replica of the item, off', async () => {
      const inv = await driver.management.inventory();
      const vm = vmOf(inv, fabric.vmId);
      const host = inv.hosts.find((h) => h.id === vm.host);
      spec = {
        itemId: ITEM,
        source: { name: vm.name, disks: vm.disks.map((d) => ({ id: d.id, name: d.name, sizeBytes: d.sizeBytes })), nics: vm.nics.map((n) => ({ id: n.id, ...(n.subnet ? { subnet: n.subnet } : {}) })), replicationId: vm.replicationId, agent: host?.name, ...(vm.machine ? { machine: vm.machine } : {}) },
        ...fabric.placement,
      };
      replica = await driver.management.ensureReplicaVm(spec);
      assert.deepEqual(await driver.management.ensureReplicaVm(spec), replica);
      assert.equal(replica.reused, false);
      assert.equal(replica.hostId, fabric.placement.hostId);
      assert.deepEqual(replica.nics.map((n) => [n.id, n.vmNetwork]), Object.entries(fabric.placement.networks));
      const shown = vmOf(await driver.management.inventory(), replica.replicaVmId);
      assert.equal(shown.replicaOf, ITEM);
      assert.equal(shown.powerState, 'Off');
      assert.ok(changes > 0, 'inventory changes are announced');
    });

    test('NICs: connected twice to a network, one address; moved and back; disconnected twice', async () => {
      const [nic, home] = Object.entries(fabric.placement.networks)[0]!;
      const moved = await driver.management.connectNic(replica.replicaVmId, nic, fabric.otherNetwork);
      assert.deepEqual(await driver.management.connectNic(replica.replicaVmId, nic, fabric.otherNetwork), moved);
      assert.deepEqual(await driver.management.connectNic(replica.replicaVmId, nic, null), { ip: null });
      assert.deepEqual(await driver.management.connectNic(replica.replicaVmId, nic, null), { ip: null });
      const back = await driver.management.connectNic(replica.replicaVmId, nic, home);
      assert.deepEqual(await driver.management.connectNic(replica.replicaVmId, nic, home), back);
      const shown = vmOf(await driver.management.inventory(), replica.replicaVmId).nics.find((n) => n.id === nic)!;
      assert.equal(shown.vmNetwork, home ?? undefined);
      assert.equal(shown.ip, back.ip ?? undefined);
    });

    test('replication: set up twice, one first copy; its points are at the replica', async () => {
      await driver.replication.ensureReplication({ vmId: fabric.vmId, policy, peer: replica.agent });
      await driver.replication.ensureReplication({ vmId: fabric.vmId, policy, peer: replica.agent });
      const status = await replicating(fabric.vmId);
      assert.equal(status.health === 'Critical', false, JSON.stringify(status.healthReasons));
      assert.equal(status.initial!.bytesTotal, spec.source.disks.reduce((n, d) => n + d.sizeBytes, 0));
      const points = await driver.replication.recoveryPoints(replica.replicaVmId);
      const again = await driver.replication.recoveryPoints(replica.replicaVmId);
      assert.ok(points.every((p) => again.some((q) => q.id === p.id)), 'a second read loses no point');
      assert.ok(again.some((p) => p.id === status.latestPoint!.id), 'the latest point is at the replica');
    });

    test('resync: asked twice, it runs to its end and replication goes on', async (t) => {
      if (!driver.capabilities.resyncOnRequest) return t.skip('the fabric does not resynchronize on request');
      await driver.replication.resync(fabric.vmId);
      await driver.replication.resync(fabric.vmId);
      const s = await waitFor('the resync done', async () => {
        const s = await driver.replication.replicationStatus(fabric.vmId);
        return s.resync?.completedAt && s.state !== 'Resynchronizing' && s.initial?.done ? s : undefined;
      }, timeout(), 200);
      assert.equal(s.resync!.bytesTotal, spec.source.disks.reduce((n, d) => n + d.sizeBytes, 0));
    });

    test('replication stopped twice; the replica kept twice is a VM of its own, taken up again by the item and brought in step', async () => {
      await driver.replication.stopReplication(fabric.vmId);
      await driver.replication.stopReplication(fabric.vmId);
      await driver.management.removeReplicaVm(replica.replicaVmId, { deleteData: false });
      await driver.management.removeReplicaVm(replica.replicaVmId, { deleteData: false });
      assert.equal(vmOf(await driver.management.inventory(), replica.replicaVmId).replicaOf, undefined);
      const taken = await driver.management.ensureReplicaVm(spec);
      assert.equal(taken.replicaVmId, replica.replicaVmId);
      assert.equal(taken.reused, true);
      assert.deepEqual(await driver.management.ensureReplicaVm(spec), { ...taken, reused: false }, 'taken up once: asked again, it is this item\'s own');
      replica = taken;
      await driver.replication.ensureReplication({ vmId: fabric.vmId, policy, peer: replica.agent });
      await replicating(fabric.vmId);
    });

    test('test failover: a test VM started twice is one; removed twice, it is gone; a temporary network goes with it', async (t) => {
      if (!driver.capabilities.testFailover) return t.skip('the fabric runs no test failover');
      const point = (await driver.replication.recoveryPoints(replica.replicaVmId)).at(-1)!;
      const vm = await driver.management.startTestVm({ itemId: ITEM, replicaVmId: replica.replicaVmId, pointId: point.id, network: { mode: 'none' } });
      assert.deepEqual(await driver.management.startTestVm({ itemId: ITEM, replicaVmId: replica.replicaVmId, pointId: point.id, network: { mode: 'none' } }), vm);
      assert.ok(vm.disks.length === spec.source.disks.length && vm.disks.every((d) => d.nbd), 'the test VM\'s disks are served');
      const shownTest = vmOf(await driver.management.inventory(), vm.testVmId);
      assert.equal(shownTest.testFailoverOf, ITEM);
      assert.equal(shownTest.powerState, 'Running', 'the test VM runs, as the inventory shows it');
      await driver.management.removeTestVm(vm.testVmId);
      await driver.management.removeTestVm(vm.testVmId);
      assert.ok(!(await driver.management.inventory()).vms.some((v) => v.id === vm.testVmId));

      const isolated = await driver.management.startTestVm({ itemId: ITEM, replicaVmId: replica.replicaVmId, pointId: point.id, network: { mode: 'temporary' } });
      assert.deepEqual(await driver.management.startTestVm({ itemId: ITEM, replicaVmId: replica.replicaVmId, pointId: point.id, network: { mode: 'temporary' } }), isolated);
      assert.ok(isolated.temporaryNetwork);
      assert.ok(isolated.nics.every((n) => n.vmNetwork === isolated.temporaryNetwork));
      assert.ok((await driver.management.inventory()).vmNetworks.some((n) => n.id === isolated.temporaryNetwork));
      await driver.management.removeTestVm(isolated.testVmId);
      await driver.management.removeTestVm(isolated.testVmId);
      const inv = await driver.management.inventory();
      assert.ok(!inv.vmNetworks.some((n) => n.id === isolated.temporaryNetwork), 'the temporary network is removed with its test VM');
      assert.ok(!inv.vms.some((v) => v.id === isolated.testVmId));
    });

    test('drill network: made twice under one name is one; refused for removal while a test VM is on it; removed twice', async (t) => {
      if (!driver.capabilities.testFailover) return t.skip('the fabric runs no test failover');
      const net = await driver.management.createTestNetwork('contract drill');
      assert.deepEqual(await driver.management.createTestNetwork('contract drill'), net);
      assert.ok((await driver.management.inventory()).vmNetworks.some((n) => n.id === net.vmNetwork));
      const point = (await driver.replication.recoveryPoints(replica.replicaVmId)).at(-1)!;
      const vm = await driver.management.startTestVm({ itemId: ITEM, replicaVmId: replica.replicaVmId, pointId: point.id, network: { mode: 'existing', vmNetwork: net.vmNetwork } });
      assert.equal(vm.temporaryNetwork, null);
      assert.ok(vm.nics.every((n) => n.vmNetwork === net.vmNetwork));
      await assert.rejects(driver.management.removeTestNetwork(net.vmNetwork), rejectsWith('INVALID_STATE'));
      await driver.management.removeTestVm(vm.testVmId);
      await driver.management.removeTestNetwork(net.vmNetwork);
      await driver.management.removeTestNetwork(net.vmNetwork);
      assert.ok(!(await driver.management.inventory()).vmNetworks.some((n) => n.id === net.vmNetwork));
    });

    test('planned failover: prepared twice, the same last point, the VM off', async () => {
      await replicating(fabric.vmId);
      const first = await driver.replication.prepareFailover(fabric.vmId);
      const second = await driver.replication.prepareFailover(fabric.vmId);
      assert.equal(second.point.id, first.point.id);
      assert.equal(vmOf(await driver.management.inventory(), fabric.vmId).powerState, 'Off');
      await waitFor('the last point at the replica', async () => (await driver.replication.recoveryPoints(replica.replicaVmId)).some((x) => x.id === first.point.id), timeout(), 200);
      lastPoint = first.point;
    });

    test('promoted twice: one epoch, one point, its other points kept; the point changed twice; committed twice', async () => {
      const last = lastPoint;
      const first = await driver.replication.promoteReplica(replica.replicaVmId, last.id);
      const second = await driver.replication.promoteReplica(replica.replicaVmId, last.id);
      assert.deepEqual({ vmId: second.vmId, epoch: second.epoch, point: second.point.id }, { vmId: first.vmId, epoch: first.epoch, point: last.id });
      assert.ok(first.points && first.points.length > 0 && first.points.some((p) => p.id === last.id), 'the points are kept until the commit');
      assert.deepEqual(second.points?.map((p) => p.id), first.points.map((p) => p.id));
      promoted = { vmId: first.vmId, epoch: first.epoch, point: first.point };
      assert.equal(vmOf(await driver.management.inventory(), promoted.vmId).powerState, 'Running');

      const older = first.points[0]!;
      assert.equal((await driver.replication.changeRecoveryPoint(promoted.vmId, older.id)).point.id, older.id);
      assert.equal((await driver.replication.changeRecoveryPoint(promoted.vmId, older.id)).point.id, older.id);
      assert.equal((await driver.replication.changeRecoveryPoint(promoted.vmId, last.id)).point.id, last.id);
      assert.equal((await driver.replication.commitFailover(promoted.vmId)).point.id, last.id);
      assert.equal((await driver.replication.commitFailover(promoted.vmId)).point.id, last.id);
      assert.equal(vmOf(await driver.management.inventory(), promoted.vmId).powerState, 'Running');
    });

    test('the old primary fenced twice stays off: a start is refused with EPOCH_STALE', async () => {
      await driver.replication.fenceVm(fabric.vmId, promoted.epoch);
      await driver.replication.fenceVm(fabric.vmId, promoted.epoch);
      assert.equal(vmOf(await driver.management.inventory(), fabric.vmId).powerState, 'Off');
      await assert.rejects(driver.management.setPower(fabric.vmId, 'start'), rejectsWith('EPOCH_STALE'));
    });

    test('reprotect: the old primary demoted twice holds the replica; reverse replication set up twice brings it in step', async () => {
      const inv = await driver.management.inventory();
      const source = inv.hosts.find((h) => h.id === vmOf(inv, promoted.vmId).host)!.name;
      const demoted = await driver.replication.demoteVm(fabric.vmId, promoted.epoch, ITEM, source);
      assert.deepEqual(await driver.replication.demoteVm(fabric.vmId, promoted.epoch, ITEM, source), demoted);
      assert.equal(demoted.replicaVmId, fabric.vmId);
      assert.equal(demoted.reused, true);
      const shown = vmOf(await driver.management.inventory(), fabric.vmId);
      assert.equal(shown.replicaOf, ITEM);
      assert.equal(shown.powerState, 'Off');

      await driver.replication.ensureReplication({ vmId: promoted.vmId, policy, peer: demoted.agent });
      await driver.replication.ensureReplication({ vmId: promoted.vmId, policy, peer: demoted.agent });
      const s = await replicating(promoted.vmId);
      assert.ok((await driver.replication.recoveryPoints(fabric.vmId)).some((p) => p.id === s.latestPoint!.id), 'the reverse replica holds the latest point');
      await driver.replication.stopReplication(promoted.vmId);
      await driver.replication.stopReplication(promoted.vmId);
    });

    test('the replica removed twice with its data', async () => {
      await driver.management.removeReplicaVm(fabric.vmId, { deleteData: true });
      await driver.management.removeReplicaVm(fabric.vmId, { deleteData: true });
      assert.equal(vmOf(await driver.management.inventory(), fabric.vmId).replicaOf, undefined, 'no longer the replica of the item');
      assert.deepEqual(await driver.replication.recoveryPoints(fabric.vmId), [], 'its points are gone');
    });
  });
}
