/**
 * A consistency group's cuts, this agent's part. A cut is one instant across every VM of
 * the group, on this host and on others: its coordinator (drivers/agent-replication.ts,
 * groupCut) first asks every member's agent to hold the VMs' guest writes, and only once
 * all hold, to swap their logs as points of the cut and let the writes go on. No write can
 * be acknowledged to any guest between the first hold and the last swap, so a write that
 * a guest made after another guest's write was acknowledged is never in a cut without it.
 *
 * A hold lasts at most its deadline (`holdMs`, 1 ms to 1 s): past it the writes go on by
 * themselves and the cut is refused here (CUT_EXPIRED), so a lost coordinator pauses no
 * guest for longer. The swaps are synchronous: this agent's members are swapped in one
 * step, then released.
 */
import { OsrError } from '../../domain/errors.js';
import { safeName } from '../../domain/names.js';
import type { Logger } from '../io/logger.js';
import type { WriteGate } from '../io/write-gate.js';
import type { PrimaryReplication } from './replication.js';

export const MAX_CUT_HOLD_MS = 1000;
export const DEFAULT_CUT_HOLD_MS = 200;
/** VMs of one cut on one agent, at most */
const MAX_CUT_VMS = 256;
/** cuts open at once on one agent, at most (a cut lives for its hold) */
const MAX_OPEN_CUTS = 64;

interface Member {
  vm: string;
  gate: WriteGate;
  replication: PrimaryReplication;
}

interface OpenCut {
  id: string;
  group: string;
  members: Member[];
  expired: boolean;
  heldAt: number;
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
    /** the replication of a VM on this host, and its write gate; throws VM_NOT_FOUND or REPLICATION_NOT_FOUND */
    private readonly member: (vm: string) => { replication: PrimaryReplication; gate: WriteGate | undefined },
    private readonly log: Logger,
  ) {}

  /** Hold the guest writes of `vms` (members of `group`) for cut `id`, for at most `holdMs`. */
  hold(input: { id?: unknown; group?: unknown; vms?: unknown; holdMs?: unknown }): { cut: string; held: number } {
    const id = safeName(input.id, 'cut id');
    const group = safeName(input.group, 'group');
    if (!Array.isArray(input.vms) || input.vms.length === 0 || input.vms.length > MAX_CUT_VMS) throw new OsrError('INVALID_ARGUMENT', `a cut holds 1 to ${MAX_CUT_VMS} VMs of this host`);
    const names = input.vms.map((v) => safeName(v, 'VM name'));
    if (new Set(names).size !== names.length) throw new OsrError('INVALID_ARGUMENT', 'a VM is named twice in the cut');
    const holdMs = input.holdMs === undefined ? DEFAULT_CUT_HOLD_MS : input.holdMs;
    if (typeof holdMs !== 'number' || !Number.isInteger(holdMs) || holdMs < 1 || holdMs > MAX_CUT_HOLD_MS) throw new OsrError('INVALID_ARGUMENT', `a cut holds writes for 1 to ${MAX_CUT_HOLD_MS} ms, not ${String(holdMs)}`);
    if (this.open.has(id)) throw new OsrError('ALREADY_EXISTS', `cut ${id} is already held here`);
    if (this.open.size >= MAX_OPEN_CUTS) throw new OsrError('INVALID_STATE', `${MAX_OPEN_CUTS} cuts are held here already; retry when they end`);
    const members: Member[] = names.map((vm) => {
      const { replication, gate } = this.member(vm);
      if (!gate) throw new OsrError('NOT_SUPPORTED', `the host of ${vm} does not see its guest writes one by one; it cannot be in a consistency group`, { vm });
      if (replication.spec.group !== group) throw new OsrError('INVALID_ARGUMENT', `${vm} is ${replication.spec.group === undefined ? 'in no consistency group' : `in group ${replication.spec.group}`}, not in ${group}`, { vm });
      if (gate.holding) throw new OsrError('INVALID_STATE', `the writes of ${vm} are held by another cut; retry`, { vm });
      return { vm, gate, replication };
    });
    const cut: OpenCut = { id, group, members, expired: false, heldAt: performance.now() };
    const expire = () => {
      if (cut.expired) return;
      cut.expired = true;
      for (const m of members) m.gate.release();
      this.log.warn({ cut: id, group, code: 'CUT_EXPIRED' }, `cut ${id} of group ${group}: its coordinator did not swap within the hold; the guests' writes went on and the cut is refused`);
      // the coordinator learns it from the swap (CUT_EXPIRED) or aborts; the record goes after a while
      setTimeout(() => this.open.delete(id), 10_000).unref();
    };
    for (const m of members) m.gate.hold(holdMs, expire);
    this.open.set(id, cut);
    return { cut: id, held: members.length };
  }

  /** Swap every member's logs as points of cut `id` and release their writes. */
  swap(idIn: unknown): CutResult {
    const cut = this.take(idIn);
    if (cut.expired) throw new OsrError('CUT_EXPIRED', `cut ${cut.id} of group ${cut.group} waited longer than its hold: the guests' writes went on, so it is no instant of the group`, { cut: cut.id });
    const points: CutResult['points'] = [];
    let failure: unknown;
    try {
      // one synchronous step: no guest write of this agent's members runs in between
      for (const m of cut.members) points.push({ vm: m.vm, seq: m.replication.cutSwap(cut.id) });
    } catch (e) {
      failure = e;
    }
    let heldMs = 0;
    for (const m of cut.members) heldMs = Math.max(heldMs, m.gate.release());
    if (failure !== undefined) throw failure;
    return { cut: cut.id, group: cut.group, points, heldMs };
  }

  /** Release the writes of cut `id` without a point (another member could not hold, or its swap failed). */
  abort(idIn: unknown): { cut: string; aborted: boolean } {
    const id = safeName(idIn, 'cut id');
    const cut = this.open.get(id);
    if (!cut) return { cut: id, aborted: false };
    this.open.delete(id);
    for (const m of cut.members) m.gate.release();
    return { cut: id, aborted: true };
  }

  private take(idIn: unknown): OpenCut {
    const id = safeName(idIn, 'cut id');
    const cut = this.open.get(id);
    if (!cut) throw new OsrError('NOT_FOUND', `no cut ${id} is held here (never held, swapped already, or aborted)`, { cut: id });
    this.open.delete(id);
    return cut;
  }
}
