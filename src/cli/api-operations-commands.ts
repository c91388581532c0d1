/**
 * `osr job`, `osr event`, `osr alert`: what the vault does and reports; `osr token`,
 * `osr registration-key`, `osr audit`: who may call it, and what they did.
 */
import fs from 'node:fs';
import { Option, type Command } from 'commander';
import { parseDuration } from '../agent/io/time-window.js';
import { OsrError } from '../domain/errors.js';
import type { Alert, AlertSettings, VaultEvent } from '../domain/resources.js';
import { ROLES } from '../domain/roles.js';
import type { ApiToken, AuditEntry, RegistrationKey } from '../store/activity.js';
import { asJson, fields, int, print, when, withApi, type ListAnswer } from './api-common.js';
import { collect, table } from './format.js';
import { FINISHED_STATES, watchJobs, type JobView } from './job-watch.js';

const JOB_STATES = ['Queued', 'Running', 'WaitingForInput', 'Succeeded', 'Failed', 'Cancelled'];

/** A time for --since/--until: ISO 8601, or a duration back from now (2h, 30m). */
function timeArg(text: string | undefined, name: string): string | undefined {
  if (text === undefined) return undefined;
  if (/^\d+(\.\d+)?\s*(ms|s|m|h)?$/.test(text.trim())) return new Date(Date.now() - parseDuration(text)).toISOString();
  if (/^\d+d$/.test(text.trim())) return new Date(Date.now() - Number(text.trim().slice(0, -1)) * 86_400_000).toISOString();
  const t = Date.parse(text);
  if (Number.isNaN(t)) throw new OsrError('INVALID_ARGUMENT', `${name} ${text} is neither an ISO 8601 time nor a duration back from now (2h, 3d)`, { field: name });
  return new Date(t).toISOString();
}

interface JobFilterFlags {
  state?: string;
  kind?: string;
  target?: string;
  since?: string;
  until?: string;
  limit?: string;
}

function addJobFilters(cmd: Command): Command {
  return cmd
    .addOption(new Option('--state <state>', 'in this state only').choices(JOB_STATES))
    .option('--kind <kind>', 'of this kind only (e.g. enable-protection, disable-protection)')
    .option('--target <id>', 'on this object only (a protected item, a plan)')
    .option('--since <time>', 'created at or after this time: ISO 8601, or a duration back from now (2h, 3d)')
    .option('--until <time>', 'created before this time (same forms)');
}

const jobQuery = (o: JobFilterFlags, limit?: number) => ({
  state: o.state,
  kind: o.kind,
  target: o.target,
  since: timeArg(o.since, '--since'),
  until: timeArg(o.until, '--until'),
  limit,
});

const pct = (f: number | null) => (f === null || f === undefined ? null : `${(f * 100).toFixed(0)}%`);

function jobText(j: JobView): string {
  return [
    fields([
      ['id', j.id],
      ['kind', j.kind],
      ['target', j.target],
      ['state', j.state],
      ['progress', pct(j.progress)],
      ['current step', j.currentStep],
      ['attempts', j.attempts],
      ['ran by', j.ranBy.join(', ') || null],
      ['created', `${when(j.createdAt)}${j.createdBy ? ` by ${j.createdBy}` : ''}`],
      ['started', when(j.startedAt)],
      ['ended', when(j.endedAt)],
      ['allowed actions', j.allowedActions.join(', ') || null],
      ...(j.error ? ([['error', `${j.error.code}: ${j.error.message}${j.error.task ? ` (task ${j.error.task})` : ''}`]] as [string, unknown][]) : []),
      ...(j.waitingFor ? ([['waiting for', j.waitingFor]] as [string, unknown][]) : []),
      ...(j.output ? ([['output', j.output]] as [string, unknown][]) : []),
    ]),
    '',
    'Tasks',
    table((j.tasks ?? []).map((t, i) => ({ '#': i + 1, task: t.name, state: t.state, progress: pct(t.progress), started: when(t.startedAt), ended: when(t.endedAt), error: t.error ? `${t.error.code}: ${t.error.message}` : null }))),
  ].join('\n');
}

function keyState(k: RegistrationKey, now = Date.now()): string {
  if (k.revokedAt) return 'revoked';
  if (k.usedAt) return `used by ${k.usedBy ?? '?'}`;
  if (Date.parse(k.expiresAt) <= now) return 'expired';
  return 'valid';
}

export function addOperationsCommands(program: Command): void {
  const out = (data: unknown, human: () => string) => print(program, data, human);
  const watch = (api: Parameters<Parameters<typeof withApi>[1]>[0], id: string, interval: string) => watchJobs(api, [id], { json: asJson(program), intervalMs: parseDuration(interval) });

  // ---- jobs --------------------------------------------------------------------------------
  const job = program.command('job').description('jobs: long operations (enable and disable protection, …) with their tasks; watch, cancel, restart, resume, export');
  addJobFilters(job.command('list').description('jobs, newest first (at most 1,000; reach older ones with --since and --until)'))
    .option('--limit <n>', 'at most this many jobs', '100')
    .action((o: JobFilterFlags) =>
      withApi(program, async (api) => {
        const r = await api.get<ListAnswer<JobView>>('/jobs', jobQuery(o, int(o.limit, '--limit', 1, 1000)));
        out(r, () =>
          table(r.items.map((j) => ({ id: j.id, kind: j.kind, target: j.target, state: j.state, progress: pct(j.progress), step: FINISHED_STATES.includes(j.state) ? null : j.currentStep, created: when(j.createdAt), ended: when(j.endedAt), error: j.error?.code ?? null }))),
        );
      }),
    );
  job
    .command('show <id>')
    .description('one job with its tasks, error, and the actions it allows now')
    .action((id: string) =>
      withApi(program, async (api) => {
        const j = await api.get<JobView>(`/jobs/${encodeURIComponent(id)}`);
        out(j, () => jobText(j));
      }),
    );
  job
    .command('watch <id>')
    .description('follow a job until it ends: progress, current step, tasks, bytes and ETA; exits 0 when it Succeeded, non-zero with its error code when it Failed or was Cancelled')
    .option('--interval <duration>', 'how often to poll', '1s')
    .action((id: string, o: { interval: string }) => withApi(program, async (api) => void (await watch(api, id, o.interval))));
  job
    .command('cancel <id>')
    .description('cancel a queued, running or waiting job (a running one stops at its next lease renewal)')
    .action((id: string) =>
      withApi(program, async (api) => {
        const j = await api.post<JobView>(`/jobs/${encodeURIComponent(id)}/cancel`);
        out(j, () => `job ${j.id}: ${j.state === 'Cancelled' ? 'cancelled' : `cancel requested (${j.state})`}`);
      }),
    );
  job
    .command('restart <id>')
    .description('run a failed or cancelled job again from the task that did not finish')
    .option('--wait', 'follow the job until it ends', false)
    .option('--interval <duration>', 'how often --wait polls', '1s')
    .action((id: string, o: { wait: boolean; interval: string }) =>
      withApi(program, async (api) => {
        const j = await api.post<JobView>(`/jobs/${encodeURIComponent(id)}/restart`);
        out(j, () => `job ${j.id} restarted (${j.state})`);
        if (o.wait) await watch(api, j.id, o.interval);
      }),
    );
  job
    .command('resume <id>')
    .description('resume a job waiting for input, once its manual step is done')
    .requiredOption('--comment <text>', 'what was done (recorded with who resumed it)')
    .option('--wait', 'follow the job until it ends', false)
    .option('--interval <duration>', 'how often --wait polls', '1s')
    .action((id: string, o: { comment: string; wait: boolean; interval: string }) =>
      withApi(program, async (api) => {
        const j = await api.post<JobView>(`/jobs/${encodeURIComponent(id)}/resume`, { comment: o.comment });
        out(j, () => `job ${j.id} resumed (${j.state})`);
        if (o.wait) await watch(api, j.id, o.interval);
      }),
    );
  addJobFilters(job.command('export').description('jobs as CSV or JSON, with the same filters as the list (at most 1,000)'))
    .addOption(new Option('--format <format>', 'file format').choices(['csv', 'json']).default('csv'))
    .option('--limit <n>', 'at most this many jobs', '1000')
    .option('-o, --output <file>', 'write to this file instead of stdout')
    .action((o: JobFilterFlags & { format: 'csv' | 'json'; output?: string }) =>
      withApi(program, async (api) => {
        const text = await api.text('/jobs/export', { ...jobQuery(o, int(o.limit, '--limit', 1, 1000)), format: o.format });
        const body = text.endsWith('\n') ? text : `${text}\n`;
        if (o.output) fs.writeFileSync(o.output, body);
        else process.stdout.write(body);
      }),
    );

  // ---- events and alerts -------------------------------------------------------------------
  const event = program.command('event').description('events: the history of every object (inventory changes, protection, health, alerts)');
  event
    .command('list')
    .description('events, newest first')
    .option('--target <id>', 'of this object only (a protected item, a fabric, an inventory object)')
    .option('--kind <kind>', 'of this kind only (e.g. item.health, protection.enabled)')
    .option('--limit <n>', 'at most this many events', '100')
    .action((o: { target?: string; kind?: string; limit: string }) =>
      withApi(program, async (api) => {
        const r = await api.list<VaultEvent>('/events', { target: o.target, kind: o.kind }, int(o.limit, '--limit', 1));
        out(r, () => table(r.items.map((e) => ({ time: when(e.at), severity: e.severity, kind: e.kind, target: e.target, message: e.message }))));
      }),
    );

  const alert = program.command('alert').description('alerts (an item Critical, a heartbeat lost, a failover failed) and where they are delivered');
  alert
    .command('list')
    .description('alerts, newest first')
    .addOption(new Option('--state <state>', 'Active or Resolved only').choices(['Active', 'Resolved']))
    .option('--target <id>', 'about this object only')
    .option('--limit <n>', 'at most this many alerts', '100')
    .action((o: { state?: string; target?: string; limit: string }) =>
      withApi(program, async (api) => {
        const r = await api.get<ListAnswer<Alert>>('/alerts', { state: o.state, target: o.target, limit: int(o.limit, '--limit', 1, 1000) });
        out(r, () =>
          table(r.items.map((a) => ({ id: a.id, time: when(a.at), severity: a.severity, kind: a.kind, state: a.state, target: a.target, message: a.message, delivered: `${a.deliveries.filter((d) => d.ok).length}/${a.deliveries.length}` }))),
        );
      }),
    );
  alert
    .command('resolve <id>')
    .description('mark an alert resolved')
    .action((id: string) =>
      withApi(program, async (api) => {
        const a = await api.post<Alert>(`/alerts/${encodeURIComponent(id)}/resolve`);
        out(a, () => `alert ${id} resolved`);
      }),
    );
  const settings = alert.command('settings').description('where alerts are delivered: webhooks (JSON POST) and e-mail over SMTP');
  const settingsText = (s: AlertSettings) =>
    fields([
      ['webhooks', s.webhooks.join(', ') || null],
      ['e-mail to', s.emails.join(', ') || null],
      ['SMTP', s.smtp ? `${s.smtp.host}:${s.smtp.port}${s.smtp.secure ? ' (TLS)' : ''} from ${s.smtp.from}${s.smtp.user ? ` as ${s.smtp.user}` : ''}${s.smtp.password ? ' with a password' : ''}` : null],
    ]);
  settings
    .command('show')
    .description('the alert delivery settings (the SMTP password is not shown)')
    .action(() =>
      withApi(program, async (api) => {
        const s = await api.get<AlertSettings>('/alert-settings');
        out(s, () => settingsText(s));
      }),
    );
  settings
    .command('set')
    .description('change the alert delivery settings; what is not given stays as it is')
    .option('--webhook <url>', 'a webhook URL (repeatable; replaces the webhooks)', collect, [])
    .option('--no-webhooks', 'remove every webhook')
    .option('--email <address>', 'an e-mail recipient (repeatable; replaces the recipients)', collect, [])
    .option('--no-emails', 'remove every e-mail recipient')
    .option('--smtp-host <host>', 'SMTP server (another host than before drops the stored password unless --smtp-password-file is given)')
    .option('--smtp-port <port>', 'SMTP port (default 587, or 465 with --smtp-secure)')
    .option('--smtp-secure', 'TLS from the start (port 465)')
    .option('--no-smtp-secure', 'plain connection upgraded with STARTTLS when offered')
    .option('--smtp-from <address>', 'sender address')
    .option('--smtp-user <user>', 'SMTP user name')
    .option('--smtp-password-file <file>', 'read the SMTP password from this file')
    .option('--no-smtp', 'remove the SMTP server (no e-mail is sent)')
    .action(
      (o: { webhook: string[]; webhooks: boolean; email: string[]; emails: boolean; smtpHost?: string; smtpPort?: string; smtpSecure?: boolean; smtpFrom?: string; smtpUser?: string; smtpPasswordFile?: string; smtp: boolean }) =>
        withApi(program, async (api) => {
          const s = await api.get<AlertSettings>('/alert-settings');
          const next: AlertSettings = { webhooks: s.webhooks, emails: s.emails, smtp: s.smtp };
          if (o.webhooks === false) next.webhooks = [];
          if (o.webhook.length) next.webhooks = o.webhook;
          if (o.emails === false) next.emails = [];
          if (o.email.length) next.emails = o.email;
          const smtpGiven = o.smtpHost !== undefined || o.smtpPort !== undefined || o.smtpSecure !== undefined || o.smtpFrom !== undefined || o.smtpUser !== undefined || o.smtpPasswordFile !== undefined;
          if (o.smtp === false) {
            if (smtpGiven) throw new OsrError('INVALID_ARGUMENT', '--no-smtp removes the SMTP server: give no other --smtp-* option with it');
            next.smtp = null;
          } else if (smtpGiven) {
            const base = s.smtp ?? { host: '', port: 0, secure: false, from: '' };
            const secure = o.smtpSecure ?? base.secure;
            const smtp = {
              ...base,
              host: o.smtpHost ?? base.host,
              port: int(o.smtpPort, '--smtp-port', 1, 65535) ?? (base.port || (secure ? 465 : 587)),
              secure,
              from: o.smtpFrom ?? base.from,
              ...(o.smtpUser !== undefined ? { user: o.smtpUser } : {}),
              ...(o.smtpPasswordFile !== undefined ? { password: fs.readFileSync(o.smtpPasswordFile, 'utf8').replace(/\r?\n$/, '') } : {}),
            };
            if (!smtp.host) throw new OsrError('INVALID_ARGUMENT', 'no SMTP server is set: give --smtp-host', { field: 'smtp.host' });
            if (!smtp.from) throw new OsrError('INVALID_ARGUMENT', 'no sender is set: give --smtp-from', { field: 'smtp.from' });
            next.smtp = smtp;
          }
          // an unchanged SMTP password comes back masked: the vault keeps the stored one
          const r = await api.put<AlertSettings>('/alert-settings', next);
          out(r, () => `alert settings saved\n${settingsText(r)}`);
        }),
    );

  // ---- what webhooks may reach ---------------------------------------------------------------
  const webhook = program.command('webhook').description('webhooks (alerts, plan actions) reach public addresses only, unless an Owner allow-lists a host or network here');
  const allowText = (s: { allow: string[] }) => (s.allow.length ? s.allow.join('\n') : 'webhooks reach public addresses only (nothing is allow-listed)');
  webhook
    .command('allowed')
    .description('the host names, addresses and networks webhooks may reach although they are not public')
    .action(() =>
      withApi(program, async (api) => {
        const s = await api.get<{ allow: string[] }>('/webhook-settings');
        out(s, () => allowText(s));
      }),
    );
  for (const [name, description, change] of [
    ['allow', 'let webhooks reach these host names, addresses or networks (CIDR) although they are loopback, link-local or private (Owner only)', (old: string[], e: string[]) => [...old, ...e]],
    ['disallow', 'take host names, addresses or networks off the allow-list (Owner only)', (old: string[], e: string[]) => old.filter((x) => !e.map((y) => y.toLowerCase()).includes(x))],
  ] as const) {
    webhook
      .command(`${name} <entry...>`)
      .description(description)
      .action((entries: string[]) =>
        withApi(program, async (api) => {
          const s = await api.get<{ allow: string[] }>('/webhook-settings');
          const r = await api.put<{ allow: string[] }>('/webhook-settings', { allow: change(s.allow, entries) });
          out(r, () => allowText(r));
        }),
      );
  }

  // ---- access ------------------------------------------------------------------------------
  const token = program.command('token').description('API tokens, each with a role: Reader, Operator, Contributor or Owner (Owner only)');
  token
    .command('list')
    .description('API tokens (never their secrets)')
    .action(() =>
      withApi(program, async (api) => {
        const r = await api.get<ListAnswer<ApiToken>>('/tokens');
        out(r, () => table(r.items.map((t) => ({ id: t.id, name: t.name, role: t.role, created: when(t.createdAt), 'created by': t.createdBy, 'last used': when(t.lastUsedAt), revoked: when(t.revokedAt) }))));
      }),
    );
  token
    .command('create')
    .description('create an API token; its secret is printed this once')
    .requiredOption('--name <name>', 'what the token is for (e.g. a person or a pipeline)')
    .addOption(new Option('--role <role>', 'what it may do').choices([...ROLES]).makeOptionMandatory())
    .action((o: { name: string; role: string }) =>
      withApi(program, async (api) => {
        const t = await api.post<ApiToken & { secret: string }>('/tokens', { name: o.name, role: o.role });
        out(t, () => `token ${t.id} (${t.name}, ${t.role}) created; its secret is shown this once:\n${t.secret}`);
      }),
    );
  token
    .command('revoke <id>')
    .description('revoke an API token at once')
    .action((id: string) =>
      withApi(program, async (api) => {
        const r = await api.delete<unknown>(`/tokens/${encodeURIComponent(id)}`);
        out(r ?? { revoked: id }, () => `token ${id} revoked`);
      }),
    );

  const key = program.command('registration-key').description('registration keys: a provider registers once with one, within 5 days (Owner only)');
  key
    .command('list')
    .description('registration keys and whether each is valid, used, expired or revoked')
    .action(() =>
      withApi(program, async (api) => {
        const r = await api.get<ListAnswer<RegistrationKey>>('/registration-keys');
        out(r, () => table(r.items.map((k) => ({ id: k.id, created: when(k.createdAt), expires: when(k.expiresAt), state: keyState(k) }))));
      }),
    );
  key
    .command('create')
    .description("create a registration key; its text (the vault's name, the key and its CA's fingerprint) is printed this once")
    .option('-o, --output <file>', 'write the key text to this file (mode 0600) instead of printing it')
    .action((o: { output?: string }) =>
      withApi(program, async (api) => {
        const k = await api.post<RegistrationKey & { key: string }>('/registration-keys');
        if (o.output) {
          fs.writeFileSync(o.output, `${k.key}\n`, { mode: 0o600 });
          fs.chmodSync(o.output, 0o600);
          out({ ...k, key: undefined, file: o.output }, () => `registration key ${k.id} written to ${o.output}; valid until ${when(k.expiresAt)}`);
        } else out(k, () => `registration key ${k.id}, valid until ${when(k.expiresAt)}, for one provider:\n${k.key}`);
      }),
    );
  key
    .command('revoke <id>')
    .description('revoke a registration key')
    .action((id: string) =>
      withApi(program, async (api) => {
        const r = await api.post<unknown>(`/registration-keys/${encodeURIComponent(id)}/revoke`);
        out(r ?? { revoked: id }, () => `registration key ${id} revoked`);
      }),
    );

  program
    .command('audit')
    .description('the audit trail of mutating calls (Owner only)')
    .command('list')
    .description('audited calls, newest first: who, role, method, path, status, error code')
    .option('--actor <actor>', 'by this actor only, as the trail names it (e.g. "owner (000000000000)")')
    .option('--since <time>', 'made at or after this time (ISO 8601): on a vault that came back after a restore elsewhere, the changes the restored vault lost')
    .option('--limit <n>', 'at most this many entries', '100')
    .action((o: { actor?: string; since?: string; limit: string }) =>
      withApi(program, async (api) => {
        if (o.since !== undefined && Number.isNaN(Date.parse(o.since))) throw new OsrError('INVALID_ARGUMENT', `--since ${o.since} is not a time (ISO 8601, e.g. 2026-12-07T10:00:00Z)`);
        const r = await api.list<AuditEntry>('/audit', { actor: o.actor, since: o.since === undefined ? undefined : new Date(o.since).toISOString() }, int(o.limit, '--limit', 1));
        out(r, () => table(r.items.map((a) => ({ time: when(a.at), actor: a.actor, role: a.role, method: a.method, path: a.path, status: a.status, code: a.code }))));
      }),
    );
}
