/**
 * Events and alerts as the workflows raise them. An alert is raised once per condition
 * (its key), however many vault processes or checks see it, and handed to the notifier
 * for delivery (webhook, e-mail); clearing the condition resolves it.
 */
import type { Alert, Severity, VaultEvent } from '../domain/resources.js';
import type { ActivityStore } from '../store/activity.js';

export const AlertKind = {
  ItemCritical: 'ItemCritical',
  HeartbeatLost: 'ProviderHeartbeatLost',
  FailoverFailed: 'FailoverFailed',
  FailedOverOutsideVault: 'FailedOverOutsideVault',
  UnknownItemReported: 'UnknownItemReported',
} as const;

export interface Notifier {
  /** deliver an alert on every configured channel; never throws (failures are recorded on the alert) */
  deliver(alert: Alert): Promise<void>;
}

export class Alerting {
  constructor(
    private readonly activity: ActivityStore,
    private readonly notifier: Notifier,
  ) {}

  event(e: { id?: string; target?: string | null; kind: string; severity: Severity; message: string; details?: Record<string, unknown> }): Promise<VaultEvent> {
    return this.activity.event(e);
  }

  /** Raise the alert of a condition (once while it lasts); returns it when it is new. */
  async raise(a: { key: string; kind: string; severity: Severity; target?: string | null; message: string }): Promise<Alert | undefined> {
    const alert = await this.activity.raise(a);
    if (!alert) return undefined;
    await this.activity.event({ target: a.target ?? null, kind: `alert.${a.kind}`, severity: a.severity, message: a.message, details: { alert: alert.id } });
    // delivery runs beside the caller: a slow mail server must not hold a job or a request
    void this.notifier.deliver(alert);
    return alert;
  }

  resolve(key: string): Promise<void> {
    return this.activity.resolveKey(key);
  }
}
