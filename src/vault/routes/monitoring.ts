/** Events, alerts, where alerts go (webhooks, e-mail), and what webhooks may reach. */
import { Type } from '@fastify/type-provider-typebox';
import type { AlertSettings } from '../../domain/resources.js';
import { OsrError } from '../../domain/errors.js';
import { capacityPlanOf } from '../../workflows/capacity.js';
import { DEFAULT_WEBHOOK_SETTINGS, validateAllowList, type WebhookSettings } from '../../workflows/webhook.js';
import { DEFAULT_ALERT_SETTINGS } from '../notifier.js';
import { page, type App, type VaultContext } from '../context.js';
import { IdParam, PageQuery } from '../schemas.js';

const MASK = '********';

export const monitoringRoutes = (ctx: VaultContext) => async (app: App) => {
  const { activity } = ctx.store;

  app.get(
    '/events',
    { config: { access: 'read' }, schema: { summary: 'events, newest first', tags: ['events'], querystring: Type.Object({ target: Type.Optional(Type.String({ maxLength: 300 })), kind: Type.Optional(Type.String({ maxLength: 100 })), ...PageQuery }) } },
    async (request) => {
      const limit = request.query.limit ?? 100;
      return page(await activity.events({ ...request.query, limit }), limit);
    },
  );

  app.get(
    '/capacity',
    {
      config: { access: 'read' },
      schema: {
        summary: 'the capacity planner: from measured churn and disk sizes, the bandwidth each target RPO needs, initial replication time over a link, replica storage for the retention window, and when growing change logs would force a resync',
        tags: ['capacity'],
        querystring: Type.Object({
          rpoSeconds: Type.Optional(Type.String({ pattern: '^[0-9]+(,[0-9]+)*$', maxLength: 200, description: 'target RPOs in seconds, comma-separated (default 60,300,900,3600)' })),
          bandwidthBytesPerSec: Type.Optional(Type.Integer({ minimum: 1, description: 'the link for initial replication, bytes per second (default 12500000: 100 Mbit/s)' })),
        }),
      },
    },
    async (request) => {
      const targets = request.query.rpoSeconds?.split(',').map(Number);
      if (targets?.some((t) => t < 30 || t > 7 * 86400)) throw new OsrError('INVALID_ARGUMENT', 'each target RPO is 30 seconds to 7 days', { field: 'rpoSeconds' });
      return capacityPlanOf(ctx.store, { now: ctx.clock.now(), ...(targets ? { rpoTargetsSeconds: targets } : {}), ...(request.query.bandwidthBytesPerSec ? { bandwidthBytesPerSec: request.query.bandwidthBytesPerSec } : {}) });
    },
  );

  app.get(
    '/rpo-history',
    {
      config: { access: 'read' },
      schema: {
        summary: 'the RPO of all protected items over time: the worst and the mean in each span, oldest first (from the samples kept a week)',
        tags: ['protected items'],
        querystring: Type.Object({
          since: Type.Optional(Type.String({ format: 'date-time', description: 'from this instant (default: 24 hours ago)' })),
          bucketSeconds: Type.Optional(Type.Integer({ minimum: 60, maximum: 86400, description: 'the length of a span (default 300)' })),
        }),
      },
    },
    async (request) => {
      const since = request.query.since ? Date.parse(request.query.since) : ctx.clock.now() - 24 * 3600_000;
      return { items: await ctx.store.items.rpoHistory(since, (request.query.bucketSeconds ?? 300) * 1000), next: null };
    },
  );

  const tags = ['alerts'];
  app.get(
    '/alerts',
    { config: { access: 'read' }, schema: { summary: 'alerts, newest first', tags, querystring: Type.Object({ state: Type.Optional(Type.Union([Type.Literal('Active'), Type.Literal('Resolved')])), target: Type.Optional(Type.String({ maxLength: 300 })), limit: PageQuery.limit }) } },
    async (request) => ({ items: await activity.alerts(request.query), next: null }),
  );
  app.post('/alerts/:id/resolve', { config: { access: 'operate' }, schema: { summary: 'mark an alert resolved', tags, params: IdParam } }, async (request) => activity.resolve(request.params.id));

  const Settings = Type.Object(
    {
      webhooks: Type.Array(Type.String({ format: 'uri', pattern: '^https?://', maxLength: 2000 }), { maxItems: 20 }),
      emails: Type.Array(Type.String({ format: 'email', maxLength: 320 }), { maxItems: 100 }),
      smtp: Type.Union([
        Type.Null(),
        Type.Object(
          {
            host: Type.String({ minLength: 1, maxLength: 255 }),
            port: Type.Integer({ minimum: 1, maximum: 65535 }),
            secure: Type.Boolean(),
            from: Type.String({ minLength: 3, maxLength: 320 }),
            user: Type.Optional(Type.String({ maxLength: 320 })),
            password: Type.Optional(Type.String({ maxLength: 1000 })),
          },
          { additionalProperties: false },
        ),
      ]),
    },
    { additionalProperties: false },
  );
  const shown = (s: AlertSettings) => ({ ...s, smtp: s.smtp ? { ...s.smtp, password: s.smtp.password ? MASK : undefined } : null });
  app.get('/alert-settings', { config: { access: 'read' }, schema: { summary: 'where alerts are delivered (the SMTP password is not shown)', tags } }, async () => shown(await activity.setting('alerts', DEFAULT_ALERT_SETTINGS)));
  app.put('/alert-settings', { config: { access: 'configure' }, schema: { summary: 'set where alerts are delivered', tags, body: Settings } }, async (request) => {
    const s = request.body as AlertSettings;
    // a settings object read back shows the password masked: keep the stored one, but only
    // for the same server: a password is never sent to a host it was not given for
    if (s.smtp && (s.smtp.password === undefined || s.smtp.password === MASK)) {
      const old = await activity.setting<AlertSettings>('alerts', DEFAULT_ALERT_SETTINGS);
      if (old.smtp?.password && old.smtp.host.toLowerCase() === s.smtp.host.toLowerCase()) s.smtp.password = old.smtp.password;
      else delete s.smtp.password;
    }
    await activity.putSetting('alerts', s);
    return shown(s);
  });

  const WebhookSettingsBody = Type.Object(
    { allow: Type.Array(Type.String({ minLength: 1, maxLength: 300 }), { maxItems: 100, description: 'host names, addresses or networks (CIDR) that webhooks may reach although they are not public' }) },
    { additionalProperties: false },
  );
  app.get('/webhook-settings', { config: { access: 'read' }, schema: { summary: 'what webhooks (alerts, plan actions) may reach beyond public addresses', tags: ['webhooks'] } }, async () =>
    activity.setting<WebhookSettings>('webhooks', DEFAULT_WEBHOOK_SETTINGS),
  );
  app.put(
    '/webhook-settings',
    { config: { access: 'admin' }, schema: { summary: 'allow webhooks to reach loopback, link-local or private hosts and networks (Owner only)', tags: ['webhooks'], body: WebhookSettingsBody } },
    async (request) => {
      const s: WebhookSettings = { allow: validateAllowList(request.body.allow) };
      await activity.putSetting('webhooks', s);
      return s;
    },
  );
};
