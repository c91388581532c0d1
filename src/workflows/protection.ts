/**
 * Enable and disable protection, as jobs.
 *
 * Enable: prerequisites (the VM, its cloud's pairing and policy, its host's OS version,
 * what both fabrics can do, where the replica goes) → create the replication (the target fabric prepares the replica
 * VM, the source fabric starts tracking) → initial replication (now, at the scheduled
 * time, or offline; progress comes from the agent through the provider) → finalize
 * (the item is Protected).
 *
 * Disable: stop replication at the source → delete or keep the replica (as the policy
 * says, unless the request says otherwise) → remove the protected item.
 *
 * The commands each task sends are keyed in the job's data (jobs/engine.ts), so a task
 * run again after a vault restart waits for the command already sent.
 */
import type { Clock } from '../domain/clock.js';
import { Commands, type CommandVm } from '../domain/commands.js';
import { OsrError } from '../domain/errors.js';
import { ITEM_TRANSITIONS, ItemOperation } from '../domain/item-transitions.js';
import type { RecoveryVmChoice } from '../domain/capabilities.js';
import { placeReplica, type Placement, type PlacementHost } from '../domain/placement.js';
import { policyCoversHost, type PolicySettings } from '../domain/policy.js';
import { isAzureEndpoint, type ReplicaVm } from '../domain/replicas.js';
import { Health, ProtectionState, Severity, type InventoryObject, type VmProperties } from '../domain/resources.js';
import type { JobContext, JobData, JobEngine } from '../jobs/engine.js';
import { MappingKind } from '../store/config.js';
import type { VaultStore } from '../store/index.js';
import { JobState } from '../store/jobs.js';
import { AlertKind, type Alerting } from './alerting.js';
import { checkProtectionOptions } from './fabric-capabilities.js';
import { checkReplicaContainer, containerGrant, replicationGrant, type GrantSigner } from './grants.js';
import { changeItem, eventIdFor, releaseItem, retakeItem } from './item-state.js';

export const JobKinds = { EnableProtection: 'enable-protection', DisableProtection: 'disable-protection' } as const;

export const itemCriticalKey = (itemId: string) => `item-critical:${itemId}`;

export interface WorkflowDeps {
  store: VaultStore;
  alerting: Alerting;
  clock: Clock;
  /** signs the replication grants the workflows hand to providers (src/workflows/grants.ts) */
  grants: GrantSigner;
}

export interface EnableInput {
  vmId: string;
  pairingId: string;
  /** the replica VM's size and disk type, where the recovery site offers a choice */
  recoveryVm?: RecoveryVmChoice;
  /** the replication group the VM joins (src/domain/groups.ts) */
  group?: string;
}

export interface DisableInput {
  itemId: string;
  /** default: the policy's deleteReplicaOnDisable */
  deleteReplica?: boolean;
}

/** What enabling protection keeps between its tasks. */
interface EnableData extends JobData {
  fabricId?: string;
  targetFabricId?: string;
  policy?: PolicySettings;
  placement?: Placement;
  /** the replica the recovery site prepared */
  replica?: ReplicaVm;
  /** the vault's grant for this replication, signed once (a task run again sends the same) */
  grant?: string | null;
  /** for a replica in Azure storage: the grant naming its container as the target */
  azureGrant?: string | null;
}

/** What disabling protection keeps between its tasks. */
interface DisableData extends JobData {
  itemName?: string;
  deleteReplica?: boolean;
}

const props = <T>(o: InventoryObject) => o.properties as T;

export function registerProtectionJobs(engine: JobEngine, deps: WorkflowDeps): void {
  const { store, alerting, clock } = deps;
  const Enable = ItemOperation.EnableProtection;

  engine.register<EnableInput, EnableData>({
    kind: JobKinds.EnableProtection,
    tasks: [
      {
        name: 'Prerequisites check',
        async run(ctx) {
          const d = ctx.data;
          const { vmId, pairingId } = ctx.input;
          const vm = await store.fabrics.object(vmId, 'vm');
          const pairing = await store.config.pairing(pairingId);
          const policy = await store.config.policy(pairing.policyId);
          const v = props<{ cloud: string; host: string; disks: { id: string; name: string; sizeBytes: number; storageLocation?: string }[]; nics: { id: string; vmNetwork?: string }[] }>(vm);
          if (v.cloud !== pairing.sourceCloudId) throw new OsrError('INVALID_STATE', `VM ${vm.name} is in cloud ${v.cloud}, not in the pairing's source cloud ${pairing.sourceCloudId}`);
          const host = await store.fabrics.object(v.host, 'host');
          const hostOs = props<{ osVersion: string }>(host).osVersion;
          if (!policyCoversHost(policy.settings, hostOs)) {
            throw new OsrError('INVALID_STATE', `policy ${policy.name} covers hosts of ${policy.settings.hostOsVersion}, but ${vm.name} runs on ${host.name} with ${hostOs}; pair the cloud with a policy for that version`);
          }
          const target = await store.fabrics.object(pairing.targetCloudId, 'cloud');
          // the API refused this already; checked again for a policy or fabric that changed since
          await checkProtectionOptions(store, { vm, policy, targetFabricId: target.fabricId, recoveryVm: ctx.input.recoveryVm, group: ctx.input.group });
          const targetHosts: PlacementHost[] = [];
          // a host the vault has not admitted holds no replica (docs/security.md, host admission)
          const admitted = new Set((await store.hostAdmissions.list({ fabricId: target.fabricId, state: 'admitted' })).map((a) => a.host));
          for (const hg of props<{ hostGroups: string[] }>(target).hostGroups) {
            for (const h of await store.fabrics.objects('host', { parentId: hg, limit: 1000 })) {
              if (!admitted.has(h.name)) continue;
              const hp = props<{ osVersion: string; logicalNetworks: string[]; storageLocations: string[] }>(h);
              targetHosts.push({ id: h.id, name: h.name, osVersion: hp.osVersion, logicalNetworks: hp.logicalNetworks, storageLocations: hp.storageLocations });
            }
          }
          const networkMap = new Map((await store.config.mappings(MappingKind.Network)).map((m) => [m.sourceId, m.targetId]));
          const storageMap = new Map((await store.config.mappings(MappingKind.Storage)).map((m) => [m.sourceId, m.targetId]));
          const networkLogical = new Map<string, string>();
          for (const id of networkMap.values()) {
            const n = await store.fabrics.findObject(id);
            if (n) networkLogical.set(id, props<{ logicalNetwork: string }>(n).logicalNetwork);
          }
          const locationClass = new Map<string, string>();
          for (const disk of v.disks) {
            if (!disk.storageLocation) continue;
            const l = await store.fabrics.findObject(disk.storageLocation);
            if (l) locationClass.set(l.id, props<{ classification: string }>(l).classification);
          }
          const targetLocations = (await store.fabrics.objects('storage-location', { fabricId: target.fabricId, limit: 1000 })).map((l) => ({ id: l.id, ...props<{ classification: string; freeBytes?: number }>(l) }));
          d.placement = placeReplica({ vm: { id: vm.id, name: vm.name, disks: v.disks, nics: v.nics }, targetHosts, networkMap, networkLogical, locationClass, storageMap, targetLocations });
          d.fabricId = vm.fabricId;
          d.targetFabricId = target.fabricId;
          d.policy = policy.settings;
          const unconnected = Object.entries(d.placement.networks).filter(([, n]) => n === null);
          if (unconnected.length > 0) {
            await alerting.event({ target: vm.id, kind: 'protection.network-unmapped', severity: Severity.Warning, message: `${unconnected.length} NIC(s) of ${vm.name} are on unmapped networks: their replicas will not be connected`, details: { nics: unconnected.map(([n]) => n) } });
          }
          await changeItem(store, ctx, vm.id, Enable, { replication: { sourceFabricId: vm.fabricId, targetFabricId: target.fabricId, targetCloudId: target.id, policyId: policy.id, placement: d.placement, ...(ctx.input.recoveryVm ? { recoveryVm: ctx.input.recoveryVm } : {}), ...(ctx.input.group !== undefined ? { group: ctx.input.group } : {}) } });
        },
      },
      {
        name: 'Create replication',
        async run(ctx) {
          const d = ctx.data;
          const vm = await store.fabrics.object(ctx.input.vmId, 'vm');
          const source: CommandVm = { id: vm.id, name: vm.name, ...props<VmProperties>(vm) };
          // the vault's word on who may replicate into the replica: the agent of the host the VM runs on (its certificate carries the host's name)
          const host = typeof vm.properties.host === 'string' ? await store.fabrics.object(vm.properties.host, 'host') : undefined;
          if (d.grant === undefined) {
            d.grant = (await replicationGrant(store, deps.grants, { item: vm.id, replicationId: source.replicationId, source: { fabricId: d.fabricId!, hostId: host?.id }, target: { fabricId: d.targetFabricId!, hostId: d.placement!.hostId } })) ?? null;
            await ctx.save();
          }
          const grant = d.grant !== null ? { grant: d.grant } : {};
          const answer = await ctx.command(d.targetFabricId!, Commands.PrepareReplica, { item: vm.id, vm: source, ...(host ? { sourceAgent: host.name } : {}), ...grant, placement: d.placement!, policy: d.policy!, ...(ctx.input.recoveryVm ? { recoveryVm: ctx.input.recoveryVm } : {}) }, { timeoutMs: 10 * 60_000 });
          // the container's SAS goes to the source site only: never into the item or the job's data
          const { access, ...replica } = answer;
          d.replica = replica;
          let enableGrant = grant;
          if (isAzureEndpoint(replica.agent)) {
            // the container named from the VM's replication id, in the storage account its inventory reported for the placement's storage (never one the answer alone names)
            const locationId = Object.values(d.placement!.storage)[0];
            const account = locationId !== undefined ? (await store.fabrics.findObject(locationId))?.properties.path : undefined;
            checkReplicaContainer(replica.agent.containerUrl, source.replicationId, [account], vm.name);
            if (access === undefined) throw new OsrError('INVALID_STATE', `the recovery fabric answered no access to container ${replica.agent.containerUrl} for ${vm.name}`);
            // the source's agent writes into that container only: the grant names it as the target
            d.azureGrant ??= (await containerGrant(store, deps.grants, { item: vm.id, replicationId: source.replicationId, source: { fabricId: d.fabricId!, hostId: host?.id }, targetFabricId: d.targetFabricId!, containerUrl: replica.agent.containerUrl })) ?? null;
            enableGrant = d.azureGrant !== null ? { grant: d.azureGrant } : {};
          }
          await ctx.save();
          await ctx.command(d.fabricId!, Commands.EnableReplication, { item: vm.id, vm: source, policy: d.policy!, target: { fabricId: d.targetFabricId!, ...replica, ...(access !== undefined ? { access } : {}) }, ...enableGrant, ...(ctx.input.group !== undefined ? { group: ctx.input.group } : {}) }, { timeoutMs: 10 * 60_000 });
          const item = await store.items.get(vm.id);
          await changeItem(store, ctx, vm.id, Enable, { replication: { ...item.replication, replica: d.replica } });
        },
      },
      {
        name: 'Initial replication',
        async run(ctx) {
          const d = ctx.data;
          // the container's SAS reached the source site: the vault keeps no copy of it
          await store.commands.forgetAccess(ctx.jobId);
          const initial = d.policy!.initialReplication;
          if (initial.method === 'scheduled') {
            const at = Date.parse(initial.startAt);
            await changeItem(store, ctx, ctx.input.vmId, Enable, { state: ProtectionState.InitialReplication, progress: 0 });
            while (clock.now() < at && !ctx.signal.aborted) await clock.sleep(Math.min(at - clock.now(), 60_000), ctx.signal);
          }
          await changeItem(store, ctx, ctx.input.vmId, Enable, { state: ProtectionState.InitialReplication, progress: 0 });
          const result = await ctx.command(d.fabricId!, Commands.InitialReplication, { item: ctx.input.vmId, method: initial }, {
            onProgress: async (p) => {
              const fraction = Number(p.fraction ?? 0);
              await changeItem(store, ctx, ctx.input.vmId, Enable, { progress: fraction });
              await ctx.progress(fraction, p);
            },
          });
          if (result?.recoveryPoint) {
            const at = Date.parse(result.recoveryPoint.at);
            if (!Number.isNaN(at)) {
              await changeItem(store, ctx, ctx.input.vmId, Enable, { lastPointAt: at, points: [{ id: result.recoveryPoint.id, at, consistency: result.recoveryPoint.consistency ?? 'crash' }] });
            }
          }
        },
      },
      {
        name: 'Finalize protection',
        async run(ctx) {
          const eventId = await eventIdFor(ctx, 'protection.enabled');
          const before = await store.items.get(ctx.input.vmId);
          // run again after the item was released, it changes nothing
          if (!(before.activeJobId === null && before.state === ProtectionState.Protected)) {
            await changeItem(store, ctx, ctx.input.vmId, Enable, { state: ProtectionState.Protected, release: true, health: Health.Healthy, healthReasons: [], progress: null });
          }
          const item = await store.items.get(ctx.input.vmId);
          await alerting.event({ id: eventId, target: item.id, kind: 'protection.enabled', severity: Severity.Info, message: `${item.name} is protected`, details: { job: ctx.jobId } });
        },
      },
    ],
    async onRestart(ctx: JobContext<EnableInput, EnableData>) {
      await retakeItem(store, ctx, ctx.input.vmId, Enable);
    },
    async onEnd(ctx: JobContext<EnableInput, EnableData>, state, err) {
      const failed = state === JobState.Failed;
      const item = await releaseItem(store, ctx, ctx.input.vmId, Enable, ProtectionState.ProtectionFailed, {
        health: failed ? Health.Critical : Health.Warning,
        healthReasons: [failed ? { code: err?.code ?? 'JOB_FAILED', message: err?.message ?? 'enabling protection failed' } : { code: 'INVALID_STATE', message: 'enabling protection was cancelled' }],
      });
      if (!item) return;
      await alerting.event({ target: item.id, kind: 'protection.failed', severity: failed ? Severity.Critical : Severity.Warning, message: failed ? `enabling protection of ${item.name} failed: ${err?.message}` : `enabling protection of ${item.name} was cancelled`, details: { job: ctx.jobId } });
      if (failed) await alerting.raise({ key: itemCriticalKey(item.id), kind: AlertKind.ItemCritical, severity: Severity.Critical, target: item.id, message: `protected item ${item.name} is Critical: enabling protection failed: ${err?.message}` });
    },
  });

  engine.register<DisableInput, DisableData>({
    kind: JobKinds.DisableProtection,
    tasks: [
      {
        name: 'Stop replication',
        async run(ctx) {
          const item = await store.items.get(ctx.input.itemId);
          ctx.data.itemName = item.name;
          const r = item.replication;
          // an item whose replication was never created has nothing to stop
          if (r.sourceFabricId) await ctx.command(r.sourceFabricId, Commands.DisableReplication, { item: item.id, vmId: r.primaryVmId ?? item.id }, { timeoutMs: 10 * 60_000 });
        },
      },
      {
        name: 'Remove replica',
        async run(ctx) {
          const item = await store.items.get(ctx.input.itemId);
          const r = item.replication;
          if (!r.targetFabricId) return;
          const policy = r.policyId ? await store.config.policy(r.policyId).catch(() => undefined) : undefined;
          const remove = ctx.input.deleteReplica ?? policy?.settings.deleteReplicaOnDisable ?? true;
          ctx.data.deleteReplica = remove;
          await ctx.command(r.targetFabricId, Commands.RemoveReplica, { item: item.id, replicaVmId: r.replica?.replicaVmId ?? null, delete: remove }, { timeoutMs: 10 * 60_000 });
        },
      },
      {
        name: 'Remove protected item',
        async run(ctx) {
          const eventId = await eventIdFor(ctx, 'protection.disabled');
          const item = await store.items.find(ctx.input.itemId);
          // run again after the item was removed: the event only
          if (item) await store.items.removeHeld(item.id, ctx, ITEM_TRANSITIONS[ItemOperation.DisableProtection].held);
          const name = item?.name ?? ctx.data.itemName ?? ctx.input.itemId;
          await alerting.resolve(itemCriticalKey(ctx.input.itemId));
          await alerting.event({ id: eventId, target: ctx.input.itemId, kind: 'protection.disabled', severity: Severity.Info, message: `protection of ${name} is disabled; the replica was ${ctx.data.deleteReplica === false ? 'kept' : 'deleted'}`, details: { job: ctx.jobId } });
        },
      },
    ],
    async onRestart(ctx: JobContext<DisableInput, DisableData>) {
      // an item already removed has nothing left but the last task, which finds it gone
      if (await store.items.find(ctx.input.itemId)) await retakeItem(store, ctx, ctx.input.itemId, ItemOperation.DisableProtection);
    },
    async onEnd(ctx: JobContext<DisableInput, DisableData>, state, err) {
      await releaseItem(store, ctx, ctx.input.itemId, ItemOperation.DisableProtection, ProtectionState.DisablingProtection, { healthReasons: [{ code: err?.code ?? 'INVALID_STATE', message: state === JobState.Failed ? `disabling protection failed: ${err?.message}` : 'disabling protection was cancelled' }] });
    },
  });
}
