/**
 * The vault's role and term, as its database holds them (vault.md, deployment.md).
 *
 * A term numbers the vault's lives: 1 when its database is made, one more at each
 * promotion of a standby database (PostgreSQL) and at each restore of a backup (SQLite).
 * Two vault processes of one identity that both find a writable database are told apart
 * by it: the one with the older term is stale and refuses every change (VAULT_STALE).
 * Providers remember the newest term they were answered with and follow only a vault of
 * that term or newer.
 *
 * A database is a standby while PostgreSQL says it is in recovery (a hot standby that
 * streams from the primary): a vault on it serves reads only (VAULT_STANDBY).
 */
import { sql, type Kysely } from 'kysely';
import { OsrError } from '../domain/errors.js';
import { isTerm } from '../domain/vault-status.js';
import type { Dialect } from './database.js';
import type { Database } from './schema.js';

/** How the current term began. */
export type TermOrigin = 'created' | 'promoted' | 'restored';

export interface VaultTerm {
  term: number;
  /** when it began (ISO) */
  since: string;
  origin: TermOrigin;
  /** a restored term: when the backup it came from was taken (ISO) */
  backupTakenAt?: string;
  /** PostgreSQL's timeline when the term began (a later promotion moves it on) */
  timeline?: number;
}

/** What fenced a stale vault: the newer term and where it was seen. */
export interface StaleMark {
  term: number;
  url: string;
  at: string;
}

export const TERM_KEY = 'vault.term';
export const STALE_KEY = 'vault.stale';

export class VaultRoleStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: Dialect,
    private readonly now: () => number,
  ) {}

  /** Whether the database is a read-only standby (PostgreSQL in recovery); a SQLite file never is. */
  async inRecovery(): Promise<boolean> {
    if (this.dialect !== 'postgres') return false;
    const r = await sql<{ r: boolean }>`select pg_is_in_recovery() as r`.execute(this.db);
    return r.rows[0]?.r === true;
  }

  /** The current term (a database from before terms is in term 1). */
  async term(): Promise<VaultTerm> {
    const row = await this.db.selectFrom('settings').select('value').where('key', '=', TERM_KEY).executeTakeFirst();
    if (!row) return { term: 1, since: new Date(0).toISOString(), origin: 'created' };
    return parseTerm(row.value);
  }

  /**
   * PostgreSQL's timeline on a writable database: it grows by one at each promotion of a
   * standby, whoever promoted it (the WAL file name's first 8 hex digits). Undefined on
   * SQLite.
   */
  async timeline(): Promise<number | undefined> {
    if (this.dialect !== 'postgres') return undefined;
    const r = await sql<{ f: string }>`select pg_walfile_name(pg_current_wal_lsn()) as f`.execute(this.db);
    const t = parseInt(String(r.rows[0]?.f ?? '').slice(0, 8), 16);
    return Number.isSafeInteger(t) && t > 0 ? t : undefined;
  }

  /** Record term 1 on a fresh writable database (nothing if it has a term). */
  async initTerm(): Promise<VaultTerm> {
    const timeline = await this.timeline();
    const first: VaultTerm = { term: 1, since: new Date(this.now()).toISOString(), origin: 'created', ...(timeline !== undefined ? { timeline } : {}) };
    await this.db.insertInto('settings').values({ key: TERM_KEY, value: JSON.stringify(first) }).onConflict((oc) => oc.column('key').doNothing()).execute();
    return this.term();
  }

  /**
   * Whether the writable database was promoted since its term began: its timeline is newer
   * than the one the term recorded (a standby promoted by hand while no vault watched it).
   */
  async promotedSinceTerm(t: VaultTerm): Promise<boolean> {
    if (t.timeline === undefined) return false;
    const now = await this.timeline();
    return now !== undefined && now > t.timeline;
  }

  /**
   * Begin the next term: one more than the database's, and than any term `after` names (one
   * a peer was seen with). On PostgreSQL a promotion begins one term per timeline: of two
   * vault processes that see the same promotion and race, the second finds it begun.
   * Answers the term that holds after.
   */
  async nextTerm(origin: TermOrigin, o: { after?: number; backupTakenAt?: string } = {}): Promise<VaultTerm> {
    const timeline = await this.timeline();
    await this.db.transaction().execute(async (trx) => {
      const q = trx.selectFrom('settings').select('value').where('key', '=', TERM_KEY);
      const row = await (this.dialect === 'postgres' ? q.forUpdate() : q).executeTakeFirst();
      const current = row ? parseTerm(row.value) : undefined;
      if (origin === 'promoted' && timeline !== undefined && current?.timeline === timeline && current.origin === 'promoted') return;
      const next: VaultTerm = { term: Math.max(current?.term ?? 1, o.after ?? 0) + 1, since: new Date(this.now()).toISOString(), origin, ...(timeline !== undefined ? { timeline } : {}), ...(o.backupTakenAt !== undefined ? { backupTakenAt: o.backupTakenAt } : {}) };
      if (!isTerm(next.term)) throw new OsrError('INVALID_STATE', `the vault's term ${current?.term} cannot grow further`);
      const value = JSON.stringify(next);
      await trx.insertInto('settings').values({ key: TERM_KEY, value }).onConflict((oc) => oc.column('key').doUpdateSet({ value })).execute();
      // a new term is not stale, whatever an older life of this database was told
      await trx.deleteFrom('settings').where('key', '=', STALE_KEY).execute();
    });
    return this.term();
  }

  async staleMark(): Promise<StaleMark | undefined> {
    const row = await this.db.selectFrom('settings').select('value').where('key', '=', STALE_KEY).executeTakeFirst();
    if (!row) return undefined;
    try {
      const v = JSON.parse(row.value) as StaleMark;
      return isTerm(v.term) && typeof v.url === 'string' ? v : undefined;
    } catch {
      return undefined;
    }
  }

  async markStale(mark: StaleMark): Promise<void> {
    const value = JSON.stringify(mark);
    await this.db.insertInto('settings').values({ key: STALE_KEY, value }).onConflict((oc) => oc.column('key').doUpdateSet({ value })).execute();
  }

  /** Promote the standby database (PostgreSQL's pg_promote), waiting up to `waitSeconds` for it to take writes. */
  async promoteDatabase(waitSeconds = 60): Promise<void> {
    if (this.dialect !== 'postgres') throw new OsrError('NOT_SUPPORTED', 'a SQLite vault has no standby database to promote: restore a backup at the other site (`osr vault restore`)');
    let r;
    try {
      r = await sql<{ ok: boolean }>`select pg_promote(true, ${waitSeconds}) as ok`.execute(this.db);
    } catch (e) {
      const msg = (e as Error).message;
      if (/permission denied/i.test(msg)) {
        throw new OsrError('FORBIDDEN', `the vault's database user may not promote the standby (${msg}): connect the vault as a superuser, or \`GRANT EXECUTE ON FUNCTION pg_promote TO <user>\` on the primary beforehand, or promote it by hand (\`pg_ctl promote\`); the vault notices and begins its term`, undefined, { cause: e });
      }
      if (/not in recovery/i.test(msg)) return;
      throw new OsrError('STORE_UNAVAILABLE', `promoting the standby database failed: ${msg}`, undefined, { cause: e });
    }
    if (r.rows[0]?.ok !== true) throw new OsrError('STORE_UNAVAILABLE', `the standby database did not finish its promotion within ${waitSeconds} s; look at PostgreSQL's log, and run the promotion again`);
  }
}

function parseTerm(text: string): VaultTerm {
  let v: Partial<VaultTerm>;
  try {
    v = JSON.parse(text) as Partial<VaultTerm>;
  } catch {
    v = {};
  }
  if (!isTerm(v.term) || typeof v.since !== 'string') throw new OsrError('STORE_UNAVAILABLE', `the vault's term in its database is malformed (${text.slice(0, 80)}); restore the database from a backup`);
  return {
    term: v.term,
    since: v.since,
    origin: v.origin === 'promoted' || v.origin === 'restored' ? v.origin : 'created',
    ...(typeof v.backupTakenAt === 'string' ? { backupTakenAt: v.backupTakenAt } : {}),
    ...(typeof v.timeline === 'number' && Number.isSafeInteger(v.timeline) && v.timeline > 0 ? { timeline: v.timeline } : {}),
  };
}
