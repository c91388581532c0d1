/**
 * Backups of a SQLite vault (deployment.md): a consistent online copy made with SQLite's
 * backup API while the vault runs, checked (integrity_check) before it counts, and a
 * manifest beside it with its checksum, the vault it belongs to, its term and schema
 * version. A restore checks all of that again, puts the copy in place whole (written,
 * synced, renamed), and begins the vault's next term, so that the old vault, should its
 * site come back, is stale (role.ts).
 *
 * Files in a backup directory: `vault-<time>.db` (mode 0600: it holds the tokens' hashes
 * and the whole configuration) and `vault-<time>.json`, the manifest, written last: a
 * copy without a manifest is one a crash cut short, and is not listed.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import SQLite from 'better-sqlite3';
import { OsrError } from '../domain/errors.js';
import { isTerm } from '../domain/vault-status.js';
import { fsyncDir, writeFileAtomic } from '../pki/index.js';
import { SCHEMA_VERSION } from '../store/migrations.js';
import { STALE_KEY, TERM_KEY, type VaultTerm } from '../store/vault-role.js';

export interface BackupManifest {
  format: 1;
  /** the database file, beside the manifest */
  file: string;
  vault: { id: string; name: string };
  term: number;
  schemaVersion: number;
  takenAt: string;
  bytes: number;
  sha256: string;
}

const MANIFEST = /^vault-[0-9TZ-]+\.json$/;
/** what a restore leaves for the restored vault to tell its users at its first start */
export const RESTORE_NOTICE_KEY = 'vault.restore-notice';
const MAX_BACKUP_BYTES = 64 * 1024 ** 3;

/** What a SQLite vault database holds of itself: identity, term, schema version (undefined fields: not a vault's). */
function describe(db: SQLite.Database): { vault?: { id: string; name: string }; term: number; schemaVersion: number } {
  const setting = (key: string): unknown => {
    const row = db.prepare('select value from settings where key = ?').get(key) as { value: string } | undefined;
    if (!row) return undefined;
    try {
      return JSON.parse(row.value);
    } catch {
      return undefined;
    }
  };
  const v = setting('vault') as { id?: unknown; name?: unknown } | undefined;
  const t = setting(TERM_KEY) as { term?: unknown } | undefined;
  const version = (db.prepare('select max(version) as v from schema_migrations').get() as { v: number | null }).v ?? 0;
  return {
    ...(v && typeof v.id === 'string' && typeof v.name === 'string' ? { vault: { id: v.id, name: v.name } } : {}),
    term: isTerm(t?.term) ? t.term : 1,
    schemaVersion: version,
  };
}

function checkIntegrity(db: SQLite.Database, what: string): void {
  const rows = db.prepare('pragma integrity_check').all() as { integrity_check: string }[];
  if (rows.length !== 1 || rows[0]!.integrity_check !== 'ok') {
    throw new OsrError('BACKUP_INVALID', `${what} is damaged: SQLite's integrity check says ${rows.slice(0, 3).map((r) => r.integrity_check).join('; ')}`);
  }
}

/** A file's SHA-256, read in pieces without holding up the event loop (a vault's heartbeats and leases go on meanwhile). */
async function sha256File(file: string): Promise<string> {
  const h = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(file, { highWaterMark: 1 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

function fsyncFile(file: string): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

const stamp = (ms: number) => new Date(ms).toISOString().replace(/[:.]/g, '-');

/**
 * Take a backup of the SQLite vault database `database` into `dir`, online (the vault
 * may run): SQLite's backup API copies a consistent state. Older backups beyond `keep`
 * are removed after the new one counts.
 */
export async function takeBackup(o: { database: string; dir: string; now?: number; keep?: number }): Promise<BackupManifest> {
  const now = o.now ?? Date.now();
  if (!fs.existsSync(o.database)) throw new OsrError('NOT_FOUND', `there is no vault database at ${o.database}`);
  fs.mkdirSync(o.dir, { recursive: true, mode: 0o700 });
  const base = `vault-${stamp(now)}`;
  const file = path.join(o.dir, `${base}.db`);
  const part = `${file}.part`;
  fs.rmSync(part, { force: true });
  // made 0600 before SQLite writes a byte of it
  fs.closeSync(fs.openSync(part, fs.constants.O_CREAT | fs.constants.O_WRONLY | fs.constants.O_EXCL, 0o600));
  const source = new SQLite(o.database, { readonly: true, fileMustExist: true });
  try {
    await source.backup(part);
  } catch (e) {
    fs.rmSync(part, { force: true });
    throw new OsrError('STORE_UNAVAILABLE', `backing up ${o.database} failed: ${(e as Error).message}`, undefined, { cause: e });
  } finally {
    source.close();
  }
  let facts: ReturnType<typeof describe>;
  const copy = new SQLite(part);
  try {
    // a backup is one file: no write-ahead log beside it
    copy.pragma('journal_mode = DELETE');
    checkIntegrity(copy, `the backup of ${o.database}`);
    facts = describe(copy);
  } finally {
    copy.close();
  }
  if (!facts.vault) {
    fs.rmSync(part, { force: true });
    throw new OsrError('INVALID_ARGUMENT', `${o.database} holds no vault (it was never started)`);
  }
  fs.chmodSync(part, 0o600);
  fsyncFile(part);
  fs.renameSync(part, file);
  await fsyncDir(o.dir);
  const manifest: BackupManifest = { format: 1, file: path.basename(file), vault: facts.vault, term: facts.term, schemaVersion: facts.schemaVersion, takenAt: new Date(now).toISOString(), bytes: fs.statSync(file).size, sha256: await sha256File(file) };
  // the manifest last: from this rename on, the backup counts
  await writeFileAtomic(path.join(o.dir, `${base}.json`), `${JSON.stringify(manifest, null, 2)}\n`, 0o600);
  await fsyncDir(o.dir);
  if (o.keep !== undefined) await pruneBackups(o.dir, o.keep);
  return manifest;
}

/**
 * A backup that came over the network (`part`, already synced) kept in `dir` under its
 * manifest's name, once its size and checksum match the manifest and SQLite finds it whole.
 */
export async function keepDownloadedBackup(dir: string, part: string, m: BackupManifest, keep?: number): Promise<BackupManifest> {
  const st = fs.statSync(part);
  if (st.size !== m.bytes || (await sha256File(part)) !== m.sha256) throw new OsrError('BACKUP_INVALID', `the backup received holds ${st.size} bytes that do not match its manifest (${m.bytes} bytes, sha256 ${m.sha256.slice(0, 16)}…): it was damaged on the way; take it again`);
  const db = new SQLite(part, { readonly: true });
  try {
    checkIntegrity(db, 'the backup received');
  } finally {
    db.close();
  }
  const file = path.join(dir, m.file);
  fs.renameSync(part, file);
  await fsyncDir(dir);
  await writeFileAtomic(path.join(dir, m.file.replace(/\.db$/, '.json')), `${JSON.stringify(m, null, 2)}\n`, 0o600);
  await fsyncDir(dir);
  if (keep !== undefined) await pruneBackups(dir, keep);
  return m;
}

/** The backups in a directory, newest first (a copy without its manifest is not one). */
export function listBackups(dir: string): { manifest: BackupManifest; path: string }[] {
  if (!fs.existsSync(dir)) throw new OsrError('NOT_FOUND', `there is no backup directory ${dir}`);
  const out: { manifest: BackupManifest; path: string }[] = [];
  for (const f of fs.readdirSync(dir)) {
    if (!MANIFEST.test(f)) continue;
    try {
      out.push({ manifest: readManifest(path.join(dir, f)), path: path.join(dir, f) });
    } catch {
      // a damaged manifest: not a backup to offer
    }
  }
  return out.sort((a, b) => b.manifest.takenAt.localeCompare(a.manifest.takenAt));
}

async function pruneBackups(dir: string, keep: number): Promise<void> {
  for (const b of listBackups(dir).slice(Math.max(1, keep))) {
    // the manifest first: a crash between leaves a copy no one lists
    fs.rmSync(b.path, { force: true });
    fs.rmSync(path.join(dir, b.manifest.file), { force: true });
  }
  await fsyncDir(dir);
}

export function readManifest(file: string): BackupManifest {
  let m: Partial<BackupManifest>;
  try {
    const st = fs.statSync(file);
    if (st.size > 64 * 1024) throw new Error('larger than 64 KiB');
    m = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<BackupManifest>;
  } catch (e) {
    throw new OsrError('BACKUP_INVALID', `${file} is not a backup's manifest: ${(e as Error).message}`);
  }
  const ok =
    m.format === 1 &&
    typeof m.file === 'string' &&
    /^vault-[0-9TZ-]+\.db$/.test(m.file) &&
    typeof m.vault?.id === 'string' &&
    typeof m.vault.name === 'string' &&
    isTerm(m.term) &&
    Number.isInteger(m.schemaVersion) &&
    typeof m.takenAt === 'string' &&
    !Number.isNaN(Date.parse(m.takenAt)) &&
    Number.isSafeInteger(m.bytes) &&
    m.bytes! > 0 &&
    m.bytes! <= MAX_BACKUP_BYTES &&
    typeof m.sha256 === 'string' &&
    /^[0-9a-f]{64}$/.test(m.sha256);
  if (!ok) throw new OsrError('BACKUP_INVALID', `${file} is not a backup's manifest osr wrote (a field is missing or malformed)`);
  return m as BackupManifest;
}

export interface RestoreResult {
  manifest: BackupManifest;
  database: string;
  term: VaultTerm;
  /** the database that was there before (--force), moved aside */
  replaced?: string;
}

/**
 * Bring a vault's database back from a backup: `from` is a manifest, or a directory (its
 * newest backup). The copy is checked (checksum, SQLite's integrity, the vault's
 * identity, the schema version), written beside the database and synced, renamed into
 * place, and its next term begun. An existing database is refused unless `force`, which
 * keeps it aside.
 */
export async function restoreBackup(o: { from: string; dataDir: string; database?: string; force?: boolean; now?: number }): Promise<RestoreResult> {
  const now = o.now ?? Date.now();
  const manifestFile = fs.statSync(o.from, { throwIfNoEntry: false })?.isDirectory() ? listBackups(o.from)[0]?.path : o.from;
  if (!manifestFile) throw new OsrError('NOT_FOUND', `${o.from} holds no backup`);
  if (!fs.existsSync(manifestFile)) throw new OsrError('NOT_FOUND', `there is no backup manifest ${manifestFile}`);
  const manifest = readManifest(manifestFile);
  const copyFile = path.join(path.dirname(manifestFile), manifest.file);
  const st = fs.statSync(copyFile, { throwIfNoEntry: false });
  if (!st) throw new OsrError('BACKUP_INVALID', `the backup's database ${copyFile} is missing`);
  if (st.size !== manifest.bytes) throw new OsrError('BACKUP_INVALID', `${copyFile} holds ${st.size} bytes, not the ${manifest.bytes} its manifest says`);
  if ((await sha256File(copyFile)) !== manifest.sha256) throw new OsrError('BACKUP_INVALID', `${copyFile} does not match its manifest's checksum: it was changed or damaged`);
  if (manifest.schemaVersion > SCHEMA_VERSION) throw new OsrError('BACKUP_INVALID', `the backup is at schema version ${manifest.schemaVersion}, newer than the ${SCHEMA_VERSION} this osr knows: restore it with that osr`);

  const database = path.resolve(o.database ?? path.join(o.dataDir, 'vault.db'));
  fs.mkdirSync(path.dirname(database), { recursive: true, mode: 0o700 });
  let replaced: string | undefined;
  if (fs.existsSync(database)) {
    if (!o.force) throw new OsrError('ALREADY_EXISTS', `${database} exists: a vault's database is there already. Restore into another --data-dir, or give --force to keep it aside and restore over it`);
    replaced = `${database}.replaced-${stamp(now)}`;
  }
  const part = `${database}.restoring`;
  fs.rmSync(part, { force: true });
  fs.closeSync(fs.openSync(part, fs.constants.O_CREAT | fs.constants.O_WRONLY | fs.constants.O_EXCL, 0o600));
  fs.copyFileSync(copyFile, part);
  let term: VaultTerm;
  const db = new SQLite(part);
  try {
    checkIntegrity(db, copyFile);
    const facts = describe(db);
    if (facts.vault?.id !== manifest.vault.id) throw new OsrError('BACKUP_INVALID', `${copyFile} holds vault ${facts.vault?.id ?? '(none)'}, not the ${manifest.vault.id} its manifest names`);
    // the restored vault's next term: the old vault, should it come back, is stale
    term = { term: facts.term + 1, since: new Date(now).toISOString(), origin: 'restored', backupTakenAt: manifest.takenAt };
    db.transaction(() => {
      db.prepare('insert into settings (key, value) values (?, ?) on conflict (key) do update set value = excluded.value').run(TERM_KEY, JSON.stringify(term));
      db.prepare('delete from settings where key = ?').run(STALE_KEY);
      // a key handed out before the backup may have been used since, by a provider this copy does not know
      db.prepare('update registration_keys set revoked_at = ? where used_at is null and revoked_at is null').run(now);
      // the restored vault raises it as an alert at its first start (server.ts)
      db.prepare('insert into settings (key, value) values (?, ?) on conflict (key) do update set value = excluded.value').run(RESTORE_NOTICE_KEY, JSON.stringify({ backupTakenAt: manifest.takenAt, restoredAt: new Date(now).toISOString() }));
    })();
    db.pragma('journal_mode = DELETE');
  } catch (e) {
    db.close();
    fs.rmSync(part, { force: true });
    throw e;
  }
  db.close();
  fs.chmodSync(part, 0o600);
  fsyncFile(part);
  // the old database stays whole under its new name (a second link to it), its log and index beside it; then one rename
  // puts the copy in its place: at no instant is there no database, nor a log of another one beside the copy
  const aside = replaced ?? `${database}.orphan-${stamp(now)}`;
  if (replaced) fs.linkSync(database, replaced);
  for (const ext of ['-wal', '-shm']) if (fs.existsSync(`${database}${ext}`)) fs.renameSync(`${database}${ext}`, `${aside}${ext}`);
  fs.renameSync(part, database);
  await fsyncDir(path.dirname(database));
  return { manifest, database, term, ...(replaced ? { replaced } : {}) };
}
