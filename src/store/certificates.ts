/**
 * The certificates the vault's CA issued to providers and agents: recorded when issued,
 * revoked when their host or fabric is removed, and listed (until they expire) in the
 * revocation list the vault publishes to providers, which hand it to their agents.
 */
import type { Kysely } from 'kysely';
import { OsrError } from '../domain/errors.js';
import type { Database } from './schema.js';

export interface IssuedRecord {
  serial: string;
  fabricId: string | null;
  role: string;
  commonName: string;
  notAfter: number;
}

export class CertificateStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly now: () => number,
  ) {}

  async record(c: IssuedRecord): Promise<void> {
    await this.db
      .insertInto('certificates')
      .values({ serial: c.serial.toLowerCase(), fabric_id: c.fabricId, role: c.role, common_name: c.commonName, issued_at: this.now(), not_after: c.notAfter, revoked_at: null, reason: null })
      .onConflict((oc) => oc.column('serial').doNothing())
      .execute();
  }

  /** Revoke every certificate of a fabric's holder (an agent's host name, a provider's id; of one role when given); answers how many. */
  async revokeHolder(fabricId: string, commonName: string, reason: string, role?: string): Promise<number> {
    let q = this.db.updateTable('certificates').set({ revoked_at: this.now(), reason }).where('fabric_id', '=', fabricId).where('common_name', '=', commonName).where('revoked_at', 'is', null);
    if (role !== undefined) q = q.where('role', '=', role);
    const r = await q.executeTakeFirst();
    return Number(r.numUpdatedRows);
  }

  /** The serials of a holder's certificates that are valid now (not revoked, not expired), the newest first. */
  async live(fabricId: string, role: string, commonName: string): Promise<string[]> {
    const rows = await this.db.selectFrom('certificates').select('serial').where('fabric_id', '=', fabricId).where('role', '=', role).where('common_name', '=', commonName).where('revoked_at', 'is', null).where('not_after', '>', this.now()).orderBy('issued_at', 'desc').orderBy('serial').execute();
    return rows.map((r) => r.serial);
  }

  /** Revoke one certificate (superseded by a renewed one). */
  async revokeSerial(serial: string, reason: string): Promise<void> {
    await this.db.updateTable('certificates').set({ revoked_at: this.now(), reason }).where('serial', '=', serial.toLowerCase()).where('revoked_at', 'is', null).execute();
  }

  /** Revoke every certificate issued for a fabric (it was removed); answers how many. */
  async revokeFabric(fabricId: string, reason: string): Promise<number> {
    const r = await this.db.updateTable('certificates').set({ revoked_at: this.now(), reason }).where('fabric_id', '=', fabricId).where('revoked_at', 'is', null).executeTakeFirst();
    return Number(r.numUpdatedRows);
  }

  /**
   * The next revocation list's CRL number: above every number given before (kept in the
   * database, taken by compare-and-set so that two vault processes never give one number
   * twice) and at least the time in seconds, so that a vault restored from an older backup
   * still numbers its lists above the ones agents hold.
   */
  async nextCrlNumber(): Promise<number> {
    const key = 'crl-number';
    for (let attempt = 0; attempt < 20; attempt++) {
      const row = await this.db.selectFrom('settings').select('value').where('key', '=', key).executeTakeFirst();
      const last = row ? Number(JSON.parse(row.value)) : 0;
      const next = Math.max((Number.isSafeInteger(last) ? last : 0) + 1, Math.floor(this.now() / 1000));
      if (!row) {
        const r = await this.db.insertInto('settings').values({ key, value: JSON.stringify(next) }).onConflict((oc) => oc.column('key').doNothing()).executeTakeFirst();
        if (Number(r.numInsertedOrUpdatedRows ?? 0n) === 1) return next;
        continue;
      }
      const r = await this.db.updateTable('settings').set({ value: JSON.stringify(next) }).where('key', '=', key).where('value', '=', row.value).executeTakeFirst();
      if (Number(r.numUpdatedRows) === 1) return next;
    }
    throw new OsrError('STORE_UNAVAILABLE', 'the next revocation list number could not be taken: too many vault processes took one at once; the provider asks again');
  }

  /** Revoked certificates that have not expired yet: what the revocation list names. */
  async revoked(): Promise<{ serial: string; revokedAt: number; commonName: string; reason: string | null }[]> {
    const rows = await this.db.selectFrom('certificates').select(['serial', 'revoked_at', 'common_name', 'reason']).where('revoked_at', 'is not', null).where('not_after', '>', this.now()).orderBy('serial').execute();
    return rows.map((r) => ({ serial: r.serial, revokedAt: Number(r.revoked_at), commonName: r.common_name, reason: r.reason }));
  }
}
