/**
 * A provider that drives a fabric: the vault's protection commands become calls on a
 * FabricDriver, and the replication status of the items it takes part in goes back to the
 * vault at a steady interval (health and RPO from the primary site, recovery points from
 * the recovery site).
 *
 * Every handler converges: it looks at what the fabric holds and does only what is
 * missing, so a command delivered twice (or run again after a restart) does no harm.
 * What the provider takes part in is kept in DIR/protections.json, written whole and
 * synced, so a restarted provider reports the same items.
 */
import fs from 'node:fs';
import path from 'node:path';
import { systemClock, type Clock } from '../domain/clock.js';
import type { InitialReplicationProgress, ResyncProgress } from '../domain/commands.js';
import { copyCycleSeconds } from '../domain/policy.js';
import { isSafeName } from '../domain/names.js';
import { unsupportedRecoveryVm } from '../domain/capabilities.js';
import { isErrorCode, OsrError, toOsrError } from '../domain/errors.js';
import type { DrillEvidence } from '../domain/runs.js';
import type { FabricDriver, NicConnection, ReplicationStatus, ResyncInfo, TestNetwork } from '../fabric/driver.js';
import { fsyncDir, writeFileAtomic } from '../pki/index.js';
import type { ProviderChannel } from './channel.js';
import { ProviderRuntime, type CommandHandlers } from './runtime.js';
import { runScript } from './scripts.js';


/** One item this provider takes part in: as the primary site (source) or the recovery site (target). */
export interface Protection {
  itemId: string;
  role: 'source' | 'target';
  /** the fabric's own id of the VM (source) or of the replica VM (target) */
  vmId: string;
  /** set once initial replication finished: from then on status is reported */
  reporting: boolean;
  /** source: the replication group the VM is in, cut by this provider every `cutEveryMs` */
  group?: string | undefined;
  cutEveryMs?: number | undefined;
}

/**
 * A protection as protections.json holds it, checked: a group's name must be one a host
 * takes, and its frequency a whole number of seconds from 1 s to a day (CONFIG_INVALID).
 */
function checkedProtection(p: Protection, file: string): Protection {
  if (typeof p !== 'object' || p === null || typeof p.itemId !== 'string' || typeof p.vmId !== 'string' || (p.role !== 'source' && p.role !== 'target')) {
    throw new OsrError('CONFIG_INVALID', `${file} holds an entry that is not a protection; restore the file from a backup, or remove it (the provider then reports items again after their next command)`);
  }
  if (p.group !== undefined && !isSafeName(p.group)) throw new OsrError('CONFIG_INVALID', `${file}: item ${p.itemId} names replication group ${JSON.stringify(String(p.group).slice(0, 80))}, which is no group name`);
  if (p.cutEveryMs !== undefined && !(Number.isSafeInteger(p.cutEveryMs) && p.cutEveryMs >= 1000 && p.cutEveryMs <= 86_400_000)) {
    throw new OsrError('CONFIG_INVALID', `${file}: item ${p.itemId} is cut every ${String(p.cutEveryMs)} ms; a group is cut every 1 s to a day`);
  }
  return p;
}

/** how often the provider looks for replication groups due a cut */
const CUT_LOOK_MS = 1000;
/** a cut not answered by every host within this is given up (tried again at the next interval) */
const CUT_TIMEOUT_MS = 30_000;
/** a group whose members' records carry no frequency is cut this often */
const DEFAULT_CUT_EVERY_MS = 30_000;

export interface FabricProviderOptions {
  driver: FabricDriver;
  channel: ProviderChannel;
  /** where protections.json is kept */
  dir: string;
  /** where a recovery plan's scripts are (default DIR/scripts) */
  scriptsDir?: string;
  /** how often item status goes to the vault (default 15 s) */
  statusIntervalMs?: number;
  /** how often the whole inventory is sent again, catching changes made outside osr (default 60 s) */
  inventoryIntervalMs?: number;
  /** how often replication progress is read during initial replication (default 1 s) */
  progressIntervalMs?: number;
  pollSeconds?: number;
  inventoryScope?: 'all' | string[];
  clock?: Clock;
  log: { info(o: object, msg?: string): void; warn(o: object, msg?: string): void; error(o: object, msg?: string): void };
}

export class FabricProvider {
  readonly runtime: ProviderRuntime;
  private readonly protections = new Map<string, Protection>();
  private readonly stateFile: string;
  private readonly clock: Clock;
  private readonly stopper = new AbortController();
  private statusLoop: Promise<void> | undefined;
  private cutLoop: Promise<void> | undefined;
  private inventoryTimer: NodeJS.Timeout | undefined;
  private inventoryRetry: NodeJS.Timeout | undefined;

  constructor(private readonly o: FabricProviderOptions) {
    this.clock = o.clock ?? systemClock;
    this.stateFile = path.join(o.dir, 'protections.json');
    try {
      for (const p of JSON.parse(fs.readFileSync(this.stateFile, 'utf8')) as Protection[]) this.protections.set(`${p.role}:${p.itemId}`, checkedProtection(p, this.stateFile));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new OsrError('CONFIG_INVALID', `${this.stateFile} cannot be read: ${(e as Error).message}; restore it or remove it (the provider then reports items again after their next command, and a replication group's VMs get points again once their replication is enabled again: their hosts make none of their own)`);
    }
    this.runtime = new ProviderRuntime(o.channel, {
      handlers: this.handlers(),
      inventory: () => o.driver.management.inventory(),
      inventoryScope: o.inventoryScope ?? 'all',
      capabilities: o.driver.capabilities,
      pollSeconds: o.pollSeconds ?? 20,
      clock: this.clock,
      log: o.log,
    });
  }

  get fabricId(): string {
    return this.o.channel.registration.fabricId;
  }

  /** The vault's id of one of this fabric's objects, and back. */
  vaultId(local: string): string {
    return `${this.fabricId}.${local}`;
  }

  localId(vaultId: string): string {
    const prefix = `${this.fabricId}.`;
    if (!vaultId.startsWith(prefix)) throw new OsrError('INVALID_ARGUMENT', `${vaultId} is not an object of fabric ${this.fabricId}`);
    return vaultId.slice(prefix.length);
  }

  async start(): Promise<void> {
    await this.o.driver.management.start({
      // the vault certifies only hosts the fabric reported, with the names reported: report first
      enrolAgent: async (name, publicKey, proof) => {
        await this.o.channel.putInventory(await this.o.driver.management.inventory(), this.o.inventoryScope ?? 'all');
        return this.o.channel.enrolAgent(name, publicKey, {}, proof);
      },
      vaultCa: this.o.channel.registration.tls.ca,
      inventoryChanged: () => this.inventoryChanged(),
      clock: this.clock,
      log: this.o.log,
    });
    try {
      await this.runtime.start();
    } catch (e) {
      // the fabric's hosts do not outlive a provider that could not start
      await this.o.driver.management.stop().catch(() => undefined);
      throw e;
    }
    await this.handRevocationList();
    this.statusLoop = this.reportLoop();
    this.cutLoop = this.cutGroups();
  }

  /** Fetch the vault's revocation list and hand it to the fabric's agents (a failure waits for the next interval). */
  private async handRevocationList(): Promise<void> {
    const m = this.o.driver.management;
    if (!m.revocationList) return;
    try {
      await m.revocationList(await this.o.channel.revocationList());
    } catch (e) {
      this.o.log.warn({ err: toOsrError(e).toJSON() }, 'the revocation list could not be fetched or handed to the agents; trying again at the next interval');
    }
  }

  async stop(): Promise<void> {
    this.stopper.abort();
    clearTimeout(this.inventoryTimer);
    clearTimeout(this.inventoryRetry);
    await this.statusLoop?.catch(() => undefined);
    await this.cutLoop?.catch(() => undefined);
    await this.runtime.stop();
    await this.o.driver.management.stop();
  }

  list(): Protection[] {
    return [...this.protections.values()];
  }

  /** Inventory changes come in bursts (a replica and its NICs): one sync for each burst. */
  private inventoryChanged(): void {
    if (this.inventoryTimer || this.stopper.signal.aborted) return;
    this.inventoryTimer = setTimeout(() => {
      this.inventoryTimer = undefined;
      this.runtime.syncInventory().catch((e: unknown) => {
        this.o.log.warn({ err: toOsrError(e).toJSON() }, 'inventory sync failed; it is sent again in 5 s');
        // a failed sync is tried again soon: the change it carried (a failed-over VM) must not wait for the next one
        if (!this.stopper.signal.aborted) this.inventoryRetry = setTimeout(() => this.inventoryChanged(), 5000);
      });
    }, 200);
  }

  private async remember(p: Protection | { role: Protection['role']; itemId: string; remove: true }): Promise<void> {
    const key = `${p.role}:${p.itemId}`;
    if ('remove' in p) this.protections.delete(key);
    else this.protections.set(key, p);
    fs.mkdirSync(this.o.dir, { recursive: true });
    await writeFileAtomic(this.stateFile, `${JSON.stringify(this.list(), null, 2)}\n`, 0o644);
    await fsyncDir(this.o.dir);
  }

  /** The commands this provider answers, each typed by its kind (src/domain/commands.ts); the runtime checked their bodies. */
  private handlers(): CommandHandlers {
    const d = this.o.driver;
    const { management: m, replication: repl } = d;
    return {
      /** recovery site: the replica VM where placement says, NICs connected */
      'replica.prepare': async ({ body: b }) => {
        const networks: Record<string, string | null> = {};
        for (const [nic, net] of Object.entries(b.placement.networks)) networks[nic] = net === null ? null : this.localId(net);
        const storage: Record<string, string> = {};
        for (const [disk, loc] of Object.entries(b.placement.storage)) storage[disk] = this.localId(loc);
        if (b.recoveryVm) {
          const gaps = unsupportedRecoveryVm(d.capabilities, b.recoveryVm);
          if (gaps.length > 0) throw new OsrError('NOT_SUPPORTED', `fabric ${this.fabricId} (${d.kind}) cannot make a replica VM of ${gaps.map((g) => g.message).join('; ')}`, { option: gaps[0]!.option });
        }
        const r = await m.ensureReplicaVm({ itemId: b.item, source: { name: b.vm.name, disks: b.vm.disks, nics: b.vm.nics, replicationId: b.vm.replicationId, agent: b.sourceAgent, grant: b.grant, machine: b.vm.machine }, hostId: this.localId(b.placement.hostId), storage, networks, ...(b.recoveryVm ? { recoveryVm: b.recoveryVm } : {}) });
        await this.remember({ itemId: b.item, role: 'target', vmId: r.replicaVmId, reporting: true });
        return { replicaVmId: this.vaultId(r.replicaVmId), hostId: this.vaultId(r.hostId), agent: r.agent, ...(r.access !== undefined ? { access: r.access } : {}), nics: r.nics.map((n) => ({ ...n, vmNetwork: n.vmNetwork === null ? null : this.vaultId(n.vmNetwork) })), reused: r.reused };
      },
      /** primary site: track and replicate to the recovery host's agent */
      'replication.enable': async ({ body: b }) => {
        const vmId = this.localId(b.vmId ?? b.item);
        if (b.group !== undefined && (!d.capabilities.consistencyGroups?.includes('source') || !repl.cutGroup)) {
          throw new OsrError('NOT_SUPPORTED', `fabric ${this.fabricId} (${d.kind}) cannot cut replication group ${b.group}: its hosts cannot hold a VM's writes for a moment`, { option: 'group' });
        }
        await repl.ensureReplication({ vmId, policy: b.policy, peer: b.target.agent, access: b.target.access, grant: b.grant, group: b.group });
        const known = this.protections.get(`source:${b.item}`);
        await this.remember({ itemId: b.item, role: 'source', vmId, reporting: known?.reporting ?? false, ...(b.group !== undefined ? { group: b.group, cutEveryMs: copyCycleSeconds(b.policy) * 1000 } : {}) });
        return {};
      },
      /** primary site: wait for the first recovery point at the replica, reporting progress */
      'replication.initial': async ({ body: b }, progress) => {
        const vmId = this.localId(b.vmId ?? b.item);
        let last = '';
        for (;;) {
          const s = await repl.replicationStatus(vmId);
          throwIfStopped(s, `initial replication of ${vmId}`);
          if (s.initial) {
            const p: InitialReplicationProgress = { fraction: s.initial.fraction, bytesDone: s.initial.bytesDone, bytesTotal: s.initial.bytesTotal, rateBytesPerSec: s.initial.rateBytesPerSec, etaSeconds: s.initial.etaSeconds, currentDisk: s.initial.currentDisk, state: s.state };
            const key = JSON.stringify([p.bytesDone, p.state, p.currentDisk]);
            if (key !== last) {
              last = key;
              await progress(p);
            }
          }
          if (s.initial?.done && s.latestPoint) {
            // what replication.enable recorded (the VM's group) stays
            await this.remember({ ...this.protections.get(`source:${b.item}`), itemId: b.item, role: 'source', vmId, reporting: true });
            return { recoveryPoint: s.latestPoint };
          }
          await this.pauseWhileFollowing();
        }
      },
      /**
       * primary site: resynchronize now, whatever the resync window, reporting progress
       * until the resync's point is at the replica. A resync that runs, or one begun since
       * the vault asked (the command delivered again), is the one asked for: it is followed,
       * not started again.
       */
      'replication.resync': async ({ body: b }, progress) => {
        const vmId = this.localId(b.vmId ?? b.item);
        if (!d.capabilities.resyncOnRequest) throw new OsrError('NOT_SUPPORTED', `fabric ${this.fabricId} (${d.kind}) cannot resynchronize on request; its resync runs in the window its hosts allow`);
        const since = Date.parse(b.requestedAt);
        const asked = (r: ResyncInfo | null | undefined): boolean => !!r && (r.completedAt === null || (!Number.isNaN(since) && Date.parse(r.startedAt) >= since));
        const before: ResyncInfo | null = (await repl.replicationStatus(vmId)).resync ?? null;
        const beforeId = before?.id ?? null;
        if (!asked(before)) await repl.resync(vmId);
        let last = '';
        for (;;) {
          await this.pauseWhileFollowing();
          const s = await repl.replicationStatus(vmId);
          const r = s.resync ?? null;
          // the resync asked for: the one that ran already, or a new one since
          const ours = r !== null && (asked(r) || r.id !== beforeId) ? r : null;
          // a non-recoverable error stopped it (a request wakes a host waiting for action at once: this is a new one)
          throwIfStopped(s, `the resync of ${vmId}`);
          if (!ours) continue;
          const p: ResyncProgress = { fraction: ours.fraction, bytesDone: ours.bytesDone, bytesTotal: ours.bytesTotal, differingBytes: ours.differingBytes, rateBytesPerSec: ours.rateBytesPerSec, etaSeconds: ours.etaSeconds, currentDisk: ours.currentDisk, state: s.state };
          const key = JSON.stringify([p.bytesDone, p.state, p.currentDisk, ours.completedAt]);
          if (key !== last) {
            last = key;
            await progress(p);
          }
          if (ours.completedAt !== null && s.state !== 'Resynchronizing') {
            return { resync: { id: ours.id, reason: ours.reason, bytesTotal: ours.bytesTotal, differingBytes: ours.differingBytes, startedAt: ours.startedAt, completedAt: ours.completedAt }, recoveryPoint: s.latestPoint };
          }
        }
      },
      /** primary site: the user confirms a shrink or removal of the VM's disks its replication waits on */
      'replication.confirm-disks': async ({ body: b }) => {
        if (!repl.confirmDiskChange) throw new OsrError('NOT_SUPPORTED', `fabric ${this.fabricId} (${d.kind}) has no disk change to confirm: its VMs' replication does not wait on one`);
        return repl.confirmDiskChange(this.localId(b.vmId ?? b.item));
      },
      'replication.disable': async ({ body: b }) => {
        await repl.stopReplication(this.localId(b.vmId ?? b.item));
        await this.remember({ itemId: b.item, role: 'source', remove: true });
        return {};
      },
      'replica.remove': async ({ body: b }) => {
        const known = this.protections.get(`target:${b.item}`);
        const replicaVmId = b.replicaVmId ? this.localId(b.replicaVmId) : known?.vmId;
        if (replicaVmId) await m.removeReplicaVm(replicaVmId, { deleteData: b.delete !== false });
        await this.remember({ itemId: b.item, role: 'target', remove: true });
        return { replicaVmId: replicaVmId ? this.vaultId(replicaVmId) : null, deleted: b.delete !== false };
      },
      /** recovery site: one isolated network for a recovery plan's drill, and its removal */
      'testfailover.network.create': async ({ body: b }) => {
        const r = await m.createTestNetwork(b.name);
        return { vmNetwork: this.vaultId(r.vmNetwork) };
      },
      'testfailover.network.remove': async ({ body: b }) => {
        await m.removeTestNetwork(this.localId(b.vmNetwork));
        return {};
      },
      /** a recovery plan's script action, with the run's context */
      'plan.script': async ({ body: b }) => runScript(this.o.scriptsDir ?? path.join(this.o.dir, 'scripts'), b),
      /** planned failover, primary site: shut down, ship the final delta */
      'failover.prepare': async ({ body: b }) => {
        const r = await repl.prepareFailover(this.localId(b.vmId ?? b.item));
        await this.stopReporting('source', b.item);
        return r;
      },
      /** failover, recovery site: the chosen point runs as the VM */
      'failover.promote': async ({ body: b }) => {
        const r = await repl.promoteReplica(this.localId(b.replicaVmId), b.point);
        // where the fabric tells a promoted replica, it goes on being reported as promoted
        // until the vault answers that it knows the failover: a vault restored from a backup
        // taken before learns it too
        if (!repl.promotionOf) await this.stopReporting('target', b.item);
        return { ...r, vmId: this.vaultId(r.vmId) };
      },
      /** before the commit, recovery site: the failed-over VM runs from another point */
      'failover.change-point': async ({ body: b }) => repl.changeRecoveryPoint(this.localId(b.vmId), b.point),
      /** recovery site: the failover is final, the other points go */
      'failover.commit': async ({ body: b }) => repl.commitFailover(this.localId(b.vmId)),
      /** after a failover, the old primary: kept off until reprotected */
      'failover.fence': async ({ body: b }) => {
        await repl.fenceVm(this.localId(b.vmId), b.epoch);
        await this.stopReporting('source', b.item);
        return {};
      },
      /** reprotect, the old primary: its disks become the replica */
      'failover.demote': async ({ body: b }) => {
        const r = await repl.demoteVm(this.localId(b.vmId), b.epoch, b.item, b.source, b.grant);
        await this.remember({ itemId: b.item, role: 'target', vmId: r.replicaVmId, reporting: true });
        return { ...r, replicaVmId: this.vaultId(r.replicaVmId), hostId: this.vaultId(r.hostId), nics: r.nics.map((n) => ({ ...n, vmNetwork: n.vmNetwork && this.vaultId(n.vmNetwork) })) };
      },
      /** recovery site: a replica's NICs follow a changed network mapping */
      'replica.connect-nics': async ({ body: b }) => {
        const nics: NicConnection[] = [];
        for (const [nic, net] of Object.entries(b.networks)) {
          const r = await m.connectNic(this.localId(b.replicaVmId), nic, net === null ? null : this.localId(net));
          nics.push({ id: nic, vmNetwork: net, ip: r.ip });
        }
        return { nics };
      },
      /** recovery site: a test failover's VM from a recovery point, beside the replica */
      'testfailover.start': async ({ body: b }) => {
        if (!d.capabilities.testFailover) throw new OsrError('NOT_SUPPORTED', `fabric ${this.fabricId} (${d.kind}) cannot run a test failover`);
        const network: TestNetwork = b.network.mode === 'existing' ? { mode: 'existing', vmNetwork: this.localId(b.network.vmNetwork) } : b.network;
        const vm = await m.startTestVm({ itemId: b.item, replicaVmId: this.localId(b.replicaVmId), pointId: b.point, latest: b.latest, network });
        return { ...vm, testVmId: this.vaultId(vm.testVmId), hostId: this.vaultId(vm.hostId), temporaryNetwork: vm.temporaryNetwork && this.vaultId(vm.temporaryNetwork), nics: vm.nics.map((n) => ({ ...n, vmNetwork: n.vmNetwork && this.vaultId(n.vmNetwork) })) };
      },
      'testfailover.cleanup': async ({ body: b }) => {
        // what the test VM shows, read before it goes: the drill's evidence (none where the
        // fabric cannot tell, or the VM is gone already: a cleanup run again)
        let evidence: DrillEvidence | null = null;
        if (m.testVmEvidence) {
          evidence = await m.testVmEvidence(this.localId(b.testVmId)).catch((e: unknown) => {
            const err = toOsrError(e);
            if (err.code !== 'VM_NOT_FOUND') this.o.log.warn({ testVm: b.testVmId, code: err.code }, `the evidence of test VM ${b.testVmId} could not be read: ${err.message}`);
            return null;
          });
        }
        await m.removeTestVm(this.localId(b.testVmId));
        return { evidence };
      },
    };
  }

  /** The item's replication through this site ended in that role (a failover): no more reports of it. */
  private async stopReporting(role: Protection['role'], itemId: string): Promise<void> {
    if (this.protections.has(`${role}:${itemId}`)) await this.remember({ role, itemId, remove: true });
  }

  /**
   * Report every item this provider takes part in, once per interval; send the whole
   * inventory again now and then, so changes made at the fabric outside osr (a VM powered
   * off by hand) reach the vault without waiting for the next change osr makes.
   */
  private async reportLoop(): Promise<void> {
    const signal = this.stopper.signal;
    let inventoryAt = this.clock.now();
    while (!signal.aborted) {
      await this.reportOnce();
      if (this.clock.now() - inventoryAt >= (this.o.inventoryIntervalMs ?? 60_000)) {
        inventoryAt = this.clock.now();
        this.inventoryChanged();
        await this.handRevocationList();
      }
      await this.clock.sleep(this.o.statusIntervalMs ?? 15_000, signal);
    }
  }

  /**
   * Cut every replication group whose members replicate from this site, each at its
   * members' policy's frequency (the shortest, when their policies differ). Each group is
   * cut on its own: a cut that hangs at one host holds back no other group, and is given
   * up after CUT_TIMEOUT_MS (the hosts release the guests' writes at the hold's deadline
   * anyway). A cut refused is logged once until one succeeds again, and tried again at
   * the next interval; the members' hosts make no points of their own meanwhile, so their
   * RPO shows it. A member its host replicates outside the group is left out, with a
   * warning: it makes points of its own.
   */
  private async cutGroups(): Promise<void> {
    const signal = this.stopper.signal;
    const cutGroup = this.o.driver.replication.cutGroup?.bind(this.o.driver.replication);
    if (!cutGroup) return;
    const lastCut = new Map<string, number>();
    const running = new Map<string, Promise<void>>();
    const failing = new Set<string>();
    const told = new Map<string, string>();
    /** log `msg` when what it says of the group changed since it was last said */
    const tell = (key: string, now: string, log: () => void) => {
      if (now === (told.get(key) ?? '')) return;
      told.set(key, now);
      if (now) log();
    };
    const cut = async (name: string, g: { vmIds: string[]; everyMs: number }) => {
      let timer: NodeJS.Timeout | undefined;
      try {
        const r = await Promise.race([
          cutGroup(name, g.vmIds),
          new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new OsrError('NETWORK_ERROR', `the hosts did not answer the cut within ${CUT_TIMEOUT_MS / 1000} s`)), CUT_TIMEOUT_MS);
          }),
        ]);
        if (failing.delete(name)) this.o.log.info({ group: name, cut: r.cut }, `replication group ${name} is cut again`);
        tell(`skipped:${name}`, r.skipped.join(' '), () => this.o.log.info({ group: name, skipped: r.skipped }, `replication group ${name}: ${r.skipped.length} member(s) left out of its cuts until they replicate`));
        tell(`outside:${name}`, r.notInGroup.join(' '), () => this.o.log.warn({ group: name, members: r.notInGroup }, `replication group ${name}: ${r.notInGroup.length} member(s) replicate outside the group at their hosts and are not cut with it; enable their replication again`));
      } catch (e) {
        if (!failing.has(name)) this.o.log.warn({ group: name, err: toOsrError(e).toJSON() }, `replication group ${name} could not be cut; trying again every ${Math.round(g.everyMs / 1000)} s`);
        failing.add(name);
      } finally {
        clearTimeout(timer);
        running.delete(name);
      }
    };
    while (!signal.aborted) {
      const groups = new Map<string, { vmIds: string[]; everyMs: number }>();
      for (const p of this.list()) {
        if (p.role !== 'source' || p.group === undefined) continue;
        const g = groups.get(p.group) ?? { vmIds: [], everyMs: Infinity };
        g.vmIds.push(p.vmId);
        g.everyMs = Math.min(g.everyMs, p.cutEveryMs ?? DEFAULT_CUT_EVERY_MS);
        groups.set(p.group, g);
      }
      const now = this.clock.now();
      for (const [name, g] of groups) {
        if (running.has(name) || now - (lastCut.get(name) ?? 0) < g.everyMs) continue;
        lastCut.set(name, now);
        running.set(name, cut(name, g));
      }
      await this.clock.sleep(CUT_LOOK_MS, signal);
    }
    await Promise.all(running.values());
  }

  /** between two looks at a host's progress; a stopping provider ends the command, which is delivered again */
  private async pauseWhileFollowing(): Promise<void> {
    await this.clock.sleep(this.o.progressIntervalMs ?? 1000, this.stopper.signal);
    if (this.stopper.signal.aborted) throw new OsrError('NETWORK_ERROR', 'the provider is stopping; the command is delivered again when it is back');
  }

  async reportOnce(): Promise<void> {
    for (const p of this.list()) {
      if (!p.reporting || this.stopper.signal.aborted) continue;
      try {
        if (p.role === 'source') {
          const s: ReplicationStatus = await this.o.driver.replication.replicationStatus(p.vmId);
          await this.o.channel.itemStatus(p.itemId, {
            health: s.health,
            healthReasons: s.healthReasons,
            rpoSeconds: s.rpoSeconds,
            ...(s.churn !== undefined ? { churnBytesPerSec: s.churn?.bytesPerSec ?? null, peakChurnBytesPerSec: s.churn?.peakBytesPerSec ?? null } : {}),
            ...(s.pendingLogBytes !== undefined ? { pendingLogBytes: s.pendingLogBytes } : {}),
          });
        } else {
          // a replica promoted at its host without the vault (break-glass): the vault learns it and records the failover
          const promoted = await this.o.driver.replication.promotionOf?.(p.vmId);
          if (promoted) {
            // reported until the vault says the failover is reprotected: a vault restored from an older backup meanwhile learns it too
            const r = await this.o.channel.itemStatus(p.itemId, { promoted });
            if (r?.promotion === 'recorded') this.o.log.warn({ item: p.itemId, epoch: promoted.epoch }, 'the vault recorded the failover made without it');
            if (r?.promotion === 'done') await this.stopReporting('target', p.itemId);
            continue;
          }
          const points = await this.o.driver.replication.recoveryPoints(p.vmId);
          await this.o.channel.itemStatus(p.itemId, { recoveryPoints: points });
        }
      } catch (e) {
        const err = toOsrError(e);
        if (err.code === 'NOT_FOUND' && (err.details as { status?: number } | undefined)?.status === 404) {
          // the vault no longer has the item (protection disabled while this provider was away)
          this.o.log.warn({ item: p.itemId }, 'the vault no longer knows this protected item; it is not reported any more');
          await this.remember({ role: p.role, itemId: p.itemId, remove: true });
        } else {
          this.o.log.warn({ item: p.itemId, err: err.toJSON() }, 'reporting item status failed; trying again at the next interval');
        }
      }
    }
  }
}

/** A host waiting for action after a non-recoverable error: the command fails with that error's code. */
function throwIfStopped(s: ReplicationStatus, what: string): void {
  if (!s.waitingForAction || !s.lastError) return;
  const code = isErrorCode(s.lastError.code) ? s.lastError.code : 'JOB_FAILED';
  throw new OsrError(code, `${what} stopped: ${s.lastError.message}`);
}
