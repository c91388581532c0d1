/**
 * The certificates the vault's CA issued to providers and agents: recorded when issued,
 * revoked when their host or fabric is removed, and listed (until they expire) in the
 * revocation list the vault publishes to providers, which hand it to their agents.
 */
import type { Kysely } from 'kysely';
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

  /** Revoke every certificate of a fabric's holder (an agent's host name, a provider's id); answers how many. */
  async revokeHolder(fabricId: string, commonName: string, reason: string): Promise<number> {
    const r = await this.db.updateTable('certificates').set({ revoked_at: this.now(), reason }).where('fabric_id', '=', fabricId).where('common_name', '=', commonName).where('revoked_at', 'is', null).executeTakeFirst();
    return Number(r.numUpdatedRows);
  }

  /** The serials of a holder's certificates that are valid now: not revoked, not expired. */
  async live(fabricId: string, role: string, commonName: string): Promise<string[]> {
    const rows = await this.db.selectFrom('certificates').select('serial').where('fabric_id', '=', fabricId).where('role', '=', role).where('common_name', '=', commonName).where('revoked_at', 'is', null).where('not_after', '>', this.now()).execute();
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
   * How many revocations the vault ever made (records are never deleted, and a revocation
   * is never undone): the revocation list's CRL number, which only grows.
   */
  async revocationCount(): Promise<number> {
    const r = await this.db.selectFrom('certificates').select((eb) => eb.fn.countAll().as('n')).where('revoked_at', 'is not', null).executeTakeFirst();
    return Number(r?.n ?? 0);
  }

  /** Revoked certificates that have not expired yet: what the revocation list names. */
  async revoked(): Promise<{ serial: string; revokedAt: number; commonName: string; reason: string | null }[]> {
    const rows = await this.db.selectFrom('certificates').select(['serial', 'revoked_at', 'common_name', 'reason']).where('revoked_at', 'is not', null).where('not_after', '>', this.now()).orderBy('serial').execute();
    return rows.map((r) => ({ serial: r.serial, revokedAt: Number(r.revoked_at), commonName: r.common_name, reason: r.reason }));
  }
}
