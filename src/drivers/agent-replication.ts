/**
 * The replication part of a fabric driver (FabricReplication, src/fabric/driver.ts) for
 * every fabric whose hosts run osr agents: replication, its status and resync, recovery
 * points, and failover (prepare, promote, change of point, commit, fence, demote) are
 * calls to the agent of the host that holds the VM or replica. The fabric's management
 * part (the lab's, libvirt's) answers where that is, through AgentSite, and records what
 * a failover changed (what runs where, what is fenced).
 *
 * Also here: the agent's side of the management part's replica VMs and test VMs — the
 * replica's source claimed before the first copy, its data deleted, a test failover's
 * overlay opened and removed — as functions of an agent's API.
 *
 * An agent is reached through AgentApi, which this module declares and does not make: the
 * lab hands it each agent's local-API client (src/cli/agent-client.ts); a fabric whose
 * agents are on other machines hands it the agent channel's client (agent-channel.md).
 */
import { randomBytes } from 'node:crypto';
import type { FabricCapabilities } from '../domain/capabilities.js';
import { OsrError, toOsrError } from '../domain/errors.js';
import type { MachineSpec } from '../domain/machine.js';
import { isAzureEndpoint } from '../domain/replicas.js';
import { isContinuous, pointSpacingSeconds } from '../domain/policy.js';
import { cutId } from '../domain/groups.js';
import type { AgentEndpoint, FabricReplication, GroupCut, NicConnection, RecoveryPointInfo, ReplicaEndpoint, ReplicaVm, ReplicationRequest, ReplicationStatus } from '../fabric/driver.js';

/** An osr agent's API (agent-api.md): JSON in and out; an error answer is thrown as the OsrError it carries. */

/** how often a replica's host is asked whether it was promoted outside the driver */
const PROMOTION_LOOK_MS = 60_000;
/** the longest a group cut may hold its members' writes (ms): past it the cut is refused and the writes go on */
const GROUP_HOLD_MS = 200;
export interface AgentApi {
  call<T>(method: string, path: string, body?: unknown): Promise<T>;
  get<T>(path: string): Promise<T>;
  post<T>(path: string, body?: unknown): Promise<T>;
  delete<T>(path: string): Promise<T>;
  /**
   * the agent checks the vault's replication grants (agent-channel.md): it is reached over
   * the provider channel, where setting replication up takes a grant; over a host's socket
   * it is not asked for
   */
  readonly takesGrants?: boolean;
}

/** `grant` as a body field, for an agent that takes grants (none otherwise). */
function grantField(api: AgentApi, grant: string | undefined): { grant?: string } {
  return api.takesGrants === true && grant !== undefined ? { grant } : {};
}

/** Where a VM or a replica is held, in the terms of the agent that holds it. */
export interface Held {
  /** the fabric's id of it */
  id: string;
  /** its name at the host's agent (a replica's: its source VM's name, the replica store's) */
  name: string;
  hostId: string;
  /** it runs as a VM here (a promoted replica included); otherwise it holds a replica (a demoted VM included) */
  isVm: boolean;
}

/** What a failover step, or replication being set up or stopped, changed: the management part records it. */
export type SiteChange =
  /** replication of the VM goes to this peer now (null: stopped) */
  | { kind: 'replicating'; vmId: string; peer: ReplicaEndpoint | null }
  /** a planned failover shut the VM down */
  | { kind: 'shut-down'; vmId: string }
  /** a point of the replica runs as the VM now (it was a replica record, or a demoted VM failed back) */
  | { kind: 'promoted'; id: string; epoch: number }
  /** the failed-over VM runs from another point, or its failover was committed */
  | { kind: 'point-changed' | 'committed'; vmId: string }
  /** the VM was stopped after a failover elsewhere: it stays off until it is demoted */
  | { kind: 'fenced'; vmId: string; epoch: number }
  /** the VM's disks are the replica of the copy promoted with `epoch` */
  | { kind: 'demoted'; id: string; epoch: number; itemId: string };

/** What the agent-backed replication needs of the fabric's management part. */
export interface AgentSite {
  /** the fabric's name, in messages */
  readonly name: string;
  /** where a VM or replica is (VM_NOT_FOUND when the fabric has none of that id) */
  locate(id: string): Held;
  /** the API of a host's agent (NOT_FOUND when it is not a running host of the fabric) */
  agent(hostId: string): AgentApi;
  /** where primaries reach a host's agent for replication, with its certificate's name */
  agentEndpoint(hostId: string): AgentEndpoint;
  /** a VM's or replica's NICs: the network each is on and its address */
  nics(id: string): NicConnection[];
  /** the peer the VM's replication was last set up to, kept across restarts (undefined: none) */
  replicationPeer(vmId: string): ReplicaEndpoint | undefined;
  /** the epoch a VM was fenced with here (0: not fenced) */
  fencedEpoch(vmId: string): number;
  /**
   * the agent is about to stop the VM: what writes to its disks from outside the agent
   * stops first (graceful, a planned failover: it flushes; otherwise it is cut short)
   */
  stoppingVm(vmId: string, graceful: boolean): Promise<void>;
  /**
   * the machine a promoted replica's VM is defined with at its host, its NICs on that
   * host's networks (a fabric whose hosts define VMs from it: libvirt); undefined: the
   * host needs none (the lab) or keeps the VM's own definition (a failback)
   */
  machineOf?(id: string): MachineSpec | undefined;
  /** record what changed, durably, before the call answers; inventory changes are reported */
  changed(change: SiteChange): Promise<void>;
  log: { warn(o: object, msg?: string): void };
}

/**
 * What replication through osr agents does, whatever the fabric: initial replication now
 * or at a scheduled time (not offline: the agents can export a seed, but the import at the
 * target is not driven yet), app-consistent points (the agent's quiesce hooks), every copy
 * frequency a policy offers, and a resync on request.
 */
export const AGENT_REPLICATION_CAPABILITIES: Readonly<Pick<FabricCapabilities, 'initialReplication' | 'appConsistentPoints' | 'copyFrequenciesSeconds' | 'resyncOnRequest'>> = {
  initialReplication: ['now', 'scheduled'],
  appConsistentPoints: true,
  copyFrequenciesSeconds: [30, 300, 900],
  resyncOnRequest: true,
};

/**
 * A continuous replication keeps at most this many points: each cut rewrites the replica's
 * manifest, which lists them all. Past it, retention thins the oldest points first.
 */
export const MAX_CONTINUOUS_POINTS = 2000;

/** The held object, which must run as a VM here. */
export function asVm<T extends Held>(h: T): T {
  if (!h.isVm) throw new OsrError('INVALID_STATE', `${h.name} (${h.id}) holds a replica here, not a running VM`);
  return h;
}

/** The held object, which must hold a replica here. */
export function asReplica<T extends Held>(h: T): T {
  if (h.isVm) throw new OsrError('INVALID_STATE', `${h.name} (${h.id}) runs as a VM here; it holds no replica`);
  return h;
}

/**
 * The vault's word, before the first copy: only the source host's agent may replicate the
 * VM into this host (a replica another agent opened first is refused, AUTH_FAILED).
 */
export async function claimReplicaSource(api: AgentApi, replicationId: string, sourceAgent: string, grant?: string): Promise<void> {
  await api.call('PUT', `/v1/replicas/${encodeURIComponent(replicationId)}/source`, { source: sourceAgent, claim: true, ...grantField(api, grant) });
}

/** Delete a replica's data at its host (gone already: nothing to do). */
export async function deleteReplicaData(api: AgentApi, name: string): Promise<void> {
  try {
    await api.delete(`/v1/replicas/${encodeURIComponent(name)}`);
  } catch (e) {
    if (toOsrError(e).code !== 'NOT_FOUND') throw e;
  }
}

/**
 * A test failover's disks: the point opened writable beside the replica, served over NBD.
 * `latest`: the point was the newest when the drill chose it; a continuous replication's
 * replica may have folded it into a newer cut since, and then the newest point is opened
 * (the overlay holds it from then on). The answer names the point opened.
 */
export async function openTestOverlay(api: AgentApi, replicaName: string, pointId: string, latest = false): Promise<{ id: string; disks: { name: string; nbd: string }[]; point: RecoveryPointInfo }> {
  type Opened = { id: string; point: number; pointTime: string; consistency: string; disks: { name: string; nbd: { unix: string } }[] };
  const url = `/v1/replicas/${encodeURIComponent(replicaName)}/overlays`;
  let o: Opened;
  try {
    o = await api.post<Opened>(url, { point: Number(pointId) });
  } catch (e) {
    if (!latest || toOsrError(e).code !== 'POINT_NOT_FOUND') throw e;
    o = await api.post<Opened>(url, {});
  }
  return { id: o.id, disks: o.disks.map((d) => ({ name: d.name, nbd: d.nbd.unix })), point: { id: String(o.point), at: o.pointTime, consistency: consistencyOf(o.consistency) } };
}

/** The members of a group cut on one agent. */
export interface CutMembers {
  api: AgentApi;
  vms: string[];
}

/** What a group cut made: each member's point, and how long the guests' writes were held. */
export interface GroupCutResult {
  cut: string;
  /** VM name → its point (names of one agent; `byMember` when members on several agents may share a name) */
  points: Record<string, number>;
  /** each member's points, in the order of the members given */
  byMember: { vm: string; seq: number }[][];
  /** the longest hold on any agent, hold to release (ms): the longest a guest write waited */
  heldMs: number;
  /** from the first hold asked to the last swap answered (ms): the pause as the coordinator sees it, its round trips included */
  coordinatorMs: number;
}

/**
 * Cut a consistency group at one instant (agent/sending/group-cuts.ts), in three rounds to
 * every member's agent at once: prepare the swaps (what must be synced is synced while the
 * guests write), hold every member's writes, and only once all hold, swap them all. A
 * prepare or hold refused anywhere drops the cut everywhere (no point is made); a swap
 * refused anywhere (the hold expired) leaves the others' points of an incomplete cut,
 * which is no group point (domain/groups.ts). Throws the first refusal.
 */
export async function groupCut(members: readonly CutMembers[], group: string, cut: string, holdMs: number): Promise<GroupCutResult> {
  const url = `/v1/cuts/${encodeURIComponent(cut)}`;
  const round = async (call: (m: CutMembers) => Promise<unknown>) => {
    const answers = await Promise.allSettled(members.map(call));
    const refused = answers.find((h) => h.status === 'rejected');
    if (refused) {
      await Promise.all(members.map((m) => m.api.delete(url).catch(() => undefined)));
      throw toOsrError(refused.reason);
    }
  };
  await round((m) => m.api.post('/v1/cuts', { id: cut, group, vms: m.vms }));
  const t0 = performance.now();
  await round((m) => m.api.post(`${url}/hold`, { holdMs }));
  const swaps = await Promise.allSettled(members.map((m) => m.api.post<{ points: { vm: string; seq: number }[]; heldMs: number }>(`${url}/swap`)));
  const coordinatorMs = performance.now() - t0;
  const failed = swaps.find((s) => s.status === 'rejected');
  if (failed) throw toOsrError(failed.reason);
  const points: Record<string, number> = {};
  const byMember: { vm: string; seq: number }[][] = [];
  let heldMs = 0;
  for (const s of swaps) {
    if (s.status !== 'fulfilled') continue;
    for (const p of s.value.points) points[p.vm] = p.seq;
    byMember.push(s.value.points);
    heldMs = Math.max(heldMs, s.value.heldMs);
  }
  return { cut, points, byMember, heldMs, coordinatorMs };
}

/** Remove a test failover's overlay and its writes (one a restarted agent no longer has is gone already). */
export async function removeTestOverlay(api: AgentApi, replicaName: string, overlayId: string): Promise<void> {
  try {
    await api.delete(`/v1/replicas/${encodeURIComponent(replicaName)}/overlays/${encodeURIComponent(overlayId)}`);
  } catch (e) {
    if (toOsrError(e).code !== 'NOT_FOUND') throw e;
  }
}

/** Whether two endpoints name the same replica: one agent (its name, when both give it), or one container. */
function samePeer(a: ReplicaEndpoint, b: ReplicaEndpoint): boolean {
  if (isAzureEndpoint(a) || isAzureEndpoint(b)) return isAzureEndpoint(a) && isAzureEndpoint(b) && a.containerUrl === b.containerUrl;
  return a.address === b.address && a.port === b.port && (a.name === undefined || a.name === b.name);
}

export class AgentReplication implements FabricReplication {
  constructor(
    private readonly site: AgentSite,
    private readonly now: () => number = Date.now,
  ) {}

  private vm(id: string): Held {
    return asVm(this.site.locate(id));
  }

  // ---- primary site

  async ensureReplication(req: ReplicationRequest): Promise<void> {
    const v = this.vm(req.vmId);
    const p = req.policy;
    if (p.initialReplication.method === 'offline') {
      throw new OsrError('NOT_SUPPORTED', `fabric ${this.site.name} replicates over the network only; choose initial replication now or scheduled`, { fabric: this.site.name, option: 'initialReplication.method' });
    }
    const a = this.site.agent(v.hostId);
    const running = (await a.get<{ vm: string; group?: string | null }[]>('/v1/replications')).find((r) => r.vm === v.name);
    const present = running !== undefined;
    const known = this.site.replicationPeer(req.vmId);
    const azure = isAzureEndpoint(req.peer);
    if (isAzureEndpoint(req.peer) && req.access === undefined) throw new OsrError('INVALID_ARGUMENT', `replication of ${v.name} to ${req.peer.containerUrl} needs the container's SAS, which the recovery fabric answers with the replica`);
    if (req.group !== undefined && (azure || isContinuous(p))) {
      throw new OsrError('NOT_SUPPORTED', `${v.name} cannot be in replication group ${req.group}: ${azure ? 'a replica in Azure storage' : 'continuous replication'} takes no group cuts`, { option: 'group' });
    }
    // a VM whose group changed replicates again, under its new spec
    if (present && known && samePeer(known, req.peer) && (running.group ?? undefined) === req.group) {
      // the same container with a SAS renewed since: the agent takes it without a restart
      if (azure) await a.call('PUT', `/v1/replications/${encodeURIComponent(v.name)}/azure-sas`, { sas: req.access!.sas });
      return;
    }
    if (present) await a.delete(`/v1/replications/${encodeURIComponent(v.name)}`);
    const continuous = isContinuous(p);
    const keep = Math.max(1, Math.ceil((p.retentionHours * 3600) / pointSpacingSeconds(p)) + 1);
    const peer = isAzureEndpoint(req.peer)
      ? { peer: req.peer.containerUrl, azureSas: req.access!.sas }
      : { peer: `${req.peer.address}:${req.peer.port}`, ...(req.peer.name !== undefined ? { peerName: req.peer.name } : {}), compression: p.compression };
    await a.post('/v1/replications', {
      vm: v.name,
      ...peer,
      ...(continuous ? { copyFrequency: 'continuous', pointInterval: `${pointSpacingSeconds(p)}s` } : { copyFrequency: `${p.copyFrequencySeconds}s` }),
      retentionHours: p.retentionHours,
      maxPoints: Math.min(continuous ? MAX_CONTINUOUS_POINTS : 10_000, keep),
      ...(p.appConsistentFrequencyHours > 0 ? { appConsistentFrequency: `${p.appConsistentFrequencyHours}h` } : {}),
      ...(p.initialReplication.method === 'scheduled' ? { startAt: p.initialReplication.startAt } : {}),
      ...(req.group !== undefined ? { group: req.group } : {}),
      ...grantField(a, req.grant),
    });
    await this.site.changed({ kind: 'replicating', vmId: req.vmId, peer: req.peer });
  }

  async replicationStatus(vmId: string): Promise<ReplicationStatus> {
    const v = this.vm(vmId);
    let h: AgentHealth;
    try {
      h = await this.site.agent(v.hostId).get<AgentHealth>(`/v1/replications/${encodeURIComponent(v.name)}`);
    } catch (e) {
      const err = toOsrError(e);
      return { health: 'Critical', healthReasons: [{ code: err.code, message: `replication of ${v.name} cannot be read at host ${v.hostId}: ${err.message}` }], rpoSeconds: null, state: 'Unknown', initial: null, latestPoint: null, lastError: err.toJSON(), waitingForAction: false };
    }
    const reasons: { code: string; message: string }[] = [];
    if (h.lastError) reasons.push({ code: h.lastError.code, message: h.lastError.message });
    if (h.state === 'ResyncRequired') reasons.push({ code: 'RESYNC_REQUIRED', message: `${v.name} needs a resynchronization` });
    if (h.health === 'Warning' && h.cyclesLastHour > 0 && h.missedCyclesLastHour / h.cyclesLastHour > 0.2) reasons.push({ code: 'NETWORK_ERROR', message: `${h.missedCyclesLastHour} of ${h.cyclesLastHour} copy cycles in the last hour were missed` });
    const first = h.initial ?? null;
    const resync = h.resync ?? null;
    const progress = first && !first.completedAt ? first : resync && !resync.completedAt ? resync : first ?? resync;
    const done = h.latestPoint !== null && (first === null || first.completedAt !== null) && (resync === null || resync.completedAt !== null) && h.state !== 'InitialReplication' && h.state !== 'Resynchronizing' && h.state !== 'Scheduled';
    return {
      health: h.health,
      healthReasons: reasons,
      rpoSeconds: h.rpoSeconds,
      state: h.state,
      initial: {
        fraction: progress ? (progress.totalBytes > 0 ? progress.doneBytes / progress.totalBytes : done ? 1 : 0) : done ? 1 : 0,
        bytesDone: progress?.doneBytes ?? 0,
        bytesTotal: progress?.totalBytes ?? 0,
        rateBytesPerSec: progress?.rateBytesPerSec ?? 0,
        etaSeconds: progress?.etaSeconds ?? null,
        currentDisk: progress?.currentDisk ?? null,
        done,
      },
      latestPoint: h.latestPoint ? { id: String(h.latestPoint.seq), at: h.latestPoint.time, consistency: consistencyOf(h.latestPoint.consistency) } : null,
      lastError: h.lastError ? { code: h.lastError.code, message: h.lastError.message } : null,
      waitingForAction: h.retry?.waitingForAction ?? false,
      churn: h.churn ? { bytesPerSec: h.churn.bytesPerSec, peakBytesPerSec: h.churn.peakBytesPerSec } : null,
      pendingLogBytes: h.pendingLogBytes ?? null,
      resync: resync
        ? {
            id: resync.id,
            reason: resync.reason,
            fraction: resync.totalBytes > 0 ? resync.doneBytes / resync.totalBytes : resync.completedAt ? 1 : 0,
            bytesDone: resync.doneBytes,
            bytesTotal: resync.totalBytes,
            differingBytes: resync.differingBytes,
            rateBytesPerSec: resync.rateBytesPerSec,
            etaSeconds: resync.etaSeconds,
            currentDisk: resync.currentDisk,
            startedAt: resync.startedAt,
            completedAt: resync.completedAt,
          }
        : null,
    };
  }

  /**
   * The host's agent resynchronizes at once when asked, whatever its resync window. One
   * that runs already is left to finish: asked again meanwhile, the agent would compare
   * every block a second time once it ends.
   */
  async resync(vmId: string): Promise<void> {
    const v = this.vm(vmId);
    const a = this.site.agent(v.hostId);
    const name = encodeURIComponent(v.name);
    const h = await a.get<AgentHealth>(`/v1/replications/${name}`);
    if (h.state === 'Resynchronizing') return;
    await a.post(`/v1/replications/${name}/resync`);
  }

  async confirmDiskChange(vmId: string): Promise<{ summary: string }> {
    const v = this.vm(vmId);
    const r = await this.site.agent(v.hostId).post<{ summary?: unknown }>(`/v1/replications/${encodeURIComponent(v.name)}/confirm-disks`);
    return { summary: typeof r?.summary === 'string' ? r.summary.slice(0, 2000) : '' };
  }

  async stopReplication(vmId: string): Promise<void> {
    const v = this.vm(vmId);
    try {
      await this.site.agent(v.hostId).delete(`/v1/replications/${encodeURIComponent(v.name)}`);
    } catch (e) {
      if (toOsrError(e).code !== 'NOT_FOUND') throw e;
    }
    if (this.site.replicationPeer(vmId)) await this.site.changed({ kind: 'replicating', vmId, peer: null });
  }

  /**
   * Cut a replication group: its members on each host are asked at once (groupCut). A member
   * not replicating yet (its first copy or a resync runs) is left out, so the others go on
   * getting points; their cuts are group points only once every member holds them.
   */
  async cutGroup(group: string, vmIds: readonly string[]): Promise<GroupCut> {
    const byHost = new Map<string, { api: AgentApi; members: { id: string; name: string }[] }>();
    const skipped: string[] = [];
    for (const id of vmIds) {
      let v: Held;
      try {
        v = this.vm(id);
      } catch {
        skipped.push(id); // gone, or holding a replica after a failover: not cut
        continue;
      }
      const h = byHost.get(v.hostId) ?? { api: this.site.agent(v.hostId), members: [] };
      h.members.push({ id, name: v.name });
      byHost.set(v.hostId, h);
    }
    const members: CutMembers[] = [];
    const notInGroup: string[] = [];
    /** per member of the cut: VM name → id */
    const ids: Map<string, string>[] = [];
    for (const h of byHost.values()) {
      const states = new Map((await h.api.get<{ vm: string; state: string; group?: string | null }[]>('/v1/replications')).map((r) => [r.vm, r]));
      const ready = new Map<string, string>();
      for (const m of h.members) {
        const s = states.get(m.name);
        // replicated outside the group (its host lost or changed the spec): it makes its own points; the others are cut
        if (s === undefined || s.group !== group) notInGroup.push(m.id);
        else if (s.state === 'Replicating') ready.set(m.name, m.id);
        else skipped.push(m.id);
      }
      if (ready.size === 0) continue;
      members.push({ api: h.api, vms: [...ready.keys()] });
      ids.push(ready);
    }
    if (members.length === 0) return { cut: '', points: {}, heldMs: 0, skipped, notInGroup };
    const r = await groupCut(members, group, cutId(this.now(), randomBytes(4).toString('hex')), GROUP_HOLD_MS);
    const points: Record<string, string> = {};
    r.byMember.forEach((answered, i) => {
      for (const p of answered) {
        const id = ids[i]!.get(p.vm);
        if (id !== undefined) points[id] = String(p.seq);
      }
    });
    return { cut: r.cut, points, heldMs: r.heldMs, skipped, notInGroup };
  }

  // ---- recovery site

  async recoveryPoints(replicaVmId: string): Promise<RecoveryPointInfo[]> {
    return this.pointsOf(asReplica(this.site.locate(replicaVmId)));
  }

  /** The points a replica holds (also one promoted and not committed yet). */
  private async pointsOf(r: Held): Promise<RecoveryPointInfo[]> {
    try {
      const points = await this.site.agent(r.hostId).get<{ seq: number; time: string; consistency: string; cut?: string }[]>(`/v1/replicas/${encodeURIComponent(r.name)}/points`);
      return points.map((p) => ({ id: String(p.seq), at: p.time, consistency: consistencyOf(p.consistency), ...(typeof p.cut === 'string' ? { cut: p.cut } : {}) }));
    } catch (e) {
      if (toOsrError(e).code === 'NOT_FOUND') return []; // no data has arrived yet
      throw e;
    }
  }

  // ---- failover

  async prepareFailover(vmId: string): Promise<{ point: RecoveryPointInfo }> {
    const v = this.site.locate(vmId);
    const a = this.site.agent(v.hostId);
    if (!v.isVm) throw new OsrError('INVALID_STATE', `${v.name} (${vmId}) holds a replica here; a planned failover starts at the site that runs the VM`);
    await this.site.stoppingVm(vmId, true);
    const r = await a.post<{ point: { seq: number; time: string } | null }>(`/v1/replications/${encodeURIComponent(v.name)}/prepare-failover`, { timeout: '10m' });
    if (!r.point) throw new OsrError('INVALID_STATE', `${v.name} has no recovery point at the replica yet; wait for initial replication`);
    await this.site.changed({ kind: 'shut-down', vmId });
    return { point: { id: String(r.point.seq), at: r.point.time, consistency: 'crash' } };
  }

  async promoteReplica(replicaVmId: string, pointId: string | null): Promise<{ vmId: string; epoch: number; point: RecoveryPointInfo; points?: RecoveryPointInfo[] }> {
    const l = this.site.locate(replicaVmId);
    const a = this.site.agent(l.hostId);
    if (l.isVm) {
      // promoted already (the command run a second time): answer what is there
      const vm = (await a.get<{ name: string; origin?: { epoch: number; point: { seq: number; timeMs: number }; pending?: boolean } }[]>('/v1/vms')).find((x) => x.name === l.name);
      if (!vm?.origin) throw new OsrError('INVALID_STATE', `${l.name} runs here but was not promoted from a replica`);
      const origin = vm.origin;
      const points = origin.pending ? await this.pointsOf(l) : undefined;
      return { vmId: l.id, epoch: origin.epoch, point: points?.find((p) => p.id === String(origin.point.seq)) ?? { id: String(origin.point.seq), at: new Date(origin.point.timeMs).toISOString(), consistency: 'crash' }, ...(points ? { points } : {}) };
    }
    const machine = this.site.machineOf?.(l.id);
    const r = await a.post<{ point: { seq: number; timeMs: number; consistency: string }; epoch: number }>(`/v1/replicas/${encodeURIComponent(l.name)}/promote`, { ...(pointId !== null ? { point: Number(pointId) } : {}), start: true, commit: false, ...(machine ? { machine } : {}) });
    await this.site.changed({ kind: 'promoted', id: l.id, epoch: r.epoch });
    // the points stay until the commit: the vault learns them all, the promoted one included (with its group's cut)
    const points = await this.pointsOf(l);
    return { vmId: l.id, epoch: r.epoch, point: points.find((p) => p.id === String(r.point.seq)) ?? pointInfo(r.point), points };
  }

  /** when each replica's host was last asked whether it was promoted by hand */
  private readonly promotionLooks = new Map<string, number>();

  async promotionOf(replicaVmId: string): Promise<{ epoch: number; point: RecoveryPointInfo; pending: boolean } | undefined> {
    const l = this.site.locate(replicaVmId);
    // a replica the site holds as such is asked about at most once a minute (a promotion by hand is rare; the reports are not)
    if (!l.isVm) {
      const now = this.now();
      if (now - (this.promotionLooks.get(l.id) ?? 0) < PROMOTION_LOOK_MS) return undefined;
      this.promotionLooks.set(l.id, now);
    }
    const vm = (await this.site.agent(l.hostId).get<{ name: string; origin?: { epoch: number; point: { seq: number; timeMs: number }; pending?: boolean } }[]>('/v1/vms')).find((x) => x.name === l.name);
    if (!vm?.origin) return undefined;
    // promoted at the host, not through this driver: the site learns it holds a VM now
    if (!l.isVm) await this.site.changed({ kind: 'promoted', id: l.id, epoch: vm.origin.epoch });
    return { epoch: vm.origin.epoch, point: { id: String(vm.origin.point.seq), at: new Date(vm.origin.point.timeMs).toISOString(), consistency: 'crash' }, pending: vm.origin.pending === true };
  }

  async changeRecoveryPoint(vmId: string, pointId: string): Promise<{ point: RecoveryPointInfo }> {
    const l = this.vm(vmId);
    const seq = Number(pointId);
    if (!Number.isSafeInteger(seq) || seq < 0) throw new OsrError('POINT_NOT_FOUND', `${pointId} is not a recovery point of ${l.name}`);
    const r = await this.site.agent(l.hostId).post<{ point: { seq: number; timeMs: number; consistency: string } }>(`/v1/vms/${encodeURIComponent(l.name)}/recovery-point`, { point: seq });
    await this.site.changed({ kind: 'point-changed', vmId });
    return { point: pointInfo(r.point) };
  }

  async commitFailover(vmId: string): Promise<{ point: RecoveryPointInfo }> {
    const l = this.vm(vmId);
    const r = await this.site.agent(l.hostId).post<{ point: { seq: number; timeMs: number; consistency: string } }>(`/v1/vms/${encodeURIComponent(l.name)}/commit`);
    await this.site.changed({ kind: 'committed', vmId });
    return { point: pointInfo(r.point) };
  }

  async fenceVm(vmId: string, epoch: number): Promise<void> {
    const v = this.site.locate(vmId);
    if (!v.isVm) return; // a replica already: nothing to keep off
    if (this.site.fencedEpoch(vmId) >= epoch) return;
    await this.site.stoppingVm(vmId, false);
    try {
      await this.site.agent(v.hostId).post(`/v1/vms/${encodeURIComponent(v.name)}/fence`, { epoch });
    } catch (e) {
      // a host that is down keeps the VM off anyway; the fence applies when it is back
      this.site.log.warn({ vm: v.name, err: toOsrError(e).message }, `${v.name} could not be stopped now; it stays fenced`);
    }
    await this.site.changed({ kind: 'fenced', vmId, epoch });
  }

  async demoteVm(vmId: string, epoch: number, itemId: string, source?: string, grant?: string): Promise<ReplicaVm> {
    const l = this.site.locate(vmId);
    if (l.isVm) {
      await this.site.stoppingVm(vmId, false);
      const a = this.site.agent(l.hostId);
      await a.post(`/v1/vms/${encodeURIComponent(l.name)}/demote`, { epoch, ...(source !== undefined ? { source, ...grantField(a, grant) } : {}) });
      await this.site.changed({ kind: 'demoted', id: l.id, epoch, itemId });
    }
    return { replicaVmId: l.id, hostId: l.hostId, agent: this.site.agentEndpoint(l.hostId), nics: this.site.nics(l.id), reused: true };
  }
}

interface AgentProgress {
  totalBytes: number;
  doneBytes: number;
  rateBytesPerSec: number;
  etaSeconds: number | null;
  currentDisk: string | null;
  completedAt: string | null;
}

interface AgentResync extends AgentProgress {
  id: string;
  reason: string;
  differingBytes: number;
  startedAt: string;
}

/** GET /v1/replications/:id at the agent (agent-api.md), the fields read here. */
interface AgentHealth {
  state: string;
  health: 'Healthy' | 'Warning' | 'Critical';
  rpoSeconds: number | null;
  latestPoint: { seq: number; time: string; consistency: string } | null;
  lastError: { code: string; message: string } | null;
  cyclesLastHour: number;
  missedCyclesLastHour: number;
  initial: AgentProgress | null;
  resync: AgentResync | null;
  retry: { waitingForAction: boolean } | null;
  pendingLogBytes?: number;
  churn?: { bytesPerSec: number; peakBytesPerSec: number } | null;
}

/** The host's words for a point's consistency, in the vault's. */
const consistencyOf = (c: string): 'crash' | 'app' => (c === 'app-consistent' || c === 'app' ? 'app' : 'crash');

const pointInfo = (p: { seq: number; timeMs: number; consistency: string; cut?: string }): RecoveryPointInfo => ({ id: String(p.seq), at: new Date(p.timeMs).toISOString(), consistency: consistencyOf(p.consistency), ...(typeof p.cut === 'string' ? { cut: p.cut } : {}) });
