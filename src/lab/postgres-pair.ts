/**
 * Two PostgreSQL clusters on this machine, the second a hot standby of the first by
 * PostgreSQL's own streaming replication: the vault's database at two "sites", for the
 * lab and the tests of a standby vault (docs/deployment.md). Each cluster listens on
 * 127.0.0.1 on a port of its own with trust authentication, and keeps its socket in its
 * own directory. Run as root, the clusters belong to the `postgres` user (PostgreSQL
 * refuses to run as root).
 */
import { execFile, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { OsrError } from '../domain/errors.js';

const run = promisify(execFile);
const SAFE_DIR = /^[A-Za-z0-9._/-]+$/;

/** The directory of PostgreSQL's server programs (initdb, pg_ctl, pg_basebackup), the newest installed. */
export function postgresBinDir(): string | undefined {
  const fromConfig = spawnSync('pg_config', ['--bindir'], { encoding: 'utf8' });
  if (fromConfig.status === 0 && fs.existsSync(path.join(fromConfig.stdout.trim(), 'initdb'))) return fromConfig.stdout.trim();
  const root = '/usr/lib/postgresql';
  if (!fs.existsSync(root)) return undefined;
  const versions = fs.readdirSync(root).filter((v) => /^\d+$/.test(v) && fs.existsSync(path.join(root, v, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a));
  return versions[0] ? path.join(root, versions[0], 'bin') : undefined;
}

export interface PostgresCluster {
  name: string;
  dir: string;
  port: number;
  /** postgres://postgres@127.0.0.1:PORT/DB */
  url(db?: string): string;
}

export async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

export class PostgresPair {
  private constructor(
    readonly bin: string,
    readonly primary: PostgresCluster,
    readonly standby: PostgresCluster,
    private readonly asUser: string | undefined,
  ) {}

  /**
   * Make both clusters under `dir` (`primary/`, `standby/`) and start them: the primary
   * from initdb, the standby from pg_basebackup of it, streaming. The vault's database
   * `osr` is made on the primary before the copy.
   */
  static async create(dir: string, o: { database?: string } = {}): Promise<PostgresPair> {
    const bin = postgresBinDir();
    if (!bin) throw new OsrError('NOT_SUPPORTED', 'PostgreSQL\'s server programs (initdb, pg_ctl, pg_basebackup) are not installed: `apt-get install postgresql`');
    const asUser = process.getuid?.() === 0 ? 'postgres' : undefined;
    if (asUser && spawnSync('id', ['-u', asUser]).status !== 0) throw new OsrError('NOT_SUPPORTED', 'run as root, the PostgreSQL clusters need the `postgres` user, which does not exist here (Debian\'s postgresql package makes it)');
    // the directory goes through pg_ctl's shell (-o): plain characters only
    if (!SAFE_DIR.test(path.resolve(dir))) throw new OsrError('INVALID_ARGUMENT', `${path.resolve(dir)}: the PostgreSQL clusters' directory may hold only letters, digits and . _ - / (PostgreSQL's pg_ctl passes it through a shell)`);
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    if (asUser && spawnSync('runuser', ['-u', asUser, '--', 'test', '-x', path.resolve(dir)]).status !== 0) {
      throw new OsrError('INVALID_ARGUMENT', `the ${asUser} user cannot reach ${path.resolve(dir)}: let it through the directories above (chmod o+x), or give a directory it can reach`);
    }
    const mk = async (name: string): Promise<PostgresCluster> => {
      const d = path.join(path.resolve(dir), name);
      const port = await freePort();
      return { name, dir: d, port, url: (db = o.database ?? 'osr') => `postgres://postgres@127.0.0.1:${port}/${db}` };
    };
    const pair = new PostgresPair(bin, await mk('primary'), await mk('standby'), asUser);
    await pair.initPrimary();
    await pair.createDatabase(o.database ?? 'osr');
    await pair.cloneStandby();
    fs.writeFileSync(path.join(dir, 'pair.json'), `${JSON.stringify({ bin, asUser: asUser ?? null, database: o.database ?? 'osr', primary: { dir: pair.primary.dir, port: pair.primary.port }, standby: { dir: pair.standby.dir, port: pair.standby.port } }, null, 2)}\n`, { mode: 0o644 });
    return pair;
  }

  /** The pair made in `dir` before (pair.json), its clusters started where they are stopped. */
  static async open(dir: string): Promise<PostgresPair> {
    const pair = PostgresPair.load(dir);
    for (const x of [pair.primary, pair.standby]) if (pair.pid(x) === undefined) await pair.start(x);
    return pair;
  }

  /** The pair made in `dir` before (pair.json), as it is (running or not). */
  static load(dir: string): PostgresPair {
    let j: { bin: string; asUser: string | null; database: string; primary: { dir: string; port: number }; standby: { dir: string; port: number } };
    try {
      j = JSON.parse(fs.readFileSync(path.join(dir, 'pair.json'), 'utf8')) as typeof j;
    } catch (e) {
      throw new OsrError('CONFIG_INVALID', `${path.join(dir, 'pair.json')} cannot be read: ${(e as Error).message}`);
    }
    for (const x of [j.primary, j.standby]) if (!SAFE_DIR.test(x.dir) || !Number.isInteger(x.port)) throw new OsrError('CONFIG_INVALID', `${path.join(dir, 'pair.json')} names a cluster osr did not make`);
    const c = (name: string, x: { dir: string; port: number }): PostgresCluster => ({ name, dir: x.dir, port: x.port, url: (db = j.database) => `postgres://postgres@127.0.0.1:${x.port}/${db}` });
    return new PostgresPair(j.bin, c('primary', j.primary), c('standby', j.standby), j.asUser ?? undefined);
  }

  static exists(dir: string): boolean {
    return fs.existsSync(path.join(dir, 'pair.json'));
  }

  /** Run one of PostgreSQL's programs (as the postgres user when this is root). */
  private async pg(program: string, args: string[], timeoutMs = 120_000): Promise<string> {
    const file = path.join(this.bin, program);
    const [cmd, argv] = this.asUser ? ['runuser', ['-u', this.asUser, '--', file, ...args]] : [file, args];
    try {
      const r = await run(cmd, argv, { timeout: timeoutMs, env: { ...process.env, LC_ALL: 'C' } });
      return r.stdout;
    } catch (e) {
      const err = e as { stderr?: string; message: string };
      throw new OsrError('STORE_UNAVAILABLE', `${program} ${args.join(' ')} failed: ${(err.stderr ?? err.message).trim().slice(-2000)}`, undefined, { cause: e });
    }
  }

  private own(d: string): void {
    fs.mkdirSync(d, { recursive: true, mode: 0o700 });
    if (this.asUser) {
      const r = spawnSync('chown', [`${this.asUser}:`, d]);
      if (r.status !== 0) throw new OsrError('STORE_UNAVAILABLE', `chown ${this.asUser} ${d} failed: ${String(r.stderr)}`);
    }
  }

  private async initPrimary(): Promise<void> {
    const c = this.primary;
    this.own(c.dir);
    // the parent must let the postgres user in
    fs.chmodSync(path.dirname(c.dir), 0o755);
    await this.pg('initdb', ['-D', c.dir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8']);
    fs.appendFileSync(
      path.join(c.dir, 'postgresql.conf'),
      ['', "listen_addresses = '127.0.0.1'", `unix_socket_directories = '${c.dir}'`, 'wal_level = replica', 'max_wal_senders = 5', 'hot_standby = on', 'wal_keep_size = 256MB', 'shared_buffers = 32MB', "logging_collector = off", ''].join('\n'),
    );
    fs.appendFileSync(path.join(c.dir, 'pg_hba.conf'), '\nhost replication postgres 127.0.0.1/32 trust\n');
    await this.start(c);
  }

  private async createDatabase(name: string): Promise<void> {
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new OsrError('INVALID_ARGUMENT', `${name} is not a database name osr makes`);
    await this.pg('psql', ['-h', '127.0.0.1', '-p', String(this.primary.port), '-U', 'postgres', '-d', 'postgres', '-qAt', '-c', `CREATE DATABASE ${name}`]);
  }

  private async cloneStandby(): Promise<void> {
    const c = this.standby;
    this.own(path.dirname(c.dir));
    await this.pg('pg_basebackup', ['-h', '127.0.0.1', '-p', String(this.primary.port), '-U', 'postgres', '-D', c.dir, '-R', '-X', 'stream', '-c', 'fast', '--no-sync']);
    await this.start(c);
  }

  /** Start a cluster (after a kill -9 too: PostgreSQL recovers from its log) and wait until it takes connections. */
  async start(c: PostgresCluster): Promise<void> {
    const log = path.join(c.dir, 'postgres.log');
    await this.pg('pg_ctl', ['-D', c.dir, '-l', log, '-w', '-t', '60', '-o', `-p ${c.port} -k ${c.dir}`, 'start']);
  }

  /** The postmaster's pid, from its pid file (undefined when it does not run). */
  pid(c: PostgresCluster): number | undefined {
    try {
      const pid = Number(fs.readFileSync(path.join(c.dir, 'postmaster.pid'), 'utf8').split('\n')[0]);
      process.kill(pid, 0);
      return pid;
    } catch {
      return undefined;
    }
  }

  /** The site is gone: the postmaster and every backend killed with SIGKILL, no shutdown. */
  async kill(c: PostgresCluster): Promise<void> {
    const pid = this.pid(c);
    if (pid === undefined) return;
    const children = spawnSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).map(Number);
    for (const p of [pid, ...children]) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // gone already
      }
    }
    for (let i = 0; i < 100 && [pid, ...children].some(alive); i++) await new Promise((r) => setTimeout(r, 50));
  }

  /** Promote a standby by hand (`pg_ctl promote`), as an operator would without osr. */
  async promote(c: PostgresCluster): Promise<void> {
    await this.pg('pg_ctl', ['-D', c.dir, '-w', '-t', '60', 'promote']);
  }

  /** Whether PostgreSQL says the cluster is in recovery (a standby). */
  async inRecovery(c: PostgresCluster): Promise<boolean> {
    const out = await this.pg('psql', ['-h', '127.0.0.1', '-p', String(c.port), '-U', 'postgres', '-d', 'postgres', '-qAt', '-c', 'select pg_is_in_recovery()']);
    return out.trim() === 't';
  }

  async stop(): Promise<void> {
    for (const c of [this.standby, this.primary]) {
      if (this.pid(c) === undefined) continue;
      await this.pg('pg_ctl', ['-D', c.dir, '-m', 'fast', '-w', 'stop']).catch(() => this.kill(c));
    }
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
