/**
 * Spreads the copy cycles of an agent's replications over the copy frequency.
 *
 * Every replication swaps and ships once per copy frequency. Replications whose cycles fall
 * at the same instant (VMs enabled together, an agent restart) would ship and apply
 * together every cycle: the last of them waits for all the others, and its RPO grows with
 * their number. So a replication that needs a phase (its first cycle, after a cycle run on
 * request) takes the middle of the widest gap between the next cycles of the others. A
 * replication then keeps its phase: each next cycle is exactly one copy frequency later.
 */
export class CyclePhases {
  private readonly next = new Map<string, number>();

  /**
   * The instant of `id`'s next cycle, in (now, now + frequency]: the middle of the widest
   * gap between the other replications' next cycles, folded into that window.
   */
  place(id: string, nowMs: number, frequencyMs: number): number {
    const f = Math.max(1, frequencyMs);
    const marks: number[] = [];
    for (const [other, at] of this.next) {
      if (other !== id) marks.push((((at - nowMs) % f) + f) % f);
    }
    let at: number;
    if (marks.length === 0) {
      at = f;
    } else {
      marks.sort((a, b) => a - b);
      // the gaps between neighbours, and the one that wraps around the window's end
      let bestStart = marks[marks.length - 1];
      let bestLength = marks[0] + f - bestStart;
      for (let i = 1; i < marks.length; i++) {
        const length = marks[i] - marks[i - 1];
        if (length > bestLength) {
          bestLength = length;
          bestStart = marks[i - 1];
        }
      }
      at = (bestStart + bestLength / 2) % f;
      if (at <= 0) at += f;
    }
    const instant = nowMs + Math.round(at);
    this.next.set(id, instant);
    return instant;
  }

  /** Record `id`'s next cycle (one frequency after the previous one). */
  set(id: string, atMs: number): void {
    this.next.set(id, atMs);
  }

  delete(id: string): void {
    this.next.delete(id);
  }
}
