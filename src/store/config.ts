/**
 * The vault's configuration: policies, cloud pairings, network and storage mappings, and
 * recovery plans. Rules that need other tables (a policy in use cannot be deleted, a
 * pairing's clouds must exist) are checked here, inside the write's transaction.
 */
import { randomUUID } from 'node:crypto';
import type { Kysely, Selectable } from 'kysely';
import { OsrError } from '../domain/errors.js';
import type { PolicySettings } from '../domain/policy.js';
import type { CloudPairing, Mapping, Policy, RecoveryPlan, RecoveryPlanSpec } from '../domain/resources.js';
import { affected, isUniqueViolation, iso, json } from './rows.js';
import type { Database, MappingsTable, PoliciesTable, RecoveryPlansTable } from './schema.js';

export const MappingKind = { Network: 'network_mappings', Storage: 'storage_mappings' } as const;
export type MappingKind = (typeof MappingKind)[keyof typeof MappingKind];

const toPolicy = (r: Selectable<PoliciesTable>): Policy => ({ id: r.id, name: r.name, settings: json(r.settings, {} as PolicySettings), createdAt: iso(r.created_at)!, updatedAt: iso(r.updated_at)! });
const toMapping = (r: Selectable<MappingsTable>): Mapping => ({ id: r.id, sourceId: r.source_id, targetId: r.target_id, createdAt: iso(r.created_at)! });
const toPlan = (r: Selectable<RecoveryPlansTable>): RecoveryPlan => ({ ...json<RecoveryPlanSpec>(r.body, { name: r.name, groups: [] }), id: r.id, name: r.name, createdAt: iso(r.created_at)!, updatedAt: iso(r.updated_at)! });

async function unique<T>(what: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (isUniqueViolation(e)) throw new OsrError('ALREADY_EXISTS', `${what} already exists`);
    throw e;
  }
}

export class ConfigStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly now: () => number = Date.now,
  ) {}

  // ---- policies --------------------------------------------------------------------------
  async policies(): Promise<Policy[]> {
    return (await this.db.selectFrom('policies').selectAll().orderBy('name').execute()).map(toPolicy);
  }

  async policy(id: string): Promise<Policy> {
    const r = await this.db.selectFrom('policies').selectAll().where('id', '=', id).executeTakeFirst();
    if (!r) throw new OsrError('NOT_FOUND', `policy ${id} does not exist`);
    return toPolicy(r);
  }

  async createPolicy(name: string, settings: PolicySettings): Promise<Policy> {
    const t = this.now();
    const row = { id: randomUUID(), name, settings: JSON.stringify(settings), created_at: t, updated_at: t };
    await unique(`a policy named ${name}`, () => this.db.insertInto('policies').values(row).execute());
    return toPolicy(row);
  }

  async updatePolicy(id: string, patch: { name?: string; settings: PolicySettings }): Promise<Policy> {
    const r = await unique(`a policy named ${patch.name}`, () =>
      this.db
        .updateTable('policies')
        .set({ ...(patch.name ? { name: patch.name } : {}), settings: JSON.stringify(patch.settings), updated_at: this.now() })
        .where('id', '=', id)
        .executeTakeFirst(),
    );
    if (affected(r) === 0) throw new OsrError('NOT_FOUND', `policy ${id} does not exist`);
    return this.policy(id);
  }

  async deletePolicy(id: string): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      const used = await trx.selectFrom('cloud_pairings').select('id').where('policy_id', '=', id).limit(1).executeTakeFirst();
      if (used) throw new OsrError('INVALID_STATE', `policy ${id} is used by cloud pairing ${used.id}; remove the pairing first`, { pairing: used.id });
      const r = await trx.deleteFrom('policies').where('id', '=', id).executeTakeFirst();
      if (affected(r) === 0) throw new OsrError('NOT_FOUND', `policy ${id} does not exist`);
    });
  }

  // ---- cloud pairings --------------------------------------------------------------------
  async pairings(): Promise<CloudPairing[]> {
    const rows = await this.db.selectFrom('cloud_pairings').selectAll().orderBy('created_at').execute();
    return rows.map((r) => ({ id: r.id, policyId: r.policy_id, sourceCloudId: r.source_cloud_id, targetCloudId: r.target_cloud_id, createdAt: iso(r.created_at)! }));
  }

  async pairing(id: string): Promise<CloudPairing> {
    const r = await this.db.selectFrom('cloud_pairings').selectAll().where('id', '=', id).executeTakeFirst();
    if (!r) throw new OsrError('NOT_FOUND', `cloud pairing ${id} does not exist`);
    return { id: r.id, policyId: r.policy_id, sourceCloudId: r.source_cloud_id, targetCloudId: r.target_cloud_id, createdAt: iso(r.created_at)! };
  }

  async pairingOfSource(cloudId: string): Promise<CloudPairing | undefined> {
    const r = await this.db.selectFrom('cloud_pairings').select('id').where('source_cloud_id', '=', cloudId).executeTakeFirst();
    return r && this.pairing(r.id);
  }

  async createPairing(p: { policyId: string; sourceCloudId: string; targetCloudId: string }): Promise<CloudPairing> {
    if (p.sourceCloudId === p.targetCloudId) throw new OsrError('INVALID_ARGUMENT', 'a cloud cannot be paired with itself: choose another target cloud');
    const t = this.now();
    const id = randomUUID();
    await this.db.transaction().execute(async (trx) => {
      // inside the transaction every query goes through trx: SQLite has one connection, held by it
      const policy = await trx.selectFrom('policies').select('id').where('id', '=', p.policyId).executeTakeFirst();
      if (!policy) throw new OsrError('NOT_FOUND', `policy ${p.policyId} does not exist`);
      for (const c of [p.sourceCloudId, p.targetCloudId]) {
        const cloud = await trx.selectFrom('inventory').select('id').where('id', '=', c).where('kind', '=', 'cloud').executeTakeFirst();
        if (!cloud) throw new OsrError('NOT_FOUND', `cloud ${c} does not exist in any fabric's inventory`, { cloud: c });
      }
      await unique(`a pairing of cloud ${p.sourceCloudId}`, () =>
        trx.insertInto('cloud_pairings').values({ id, policy_id: p.policyId, source_cloud_id: p.sourceCloudId, target_cloud_id: p.targetCloudId, created_at: t }).execute(),
      );
    });
    return this.pairing(id);
  }

  async deletePairing(id: string): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      const used = await trx.selectFrom('protected_items').select('id').where('pairing_id', '=', id).limit(1).executeTakeFirst();
      if (used) throw new OsrError('INVALID_STATE', `cloud pairing ${id} still covers protected items (e.g. ${used.id}); disable their protection first`, { item: used.id });
      const r = await trx.deleteFrom('cloud_pairings').where('id', '=', id).executeTakeFirst();
      if (affected(r) === 0) throw new OsrError('NOT_FOUND', `cloud pairing ${id} does not exist`);
    });
  }

  // ---- network and storage mappings ----------------------------------------------------
  async mappings(kind: MappingKind): Promise<Mapping[]> {
    return (await this.db.selectFrom(kind).selectAll().orderBy('created_at').execute()).map(toMapping);
  }

  async mappingOf(kind: MappingKind, sourceId: string): Promise<Mapping | undefined> {
    const r = await this.db.selectFrom(kind).selectAll().where('source_id', '=', sourceId).executeTakeFirst();
    return r && toMapping(r);
  }

  async createMapping(kind: MappingKind, m: { sourceId: string; targetId: string }): Promise<Mapping> {
    const invKind = kind === MappingKind.Network ? 'vm-network' : 'storage-classification';
    const what = kind === MappingKind.Network ? 'VM network' : 'storage classification';
    if (m.sourceId === m.targetId) throw new OsrError('INVALID_ARGUMENT', `a ${what} cannot be mapped to itself`);
    for (const id of [m.sourceId, m.targetId]) {
      const o = await this.db.selectFrom('inventory').select('id').where('id', '=', id).where('kind', '=', invKind).executeTakeFirst();
      if (!o) throw new OsrError('NOT_FOUND', `${what} ${id} does not exist in any fabric's inventory`, { id });
    }
    const row = { id: randomUUID(), source_id: m.sourceId, target_id: m.targetId, created_at: this.now() };
    await unique(`a mapping of ${what} ${m.sourceId}`, () => this.db.insertInto(kind).values(row).execute());
    return toMapping(row);
  }

  async deleteMapping(kind: MappingKind, id: string): Promise<void> {
    const r = await this.db.deleteFrom(kind).where('id', '=', id).executeTakeFirst();
    if (affected(r) === 0) throw new OsrError('NOT_FOUND', `mapping ${id} does not exist`);
  }

  // ---- recovery plans --------------------------------------------------------------------
  async plans(): Promise<RecoveryPlan[]> {
    return (await this.db.selectFrom('recovery_plans').selectAll().orderBy('name').execute()).map(toPlan);
  }

  async plan(idOrName: string): Promise<RecoveryPlan> {
    const r = await this.db
      .selectFrom('recovery_plans')
      .selectAll()
      .where((eb) => eb.or([eb('id', '=', idOrName), eb('name', '=', idOrName)]))
      .executeTakeFirst();
    if (!r) throw new OsrError('NOT_FOUND', `recovery plan ${idOrName} does not exist`);
    return toPlan(r);
  }

  async createPlan(spec: RecoveryPlanSpec): Promise<RecoveryPlan> {
    const t = this.now();
    const row = { id: randomUUID(), name: spec.name, body: JSON.stringify(spec), created_at: t, updated_at: t };
    await unique(`a recovery plan named ${spec.name}`, () => this.db.insertInto('recovery_plans').values(row).execute());
    return toPlan(row);
  }

  async updatePlan(id: string, spec: RecoveryPlanSpec): Promise<RecoveryPlan> {
    const r = await unique(`a recovery plan named ${spec.name}`, () =>
      this.db.updateTable('recovery_plans').set({ name: spec.name, body: JSON.stringify(spec), updated_at: this.now() }).where('id', '=', id).executeTakeFirst(),
    );
    if (affected(r) === 0) throw new OsrError('NOT_FOUND', `recovery plan ${id} does not exist`);
    return this.plan(id);
  }

  async deletePlan(id: string): Promise<void> {
    const r = await this.db.deleteFrom('recovery_plans').where('id', '=', id).executeTakeFirst();
    if (affected(r) === 0) throw new OsrError('NOT_FOUND', `recovery plan ${id} does not exist`);
  }
}
