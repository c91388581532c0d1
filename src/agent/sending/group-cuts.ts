/**
 * A consistency group's cuts, this agent's part. A cut is one instant across every VM of
 * the group, on this host and on others. Its coordinator (drivers/agent-replication.ts,
 * groupCut) goes through three rounds, each to every member's agent at once:
 *
 *   prepare  each member's swap is prepared: what must be synced to disk is synced now,
 *            while the guests still write (ChangeTracking.prepareHeldSwap);
 *   hold     the members' guest writes are held at their write gates;
 *   swap     once every agent holds: the logs are swapped as points of the cut, in one
 *            step on each agent, and the writes go on.
 *
 * No write can be acknowledged to any guest between the last hold and the first swap, so
 * a write that a guest made after another guest's write was acknowledged is never in a
 * cut without it. The pause is two round trips and the swaps themselves: no fsync.
 *
 * A hold lasts at most its deadline (`holdMs`, 1 ms to 1 s): past it the writes go on by
 * themselves and the cut is refused here (CUT_EXPIRED), so a lost coordinator pauses no
 * guest for longer. A prepared cut not held within PREPARED_TTL_MS is dropped.
 */
import { OsrError } from '../../domain/errors.js';
import { safeName } from '../../domain/names.js';
import type { Logger } from '../io/logger.js';
import type { WriteGate } from '../io/write-gate.js';
import type { PreparedSwap } from '../ports/change-source.js';
import type { PrimaryReplication } from './replication.js';

export const MAX_CUT_HOLD_MS = 1000;
export const DEFAULT_CUT_HOLD_MS = 200;
/** a prepared cut not held within this is dropped */
const PREPARED_TTL_MS = 10_000;
/** VMs of one cut on one agent, at most */
const MAX_CUT_VMS = 256;
/** cuts open at once on one agent, at most */
const MAX_OPEN_CUTS = 64;

interface Member {
  vm: string;
  gate: WriteGate;
  replication: PrimaryReplication;
  prepared: PreparedSwap;
}

interface OpenCut {
  id: string;
  group: string;
  /** the VMs it holds (reserved from its prepare on: a VM is in one open cut at most) */
  vms: string[];
  members: Member[];
  state: 'preparing' | 'prepared' | 'held' | 'expired' | 'aborted';
  timer: NodeJS.Timeout | undefined;
}

/** What a swapped cut answers: each member's point, and how long this agent held the writes. */
export interface CutResult {
  cut: string;
  group: string;
  points: { vm: string; seq: number }[];
  /** from the hold to the release here (ms): the longest any guest write waited on this agent */
  heldMs: number;
}

export class GroupCuts {
  private readonly open = new Map<string, OpenCut>();

  constructor(
    /** the replication of a VM on this host, and its write gate; throws NOT_FOUND */
    private readonly member: (vm: string) => { replication: PrimaryReplication; gate: WriteGate | undefined },
    private readonly log: Logger,
  ) {}

  /** Prepare cut `id` of `group` for `vms` (members of the group on this host): nothing is held yet. */
  async prepare(input: { id?: unknown; group?: unknown; vms?: unknown }): Promise<{ cut: string; prepared: number }> {
    const id = safeName(input.id, 'cut id');
    const group = safeName(input.group, 'group');
    if (!Array.isArray(input.vms) || input.vms.length === 0 || input.vms.length > MAX_CUT_VMS) throw new OsrError('INVALID_ARGUMENT', `a cut takes 1 to ${MAX_CUT_VMS} VMs of this host`);
    const names = input.vms.map((v) => safeName(v, 'VM name'));
    if (new Set(names).size !== names.length) throw new OsrError('INVALID_ARGUMENT', 'a VM is named twice in the cut');
    if (this.open.has(id)) throw new OsrError('ALREADY_EXISTS', `cut ${id} is already open here`);
    if (this.open.size >= MAX_OPEN_CUTS) throw new OsrError('INVALID_STATE', `${MAX_OPEN_CUTS} cuts are open here already; retry when they end`);
    const found = names.map((name) => {
      const { replication, gate } = this.member(name);
      // the VM's own name: a replication's id names it too
      const vm = replication.spec.vm;
      if (!gate) throw new OsrError('NOT_SUPPORTED', `the host of ${vm} does not see its guest writes one by one; it cannot be in a consistency group`, { vm });
      if (replication.spec.group !== group) throw new OsrError('INVALID_ARGUMENT', `${vm} is ${replication.spec.group === undefined ? 'in no consistency group' : `in group ${replication.spec.group}`}, not in ${group}`, { vm });
      if ([...this.open.values()].some((c) => c.vms.includes(vm))) throw new OsrError('INVALID_STATE', `${vm} is in another open cut; retry when it ends`, { vm });
      return { vm, gate, replication };
    });
    if (new Set(found.map((f) => f.vm)).size !== found.length) throw new OsrError('INVALID_ARGUMENT', 'a VM is named twice in the cut');
    // reserved now, before anything is awaited: a concurrent cut of these VMs is refused
    const cut: OpenCut = { id, group, vms: found.map((f) => f.vm), members: [], state: 'preparing', timer: undefined };
    this.open.set(id, cut);
    const prepared = await Promise.allSettled(found.map((f) => f.replication.cutPrepare()));
    prepared.forEach((p, i) => {
      if (p.status === 'fulfilled') cut.members.push({ ...found[i]!, prepared: p.value });
    });
    const failed = prepared.find((p) => p.status === 'rejected');
    if (failed || cut.state !== 'preparing') {
      for (const m of cut.members) m.replication.cutDrop(m.prepared);
      if (this.open.get(id) === cut) this.open.delete(id);
      throw failed ? failed.reason : new OsrError('INVALID_STATE', `cut ${id} was aborted while it was prepared`);
    }
    cut.state = 'prepared';
    cut.timer = setTimeout(() => this.abort(id), PREPARED_TTL_MS);
    cut.timer.unref();
    return { cut: id, prepared: cut.members.length };
  }

  /** Hold the guest writes of prepared cut `id`, for at most `holdMs`. */
  hold(idIn: unknown, holdMsIn: unknown): { cut: string; held: number } {
    const cut = this.get(idIn);
    const holdMs = holdMsIn === undefined ? DEFAULT_CUT_HOLD_MS : holdMsIn;
    if (typeof holdMs !== 'number' || !Number.isInteger(holdMs) || holdMs < 1 || holdMs > MAX_CUT_HOLD_MS) throw new OsrError('INVALID_ARGUMENT', `a cut holds writes for 1 to ${MAX_CUT_HOLD_MS} ms, not ${String(holdMs)}`);
    if (cut.state !== 'prepared') throw new OsrError('INVALID_STATE', `cut ${cut.id} is ${cut.state}, not prepared`);
    const busy = cut.members.find((m) => m.gate.holding);
    if (busy) throw new OsrError('INVALID_STATE', `the writes of ${busy.vm} are held already; retry`, { vm: busy.vm });
    clearTimeout(cut.timer);
    const expire = () => {
      if (cut.state !== 'held') return;
      cut.state = 'expired';
      for (const m of cut.members) m.gate.release();
      this.log.warn({ cut: cut.id, group: cut.group, code: 'CUT_EXPIRED' }, `cut ${cut.id} of group ${cut.group}: its coordinator did not swap within the hold; the guests' writes went on and the cut is refused`);
      cut.timer = setTimeout(() => this.abort(cut.id), PREPARED_TTL_MS);
      cut.timer.unref();
    };
    cut.state = 'held';
    for (const m of cut.members) m.gate.hold(holdMs, expire);
    return { cut: cut.id, held: cut.members.length };
  }

  /** Swap every member's logs as points of held cut `id`, release their writes and ship the points. */
  swap(idIn: unknown): CutResult {
    const cut = this.get(idIn);
    if (cut.state === 'expired') {
      this.abort(cut.id);
      throw new OsrError('CUT_EXPIRED', `cut ${cut.id} of group ${cut.group} waited longer than its hold: the guests' writes went on, so it is no instant of the group`, { cut: cut.id });
    }
    if (cut.state !== 'held') throw new OsrError('INVALID_STATE', `cut ${cut.id} is ${cut.state}, not held; hold it first`);
    this.open.delete(cut.id);
    clearTimeout(cut.timer);
    const points: CutResult['points'] = [];
    const durable: Promise<void>[] = [];
    let failure: unknown;
    // the gates hold every write of this agent's members: the swaps are one instant
    for (const m of cut.members) {
      try {
        if (failure !== undefined) m.replication.cutDrop(m.prepared);
        else {
          const s = m.replication.cutSwap(m.prepared, cut.id);
          points.push({ vm: m.vm, seq: s.seq });
          durable.push(s.durable);
        }
      } catch (e) {
        failure = e;
      }
    }
    let heldMs = 0;
    for (const m of cut.members) heldMs = Math.max(heldMs, m.gate.release());
    for (const d of durable) d.catch((e: unknown) => this.log.error({ cut: cut.id, err: String(e) }, `the state of cut ${cut.id} could not be synced; it is saved again with the next change`));
    // what swapped ships, even when another member failed (its cut is then no group point)
    for (const m of cut.members) if (points.some((p) => p.vm === m.vm)) m.replication.shipCut();
    if (failure !== undefined) {
      this.log.error({ cut: cut.id, group: cut.group, err: String(failure) }, `cut ${cut.id} of group ${cut.group} failed on this host`);
      throw failure;
    }
    return { cut: cut.id, group: cut.group, points, heldMs };
  }

  /** Drop cut `id` without points, releasing any writes it holds. */
  abort(idIn: unknown): { cut: string; aborted: boolean } {
    const id = safeName(idIn, 'cut id');
    const cut = this.open.get(id);
    if (!cut) return { cut: id, aborted: false };
    this.open.delete(id);
    clearTimeout(cut.timer);
    // one still being prepared drops its members' preparations when they end (prepare)
    const preparing = cut.state === 'preparing';
    cut.state = 'aborted';
    if (preparing) return { cut: id, aborted: true };
    for (const m of cut.members) {
      m.gate.release();
      m.replication.cutDrop(m.prepared);
    }
    return { cut: id, aborted: true };
  }

  private get(idIn: unknown): OpenCut {
    const id = safeName(idIn, 'cut id');
    const cut = this.open.get(id);
    if (!cut) throw new OsrError('NOT_FOUND', `no cut ${id} is open here (never prepared, swapped already, or aborted)`, { cut: id });
    return cut;
  }
}
