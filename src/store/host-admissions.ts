/**
 * Host admission (docs/security.md, Certificates): the vault certifies an agent only for a
 * host it admitted. The hosts of a fabric's first inventory are admitted with it — that
 * report comes from the provider an Owner's registration key just let in — and a host
 * that appears later waits for an Owner's approval, so a stolen provider key cannot have
 * a host of its own certified. A host that leaves the inventory loses its admission (its
 * certificates are revoked too), and must be admitted again if it comes back.
 */
import type { Kysely } from 'kysely';
import { OsrError } from '../domain/errors.js';
import type { AdmissionState, HostAdmission } from '../domain/resources.js';
import type { Database } from './schema.js';

export type { AdmissionState, HostAdmission };

export class HostAdmissionStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly now: () => number,
  ) {}

  /**
   * Hosts the fabric's inventory reports now: new ones are recorded, admitted when this is
   * the fabric's first inventory, pending otherwise; hosts gone from it lose their record,
   * and so do `replaced`: names whose inventory record was removed (their certificates are
   * revoked) even if the name is reported again under another id — such a host is new.
   * Runs in `trx` (the inventory's own transaction). Answers the hosts that became pending.
   */
  async reported(trx: Kysely<Database>, fabricId: string, hosts: readonly string[], o: { firstInventory: boolean; replaced: readonly string[] }): Promise<string[]> {
    const t = this.now();
    const firstInventory = o.firstInventory;
    if (o.replaced.length > 0) await trx.deleteFrom('host_admissions').where('fabric_id', '=', fabricId).where('host_name', 'in', [...o.replaced]).execute();
    const known = new Map((await trx.selectFrom('host_admissions').selectAll().where('fabric_id', '=', fabricId).execute()).map((r) => [r.host_name, r]));
    const pending: string[] = [];
    for (const host of new Set(hosts)) {
      if (known.has(host)) continue;
      const admitted = firstInventory;
      await trx
        .insertInto('host_admissions')
        .values({ fabric_id: fabricId, host_name: host, state: admitted ? 'admitted' : 'pending', first_seen_at: t, decided_at: admitted ? t : null, decided_by: admitted ? 'first-inventory' : null })
        .onConflict((oc) => oc.columns(['fabric_id', 'host_name']).doNothing())
        .execute();
      if (!admitted) pending.push(host);
    }
    const gone = [...known.keys()].filter((h) => !hosts.includes(h));
    if (gone.length > 0) await trx.deleteFrom('host_admissions').where('fabric_id', '=', fabricId).where('host_name', 'in', gone).execute();
    return pending;
  }

  /** Forget a removed fabric's hosts: a fabric registered again under its name starts anew. */
  async removeFabric(fabricId: string): Promise<void> {
    await this.db.deleteFrom('host_admissions').where('fabric_id', '=', fabricId).execute();
  }

  async get(fabricId: string, host: string): Promise<HostAdmission | undefined> {
    const r = await this.db.selectFrom('host_admissions').selectAll().where('fabric_id', '=', fabricId).where('host_name', '=', host).executeTakeFirst();
    return r && toAdmission(r);
  }

  async list(f: { fabricId?: string | undefined; state?: AdmissionState | undefined } = {}): Promise<HostAdmission[]> {
    let q = this.db.selectFrom('host_admissions').selectAll();
    if (f.fabricId !== undefined) q = q.where('fabric_id', '=', f.fabricId);
    if (f.state !== undefined) q = q.where('state', '=', f.state);
    return (await q.orderBy('fabric_id').orderBy('host_name').execute()).map(toAdmission);
  }

  /** An Owner admits a host its fabric reports (NOT_FOUND when it reports none of that name); admitted already: unchanged. */
  async approve(fabricId: string, host: string, by: string): Promise<HostAdmission> {
    const now = await this.get(fabricId, host);
    if (!now) throw new OsrError('NOT_FOUND', `fabric ${fabricId} reports no host ${host} waiting for admission`, { fabric: fabricId, host });
    if (now.state === 'admitted') return now;
    await this.db.updateTable('host_admissions').set({ state: 'admitted', decided_at: this.now(), decided_by: by }).where('fabric_id', '=', fabricId).where('host_name', '=', host).execute();
    return (await this.get(fabricId, host))!;
  }
}

function toAdmission(r: { fabric_id: string; host_name: string; state: string; first_seen_at: number; decided_at: number | null; decided_by: string | null }): HostAdmission {
  return { fabricId: r.fabric_id, host: r.host_name, state: r.state === 'admitted' ? 'admitted' : 'pending', firstSeenAt: new Date(Number(r.first_seen_at)).toISOString(), decidedAt: r.decided_at === null ? null : new Date(Number(r.decided_at)).toISOString(), decidedBy: r.decided_by };
}
