/**
 * Slowing down whoever guesses credentials. Each failed authentication from an address
 * that may be a guess (an API token the vault never issued, a registration key with a
 * wrong secret) is remembered for a window. A revoked token, a spent key or a refused
 * certificate is counted in /metrics only: it was a real credential, and a client not yet
 * told must not lock out its neighbours. The first few cost nothing; each further one is answered
 * after a pause that doubles, up to a cap; once an address has failed `limit` times within
 * the window, its requests are refused with AUTH_THROTTLED (429, Retry-After) until enough
 * of those failures are older than the window. Kept in memory per vault process.
 */
import type { Clock } from '../domain/clock.js';

export interface AuthThrottleOptions {
  /** how long a failure counts (default 15 minutes) */
  windowMs: number;
  /** failures within the window answered without a pause (default 5) */
  free: number;
  /** the first pause; each further failure doubles it (default 250 ms) */
  stepMs: number;
  /** the longest pause (default 4 s) */
  maxDelayMs: number;
  /** failures within the window after which the address is refused (default 30) */
  limit: number;
}

export const DEFAULT_AUTH_THROTTLE: AuthThrottleOptions = { windowMs: 15 * 60_000, free: 5, stepMs: 250, maxDelayMs: 4000, limit: 30 };

/** Addresses remembered at most (the oldest are forgotten first). */
const MAX_ADDRESSES = 10_000;

export class AuthThrottle {
  private readonly failures = new Map<string, number[]>();

  constructor(
    private readonly clock: Clock,
    readonly o: AuthThrottleOptions = DEFAULT_AUTH_THROTTLE,
  ) {}

  private recent(address: string): number[] {
    const t = this.clock.now();
    const list = (this.failures.get(address) ?? []).filter((at) => at > t - this.o.windowMs);
    if (list.length === 0) this.failures.delete(address);
    else this.failures.set(address, list);
    return list;
  }

  /** Seconds until the address may try again, or undefined when it may now. */
  retryAfter(address: string): number | undefined {
    const list = this.recent(address);
    if (list.length < this.o.limit) return undefined;
    // it may try again once the failure that took it to the limit is out of the window
    const at = list[list.length - this.o.limit]!;
    return Math.max(1, Math.ceil((at + this.o.windowMs - this.clock.now()) / 1000));
  }

  /** Record a failure; answers the pause before the refusal is sent. */
  fail(address: string): number {
    const list = this.recent(address);
    list.push(this.clock.now());
    this.failures.delete(address);
    this.failures.set(address, list);
    if (this.failures.size > MAX_ADDRESSES) this.failures.delete(this.failures.keys().next().value!);
    const over = list.length - this.o.free;
    return over <= 0 ? 0 : Math.min(this.o.maxDelayMs, this.o.stepMs * 2 ** (over - 1));
  }
}
