/**
 * A gate on a VM's guest writes: while it is held, writes wait (in the order they came)
 * and are let through when it is released. A consistency group's cut (group-cuts.ts) holds the
 * gates of its VMs on every host, swaps their logs once all are held, then releases them:
 * no write acknowledged to one guest after the cut can be missing from another's point
 * when a write it depends on is there. The gate never holds longer than its deadline.
 */
import { OsrError } from '../../domain/errors.js';

export class WriteGate {
  private held: { promise: Promise<void>; release: () => void; sinceMs: number; timer: NodeJS.Timeout } | undefined;
  /** writes that waited at the gate, over its life */
  waitedWrites = 0;
  /** the last hold: its release and how long it held; the next hold waits as long again */
  private last: { releasedMs: number; heldMs: number } | undefined;

  /**
   * Hold writes from now until release(), or until `maxMs` passed (then `onExpire`). A
   * hold right after another waits as long as that one held (refused until then): whoever
   * asks, a guest's writes flow at least half of the time.
   */
  hold(maxMs: number, onExpire: () => void): void {
    if (this.held) throw new OsrError('INVALID_STATE', 'the guest writes are held already');
    const since = this.last ? performance.now() - this.last.releasedMs : Infinity;
    if (this.last && since < this.last.heldMs) {
      throw new OsrError('INVALID_STATE', `the guest writes were held ${Math.round(this.last.heldMs)} ms until ${Math.round(since)} ms ago; they flow as long again before the next hold`);
    }
    let release!: () => void;
    const promise = new Promise<void>((r) => (release = r));
    const timer = setTimeout(() => {
      this.release();
      onExpire();
    }, maxMs);
    timer.unref();
    this.held = { promise, release, sinceMs: performance.now(), timer };
  }

  /** Let the waiting writes through; answers how long the gate was held (ms), 0 when it was not. */
  release(): number {
    const h = this.held;
    if (!h) return 0;
    this.held = undefined;
    clearTimeout(h.timer);
    h.release();
    const now = performance.now();
    this.last = { releasedMs: now, heldMs: now - h.sinceMs };
    return this.last.heldMs;
  }

  get holding(): boolean {
    return this.held !== undefined;
  }

  /** Undefined while open: a write goes on at once. Held: a promise the write awaits. */
  get wait(): Promise<void> | undefined {
    if (!this.held) return undefined;
    this.waitedWrites++;
    return this.held.promise;
  }
}
