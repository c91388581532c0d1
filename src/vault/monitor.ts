/**
 * Watches providers' heartbeats: a fabric not heard from for heartbeatLostAfterMs is
 * marked lost and raises one alert (one, even with several vault processes: the mark is
 * a conditional update, and the alert is keyed). The next heartbeat resolves it.
 */
import { Severity } from '../domain/resources.js';
import { toOsrError } from '../domain/errors.js';
import { AlertKind } from '../workflows/alerting.js';
import type { VaultContext } from './context.js';

export const heartbeatAlertKey = (fabricId: string) => `heartbeat:${fabricId}`;

export class HeartbeatMonitor {
  private stopper: AbortController | undefined;

  constructor(
    private readonly ctx: VaultContext,
    private readonly log: { warn(o: object, msg?: string): void },
  ) {}

  start(): void {
    if (this.stopper) return;
    const stopper = (this.stopper = new AbortController());
    void (async () => {
      while (!stopper.signal.aborted) {
        await this.ctx.clock.sleep(Math.min(this.ctx.settings.heartbeatIntervalMs, this.ctx.settings.heartbeatLostAfterMs / 2), stopper.signal);
        if (stopper.signal.aborted) break;
        try {
          await this.check();
        } catch (e) {
          this.log.warn({ err: toOsrError(e).toJSON() }, 'checking heartbeats failed');
        }
      }
    })();
  }

  stop(): void {
    this.stopper?.abort();
    this.stopper = undefined;
  }

  async check(): Promise<void> {
    for (const f of await this.ctx.store.fabrics.markLost(this.ctx.settings.heartbeatLostAfterMs)) {
      const since = f.last_heartbeat_at === null ? 'ever' : new Date(f.last_heartbeat_at).toISOString();
      await this.ctx.alerting.raise({
        key: heartbeatAlertKey(f.id),
        kind: AlertKind.HeartbeatLost,
        severity: Severity.Critical,
        target: f.id,
        message: `the provider of fabric ${f.name} has not been heard from since ${since}`,
      });
    }
  }
}
