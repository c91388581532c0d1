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

  /** Hold writes from now until release(), or until `maxMs` passed (then `onExpire`). */
  hold(maxMs: number, onExpire: () => void): void {
    if (this.held) throw new OsrError('INVALID_STATE', 'the guest writes are held already');
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
    return performance.now() - h.sinceMs;
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
