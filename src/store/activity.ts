/**
 * What the vault records about itself and who uses it: events, alerts, the audit trail,
 * settings, API tokens and registration keys. Secrets (tokens, keys) are stored as
 * SHA-256 hashes: the secret is shown once, when it is made.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Kysely, Selectable } from 'kysely';
import { OsrError } from '../domain/errors.js';
import type { Alert, Severity, VaultEvent } from '../domain/resources.js';
import { formatRegistrationKey, parseRegistrationKey } from '../domain/registration-key.js';
import type { Role } from '../domain/roles.js';
import { affected, clampLimit, iso, isUniqueViolation, json, timeId } from './rows.js';
import type { AlertsTable, ApiTokensTable, AuditTable, Database, RegistrationKeysTable } from './schema.js';

export const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');
const secret = () => randomBytes(24).toString('base64url');

export interface ApiToken {
  id: string;
  name: string;
  role: Role;
  createdAt: string;
  createdBy: string | null;
  revokedAt: string | null;
  lastUsedAt: string | null;
}

export interface AuditEntry {
  id: string;
  at: string;
  actor: string;
  role: string | null;
  method: string;
  path: string;
  action: string;
  status: number;
  code: string | null;
}

export interface RegistrationKey {
  id: string;
  vault: string;
  createdAt: string;
  expiresAt: string;
  revokedAt: string | null;
  usedAt: string | null;
  usedBy: string | null;
}

const toToken = (r: Selectable<ApiTokensTable>): ApiToken => ({ id: r.id, name: r.name, role: r.role as Role, createdAt: iso(r.created_at)!, createdBy: r.created_by, revokedAt: iso(r.revoked_at), lastUsedAt: iso(r.last_used_at) });
const toAudit = (r: Selectable<AuditTable>): AuditEntry => ({ id: r.id, at: iso(r.at)!, actor: r.actor, role: r.role, method: r.method, path: r.path, action: r.action, status: r.status, code: r.code });
const toKey = (r: Selectable<RegistrationKeysTable>): RegistrationKey => ({ id: r.id, vault: r.vault, createdAt: iso(r.created_at)!, expiresAt: iso(r.expires_at)!, revokedAt: iso(r.revoked_at), usedAt: iso(r.used_at), usedBy: r.used_by });
const toAlert = (r: Selectable<AlertsTable>): Alert => ({
  id: r.id,
  at: iso(r.at)!,
  kind: r.kind,
  severity: r.severity as Severity,
  target: r.target,
  message: r.message,
  state: r.state as Alert['state'],
  resolvedAt: iso(r.resolved_at),
  deliveries: json(r.deliveries, []),
});

/** Registration keys are valid for 5 days, as ASR's vault credentials are. */
export const REGISTRATION_KEY_VALID_MS = 5 * 24 * 3600_000;

export class ActivityStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly now: () => number = Date.now,
  ) {}

  // ---- events --------------------------------------------------------------------------
  /** Record an event; one with a given id that exists already is not written again (a task run twice). */
  async event(e: { id?: string; target?: string | null; kind: string; severity: Severity; message: string; details?: Record<string, unknown> }): Promise<VaultEvent> {
    const t = this.now();
    const row = { id: e.id ?? timeId(t), at: t, target: e.target ?? null, kind: e.kind, severity: e.severity, message: e.message, details: e.details ? JSON.stringify(e.details) : null };
    await this.db.insertInto('events').values(row).onConflict((oc) => oc.column('id').doNothing()).execute();
    return { ...row, at: iso(t)!, severity: e.severity, details: e.details ?? null };
  }

  /** Record many events at once (an inventory sync's changes). */
  async eventBatch(list: { target?: string | null; kind: string; severity: Severity; message: string; details?: Record<string, unknown> }[]): Promise<void> {
    const t = this.now();
    const rows = list.map((e) => ({ id: timeId(t), at: t, target: e.target ?? null, kind: e.kind, severity: e.severity, message: e.message, details: e.details ? JSON.stringify(e.details) : null }));
    for (let i = 0; i < rows.length; i += 500) await this.db.insertInto('events').values(rows.slice(i, i + 500)).execute();
  }

  async events(f: { target?: string; kind?: string; after?: string; limit?: number } = {}): Promise<VaultEvent[]> {
    let q = this.db.selectFrom('events').selectAll();
    if (f.target) q = q.where('target', '=', f.target);
    if (f.kind) q = q.where('kind', '=', f.kind);
    if (f.after) q = q.where('id', '<', f.after);
    const rows = await q.orderBy('id', 'desc').limit(clampLimit(f.limit)).execute();
    return rows.map((r) => ({ id: r.id, at: iso(r.at)!, target: r.target, kind: r.kind, severity: r.severity as Severity, message: r.message, details: json(r.details, null) }));
  }

  // ---- alerts --------------------------------------------------------------------------
  /**
   * Raise an alert unless one with the same key is active (the same condition seen again,
   * or by another vault process). Returns the new alert, or undefined.
   */
  async raise(a: { key: string; kind: string; severity: Severity; target?: string | null; message: string }): Promise<Alert | undefined> {
    const t = this.now();
    const row = { id: timeId(t), at: t, kind: a.kind, severity: a.severity, target: a.target ?? null, message: a.message, state: 'Active', resolved_at: null, dedupe_key: a.key, deliveries: '[]' };
    try {
      await this.db.insertInto('alerts').values(row).execute();
    } catch (e) {
      if (isUniqueViolation(e)) return undefined;
      throw e;
    }
    return toAlert(row);
  }

  /** Resolve the active alert with this key (the condition cleared). */
  async resolveKey(key: string): Promise<void> {
    await this.db.updateTable('alerts').set({ state: 'Resolved', resolved_at: this.now(), dedupe_key: null }).where('dedupe_key', '=', key).execute();
  }

  async resolve(id: string): Promise<Alert> {
    const r = await this.db.updateTable('alerts').set({ state: 'Resolved', resolved_at: this.now(), dedupe_key: null }).where('id', '=', id).where('state', '=', 'Active').executeTakeFirst();
    if (affected(r) === 0) {
      const a = await this.db.selectFrom('alerts').select('state').where('id', '=', id).executeTakeFirst();
      if (!a) throw new OsrError('NOT_FOUND', `alert ${id} does not exist`);
    }
    return this.alert(id);
  }

  async alert(id: string): Promise<Alert> {
    const r = await this.db.selectFrom('alerts').selectAll().where('id', '=', id).executeTakeFirst();
    if (!r) throw new OsrError('NOT_FOUND', `alert ${id} does not exist`);
    return toAlert(r);
  }

  async alerts(f: { state?: string; target?: string; limit?: number } = {}): Promise<Alert[]> {
    let q = this.db.selectFrom('alerts').selectAll();
    if (f.state) q = q.where('state', '=', f.state);
    if (f.target) q = q.where('target', '=', f.target);
    return (await q.orderBy('id', 'desc').limit(clampLimit(f.limit)).execute()).map(toAlert);
  }

  async recordDelivery(id: string, d: Alert['deliveries'][number]): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      const r = await trx.selectFrom('alerts').select('deliveries').where('id', '=', id).executeTakeFirst();
      if (!r) return;
      await trx
        .updateTable('alerts')
        .set({ deliveries: JSON.stringify([...json<Alert['deliveries']>(r.deliveries, []), d]) })
        .where('id', '=', id)
        .execute();
    });
  }

  // ---- settings ------------------------------------------------------------------------
  async setting<T>(key: string, fallback: T): Promise<T> {
    const r = await this.db.selectFrom('settings').select('value').where('key', '=', key).executeTakeFirst();
    return json(r?.value, fallback);
  }

  async putSetting(key: string, value: unknown): Promise<void> {
    const v = JSON.stringify(value);
    await this.db
      .insertInto('settings')
      .values({ key, value: v })
      .onConflict((oc) => oc.column('key').doUpdateSet({ value: v }))
      .execute();
  }

  /** Store the value unless the key has one; returns the value that holds (the first writer's). */
  async settingOnce<T>(key: string, make: () => T): Promise<T> {
    const existing = await this.db.selectFrom('settings').select('value').where('key', '=', key).executeTakeFirst();
    if (existing) return JSON.parse(existing.value) as T;
    await this.db
      .insertInto('settings')
      .values({ key, value: JSON.stringify(make()) })
      .onConflict((oc) => oc.column('key').doNothing())
      .execute();
    const r = await this.db.selectFrom('settings').select('value').where('key', '=', key).executeTakeFirstOrThrow();
    return JSON.parse(r.value) as T;
  }

  // ---- audit ---------------------------------------------------------------------------
  async audit(e: Omit<AuditEntry, 'id' | 'at'>): Promise<void> {
    const t = this.now();
    await this.db
      .insertInto('audit')
      .values({ id: timeId(t), at: t, ...e })
      .execute();
  }

  async auditTrail(f: { actor?: string; after?: string; since?: number; limit?: number } = {}): Promise<AuditEntry[]> {
    let q = this.db.selectFrom('audit').selectAll();
    if (f.actor) q = q.where('actor', '=', f.actor);
    if (f.since !== undefined) q = q.where('at', '>=', f.since);
    if (f.after) q = q.where('id', '<', f.after);
    return (await q.orderBy('id', 'desc').limit(clampLimit(f.limit)).execute()).map(toAudit);
  }

  // ---- API tokens ----------------------------------------------------------------------
  /** A new token; the text returned is the only copy of its secret. */
  async createToken(name: string, role: Role, createdBy: string | null, fixedId?: string): Promise<{ token: ApiToken; secret: string }> {
    const id = fixedId ?? randomBytes(6).toString('hex');
    const s = `osr_${id}_${secret()}`;
    const row = { id, name, role, secret_hash: sha256(s), created_at: this.now(), created_by: createdBy, revoked_at: null, last_used_at: null };
    await this.db.insertInto('api_tokens').values(row).execute();
    return { token: toToken(row), secret: s };
  }

  async tokens(): Promise<ApiToken[]> {
    return (await this.db.selectFrom('api_tokens').selectAll().orderBy('created_at').execute()).map(toToken);
  }

  /**
   * The first Owner token of a vault without tokens, or undefined when there are tokens.
   * Its id is fixed, so of several vault processes starting at once one inserts it.
   */
  async createFirstToken(): Promise<string | undefined> {
    if ((await this.countTokens()) > 0) return undefined;
    try {
      return (await this.createToken('owner', 'Owner', 'first start', '000000000000')).secret;
    } catch (e) {
      if (isUniqueViolation(e)) return undefined;
      throw e;
    }
  }

  async countTokens(): Promise<number> {
    const r = await this.db.selectFrom('api_tokens').select((eb) => eb.fn.countAll().as('n')).executeTakeFirstOrThrow();
    return Number(r.n);
  }

  /** The token a secret belongs to, if it is valid (not revoked). */
  async authenticate(text: string): Promise<ApiToken | undefined> {
    const r = await this.db.selectFrom('api_tokens').selectAll().where('secret_hash', '=', sha256(text)).executeTakeFirst();
    if (!r || r.revoked_at !== null) return undefined;
    return toToken(r);
  }

  /** Whether the text is a token that was revoked (not one the vault never issued). */
  async isRevokedToken(text: string): Promise<boolean> {
    const r = await this.db.selectFrom('api_tokens').select('revoked_at').where('secret_hash', '=', sha256(text)).executeTakeFirst();
    return r !== undefined && r.revoked_at !== null;
  }

  async touchToken(id: string): Promise<void> {
    await this.db.updateTable('api_tokens').set({ last_used_at: this.now() }).where('id', '=', id).execute();
  }

  async revokeToken(id: string): Promise<ApiToken> {
    const r = await this.db.updateTable('api_tokens').set({ revoked_at: this.now() }).where('id', '=', id).where('revoked_at', 'is', null).executeTakeFirst();
    const row = await this.db.selectFrom('api_tokens').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new OsrError('NOT_FOUND', `token ${id} does not exist`);
    if (affected(r) === 0) throw new OsrError('INVALID_STATE', `token ${id} was revoked already`);
    return toToken(row);
  }

  // ---- registration keys ---------------------------------------------------------------
  async createRegistrationKey(vault: string, caFingerprint: string, validMs = REGISTRATION_KEY_VALID_MS): Promise<{ key: RegistrationKey; text: string }> {
    const t = this.now();
    const id = randomBytes(8).toString('hex');
    const s = secret();
    const row = { id, vault, secret_hash: sha256(s), created_at: t, expires_at: t + validMs, revoked_at: null, used_at: null, used_by: null };
    await this.db.insertInto('registration_keys').values(row).execute();
    return { key: toKey(row), text: formatRegistrationKey({ vault, id, secret: s, ca: caFingerprint }) };
  }

  async registrationKeys(): Promise<RegistrationKey[]> {
    return (await this.db.selectFrom('registration_keys').selectAll().orderBy('created_at', 'desc').execute()).map(toKey);
  }

  async revokeRegistrationKey(id: string): Promise<RegistrationKey> {
    await this.db.updateTable('registration_keys').set({ revoked_at: this.now() }).where('id', '=', id).where('revoked_at', 'is', null).execute();
    const r = await this.db.selectFrom('registration_keys').selectAll().where('id', '=', id).executeTakeFirst();
    if (!r) throw new OsrError('NOT_FOUND', `registration key ${id} does not exist`);
    return toKey(r);
  }

  /**
   * Use a key once: checks the vault, the secret, expiry and revocation, and marks it used
   * in the same statement, so two providers racing with one key cannot both register.
   */
  async useRegistrationKey(text: string, vault: string, usedBy: string): Promise<RegistrationKey> {
    const k = parseRegistrationKey(text);
    if (k.vault !== vault) throw new OsrError('REGISTRATION_KEY_INVALID', `the key was issued by vault "${k.vault}", not by this vault "${vault}"`, { keyVault: k.vault });
    const row = await this.db.selectFrom('registration_keys').selectAll().where('id', '=', k.id).executeTakeFirst();
    const given = Buffer.from(sha256(k.secret));
    if (!row || !timingSafeEqual(given, Buffer.from(row.secret_hash))) throw new OsrError('REGISTRATION_KEY_INVALID', 'the registration key is not one this vault issued');
    const t = this.now();
    if (row.revoked_at !== null) throw new OsrError('REGISTRATION_KEY_REVOKED', `registration key ${k.id} was revoked at ${iso(row.revoked_at)}`);
    if (row.expires_at <= t) throw new OsrError('REGISTRATION_KEY_EXPIRED', `registration key ${k.id} expired at ${iso(row.expires_at)}`, { expiredAt: iso(row.expires_at) });
    const r = await this.db.updateTable('registration_keys').set({ used_at: t, used_by: usedBy }).where('id', '=', k.id).where('used_at', 'is', null).executeTakeFirst();
    if (affected(r) === 0) throw new OsrError('REGISTRATION_KEY_USED', `registration key ${k.id} was used already`, { usedBy: row.used_by });
    return toKey({ ...row, used_at: t, used_by: usedBy });
  }

  /** Give a key back when the registration it was used for failed after all. */
  async releaseRegistrationKey(id: string): Promise<void> {
    await this.db.updateTable('registration_keys').set({ used_at: null, used_by: null }).where('id', '=', id).execute();
  }
}
