/** `osr fabric`, `osr inventory` and `osr item`: what providers report, and protected items. */
import { isAzureEndpoint } from '../domain/replicas.js';
import { Option, type Command } from 'commander';
import { OsrError, toOsrError } from '../domain/errors.js';
import { INVENTORY_KINDS, type Fabric, type HostAdmission, type InventoryKind, type InventoryObject, type Policy, type CloudPairing, type ProtectedItem, type RecoveryPoint, type VaultEvent } from '../domain/resources.js';
import { ago, asJson, byIdOrName, fields, int, isNotFound, print, when, withApi, type CliApi, type ListAnswer } from './api-common.js';
import { formatBytes, formatSeconds, table } from './format.js';
import { changePointBody, changePointFlags, cleanupBody, cleanupFlags, testFailoverBody, testFailoverFlags, unplannedBody, unplannedFlags, type ChangePointFlags, type CleanupFlags, type TestFailoverFlags, type UnplannedFlags } from './failover-flags.js';
import type { ItemSample } from '../store/items.js';
import type { ItemDrill } from '../domain/runs.js';
import { watchJobs } from './job-watch.js';
import { parseDuration } from '../agent/io/time-window.js';

/** inventory kind → its path under /api/v1 */
export const INVENTORY_PATHS: Record<InventoryKind, string> = {
  cloud: 'clouds',
  'host-group': 'host-groups',
  host: 'hosts',
  'logical-network': 'logical-networks',
  'vm-network': 'vm-networks',
  'ip-pool': 'ip-pools',
  'storage-classification': 'storage-classifications',
  'storage-location': 'storage-locations',
  vm: 'vms',
};

/** The few properties of an inventory object worth a column. */
function summary(o: InventoryObject): string {
  const p = o.properties as Record<string, unknown>;
  const count = (v: unknown) => (Array.isArray(v) ? v.length : 0);
  switch (o.kind) {
    case 'cloud':
      return `${count(p.hostGroups)} host group(s)`;
    case 'host-group':
      return `${count(p.hosts)} host(s)`;
    case 'host':
      return `OS ${String(p.osVersion ?? '-')}${p.agent ? ` agent ${(p.agent as { address: string; replicationPort: number }).address}:${(p.agent as { replicationPort: number }).replicationPort}` : ''}`;
    case 'vm-network':
      return `on ${String(p.logicalNetwork ?? '-')}; ${((p.subnets as { cidr: string }[] | undefined) ?? []).map((s) => s.cidr).join(', ')}`;
    case 'ip-pool':
      return `${String(p.start ?? '')}-${String(p.end ?? '')}`;
    case 'storage-location':
      return `${String(p.kind ?? '')} ${String(p.classification ?? '')}${typeof p.freeBytes === 'number' ? ` ${formatBytes(p.freeBytes)} free` : ''}`;
    case 'vm':
      return `${String(p.powerState ?? '-')}, ${count(p.disks)} disk(s) ${formatBytes(((p.disks as { sizeBytes: number }[] | undefined) ?? []).reduce((a, d) => a + d.sizeBytes, 0))}, ${count(p.nics)} NIC(s)`;
    default:
      return '';
  }
}

const inventoryRows = (list: InventoryObject[]) => list.map((o) => ({ kind: o.kind, id: o.id, name: o.name, parent: o.parentId, details: summary(o) }));

const kindOption = () => new Option('--kind <kind>', 'only objects of this kind').choices([...INVENTORY_KINDS]);

/** A VM by id, or by name; `all` lists the VMs once for every name looked up. */
async function resolveVm(api: CliApi, idOrName: string, all: () => Promise<InventoryObject[]>): Promise<InventoryObject> {
  return byIdOrName('VM', idOrName, (id) => api.get<InventoryObject>(`/vms/${encodeURIComponent(id)}`), all);
}

/** A protected item by id, or by name. */
export async function resolveItem(api: CliApi, idOrName: string): Promise<ProtectedItem> {
  return byIdOrName('protected item', idOrName, (id) => api.get<ProtectedItem>(`/protected-items/${encodeURIComponent(id)}`), async () => (await api.list<ProtectedItem>('/protected-items', { name: idOrName })).items);
}

/** Policy names by policy id, and each pairing's policy. */
async function policyNames(api: CliApi): Promise<(item: ProtectedItem) => string | null> {
  const [policies, pairings] = await Promise.all([api.get<ListAnswer<Policy>>('/policies'), api.get<ListAnswer<CloudPairing>>('/cloud-pairings')]);
  const names = new Map(policies.items.map((p) => [p.id, p.name]));
  const byPairing = new Map(pairings.items.map((p) => [p.id, p.policyId]));
  return (item) => {
    const id = item.replication.policyId ?? byPairing.get(item.pairingId);
    return id ? (names.get(id) ?? id) : null;
  };
}

/** Where an item replicates to, from its replication facts (set as protection is enabled). */
function replicationFields(i: ProtectedItem): [string, unknown][] {
  const r = i.replication;
  const pairs = (m: Record<string, string | null> | undefined) => (m && Object.keys(m).length ? Object.entries(m).map(([k, v]) => `${k} → ${v}`).join(', ') : null);
  const known = new Set(['sourceFabricId', 'targetFabricId', 'targetCloudId', 'policyId', 'placement', 'replica', 'group']);
  const rest = Object.entries(i.replication).filter(([k]) => !known.has(k));
  return [
    ['target cloud', r.targetCloudId ?? null],
    ...(r.group !== undefined ? [['replication group', r.group] as [string, unknown]] : []),
    ['target host', r.placement?.hostId ?? null],
    ['disks', pairs(r.placement?.storage)],
    ['NICs', pairs(r.placement?.networks)],
    ['replica VM', r.replica?.replicaVmId ? `${r.replica.replicaVmId}${r.replica.agent ? (isAzureEndpoint(r.replica.agent) ? ` (Azure ${r.replica.agent.containerUrl})` : ` (agent ${r.replica.agent.address}:${r.replica.agent.port})`) : ''}` : null],
    ...rest,
  ];
}

const itemState = (i: ProtectedItem) => (i.progress !== null && i.progress !== undefined && i.state !== 'Protected' ? `${i.state} ${(i.progress * 100).toFixed(0)}%` : i.state);

export function addProtectionCommands(program: Command): void {
  const out = (data: unknown, human: () => string) => print(program, data, human);

  // ---- host admission ----------------------------------------------------------------------
  const host = program.command('host').description('host admission: the vault certifies a host\'s agent only once it admitted the host (the fabric\'s first inventory, or an Owner)');
  host
    .command('admissions')
    .description('the hosts fabrics report and whether the vault admitted them')
    .option('--fabric <id>', 'one fabric\'s hosts')
    .option('--pending', 'only the hosts waiting for an Owner\'s approval')
    .action((o: { fabric?: string; pending?: boolean }) =>
      withApi(program, async (api) => {
        const q = new URLSearchParams({ ...(o.fabric !== undefined ? { fabric: o.fabric } : {}), ...(o.pending ? { state: 'pending' } : {}) }).toString();
        const r = await api.get<ListAnswer<HostAdmission>>(`/host-admissions${q ? `?${q}` : ''}`);
        out(r, () => table(r.items.map((a) => ({ fabric: a.fabricId, host: a.host, state: a.state, 'first seen': when(a.firstSeenAt), decided: when(a.decidedAt), by: a.decidedBy }))));
      }),
    );
  host
    .command('approve <fabric> <host>')
    .description('admit a host its fabric reported after its first inventory, once you know it is yours: its provider then enrols its agent (Owner)')
    .action((fabricId: string, name: string) =>
      withApi(program, async (api) => {
        const a = await api.post<HostAdmission>(`/host-admissions/${encodeURIComponent(fabricId)}/${encodeURIComponent(name)}/approve`);
        out(a, () => `host ${a.host} of fabric ${a.fabricId} is admitted (by ${a.decidedBy ?? '?'}, ${when(a.decidedAt) ?? ''}): its provider enrols its agent at its next inventory`);
      }),
    );

  host
    .command('reset <fabric> <host>')
    .description('revoke every certificate of a host\'s agent — it lost its key, or is enrolled anew from its bootstrap certificate — so that its next enrolment needs no proof of a current key (Owner)')
    .action((fabricId: string, name: string) =>
      withApi(program, async (api) => {
        const r = await api.post<{ fabricId: string; host: string; revoked: number }>(`/host-admissions/${encodeURIComponent(fabricId)}/${encodeURIComponent(name)}/reset`);
        out(r, () => `host ${r.host} of fabric ${r.fabricId}: ${r.revoked} certificate(s) revoked; its provider enrols it anew`);
      }),
    );

  // ---- fabric ------------------------------------------------------------------------------
  const fabric = program.command('fabric').description('fabrics: the management servers registered with the vault, with their providers');
  fabric
    .command('list')
    .description('registered fabrics, their providers and heartbeats')
    .action(() =>
      withApi(program, async (api) => {
        const r = await api.get<ListAnswer<Fabric>>('/fabrics');
        out(r, () =>
          table(
            r.items.map((f) => ({ id: f.id, name: f.name, kind: f.kind, version: f.version, providers: f.providers.length, heartbeat: f.heartbeatLost ? `LOST (${ago(f.lastHeartbeatAt) ?? 'never'})` : ago(f.lastHeartbeatAt), inventory: ago(f.inventoryAt), scope: f.inventoryScope === 'all' ? 'all' : f.inventoryScope.join(',') })),
          ),
        );
      }),
    );
  fabric
    .command('show <id>')
    .description('one fabric and its providers')
    .action((id: string) =>
      withApi(program, async (api) => {
        const f = await api.get<Fabric>(`/fabrics/${encodeURIComponent(id)}`);
        out(f, () =>
          [
            fields([
              ['id', f.id],
              ['name', f.name],
              ['kind', f.kind],
              ['version', f.version],
              ['inventory scope', f.inventoryScope === 'all' ? 'all clouds' : f.inventoryScope.join(', ')],
              ['last heartbeat', `${when(f.lastHeartbeatAt) ?? 'never'}${f.heartbeatLost ? ' (LOST)' : ''}`],
              ['inventory at', when(f.inventoryAt)],
              ['created', when(f.createdAt)],
            ]),
            '',
            'Providers',
            table(f.providers.map((p) => ({ id: p.id, name: p.name, version: p.version, registered: when(p.registeredAt), heartbeat: ago(p.lastHeartbeatAt), proxy: p.proxy?.url ?? null }))),
          ].join('\n'),
        );
      }),
    );
  fabric
    .command('delete <id>')
    .description('unregister a fabric and drop its inventory (none of its VMs may be protected)')
    .action((id: string) =>
      withApi(program, async (api) => {
        await api.delete(`/fabrics/${encodeURIComponent(id)}`);
        out({ deleted: id }, () => `fabric ${id} unregistered`);
      }),
    );

  // ---- inventory ---------------------------------------------------------------------------
  const inv = program.command('inventory').description("what the fabrics' providers report: clouds, host groups, hosts, networks, IP pools, storage, VMs");
  inv
    .command('list')
    .description('inventory objects, of every kind unless --kind says which')
    .addOption(kindOption())
    .option('--fabric <id>', 'of this fabric only')
    .option('--parent <id>', 'contained in this object only (a cloud\'s host groups and VMs, a host group\'s hosts)')
    .action((o: { kind?: InventoryKind; fabric?: string; parent?: string }) =>
      withApi(program, async (api) => {
        const kinds = o.kind ? [o.kind] : [...INVENTORY_KINDS];
        const lists = await Promise.all(kinds.map((k) => api.list<InventoryObject>(`/${INVENTORY_PATHS[k]}`, { fabric: o.fabric, parent: o.parent })));
        const items = lists.flatMap((l) => l.items);
        out({ items, next: null }, () => table(inventoryRows(items)));
      }),
    );
  inv
    .command('show <id>')
    .description('one inventory object with all its properties')
    .addOption(kindOption())
    .action((id: string, o: { kind?: InventoryKind }) =>
      withApi(program, async (api) => {
        const kinds = o.kind ? [o.kind] : [...INVENTORY_KINDS];
        const found = (await Promise.all(kinds.map((k) => api.get<InventoryObject>(`/${INVENTORY_PATHS[k]}/${encodeURIComponent(id)}`).catch((e: unknown) => (isNotFound(e) ? undefined : Promise.reject(e)))))).find(
          (x) => x !== undefined,
        );
        if (!found) throw new OsrError('NOT_FOUND', `no inventory object${o.kind ? ` of kind ${o.kind}` : ''} has the id ${id}`);
        out(found, () =>
          fields([
            ['id', found.id],
            ['kind', found.kind],
            ['name', found.name],
            ['fabric', found.fabricId],
            ['parent', found.parentId],
            ['updated', when(found.updatedAt)],
            ...Object.entries(found.properties),
          ]),
        );
      }),
    );
  inv
    .command('protectable')
    .description('VMs not protected yet')
    .option('--cloud <id>', 'in this cloud only')
    .action((o: { cloud?: string }) =>
      withApi(program, async (api) => {
        const r = await api.list<InventoryObject>('/protectable-items', { cloud: o.cloud });
        out(r, () => table(r.items.map((v) => ({ id: v.id, name: v.name, cloud: v.parentId, details: summary(v) }))));
      }),
    );

  // ---- protected items ---------------------------------------------------------------------
  const item = program.command('item').description('protected items: VMs under protection, their health, RPO and recovery points');
  item
    .command('list')
    .description('protected items with state, health, RPO, latest recovery point, readiness for failover and policy')
    .option('--state <state>', 'in this state only (e.g. Protected, InitialReplication, ProtectionFailed)')
    .option('--health <health>', 'of this health only (Healthy, Warning, Critical)')
    .option('--pairing <id>', 'covered by this cloud pairing only')
    .option('--fabric <id>', 'of this fabric only')
    .option('--name <prefix>', 'whose names start with this')
    .action((o: { state?: string; health?: string; pairing?: string; fabric?: string; name?: string }) =>
      withApi(program, async (api) => {
        const r = await api.list<ProtectedItem>('/protected-items', { state: o.state, health: o.health, pairing: o.pairing, fabric: o.fabric, name: o.name });
        if (asJson(program)) return out(r, () => '');
        const policyOf = await policyNames(api);
        out(r, () =>
          table(
            r.items.map((i) => ({ id: i.id, name: i.name, state: itemState(i), health: i.health, rpo: formatSeconds(i.rpoSeconds), 'latest point': when(i.lastRecoveryPointAt), ready: i.readiness?.ready ? 'yes' : 'no', policy: policyOf(i) })),
          ),
        );
      }),
    );
  item
    .command('show <item>')
    .description('one protected item (by id or name): replication, placement, health reasons, active job')
    .action((idOrName: string) =>
      withApi(program, async (api) => {
        const i = await resolveItem(api, idOrName);
        if (asJson(program)) return out(i, () => '');
        const policyOf = await policyNames(api);
        out(i, () =>
          [
            fields([
              ['id', i.id],
              ['name', i.name],
              ['fabric', i.fabricId],
              ['pairing', i.pairingId],
              ['policy', policyOf(i)],
              ['state', itemState(i)],
              ['health', i.health],
              ['RPO', formatSeconds(i.rpoSeconds)],
              ['latest point', when(i.lastRecoveryPointAt)],
              ['ready for failover', i.readiness?.ready ? 'yes' : `no: ${i.readiness?.reason ?? '-'}`],
              ['active job', i.activeJobId],
              ['created', when(i.createdAt)],
              ['updated', when(i.updatedAt)],
              ...replicationFields(i),
            ]),
            ...(i.healthReasons.length ? ['', 'Health reasons', table(i.healthReasons.map((h) => ({ code: h.code, message: h.message })))] : []),
            ...drillLines(i.replication.drills ?? []),
          ].join('\n'),
        );
      }),
    );
  item
    .command('enable <vm...>')
    .description('enable protection of one or more VMs (by id, or by name): one job each')
    .option('--pairing <id>', "the cloud pairing to protect under (default: the pairing of the VM's cloud)")
    .option('--vm-size <size>', "the replica VM's size, where the recovery site offers a choice (Azure: Standard_B2s, …; default: the smallest with the source's vCPUs and memory)")
    .option('--disk-type <type>', "the replica's disk type, where the recovery site offers a choice (Azure: Standard_LRS, StandardSSD_LRS, Premium_LRS; default: as the storage mapping places the disks)")
    .option('--replication-group <name>', "a replication group (consistency group) for the VMs: their points are cut at one instant across them, and a recovery plan fails them over at one group point (the primary site's hosts must hold writes for a moment: the lab's do, libvirt's do not)")
    .option('--wait', 'follow the jobs until they end; exit non-zero if one fails', false)
    .option('--interval <duration>', 'how often --wait polls', '1s')
    .action((vms: string[], o: { pairing?: string; vmSize?: string; diskType?: string; replicationGroup?: string; wait: boolean; interval: string }) =>
      withApi(program, async (api) => {
        const started: { vm: string; vmId?: string; jobId?: string; url?: string; state?: string; error?: OsrError }[] = [];
        let allVms: Promise<InventoryObject[]> | undefined;
        const all = () => (allVms ??= api.list<InventoryObject>('/vms').then((r) => r.items));
        for (const name of vms) {
          try {
            const vm = await resolveVm(api, name, all);
            const recoveryVm = { ...(o.vmSize ? { size: o.vmSize } : {}), ...(o.diskType ? { diskType: o.diskType } : {}) };
            const r = await api.post<{ jobId: string; kind: string; state: string; url: string }>('/protected-items', { vmId: vm.id, ...(o.pairing ? { pairingId: o.pairing } : {}), ...(Object.keys(recoveryVm).length > 0 ? { recoveryVm } : {}), ...(o.replicationGroup ? { replicationGroup: o.replicationGroup } : {}) });
            started.push({ vm: vm.name, vmId: vm.id, jobId: r.jobId, url: r.url, state: r.state });
          } catch (e) {
            started.push({ vm: name, error: toOsrError(e) });
          }
        }
        out(
          started.map((s) => (s.error ? { vm: s.vm, error: s.error.toJSON() } : s)),
          () => table(started.map((s) => ({ vm: s.vm, item: s.vmId ?? null, job: s.jobId ?? null, result: s.error ? `${s.error.code}: ${s.error.message}` : 'started' }))),
        );
        const jobs = started.filter((s) => s.jobId).map((s) => s.jobId!);
        if (o.wait && jobs.length > 0) await watchJobs(api, jobs, { json: asJson(program), intervalMs: parseDuration(o.interval) });
        const failed = started.find((s) => s.error);
        if (failed) throw new OsrError(failed.error!.code, `enabling protection of ${failed.vm} was refused: ${failed.error!.message}`, failed.error!.details);
      }),
    );
  item
    .command('disable <item>')
    .description('disable protection of an item (a job); the replica is deleted or kept as its policy says, unless told')
    .option('--keep-replica', 'keep the replica VM', false)
    .option('--delete-replica', 'delete the replica VM', false)
    .option('--wait', 'follow the job until it ends', false)
    .option('--interval <duration>', 'how often --wait polls', '1s')
    .action((idOrName: string, o: { keepReplica: boolean; deleteReplica: boolean; wait: boolean; interval: string }) =>
      withApi(program, async (api) => {
        if (o.keepReplica && o.deleteReplica) throw new OsrError('INVALID_ARGUMENT', 'give --keep-replica or --delete-replica, not both');
        const i = await resolveItem(api, idOrName);
        const r = await api.delete<{ jobId: string; kind: string; state: string; url: string }>(`/protected-items/${encodeURIComponent(i.id)}`, {
          deleteReplica: o.keepReplica ? false : o.deleteReplica ? true : undefined,
        });
        out(r, () => `disabling protection of ${i.name}: job ${r.jobId}`);
        if (o.wait) await watchJobs(api, [r.jobId], { json: asJson(program), intervalMs: parseDuration(o.interval) });
      }),
    );
  /** A job on one item: POST to its action, print the job, follow it with --wait. */
  const itemJob = <O extends object>(usage: string, what: string, pathName: string, options: (c: Command) => Command, body: (o: O) => unknown, says: (name: string, o: O) => string) =>
    options(item.command(`${usage} <item>`).description(what))
      .option('--wait', 'follow the job until it ends', false)
      .option('--interval <duration>', 'how often --wait polls', '1s')
      .action((idOrName: string, o: O & { wait: boolean; interval: string }) =>
        withApi(program, async (api) => {
          const i = await resolveItem(api, idOrName);
          const r = await api.post<{ jobId: string }>(`/protected-items/${encodeURIComponent(i.id)}/${pathName}`, body(o));
          out(r, () => `${says(i.name, o)}: job ${r.jobId}`);
          if (o.wait) await watchJobs(api, [r.jobId], { json: asJson(program), intervalMs: parseDuration(o.interval) });
        }),
      );
  itemJob<TestFailoverFlags>(
    'test-failover',
    'test failover (a job): start a recovery point at the recovery site in isolation while replication goes on; clean it up with test-failover-cleanup',
    'test-failover',
    testFailoverFlags('a VM network made for the drill and removed at cleanup'),
    testFailoverBody,
    (name, o) => `test failover of ${name} from point ${o.point}, network ${o.network}`,
  );
  itemJob<CleanupFlags>(
    'test-failover-cleanup',
    'clean up a test failover (a job): remove its VM and any network made for it, and record the drill with notes',
    'test-failover-cleanup',
    cleanupFlags,
    cleanupBody,
    (name) => `cleaning up the test failover of ${name}`,
  );
  itemJob<UnplannedFlags>(
    'unplanned-failover',
    'unplanned failover (a job): start a recovery point at the other site when the primary may be gone; the old primary is fenced when it answers',
    'unplanned-failover',
    unplannedFlags,
    unplannedBody,
    (name, o) => `unplanned failover of ${name} to point ${o.point}`,
  );
  itemJob(
    'planned-failover',
    'planned failover (a job): shut the VM down, ship its final delta and start it at the other site with nothing lost; the old primary is fenced',
    'planned-failover',
    (c) => c,
    () => undefined,
    (name) => `planned failover of ${name}`,
  );
  itemJob<ChangePointFlags>(
    'change-recovery-point',
    'before the commit, run the failed-over VM from another recovery point (a job): it starts again from that point, and what it wrote since the failover is discarded',
    'change-recovery-point',
    changePointFlags,
    changePointBody,
    (name, o) => `${name} changes to point ${o.point}`,
  );
  itemJob('commit', 'commit a failover (a job): it becomes final, the other recovery points are dropped; reprotect next', 'commit', (c) => c, () => undefined, (name) => `commit of ${name}`);
  itemJob(
    'reprotect',
    'reprotect after a committed failover (a job): the old primary becomes the replica and replication runs the other way, sending only what differs (failback: planned-failover, commit and reprotect again)',
    'reprotect',
    (c) => c,
    () => undefined,
    (name) => `reprotect of ${name}`,
  );
  itemJob(
    'resync',
    'resynchronize now (a job), whatever the resync window: every block is compared with the replica and only those that differ are sent; from Protected or ResyncRequired, the item is Resynchronizing until the resync\'s point is at the replica',
    'resync',
    (c) => c,
    () => undefined,
    (name) => `resync of ${name}`,
  );
  itemJob(
    'confirm-disks',
    "confirm a disk change (a job): the VM's disks shrank or one was removed, and its replication waits (health reason DISK_CHANGE_UNCONFIRMED); the replica's next points have the disks as they are now, older points keep theirs",
    'confirm-disks',
    (c) => c,
    () => undefined,
    (name) => `disk change of ${name} confirmed`,
  );
  item
    .command('points <item>')
    .description("an item's recovery points, newest first")
    .action((idOrName: string) =>
      withApi(program, async (api) => {
        const i = await resolveItem(api, idOrName);
        const r = await api.get<ListAnswer<RecoveryPoint>>(`/protected-items/${encodeURIComponent(i.id)}/recovery-points`);
        out(r, () => table(r.items.map((p) => ({ id: p.id, time: when(p.at), consistency: p.consistency, cut: p.cut ?? '' }))));
      }),
    );
  item
    .command('samples <item>')
    .description("an item's RPO, churn and pending change logs over time, a sample a minute at most (a week is kept), oldest first")
    .option('--since <duration>', 'how far back', '1h')
    .action((idOrName: string, o: { since: string }) =>
      withApi(program, async (api) => {
        const i = await resolveItem(api, idOrName);
        const since = new Date(Date.now() - parseDuration(o.since)).toISOString();
        const r = await api.get<ListAnswer<ItemSample>>(`/protected-items/${encodeURIComponent(i.id)}/samples`, { since });
        const rate = (n: number | null) => (n === null ? '-' : `${formatBytes(n)}/s`);
        out(r, () => table(r.items.map((x) => ({ time: when(x.at), rpo: formatSeconds(x.rpoSeconds), churn: rate(x.churnBytesPerSec), peak: rate(x.peakChurnBytesPerSec), pending: x.pendingLogBytes === null ? '-' : formatBytes(x.pendingLogBytes) }))));
      }),
    );
  item
    .command('events <item>')
    .description("an item's event history, newest first")
    .option('--limit <n>', 'at most this many events', '100')
    .action((idOrName: string, o: { limit: string }) =>
      withApi(program, async (api) => {
        const i = await resolveItem(api, idOrName);
        const r = await api.list<VaultEvent>(`/protected-items/${encodeURIComponent(i.id)}/events`, {}, int(o.limit, '--limit', 1));
        out(r, () => table(r.items.map((e) => ({ time: when(e.at), severity: e.severity, kind: e.kind, message: e.message }))));
      }),
    );
}

/** An item's drills, newest first, with what the last one's test VM showed (its console's last lines). */
function drillLines(drills: ItemDrill[]): string[] {
  if (drills.length === 0) return [];
  const evidence = (d: ItemDrill) => {
    const e = d.evidence;
    if (!e) return '-';
    return [e.running ? 'running' : 'off', `console ${e.console.length} B`, e.guestAgentAnswered ? 'guest agent answered' : 'no guest agent'].join(', ');
  };
  const rows = drills.map((d) => ({ cleanedUp: when(d.cleanedUpAt), result: d.succeeded ? 'succeeded' : 'failed', rto: formatSeconds(d.rtoSeconds), point: `${d.point.id} (${when(d.point.at)})`, evidence: evidence(d), notes: d.notes }));
  const last = drills[0]!.evidence;
  const tail = last ? last.console.split(/\r?\n/).filter((l) => l.trim() !== '').slice(-5) : [];
  return ['', 'Drills', table(rows), ...(tail.length ? ['', `The last drill's test VM console (its last lines, at ${when(last!.at)})`, ...tail.map((l) => `  ${l}`)] : [])];
}

