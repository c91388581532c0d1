/**
 * Delivers alerts by webhook (a JSON POST) and by e-mail (SMTP, through nodemailer), to
 * the destinations in the alert settings. Each attempt is recorded on the alert; a failed
 * one is retried a few times with a growing pause, then left recorded as failed. Webhooks
 * go through postWebhook (workflows/webhook.ts): public addresses or allow-listed ones only,
 * no redirects.
 */
import nodemailer from 'nodemailer';
import type { Clock } from '../domain/clock.js';
import type { Alert, AlertSettings } from '../domain/resources.js';
import type { ActivityStore } from '../store/activity.js';
import type { Notifier } from '../workflows/alerting.js';
import { DEFAULT_WEBHOOK_SETTINGS, postWebhook, type WebhookSettings } from '../workflows/webhook.js';
import { OsrError } from '../domain/errors.js';

export const DEFAULT_ALERT_SETTINGS: AlertSettings = { webhooks: [], emails: [], smtp: null };

export interface NotifierOptions {
  vaultName: string;
  attempts?: number;
  retryDelayMs?: number;
  timeoutMs?: number;
  log?: { warn(o: object, msg?: string): void };
}

export class AlertNotifier implements Notifier {
  private readonly pending = new Set<Promise<void>>();

  constructor(
    private readonly activity: ActivityStore,
    private readonly clock: Clock,
    private readonly o: NotifierOptions,
  ) {}

  deliver(alert: Alert): Promise<void> {
    const p = this.deliverAll(alert).catch((e) => this.o.log?.warn({ alert: alert.id, err: String(e) }, 'alert delivery failed'));
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
    return p;
  }

  /** Wait for deliveries under way (on shutdown, and in tests). */
  async settle(): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
  }

  private async deliverAll(alert: Alert): Promise<void> {
    const s = await this.activity.setting<AlertSettings>('alerts', DEFAULT_ALERT_SETTINGS);
    const jobs: Promise<void>[] = s.webhooks.map((url) => this.attempt(alert, 'webhook', url, () => this.webhook(url, alert)));
    if (s.emails.length > 0) {
      const to = s.emails.join(', ');
      jobs.push(this.attempt(alert, 'email', to, () => this.email(s, alert)));
    }
    await Promise.all(jobs);
  }

  private async attempt(alert: Alert, channel: string, to: string, send: () => Promise<void>): Promise<void> {
    const attempts = this.o.attempts ?? 3;
    for (let i = 1; ; i++) {
      try {
        await send();
        await this.activity.recordDelivery(alert.id, { channel, to, ok: true, at: new Date(this.clock.now()).toISOString() });
        return;
      } catch (e) {
        // a refused webhook (not public, a redirect) is refused again on the next try
        if (i >= attempts || (e instanceof OsrError && e.code === 'WEBHOOK_REFUSED')) {
          await this.activity.recordDelivery(alert.id, { channel, to, ok: false, at: new Date(this.clock.now()).toISOString(), error: (e as Error).message });
          return;
        }
        await this.clock.sleep((this.o.retryDelayMs ?? 2000) * i);
      }
    }
  }

  private async webhook(url: string, alert: Alert): Promise<void> {
    const { allow } = await this.activity.setting<WebhookSettings>('webhooks', DEFAULT_WEBHOOK_SETTINGS);
    const res = await postWebhook({ url, body: { vault: this.o.vaultName, alert }, allow, signal: AbortSignal.timeout(this.o.timeoutMs ?? 10_000) });
    if (res.status < 200 || res.status >= 300) throw new Error(`the webhook answered ${res.status}`);
  }

  private async email(s: AlertSettings, alert: Alert): Promise<void> {
    if (!s.smtp) throw new Error('e-mail recipients are set but no SMTP server is');
    const transport = nodemailer.createTransport({
      host: s.smtp.host,
      port: s.smtp.port,
      secure: s.smtp.secure,
      ...(s.smtp.user ? { auth: { user: s.smtp.user, pass: s.smtp.password ?? '' } } : {}),
      connectionTimeout: this.o.timeoutMs ?? 10_000,
      greetingTimeout: this.o.timeoutMs ?? 10_000,
    });
    try {
      await transport.sendMail({
        from: s.smtp.from,
        to: s.emails,
        subject: `[osr ${this.o.vaultName}] ${alert.severity}: ${alert.message}`,
        text: [`${alert.message}`, '', `Alert: ${alert.kind} (${alert.id})`, `Severity: ${alert.severity}`, `Object: ${alert.target ?? '-'}`, `Raised: ${alert.at}`, `Vault: ${this.o.vaultName}`].join('\n'),
      });
    } finally {
      transport.close();
    }
  }
}
