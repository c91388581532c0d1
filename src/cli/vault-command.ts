/** `osr vault`: run the control plane's HTTPS server. */
import path from 'node:path';
import type { Command } from 'commander';
import { parseDuration } from '../agent/io/time-window.js';
import { OsrError, toOsrError } from '../domain/errors.js';
import { DEFAULT_VAULT_PORT } from './vault-client-config.js';
import { collect } from './format.js';
import { installLastResortHandler } from './last-resort.js';
import { CliApi, connection, fields, print, withApi } from './api-common.js';
import { parseVaultStatus } from '../domain/vault-status.js';

export function addVaultCommand(program: Command): void {
  const vaultCommand = program
    .command('vault')
    .description('run the vault: the HTTPS REST API (/api/v1, OpenAPI at /api/v1/openapi.json), jobs, provider registration, events and alerts, /metrics')
    .option('--name <name>', 'the vault\'s name, fixed when its database is created (registration keys carry it)', 'osr-vault')
    .option('--data-dir <dir>', 'where the vault keeps its SQLite database and files', '.osr/vault')
    .option('--database <url>', 'a SQLite file, or postgres://USER@HOST:PORT/DB to share one database between vault processes (default DATA/vault.db)')
    .option('--listen <host:port>', 'address to serve HTTPS on (loopback by default)', `127.0.0.1:${DEFAULT_VAULT_PORT}`)
    .option('--tls-name <dns>', 'another DNS name for the server certificate (repeatable)', collect, [])
    .option('--initial-token-file <file>', 'also write the first Owner token to this file (mode 0600)')
    .option('--job-lease <duration>', 'how long a job\'s lease lasts before another vault may take it over', '30s')
    .option('--job-concurrency <n>', 'jobs this process runs at once (a recovery plan run and each of its VMs are a job; they mostly wait on providers)', '64')
    .option('--job-poll <duration>', 'how often to look for queued jobs and command results', '250ms')
    .option('--no-jobs', 'serve the API only; other vault processes run the jobs')
    .option('--heartbeat-interval <duration>', 'how often providers are told to send heartbeats', '15s')
    .option('--heartbeat-lost-after <duration>', 'raise an alert when a provider is silent this long', '60s')
    .option('--ca-key-file <file>', 'the CA\'s private key (mode 0600), kept out of the database (default: the path recorded when the CA was made, else DATA/ca.key); vault processes on other machines need a copy')
    .option('--retention-days <days>', 'events, ended jobs and audit records older than this are deleted (hourly)', '90')
    .option('--request-timeout <duration>', 'a client must send its whole request within this', '30s')
    .option('--log-level <level>', 'trace, debug, info, warn or error', 'info')
    .option('--advertise <url>', 'this vault process\'s URL as providers reach it (default: the --listen address)')
    .option('--peer <url>', 'another process of this vault at another site, e.g. the standby on the replicated PostgreSQL (repeatable): providers are told it, and a peer of a newer term fences this one', collect, [])
    .option('--role-check <duration>', 'how often the database\'s role (primary or standby) and the peers\' terms are checked', '2s')
    .action(async (o: Record<string, string | string[] | boolean | undefined>) => {
      installLastResortHandler('vault');
      const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(String(o.listen));
      if (!m) throw new OsrError('INVALID_ARGUMENT', `--listen ${String(o.listen)} is not HOST:PORT`);
      const retentionDays = Number(o.retentionDays);
      if (!Number.isFinite(retentionDays) || retentionDays < 1) throw new OsrError('INVALID_ARGUMENT', `--retention-days must be a number of days of at least 1, not ${String(o.retentionDays)}`);
      const concurrency = Number(o.jobConcurrency);
      if (!Number.isInteger(concurrency) || concurrency < 1) throw new OsrError('INVALID_ARGUMENT', `--job-concurrency must be a whole number of at least 1, not ${String(o.jobConcurrency)}`);
      // the server and its dependencies load only when the vault runs, not for every osr command
      const { Vault } = await import('../vault/server.js');
      const vault = await Vault.create({
        name: String(o.name),
        dataDir: path.resolve(String(o.dataDir)),
        database: o.database as string | undefined,
        host: m[1]!.replace(/^\[|\]$/g, ''),
        port: Number(m[2]),
        tlsNames: o.tlsName as string[],
        initialTokenFile: o.initialTokenFile ? path.resolve(String(o.initialTokenFile)) : undefined,
        onInitialToken: (token) => console.log(`Owner token (shown once; keep it safe): ${token}`),
        logLevel: String(o.logLevel),
        jobLeaseMs: parseDuration(String(o.jobLease)),
        jobConcurrency: concurrency,
        jobPollMs: parseDuration(String(o.jobPoll)),
        runJobs: o.jobs !== false,
        caKeyFile: o.caKeyFile ? path.resolve(String(o.caKeyFile)) : undefined,
        timeouts: { requestMs: parseDuration(String(o.requestTimeout)) },
        advertiseUrl: o.advertise as string | undefined,
        peers: o.peer as string[],
        roleCheckMs: parseDuration(String(o.roleCheck)),
        settings: { heartbeatIntervalMs: parseDuration(String(o.heartbeatInterval)), heartbeatLostAfterMs: parseDuration(String(o.heartbeatLostAfter)), retentionMs: retentionDays * 86_400_000 },
      });
      const url = await vault.listen();
      const st = vault.ctx.role.status();
      console.log(JSON.stringify({ vault: vault.ctx.identity.name, url, api: `${url}/api/v1`, caFingerprint: vault.ctx.identity.caFingerprint, database: vault.store.database.location, role: st.role, term: st.term }));
      let closing = false;
      const stop = () => {
        if (closing) return;
        closing = true;
        void vault.close().then(
          () => process.exit(0),
          (e: unknown) => {
            console.error(`error ${toOsrError(e).code}: stopping the vault failed: ${(e as Error).message}`);
            process.exit(1);
          },
        );
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
    });
  addVaultOperations(program, vaultCommand);
}

/** `osr vault status|promote`: a vault process's role and term, and the promotion of a standby (docs/deployment.md). */
function addVaultOperations(program: Command, vault: Command): void {
  vault
    .command('status')
    .description('the role (primary, standby or stale) and term of the vault at --vault (public: no token needed)')
    .action(async () => {
      const c = connection(program);
      const api = new CliApi(c);
      try {
        const st = parseVaultStatus(await api.get('/vault'), c.url);
        print(program, st, () => fields([['vault', `${st.name} (${st.id})`], ['url', c.url], ['role', st.role], ['term', `${st.term} (${st.origin} ${st.since})`], ...(st.staleBecause ? ([['fenced by', `term ${st.staleBecause.term} at ${st.staleBecause.url}`]] as [string, unknown][]) : [])]));
      } finally {
        api.close();
      }
    });
  vault
    .command('promote')
    .description('promote the standby vault at --vault (an Owner): its PostgreSQL standby is promoted, the next term begins, and providers follow it; for when the primary vault\'s site is lost')
    .option('--wait <duration>', 'how long PostgreSQL may take to finish its promotion', '60s')
    .action(async (o: { wait: string }) => {
      const waitSeconds = Math.max(1, Math.min(600, Math.round(parseDuration(o.wait) / 1000)));
      await withApi(program, async (api) => {
        const st = parseVaultStatus(await api.post('/vault/promote', { waitSeconds }), api.connection.url);
        print(program, st, () => `promoted: the vault ${st.name} at ${api.connection.url} is the primary, term ${st.term}; providers that know its URL follow it at their next heartbeat`);
      });
    });
}
