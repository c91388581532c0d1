/**
 * Opening the vault's database: SQLite (better-sqlite3, WAL, the default: a file in the
 * data directory) or PostgreSQL (`postgres://…`), both through Kysely, with the schema
 * migrated (migrations.ts) before anything else touches it.
 */
import fs from 'node:fs';
import path from 'node:path';
import SQLite from 'better-sqlite3';
import { Kysely, PostgresDialect, SqliteDialect, sql, type SqliteDatabase } from 'kysely';
import pg from 'pg';
import { OsrError } from '../domain/errors.js';
import { checkSchema, migrate } from './migrations.js';
import type { Database } from './schema.js';

export const Dialect = { Sqlite: 'sqlite', Postgres: 'postgres' } as const;
export type Dialect = (typeof Dialect)[keyof typeof Dialect];

export interface VaultDatabase {
  db: Kysely<Database>;
  dialect: Dialect;
  /** what it is connected to, without credentials (for logs) */
  location: string;
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  /** `postgres://…` or `postgresql://…` for PostgreSQL; otherwise a SQLite file path (default: <dataDir>/vault.db) */
  database?: string | undefined;
  dataDir: string;
  /** connections in the PostgreSQL pool */
  poolSize?: number;
  /** run the migrations (default true) */
  migrate?: boolean;
}

export const isPostgresUrl = (s: string) => /^postgres(ql)?:\/\//.test(s);

/** Open (and migrate) the vault's database. */
export async function openDatabase(o: OpenDatabaseOptions): Promise<VaultDatabase> {
  const vdb = o.database && isPostgresUrl(o.database) ? openPostgres(o.database, o.poolSize ?? 10) : openSqlite(o.database ?? path.join(o.dataDir, 'vault.db'));
  try {
    // a hot standby takes no writes: its schema is the primary's, which must be this osr's
    if (vdb.dialect === Dialect.Postgres && (await sql<{ r: boolean }>`select pg_is_in_recovery() as r`.execute(vdb.db)).rows[0]?.r === true) await checkSchema(vdb.db);
    else if (o.migrate !== false) await migrate(vdb.db, vdb.dialect);
    return vdb;
  } catch (e) {
    await vdb.close().catch(() => undefined);
    if (e instanceof OsrError) throw e;
    throw new OsrError('STORE_UNAVAILABLE', `cannot use the database at ${vdb.location}: ${(e as Error).message}`, { database: vdb.location }, { cause: e });
  }
}

/** The database and its -wal and -shm files: the vault's trust root, readable by the vault's user only. */
function ownerOnly(file: string): void {
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    try {
      fs.chmodSync(f, 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
  }
}

function openSqlite(file: string): VaultDatabase {
  let sqlite: SQLite.Database;
  try {
    fs.mkdirSync(path.dirname(path.resolve(file)), { recursive: true, mode: 0o700 });
    // made (or kept) 0600 before SQLite opens it, whatever the umask: SQLite gives the
    // -wal and -shm files it creates the database file's mode
    fs.closeSync(fs.openSync(file, fs.constants.O_CREAT | fs.constants.O_RDWR, 0o600));
    ownerOnly(file);
    sqlite = new SQLite(file);
  } catch (e) {
    throw new OsrError('STORE_UNAVAILABLE', `cannot open the SQLite database ${file}: ${(e as Error).message}`, undefined, { cause: e });
  }
  // WAL lets readers run beside the one writer; FULL syncs every commit (nothing the vault
  // acknowledged is lost to a power cut); a writer waits up to 5 s for another
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('synchronous = FULL');
  sqlite.pragma('busy_timeout = 5000');
  sqlite.pragma('foreign_keys = ON');
  // what is deleted or overwritten is zeroed, not left in free pages
  sqlite.pragma('secure_delete = ON');
  ownerOnly(file);
  const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: withStatementCache(sqlite) }) });
  return { db, dialect: Dialect.Sqlite, location: path.resolve(file), close: () => db.destroy() };
}

/** Prepared statements kept, the most recently used first out of reach last. */
const STATEMENT_CACHE = 500;

/**
 * The database as Kysely's SQLite driver sees it, with its statements prepared once: the
 * driver prepares every query it runs, and at a thousand VMs' jobs SQLite spent more time
 * compiling the vault's few hundred distinct queries than running them. Kysely runs one
 * query at a time on the connection, so a statement is never used by two at once.
 */
function withStatementCache(sqlite: SQLite.Database): SqliteDatabase {
  const cache = new Map<string, SQLite.Statement>();
  const prepare = (text: string): SQLite.Statement => {
    let stmt = cache.get(text);
    if (stmt) cache.delete(text);
    else {
      stmt = sqlite.prepare(text);
      if (cache.size >= STATEMENT_CACHE) cache.delete(cache.keys().next().value!);
    }
    cache.set(text, stmt);
    return stmt;
  };
  return {
    prepare,
    close: () => {
      cache.clear();
      sqlite.close();
    },
  };
}

function openPostgres(url: string, poolSize: number): VaultDatabase {
  const pool = new pg.Pool({
    connectionString: url,
    max: poolSize,
    // BIGINT (int8) columns hold milliseconds: numbers, not strings
    types: { getTypeParser: (oid: number, format?: 'text' | 'binary') => (oid === 20 ? (v: string) => Number(v) : pg.types.getTypeParser(oid, format as 'text')) },
  });
  // an idle client that loses its connection must not take the process down
  pool.on('error', () => undefined);
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const u = new URL(url);
  return { db, dialect: Dialect.Postgres, location: `postgres://${u.host}${u.pathname}`, close: () => db.destroy() };
}
