/**
 * The vault: the control plane's HTTPS server. It opens the store, loads or creates its
 * identity (name, CA), creates the first Owner token on a fresh database, starts the job
 * engine and the heartbeat monitor, and serves the REST API under /api/v1 with its
 * OpenAPI document, plus /metrics. It holds metadata only: no VM data passes through it.
 */
import fs from 'node:fs';
import type https from 'node:https';
import type net from 'node:net';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import Fastify, { LogController } from 'fastify';
import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import pino from 'pino';
import { systemClock, type Clock } from '../domain/clock.js';
import { Severity } from '../domain/resources.js';
import { OsrError, toOsrError } from '../domain/errors.js';
import { JobEngine } from '../jobs/engine.js';
import { openStore, type VaultStore } from '../store/index.js';
import { REGISTRATION_KEY_VALID_MS } from '../store/activity.js';
import { DEFAULT_RETENTION_MS, pruneBefore, type Pruned } from '../store/retention.js';
import { signGrant, writeFileAtomic } from '../pki/index.js';
import { Alerting } from '../workflows/alerting.js';
import type { GrantSigner } from '../workflows/grants.js';
import { registerProtectionJobs } from '../workflows/protection.js';
import { registerTestFailoverJobs } from '../workflows/test-failover.js';
import { registerFailoverJobs } from '../workflows/failover.js';
import { registerResyncJobs } from '../workflows/resync.js';
import { registerPlanRunJobs } from '../workflows/plan-run.js';
import { registerMappingJobs } from '../workflows/mappings.js';
import { installAuth } from './auth.js';
import { AuthThrottle, DEFAULT_AUTH_THROTTLE } from './auth-throttle.js';
import { API, type App, type VaultContext, type VaultSettings } from './context.js';
import { errorHandler } from './http-errors.js';
import { issueServerCertificate, loadIdentity } from './identity.js';
import { VaultMetrics } from './metrics.js';
import { HeartbeatMonitor } from './monitor.js';
import { AlertNotifier } from './notifier.js';
import { accessRoutes } from './routes/access.js';
import { configurationRoutes } from './routes/configuration.js';
import { inventoryRoutes } from './routes/inventory.js';
import { jobRoutes } from './routes/jobs.js';
import { monitoringRoutes } from './routes/monitoring.js';
import { planRunRoutes } from './routes/plan-runs.js';
import { protectionRoutes } from './routes/protection.js';
import { providerRoutes } from './routes/providers.js';
import { systemRoutes } from './routes/system.js';
import { vaultRoutes } from './routes/vault.js';
import { RoleWatcher } from './role.js';
import { RESTORE_NOTICE_KEY, takeBackup, type BackupManifest } from './backup.js';
import { checkVaultUrls, TERM_HEADER } from '../domain/vault-status.js';
import { DEFAULT_PORTAL_DIR, servePortal } from './portal.js';

import { VERSION } from './version.js';
export { VERSION };
export const DEFAULT_VAULT_PORT = 8443;

export interface VaultOptions {
  /** the vault's name (fixed when its database is created) */
  name?: string;
  dataDir: string;
  /** a SQLite file, or postgres://… (default <dataDir>/vault.db) */
  database?: string;
  host?: string;
  port?: number;
  /** more DNS names for the server certificate */
  tlsNames?: string[];
  /** write the first Owner token to this file (mode 0600) as well as printing it */
  initialTokenFile?: string;
  /** called with the first Owner token, once, on a fresh database */
  onInitialToken?: (token: string) => void;
  logLevel?: string;
  /** a logger instead of the default (pino to stderr) */
  logger?: pino.Logger;
  clock?: Clock;
  /** request bodies larger than this are refused (default 1 MiB) */
  bodyLimit?: number;
  jobLeaseMs?: number;
  jobPollMs?: number;
  jobConcurrency?: number;
  /** do not run jobs in this process (an API-only vault) */
  runJobs?: boolean;
  settings?: Partial<VaultSettings>;
  /** alert deliveries: tries and the pause between them */
  alertAttempts?: number;
  alertRetryDelayMs?: number;
  /** the portal's built files (default dist/portal); false serves no portal */
  portalDir?: string | false;
  /**
   * the CA's private key file (mode 0600; default: the path recorded when the CA was made,
   * else <dataDir>/ca.key). Vault processes on other machines sharing one database need a
   * copy of it.
   */
  caKeyFile?: string;
  /** how long a client may take to send a whole request, how long a connection may stay silent, how long an idle keep-alive connection is kept */
  timeouts?: Partial<VaultTimeouts>;
  /** this process's URL as providers reach it (default: the address it listens on) */
  advertiseUrl?: string;
  /** the other processes of this vault (a standby at the other site): told to providers, asked for their term */
  peers?: string[];
  /** how often the database's role and the peers' terms are checked (default 2 s) */
  roleCheckMs?: number;
  /** a SQLite vault's scheduled backups: where, how often, how many are kept (backup.ts) */
  backups?: { dir: string; everyMs: number; keep: number };
}

export interface VaultTimeouts {
  requestMs: number;
  idleMs: number;
  keepAliveMs: number;
}

/** A request must arrive whole within 30 s; a connection silent for 2 minutes (a long-poll waits 25 s at most) is closed. */
export const DEFAULT_TIMEOUTS: VaultTimeouts = { requestMs: 30_000, idleMs: 120_000, keepAliveMs: 65_000 };

export class Vault {
  url = '';

  private constructor(
    readonly app: App,
    readonly ctx: VaultContext,
    private readonly monitor: HeartbeatMonitor,
    private readonly notifier: AlertNotifier,
    private readonly o: VaultOptions,
    private readonly closing: AbortController,
  ) {}

  get store(): VaultStore {
    return this.ctx.store;
  }
  get engine(): JobEngine {
    return this.ctx.engine;
  }

  static async create(o: VaultOptions): Promise<Vault> {
    const clock = o.clock ?? systemClock;
    const log = o.logger ?? pino({ level: o.logLevel ?? 'info', base: { vault: o.name ?? 'osr-vault' } }, pino.destination(2));
    fs.mkdirSync(o.dataDir, { recursive: true, mode: 0o700 });
    const store = await openStore({ database: o.database, dataDir: o.dataDir }, () => clock.now());
    try {
      const host = o.host ?? '127.0.0.1';
      const standby = await store.role.inRecovery();
      if (standby && !(await store.activity.setting<unknown>('vault', null))) {
        throw new OsrError('STORE_UNAVAILABLE', 'the standby database holds no vault yet: start the primary vault first (it creates the vault in the database, and the standby follows)');
      }
      const identity = await loadIdentity(store, { name: o.name ?? 'osr-vault', host, extraNames: o.tlsNames, dataDir: o.dataDir, caKeyFile: o.caKeyFile, clock });
      const settings: VaultSettings = {
        heartbeatIntervalMs: 15_000,
        heartbeatLostAfterMs: 60_000,
        commandRedeliverMs: 60_000,
        longPollMaxMs: 25_000,
        registrationKeyValidMs: REGISTRATION_KEY_VALID_MS,
        retentionMs: DEFAULT_RETENTION_MS,
        pruneIntervalMs: 3600_000,
        certificateCheckIntervalMs: 3600_000,
        ...o.settings,
        authThrottle: { ...DEFAULT_AUTH_THROTTLE, ...o.settings?.authThrottle },
      };
      const engine = new JobEngine({
        jobs: store.jobs,
        commands: store.commands,
        owner: `vault-${identity.name}-${randomUUID().slice(0, 8)}`,
        leaseMs: o.jobLeaseMs,
        pollMs: o.jobPollMs,
        concurrency: o.jobConcurrency,
        clock,
        log: log.child({ part: 'jobs' }),
      });
      const notifier = new AlertNotifier(store.activity, clock, { vaultName: identity.name, attempts: o.alertAttempts, retryDelayMs: o.alertRetryDelayMs, log: log.child({ part: 'alerts' }) });
      const alerting = new Alerting(store.activity, notifier);
      const metrics = new VaultMetrics(store, () => clock.now());
      const closing = new AbortController();
      const authThrottle = new AuthThrottle(clock, settings.authThrottle);
      const peers = checkVaultUrls(o.peers ?? [], '--peer');
      const role = new RoleWatcher(store, { vaultId: identity.id, vaultName: identity.name, ca: identity.ca.certPem, peers, clock, checkMs: o.roleCheckMs, log: log.child({ part: 'role' }) });
      await role.init();
      const ctx: VaultContext = { store, engine, identity, clock, alerting, metrics, settings, authThrottle, role, urls: [...(o.advertiseUrl ? checkVaultUrls([o.advertiseUrl], '--advertise') : []), ...peers], closing: closing.signal };
      // replication grants are signed with the CA's key at the vault's time (src/pki/grant.ts)
      const grants: GrantSigner = (g) => signGrant(ctx.identity.ca, { ...g, issuedAt: new Date(clock.now()).toISOString() });
      const deps = { store, alerting, clock, grants };
      registerProtectionJobs(engine, deps);
      registerTestFailoverJobs(engine, deps);
      registerFailoverJobs(engine, deps);
      registerResyncJobs(engine, deps);
      registerMappingJobs(engine, deps);
      registerPlanRunJobs(engine, deps);

      const timeouts = { ...DEFAULT_TIMEOUTS, ...o.timeouts };
      const app = Fastify({
        loggerInstance: log,
        https: {
          key: identity.server.key,
          cert: identity.server.cert,
          ca: identity.server.ca,
          requestCert: true,
          rejectUnauthorized: false,
          minVersion: 'TLSv1.2',
          // how often Node looks for requests past their timeout (its default, 30 s, would let a short timeout run long)
          connectionsCheckingInterval: Math.min(5000, Math.max(250, Math.floor(timeouts.requestMs / 4))),
        } as https.ServerOptions,
        // a client that sends its request slowly, or holds a connection silent, does not hold it for ever
        requestTimeout: timeouts.requestMs,
        connectionTimeout: timeouts.idleMs,
        keepAliveTimeout: timeouts.keepAliveMs,
        bodyLimit: o.bodyLimit ?? 1024 * 1024,
        // requests are counted in /metrics and mutating ones audited; per-request log lines would drown the rest
        logController: new LogController({ disableRequestLogging: true }),
        ajv: { customOptions: { coerceTypes: 'array', removeAdditional: false, allErrors: false } },
        return503OnClosing: true,
      }).withTypeProvider<TypeBoxTypeProvider>();
      app.setErrorHandler(errorHandler);
      // every answer says the term it was given in: a provider refuses one older than it has seen (provider/channel.ts)
      app.addHook('onSend', async (_request, reply) => {
        void reply.header(TERM_HEADER, String(ctx.role.term.term));
      });
      app.server.on('connection', (socket: net.Socket) => metrics.watch(socket));
      app.setNotFoundHandler((request, reply) => reply.status(404).send({ code: 'NOT_FOUND', message: `no route ${request.method} ${request.url.split('?')[0]}` }));
      await app.register(swagger, {
        openapi: {
          openapi: '3.0.3',
          info: { title: 'osr vault API', version: VERSION, description: 'Open Site Recovery control plane: fabrics, configuration, protected items, jobs, events and alerts.' },
          servers: [{ url: '/' }],
          components: { securitySchemes: { token: { type: 'http', scheme: 'bearer' } } },
          security: [{ token: [] }],
        },
      });
      installAuth(app, ctx);
      // a call that takes no body refuses one (anything but nothing or {}): the caller is confused about what it calls
      app.addHook('preValidation', async (request) => {
        if (request.routeOptions.schema?.body !== undefined || request.body === undefined) return;
        const b = request.body as unknown;
        if (b !== null && typeof b === 'object' && !Array.isArray(b) && Object.keys(b).length === 0) return;
        throw new OsrError('INVALID_ARGUMENT', `${request.method} ${request.routeOptions.url} takes no request body`);
      });
      await app.register(systemRoutes(ctx), { prefix: API });
      await app.register(vaultRoutes(ctx), { prefix: API });
      await app.register(accessRoutes(ctx), { prefix: API });
      await app.register(providerRoutes(ctx), { prefix: API });
      await app.register(inventoryRoutes(ctx), { prefix: API });
      await app.register(configurationRoutes(ctx), { prefix: API });
      await app.register(protectionRoutes(ctx), { prefix: API });
      await app.register(planRunRoutes(ctx), { prefix: API });
      await app.register(jobRoutes(ctx), { prefix: API });
      await app.register(monitoringRoutes(ctx), { prefix: API });
      if (o.portalDir !== false) await servePortal(app, o.portalDir ?? DEFAULT_PORTAL_DIR);
      app.get('/metrics', { config: { access: 'public' }, schema: { hide: true } }, async (_request, reply) => reply.type(ctx.metrics.registry.contentType).send(await ctx.metrics.registry.metrics()));
      await app.ready();

      const monitor = new HeartbeatMonitor(ctx, log.child({ part: 'monitor' }));
      const vault = new Vault(app, ctx, monitor, notifier, o, closing);
      if (role.writable) {
        await vault.firstToken(log);
        await vault.restoreNotice();
      }
      return vault;
    } catch (e) {
      await store.close();
      throw toOsrError(e);
    }
  }

  /** On a database without tokens: create the Owner token, print it once. */
  private async firstToken(log: pino.Logger): Promise<void> {
    // one vault process creates it even when several start at once on one database
    const secret = await this.store.activity.createFirstToken();
    if (secret === undefined) return;
    if (this.o.initialTokenFile) {
      fs.mkdirSync(path.dirname(this.o.initialTokenFile), { recursive: true });
      await writeFileAtomic(this.o.initialTokenFile, `${secret}\n`, 0o600);
    }
    if (this.o.onInitialToken) this.o.onInitialToken(secret);
    else log.info('created the first Owner token; it is printed once on standard output');
  }

  /**
   * The first start of a vault restored from a backup: what the backup cannot know is an
   * alert for its users (once; the restore left the notice).
   */
  async restoreNotice(): Promise<void> {
    const n = await this.store.activity.setting<{ backupTakenAt?: string } | null>(RESTORE_NOTICE_KEY, null);
    if (!n) return;
    const since = n.backupTakenAt ?? 'the backup';
    await this.ctx.alerting.raise({
      key: `vault.restored:${this.ctx.role.term.term}`,
      kind: 'vault.restored',
      severity: Severity.Critical,
      target: 'vault',
      message: `this vault was restored from a backup taken ${since} (term ${this.ctx.role.term.term}): what changed after it is not here. Tokens and certificates revoked and providers removed after it are valid again: revoke them again (the old vault's \`osr audit list --since ${since}\` lists what was done). Registration keys not used were revoked. Protected items and failovers come back as their providers report them.`,
    });
    await this.store.database.db.deleteFrom('settings').where('key', '=', RESTORE_NOTICE_KEY).execute();
  }

  /** Listen, and start running jobs and watching heartbeats. */
  async listen(): Promise<string> {
    const host = this.o.host ?? '127.0.0.1';
    try {
      await this.app.listen({ host, port: this.o.port ?? DEFAULT_VAULT_PORT });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EADDRINUSE') {
        throw new OsrError('PORT_IN_USE', `the vault cannot listen on ${host}:${this.o.port ?? DEFAULT_VAULT_PORT}: another process listens there (a lab left running? \`osr lab down\` stops it); or give --listen another port`, { host, port: this.o.port ?? DEFAULT_VAULT_PORT }, { cause: e });
      }
      throw e;
    }
    const addr = this.app.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : this.o.port;
    this.url = `https://${host.includes(':') ? `[${host}]` : host}:${port}`;
    if (!this.o.advertiseUrl) this.ctx.urls.unshift(this.url);
    this.startWork();
    return this.url;
  }

  /**
   * Run jobs, the heartbeat monitor and the pruning of old history (listen() does this;
   * tests using inject() call it). A standby or stale vault runs none of them, only its
   * role check and its certificate's renewal; promoted, it starts them.
   */
  startWork(): void {
    const role = this.ctx.role;
    if (!this.watchingRole) {
      this.watchingRole = true;
      role.on('primary', () => this.startPrimaryWork());
      role.on('demoted', () => void this.stopPrimaryWork());
      role.start();
    }
    if (role.writable) this.startPrimaryWork();
    this.renewing ??= this.certificateLoop();
  }

  private watchingRole = false;

  private startPrimaryWork(): void {
    if (this.closing.signal.aborted) return;
    if (this.o.runJobs !== false) this.engine.start();
    this.monitor.start();
    this.pruning ??= this.pruneLoop();
    if (this.o.backups) this.backingUp ??= this.backupLoop(this.o.backups);
  }

  private backingUp: Promise<void> | undefined;

  /** A backup now into the backup directory (the schedule's; a SQLite vault only). */
  async backup(dir: string, keep?: number): Promise<BackupManifest> {
    if (this.store.database.dialect !== 'sqlite') throw new OsrError('NOT_SUPPORTED', 'a PostgreSQL vault is backed up by PostgreSQL (a standby at the other site, pg_dump or pg_basebackup), not by osr');
    return takeBackup({ database: this.store.database.location, dir, now: this.ctx.clock.now(), ...(keep !== undefined ? { keep } : {}) });
  }

  /** A backup at start, then one every interval, while this vault is the primary; a failure is an event and the next one is tried at its time. */
  private async backupLoop(o: { dir: string; everyMs: number; keep: number }): Promise<void> {
    const signal = this.closing.signal;
    while (!signal.aborted) {
      if (this.ctx.role.writable) {
        try {
          const m = await this.backup(o.dir, o.keep);
          this.app.log.info({ file: m.file, bytes: m.bytes }, 'took a backup of the vault');
          await this.ctx.alerting.resolve('vault.backup-failed');
        } catch (e) {
          const err = toOsrError(e);
          this.app.log.error({ err: err.toJSON() }, 'the vault\'s backup failed; trying again at the next interval');
          await this.ctx.alerting
            .raise({ key: 'vault.backup-failed', target: 'vault', kind: 'vault.backup-failed', severity: Severity.Critical, message: `the scheduled backup into ${o.dir} failed (${err.code}): ${err.message}` })
            .catch(() => undefined);
        }
      }
      await this.ctx.clock.sleep(o.everyMs, signal);
    }
  }

  /** A vault that may no longer write: its jobs stop (their leases run out for the primary's processes). */
  private async stopPrimaryWork(): Promise<void> {
    this.monitor.stop();
    await this.engine.stop().catch((e: unknown) => this.app.log.warn({ err: String(e) }, 'stopping the jobs failed'));
  }

  private renewing: Promise<void> | undefined;

  /**
   * Renew the server certificate two thirds into its life, without a restart: new
   * connections get the new one, open ones keep theirs. Ages are measured on the vault's
   * clock from the moment the certificate was issued.
   */
  async renewServerCertificateIfDue(): Promise<boolean> {
    const id = this.ctx.identity;
    const age = this.ctx.clock.now() - id.serverIssuedAt;
    if (age < (id.serverLifetimeMs * 2) / 3) return false;
    const next = await issueServerCertificate(id.ca, id.name, id.serverNames, this.ctx.clock);
    this.app.server.setSecureContext({ key: next.server.key, cert: next.server.cert, ca: next.server.ca });
    Object.assign(id, next);
    this.app.log.info({ notAfter: next.serverNotAfter }, 'renewed the vault\'s server certificate');
    if (this.ctx.role.writable) await this.ctx.alerting.event({ target: 'vault', kind: 'vault.certificate-renewed', severity: Severity.Info, message: `the vault's server certificate was renewed; the new one is valid until ${next.serverNotAfter}`, details: { notAfter: next.serverNotAfter } });
    return true;
  }

  private async certificateLoop(): Promise<void> {
    const signal = this.closing.signal;
    while (!signal.aborted) {
      await this.ctx.clock.sleep(this.ctx.settings.certificateCheckIntervalMs, signal);
      if (signal.aborted) break;
      try {
        await this.renewServerCertificateIfDue();
      } catch (e) {
        this.app.log.error({ err: String(e) }, 'renewing the vault\'s server certificate failed; trying again at the next check');
      }
    }
  }

  private pruning: Promise<void> | undefined;

  /** Delete events, ended jobs and audit records older than the retention (at start, then every pruneIntervalMs). */
  async prune(): Promise<Pruned> {
    const r = await pruneBefore(this.store.database.db, this.ctx.clock.now() - this.ctx.settings.retentionMs);
    for (const [table, n] of Object.entries(r)) if (n > 0) this.ctx.metrics.pruned.inc({ table }, n);
    if (r.events + r.jobs + r.audit > 0) this.app.log.info({ ...r, retentionDays: this.ctx.settings.retentionMs / 86_400_000 }, 'pruned history older than the retention');
    return r;
  }

  private async pruneLoop(): Promise<void> {
    const signal = this.closing.signal;
    while (!signal.aborted) {
      try {
        if (this.ctx.role.writable) await this.prune();
      } catch (e) {
        if (!signal.aborted) this.app.log.warn({ err: String(e) }, 'pruning old history failed; trying again at the next interval');
      }
      await this.ctx.clock.sleep(this.ctx.settings.pruneIntervalMs, signal);
    }
  }

  async close(): Promise<void> {
    this.closing.abort();
    await this.ctx.role.stop();
    this.monitor.stop();
    await this.pruning;
    await this.renewing;
    await this.backingUp;
    await this.engine.stop();
    await this.app.close();
    await this.notifier.settle();
    await this.store.close();
  }
}
