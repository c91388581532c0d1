/**
 * A network mapping that is added, changed or removed reconnects the replicas it concerns,
 * as a job: every protected item whose VM has a NIC on the mapping's source network gets
 * that NIC of its replica connected to the network now mapped (an address from its pool),
 * or disconnected when none is. Items replicating the other way (after a reverse) are left
 * as they are: the mapping names their networks the other way round.
 */
import { Commands } from '../domain/commands.js';
import type { Placement } from '../domain/placement.js';
import { Direction, Severity, type VmProperties } from '../domain/resources.js';
import type { JobEngine } from '../jobs/engine.js';
import { MappingKind } from '../store/config.js';
import type { WorkflowDeps } from './protection.js';

export const MappingJobs = { ReconnectReplicas: 'reconnect-replicas' } as const;

export interface ReconnectInput {
  /** the source VM network whose mapping changed */
  sourceNetworkId: string;
}

/** Items are read a page at a time. */
const PAGE = 500;

export function registerMappingJobs(engine: JobEngine, deps: WorkflowDeps): void {
  const { store, alerting } = deps;
  engine.register<ReconnectInput>({
    kind: MappingJobs.ReconnectReplicas,
    tasks: [
      {
        name: 'Reconnect replicas',
        async run(ctx) {
          const source = ctx.input.sourceNetworkId;
          const mapped = (await store.config.mappings(MappingKind.Network)).find((m) => m.sourceId === source)?.targetId ?? null;
          let done = 0;
          for (let after: string | undefined; ; ) {
            const items = await store.items.list({ after, limit: PAGE });
            for (const item of items) {
              const r = item.replication;
              if (!r.replica?.replicaVmId || !r.targetFabricId || r.direction === Direction.RecoveryToPrimary || !r.placement) continue;
              const vm = await store.fabrics.findObject(item.id);
              const nics = ((vm?.properties.nics ?? []) as VmProperties['nics']).filter((n) => n.vmNetwork === source);
              if (nics.length === 0) continue;
              // a mapping to another site's network does not apply to this replica
              const target = mapped && (await store.fabrics.findObject(mapped))?.fabricId === r.targetFabricId ? mapped : null;
              const networks = Object.fromEntries(nics.map((n) => [n.id, target]));
              if (nics.every((n) => (r.placement!.networks[n.id] ?? null) === target)) continue;
              await ctx.command(r.targetFabricId, Commands.ConnectNics, { item: item.id, replicaVmId: r.replica.replicaVmId, networks }, { timeoutMs: 5 * 60_000 });
              const fresh = await store.items.get(item.id);
              const fr = fresh.replication;
              const placement: Placement = { ...fr.placement!, networks: { ...fr.placement!.networks, ...networks } };
              await store.items.update(item.id, { replication: { ...fresh.replication, placement } });
              await alerting.event({ target: item.id, kind: 'protection.replica-reconnected', severity: Severity.Info, message: `${nics.length} NIC(s) of the replica of ${item.name} ${target ? `connected to ${target}` : 'disconnected (their network is no longer mapped)'}`, details: { job: ctx.jobId, networks } });
              done++;
            }
            if (items.length < PAGE) break;
            after = items[items.length - 1]!.id;
          }
          ctx.data.reconnected = done;
        },
      },
    ],
  });
}
