/** `osr vault`: run the control plane's HTTPS server. */
import path from 'node:path';
import type { Command } from 'commander';
import { parseDuration } from '../agent/io/time-window.js';
import { OsrError, toOsrError } from '../domain/errors.js';
import { DEFAULT_VAULT_PORT } from './vault-client-config.js';
import { collect } from './format.js';
import { installLastResortHandler } from './last-resort.js';
import { connection, print, withApi } from './api-common.js';
import { probeVaults } from '../provider/vault-client.js';
import { parseVaultStatus } from '../domain/vault-status.js';
import fs from 'node:fs';
import { keepDownloadedBackup, listBackups, readManifest, restoreBackup, takeBackup, type BackupManifest } from '../vault/backup.js';
import { formatBytes, table } from './format.js';

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
    .option('--backup-dir <dir>', 'a SQLite vault: take a backup into this directory at start and every --backup-every (docs/deployment.md)')
    .option('--backup-every <duration>', 'how often the scheduled backup is taken', '1h')
    .option('--backup-keep <n>', 'how many scheduled backups are kept', '24')
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
        ...(o.backupDir ? { backups: { dir: path.resolve(String(o.backupDir)), everyMs: parseDuration(String(o.backupEvery)), keep: wholeNumber(String(o.backupKeep), '--backup-keep') } } : {}),
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

function wholeNumber(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) throw new OsrError('INVALID_ARGUMENT', `${flag} must be a whole number of at least 1, not ${text}`);
  return n;
}

const MAX_BACKUP_BYTES = 64 * 1024 ** 3;

function printBackup(program: Command, m: BackupManifest, where: string): void {
  print(program, { ...m, path: where }, () => `backup of vault ${m.vault.name} (term ${m.term}) taken ${m.takenAt}: ${where} (${formatBytes(m.bytes)}, sha256 ${m.sha256.slice(0, 16)}…)`);
}

/** A backup pulled from the vault at --vault over its API, kept in `dir` with its manifest. */
async function pullBackup(program: Command, dir: string, keep: number | undefined): Promise<BackupManifest> {
  return withApi(program, async (api) => {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const part = path.join(dir, `.download-${process.pid}-${Date.now()}.part`);
    const headers = await api.download('/vault/backup', part, MAX_BACKUP_BYTES);
    try {
      const raw = headers['osr-backup-manifest'];
      const manifestFile = path.join(dir, `.download-${process.pid}.json`);
      fs.writeFileSync(manifestFile, Buffer.from(typeof raw === 'string' ? raw : '', 'base64').toString('utf8'), { mode: 0o600 });
      let m: BackupManifest;
      try {
        m = readManifest(manifestFile);
      } finally {
        fs.rmSync(manifestFile, { force: true });
      }
      // kept only once its bytes match what the vault said they are
      return await keepDownloadedBackup(dir, part, m, keep);
    } finally {
      fs.rmSync(part, { force: true });
    }
  });
}

/** `osr vault status|promote|backup|backups|restore`: a vault process's role and term, a standby's promotion, backups of a SQLite vault (docs/deployment.md). */
function addVaultOperations(program: Command, vault: Command): void {
  vault
    .command('backup')
    .description('take a consistent online backup of a SQLite vault into a directory: of the database on this machine (--from-data-dir or --from-database), or pulled from the vault at --vault over its API (an Owner token), to keep at another host')
    .requiredOption('--to <dir>', 'the backup directory (made 0700; each backup is a database file and its manifest, 0600)')
    .option('--from-data-dir <dir>', 'the vault\'s data directory on this machine (its vault.db)')
    .option('--from-database <file>', 'the vault\'s SQLite file on this machine')
    .option('--keep <n>', 'how many backups to keep in the directory (older ones are removed)')
    .option('--every <duration>', 'keep running, taking a backup at this interval')
    .action(async (o: { to: string; fromDataDir?: string; fromDatabase?: string; keep?: string; every?: string }) => {
      const to = path.resolve(o.to);
      const keep = o.keep !== undefined ? wholeNumber(o.keep, '--keep') : undefined;
      const local = o.fromDatabase ?? (o.fromDataDir ? path.join(o.fromDataDir, 'vault.db') : undefined);
      const once = async () => {
        const m = local ? await takeBackup({ database: path.resolve(local), dir: to, ...(keep !== undefined ? { keep } : {}) }) : await pullBackup(program, to, keep);
        printBackup(program, m, path.join(to, m.file));
      };
      if (o.every === undefined) return once();
      const every = parseDuration(o.every);
      for (;;) {
        try {
          await once();
        } catch (e) {
          const err = toOsrError(e);
          console.error(`error ${err.code}: ${err.message}; trying again in ${o.every}`);
        }
        await new Promise((r) => setTimeout(r, every));
      }
    });
  vault
    .command('backups')
    .description('the backups in a directory, newest first')
    .argument('<dir>', 'the backup directory')
    .action((dir: string) => {
      const list = listBackups(path.resolve(dir));
      print(program, list.map((b) => ({ ...b.manifest, manifestPath: b.path })), () =>
        list.length === 0 ? `no backups in ${dir}` : table(list.map((b) => ({ taken: b.manifest.takenAt, vault: b.manifest.vault.name, term: b.manifest.term, size: formatBytes(b.manifest.bytes), manifest: b.path }))),
      );
    });
  vault
    .command('restore')
    .description('bring a SQLite vault back from a backup, e.g. at the recovery site: the copy is checked, put in place and its next term begun (so the old vault, should it come back, is stale); then start `osr vault` on that data directory, with the CA\'s key file')
    .requiredOption('--from <path>', 'a backup\'s manifest (vault-….json), or a backup directory (its newest backup)')
    .requiredOption('--into <dir>', 'the data directory of the vault to start (its vault.db)')
    .option('--force', 'a database is there already: keep it aside (vault.db.replaced-TIME) and restore over it; stop its vault first', false)
    .action(async (o: { from: string; into: string; force: boolean }) => {
      const r = await restoreBackup({ from: path.resolve(o.from), dataDir: path.resolve(o.into), force: o.force });
      print(program, r, () =>
        [
          `restored vault ${r.manifest.vault.name} into ${r.database}: term ${r.term.term} begins (the backup was term ${r.manifest.term}, taken ${r.manifest.takenAt})`,
          ...(r.replaced ? [`the database that was there is kept as ${r.replaced}`] : []),
          `lost: every change made after ${r.manifest.takenAt} (configuration, tokens, jobs started after it); providers report the replication state as it is when they reconnect`,
          `next: osr vault --data-dir ${path.resolve(o.into)} --ca-key-file CA.KEY …, and give providers its URL (\`--vault\`) if it is not one they know`,
        ].join('\n'),
      );
    });
  vault
    .command('status')
    .description('the role (primary, standby or stale) and term of the vault at each --vault URL (public: no token needed)')
    .action(async () => {
      const c = connection(program);
      const rows = await probeVaults(c.urls, c.ca);
      print(program, rows, () => table(rows.map((r) => ({ url: r.url, vault: r.status?.name ?? '-', role: r.status?.role ?? `no answer (${r.error})`, term: r.status ? `${r.status.term} (${r.status.origin} ${r.status.since})` : '-', fencedBy: r.status?.staleBecause ? `term ${r.status.staleBecause.term} at ${r.status.staleBecause.url}` : '' }))));
    });
  vault
    .command('promote')
    .description('promote the standby vault (an Owner): the one at --vault, or of several URLs the one that answers as standby; its PostgreSQL standby is promoted, the next term begins, and providers follow it; for when the primary vault\'s site is lost')
    .option('--wait <duration>', 'how long PostgreSQL may take to finish its promotion', '60s')
    .option('--force', 'promote even though another vault process still answers as the primary (refused otherwise: there would be two)', false)
    .action(async (o: { wait: string; force: boolean }) => {
      const waitSeconds = Math.max(1, Math.min(600, Math.round(parseDuration(o.wait) / 1000)));
      const c = connection(program);
      if (c.urls.length > 1) {
        const standbys = (await probeVaults(c.urls, c.ca)).filter((r) => r.status?.role === 'standby');
        if (standbys.length !== 1) throw new OsrError('INVALID_ARGUMENT', `of the vault URLs ${c.urls.join(', ')}, ${standbys.length} answer as standby: give --vault with the one to promote`);
        c.url = standbys[0]!.url;
      }
      c.urls = [c.url];
      await withApi(program, async (api) => {
        const st = parseVaultStatus(await api.post('/vault/promote', { waitSeconds, ...(o.force ? { force: true } : {}) }), c.url);
        print(program, st, () => `promoted: the vault ${st.name} at ${c.url} is the primary, term ${st.term}; providers that know its URL follow it at their next heartbeat`);
      }, c);
    });
}
