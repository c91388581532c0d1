/**
 * Protected items and their recovery points. An item is created by the enable-protection
 * job (one per VM: the VM's inventory id is the item's id, so a VM cannot be protected
 * twice) and changes state as its jobs and its provider's reports say.
 */
import { sql, type ExpressionBuilder, type Kysely, type Selectable, type Transaction } from 'kysely';
import { OsrError } from '../domain/errors.js';
import { failoverReadiness, Health, ProtectionState, type HealthReason, type ItemReplication, type ItemSummary, type ProtectedItem, type RecoveryPoint } from '../domain/resources.js';
import { drillDueBefore, lastDrillAt } from '../domain/runs.js';
import { Dialect } from './database.js';
import { affected, clampLimit, iso, isUniqueViolation, json } from './rows.js';
import type { Database, ProtectedItemsTable } from './schema.js';

export interface ItemFilter {
  state?: string;
  health?: string;
  pairingId?: string;
  fabricId?: string;
  /** names starting with this */
  namePrefix?: string;
  /** the members of this replication group */
  group?: string;
  /** these items only (a recovery plan's) */
  ids?: readonly string[];
  /** the id of the last item of the previous page */
  after?: string;
  limit?: number;
}

/** An item's facts as its provider reports them, or a job that holds it records them. */
export interface ItemPatch {
  health?: Health;
  healthReasons?: HealthReason[];
  rpoSeconds?: number | null;
  lastPointAt?: number | null;
  progress?: number | null;
  replication?: ItemReplication;
}

/** What a job that holds an item writes: its facts, its state, its points, and the item's release. */
export interface ItemChange extends ItemPatch {
  state?: ProtectionState;
  /** replace the item's recovery points (in the same transaction) */
  points?: { id: string; at: number; consistency: 'crash' | 'app'; cut?: string | undefined }[];
  /** the job lets go of the item (its active job becomes none) */
  release?: boolean;
}

/**
 * The job that writes an item, as the write checks it: the item's active job, held by
 * `owner` (the vault process whose lease it runs under), or, with no owner, a job that
 * ended (Failed or Cancelled, held by no vault: its end handler).
 */
export interface ItemHolder {
  jobId: string;
  owner: string | null;
}

type PointRow = { id: string; at: number; consistency: 'crash' | 'app'; cut?: string | undefined };

const toItem = (r: Selectable<ProtectedItemsTable>): ProtectedItem => ({
  id: r.id,
  name: r.name,
  fabricId: r.fabric_id,
  pairingId: r.pairing_id,
  state: r.state as ProtectionState,
  health: r.health as Health,
  healthReasons: json(r.health_reasons, []),
  rpoSeconds: r.rpo_seconds,
  lastRecoveryPointAt: iso(r.last_point_at),
  progress: r.progress,
  replication: json<ItemReplication>(r.replication, {}),
  activeJobId: r.active_job_id,
  readiness: failoverReadiness(r.state as ProtectionState, iso(r.last_point_at)),
  createdAt: iso(r.created_at)!,
  updatedAt: iso(r.updated_at)!,
});

/** An item's replication facts at one instant, as its source reported them. */
export interface ItemSample {
  at: string;
  rpoSeconds: number | null;
  churnBytesPerSec: number | null;
  peakChurnBytesPerSec: number | null;
  pendingLogBytes: number | null;
}

/** All items' RPO in one span of time. */
export interface RpoBucket {
  at: string;
  worstRpoSeconds: number | null;
  meanRpoSeconds: number | null;
  /** items with a sample in the span */
  items: number;
}

/** How long samples are kept, and how far apart they are at least. */
export const SAMPLES_KEPT_MS = 7 * 24 * 3600_000;
export const SAMPLE_INTERVAL_MS = 60_000;

export class ItemStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly now: () => number = Date.now,
    private readonly dialect: Dialect = Dialect.Sqlite,
  ) {}

  async list(f: ItemFilter = {}): Promise<ProtectedItem[]> {
    if (f.ids && f.ids.length === 0) return [];
    let q = this.db.selectFrom('protected_items').selectAll();
    if (f.ids) q = q.where('id', 'in', f.ids);
    if (f.state) q = q.where('state', '=', f.state);
    if (f.health) q = q.where('health', '=', f.health);
    if (f.pairingId) q = q.where('pairing_id', '=', f.pairingId);
    if (f.fabricId) q = q.where('fabric_id', '=', f.fabricId);
    if (f.group) q = q.where('replication_group', '=', f.group);
    if (f.namePrefix) q = q.where('name', '>=', f.namePrefix).where('name', '<', `${f.namePrefix}\uffff`);
    if (f.after) q = q.where('id', '>', f.after);
    return (await q.orderBy('id').limit(clampLimit(f.limit)).execute()).map(toItem);
  }

  async get(id: string): Promise<ProtectedItem> {
    const r = await this.db.selectFrom('protected_items').selectAll().where('id', '=', id).executeTakeFirst();
    if (!r) throw new OsrError('NOT_FOUND', `protected item ${id} does not exist`);
    return toItem(r);
  }

  async find(id: string): Promise<ProtectedItem | undefined> {
    const r = await this.db.selectFrom('protected_items').selectAll().where('id', '=', id).executeTakeFirst();
    return r && toItem(r);
  }

  /** Create the item of a VM; ALREADY_EXISTS when the VM is protected already. */
  async create(i: { id: string; name: string; fabricId: string; pairingId: string; state: ProtectionState; activeJobId: string | null; group?: string | undefined }): Promise<ProtectedItem> {
    const t = this.now();
    const row = {
      id: i.id,
      name: i.name,
      fabric_id: i.fabricId,
      pairing_id: i.pairingId,
      state: i.state,
      health: Health.NotApplicable,
      health_reasons: '[]',
      rpo_seconds: null,
      last_point_at: null,
      last_drill_at: null,
      replication: JSON.stringify(i.group !== undefined ? { group: i.group } : {}),
      replication_group: i.group ?? null,
      progress: null,
      active_job_id: i.activeJobId,
      created_at: t,
      updated_at: t,
    };
    try {
      await this.db.insertInto('protected_items').values(row).execute();
    } catch (e) {
      if (isUniqueViolation(e)) throw new OsrError('ALREADY_EXISTS', `VM ${i.id} is protected already (or its protection is being enabled)`, { item: i.id });
      throw e;
    }
    return toItem(row);
  }

  /**
   * Record an item's facts (a provider's report, a mapping's new placement); returns it
   * before and after (health changes raise events). Its state and its active job change
   * only through takeActiveJob, transition and setIdleState.
   */
  async update(id: string, p: ItemPatch): Promise<{ before: ProtectedItem; after: ProtectedItem }> {
    const before = await this.get(id);
    const r = await this.db
      .updateTable('protected_items')
      .set({ ...this.columns(p), updated_at: this.now() })
      .where('id', '=', id)
      .executeTakeFirst();
    if (affected(r) === 0) throw new OsrError('NOT_FOUND', `protected item ${id} does not exist`);
    return { before, after: await this.get(id) };
  }

  /**
   * Make `jobId` the item's active job and set its state, only if its active job is still
   * `expected` and its state still `from`: of two requests racing for one item, one wins.
   * False when it lost.
   */
  async takeActiveJob(id: string, t: { jobId: string | null; expected: string | null; from: ProtectionState; state: ProtectionState }): Promise<boolean> {
    const q = this.db.updateTable('protected_items').set({ active_job_id: t.jobId, state: t.state, updated_at: this.now() }).where('id', '=', id).where('state', '=', t.from);
    const r = await (t.expected === null ? q.where('active_job_id', 'is', null) : q.where('active_job_id', '=', t.expected)).executeTakeFirst();
    return affected(r) === 1;
  }

  /**
   * A change by the job that holds the item (docs/design/vault.md, "Item state"). One
   * UPDATE matches only while the job is the item's active job, the item is in one of
   * `from`, and the job is still the holder's: held by `by.owner`, or ended and held by no
   * vault. Refused otherwise, the item unchanged: LEASE_LOST (another vault process holds
   * the job now, or it was restarted), ITEM_NOT_HELD (another job holds the item),
   * INVALID_STATE (the item is in another state), NOT_FOUND.
   */
  async transition(id: string, by: ItemHolder, from: readonly ProtectionState[], c: ItemChange): Promise<ProtectedItem> {
    const set = {
      ...this.columns(c),
      ...(c.state !== undefined ? { state: c.state } : {}),
      ...(c.release ? { active_job_id: null } : {}),
      updated_at: this.now(),
    };
    const write = async (db: Kysely<Database> | Transaction<Database>) => {
      const r = await db
        .updateTable('protected_items')
        .set(set)
        .where('id', '=', id)
        .where('active_job_id', '=', by.jobId)
        .where('state', 'in', [...from])
        .where((eb) => eb.exists(this.holderJob(eb, by)))
        .executeTakeFirst();
      if (affected(r) === 1) return true;
      return false;
    };
    let done: boolean;
    if (c.points === undefined) done = await write(this.db);
    else {
      const points = c.points;
      done = await this.db.transaction().execute(async (trx) => {
        if (!(await write(trx))) return false;
        await this.writePoints(trx, id, points);
        return true;
      });
    }
    if (!done) await this.refusal(id, by, from);
    return this.get(id);
  }

  /** Remove an item held by a job, on the same terms as transition (the item's last change). */
  async removeHeld(id: string, by: ItemHolder, from: readonly ProtectionState[]): Promise<void> {
    const r = await this.db
      .deleteFrom('protected_items')
      .where('id', '=', id)
      .where('active_job_id', '=', by.jobId)
      .where('state', 'in', [...from])
      .where((eb) => eb.exists(this.holderJob(eb, by)))
      .executeTakeFirst();
    if (affected(r) === 0) await this.refusal(id, by, from);
  }

  /** Why a transition matched no row: the item, the job's holder, the item's holder, or its state. */
  private async refusal(id: string, by: ItemHolder, from: readonly ProtectionState[]): Promise<never> {
    const item = await this.db.selectFrom('protected_items').select(['state', 'active_job_id']).where('id', '=', id).executeTakeFirst();
    if (!item) throw new OsrError('NOT_FOUND', `protected item ${id} does not exist`);
    const job = await this.db.selectFrom('jobs').select(['locked_by', 'state']).where('id', '=', by.jobId).executeTakeFirst();
    if (by.owner !== null && job?.locked_by !== by.owner) {
      throw new OsrError('LEASE_LOST', `job ${by.jobId} is held by ${job?.locked_by ?? 'no vault'} now, not by ${by.owner}: it changes nothing of protected item ${id}`, { holder: job?.locked_by ?? null, item: id });
    }
    if (by.owner === null && (job?.locked_by !== null || !['Failed', 'Cancelled'].includes(job?.state ?? ''))) {
      throw new OsrError('LEASE_LOST', `job ${by.jobId} is ${job?.state ?? 'gone'} again${job?.locked_by ? ` in ${job.locked_by}` : ''}: its end changes nothing of protected item ${id}`, { holder: job?.locked_by ?? null, item: id });
    }
    if (item.active_job_id !== by.jobId) {
      throw new OsrError('ITEM_NOT_HELD', `job ${by.jobId} no longer holds protected item ${id}: ${item.active_job_id ? `job ${item.active_job_id} does` : 'no job does'}, and the item is ${item.state}`, { item: id, activeJobId: item.active_job_id, state: item.state });
    }
    throw new OsrError('INVALID_STATE', `protected item ${id} is ${item.state}; job ${by.jobId} expected it ${from.join(' or ')}`, { item: id, state: item.state });
  }

  /** The job's row while `by` holds it: held by its owner, or ended and held by no vault. */
  private holderJob(eb: ExpressionBuilder<Database, 'protected_items'>, by: ItemHolder) {
    let job = eb.selectFrom('jobs').select('jobs.id').where('jobs.id', '=', by.jobId);
    job = by.owner === null ? job.where('jobs.locked_by', 'is', null).where('jobs.state', 'in', ['Failed', 'Cancelled']) : job.where('jobs.locked_by', '=', by.owner);
    // PostgreSQL: a claim of the job waits until the write is done (and skips the job meanwhile)
    return this.dialect === Dialect.Postgres ? job.forShare() : job;
  }

  private columns(p: ItemPatch) {
    return {
      ...(p.health !== undefined ? { health: p.health } : {}),
      ...(p.healthReasons !== undefined ? { health_reasons: JSON.stringify(p.healthReasons) } : {}),
      ...(p.rpoSeconds !== undefined ? { rpo_seconds: p.rpoSeconds } : {}),
      ...(p.lastPointAt !== undefined ? { last_point_at: p.lastPointAt } : {}),
      ...(p.progress !== undefined ? { progress: p.progress } : {}),
      ...(p.replication !== undefined ? { replication: JSON.stringify(p.replication), last_drill_at: lastDrillAt(p.replication.drills), replication_group: p.replication.group ?? null } : {}),
    };
  }

  /**
   * What the dashboard shows of every item, counted by the database: how many there are
   * by health and by state, the worst RPO, and the Protected items whose drill is due
   * (the first `dueLimit` by name, and how many).
   */
  async summary(now: number, dueLimit = 20): Promise<ItemSummary> {
    const count = (eb: ExpressionBuilder<Database, 'protected_items'>) => eb.fn.countAll<number | string | bigint>().as('n');
    const byHealth = await this.db.selectFrom('protected_items').select(['health', count]).groupBy('health').execute();
    const byState = await this.db.selectFrom('protected_items').select(['state', count]).groupBy('state').execute();
    const worst = await this.db.selectFrom('protected_items').select(['id', 'name', 'rpo_seconds']).where('rpo_seconds', 'is not', null).orderBy('rpo_seconds', 'desc').orderBy('id').limit(1).executeTakeFirst();
    const cutoff = drillDueBefore(now);
    const due = this.db.selectFrom('protected_items').where('state', '=', ProtectionState.Protected).where((eb) => eb.or([eb('last_drill_at', 'is', null), eb('last_drill_at', '<', cutoff)]));
    const dueCount = await due.select(count).executeTakeFirst();
    const dueItems = await due.select(['id', 'name', 'last_drill_at']).orderBy('name').orderBy('id').limit(dueLimit).execute();
    const tally = (rows: { n: number | string | bigint }[], key: (r: never) => string) => Object.fromEntries(rows.map((r) => [key(r as never), Number(r.n)]));
    const health = tally(byHealth, (r: { health: string }) => r.health);
    return {
      total: Object.values(health).reduce((a, b) => a + b, 0),
      byHealth: health,
      byState: tally(byState, (r: { state: string }) => r.state),
      worstRpo: worst ? { id: worst.id, name: worst.name, rpoSeconds: Number(worst.rpo_seconds) } : null,
      drillsDue: { count: Number(dueCount?.n ?? 0), items: dueItems.map((r) => ({ id: r.id, name: r.name, lastDrillAt: iso(r.last_drill_at) })) },
    };
  }

  /** Move an item no job holds from one state to another; false when it is not in `from` or a job holds it. */
  /**
   * A change no job makes (a failover made at a host without the vault, learnt from its
   * provider): only while no job holds the item and it is in one of `from`. False when it
   * was not (a job holds it, or its state moved on).
   */
  async changeIdle(id: string, from: readonly ProtectionState[], c: Omit<ItemChange, 'release' | 'points'> & { state: ProtectionState }): Promise<boolean> {
    const r = await this.db
      .updateTable('protected_items')
      .set({ ...this.columns(c), state: c.state, updated_at: this.now() })
      .where('id', '=', id)
      .where('state', 'in', [...from])
      .where('active_job_id', 'is', null)
      .executeTakeFirst();
    return affected(r) === 1;
  }

  async setIdleState(id: string, from: ProtectionState, to: ProtectionState): Promise<boolean> {
    const r = await this.db.updateTable('protected_items').set({ state: to, updated_at: this.now() }).where('id', '=', id).where('state', '=', from).where('active_job_id', 'is', null).executeTakeFirst();
    return affected(r) === 1;
  }

  async remove(id: string): Promise<void> {
    await this.db.deleteFrom('protected_items').where('id', '=', id).execute();
  }

  async points(itemId: string): Promise<RecoveryPoint[]> {
    const rows = await this.db.selectFrom('recovery_points').selectAll().where('item_id', '=', itemId).orderBy('at', 'desc').execute();
    return rows.map((r) => ({ id: r.id, at: iso(r.at)!, consistency: r.consistency as 'crash' | 'app', ...(r.cut !== null ? { cut: r.cut } : {}) }));
  }

  /** Replace an item's recovery points with the list its agent reports. */
  async replacePoints(itemId: string, points: PointRow[]): Promise<void> {
    await this.db.transaction().execute((trx) => this.writePoints(trx, itemId, points));
  }

  private async writePoints(trx: Transaction<Database>, itemId: string, points: PointRow[]): Promise<void> {
    await trx.deleteFrom('recovery_points').where('item_id', '=', itemId).execute();
    for (let i = 0; i < points.length; i += 500) {
      await trx
        .insertInto('recovery_points')
        .values(points.slice(i, i + 500).map((p) => ({ item_id: itemId, id: p.id, at: p.at, consistency: p.consistency, cut: p.cut ?? null })))
        .execute();
    }
  }

  /**
   * Record a sample of an item's facts, unless the last one is less than `minIntervalMs`
   * old (reports come far more often than a chart needs). Samples older than a week go.
   */
  async addSample(itemId: string, s: Omit<ItemSample, 'at'>, minIntervalMs = SAMPLE_INTERVAL_MS): Promise<boolean> {
    const now = this.now();
    const last = await this.db.selectFrom('item_samples').select('at').where('item_id', '=', itemId).orderBy('at', 'desc').limit(1).executeTakeFirst();
    if (last && now - Number(last.at) < minIntervalMs) return false;
    await this.db
      .insertInto('item_samples')
      .values({ item_id: itemId, at: now, rpo_seconds: s.rpoSeconds, churn_bps: s.churnBytesPerSec, peak_churn_bps: s.peakChurnBytesPerSec, pending_bytes: s.pendingLogBytes })
      .onConflict((oc) => oc.doNothing())
      .execute();
    await this.db.deleteFrom('item_samples').where('item_id', '=', itemId).where('at', '<', now - SAMPLES_KEPT_MS).execute();
    return true;
  }

  /** An item's samples since `sinceMs`, oldest first. */
  async samples(itemId: string, sinceMs: number, limit = 20_000): Promise<ItemSample[]> {
    const rows = await this.db.selectFrom('item_samples').selectAll().where('item_id', '=', itemId).where('at', '>=', sinceMs).orderBy('at', 'asc').limit(limit).execute();
    return rows.map((r) => ({
      at: iso(r.at)!,
      rpoSeconds: r.rpo_seconds === null ? null : Number(r.rpo_seconds),
      churnBytesPerSec: r.churn_bps === null ? null : Number(r.churn_bps),
      peakChurnBytesPerSec: r.peak_churn_bps === null ? null : Number(r.peak_churn_bps),
      pendingLogBytes: r.pending_bytes === null ? null : Number(r.pending_bytes),
    }));
  }

  /**
   * The RPO of all items over time, in buckets of `bucketMs` since `sinceMs`, oldest first:
   * the worst and the mean of the samples in each bucket, and how many items they cover.
   */
  async rpoHistory(sinceMs: number, bucketMs: number): Promise<RpoBucket[]> {
    const bucket = sql<number>`(${sql.ref('at')} / ${sql.lit(Math.max(1, Math.floor(bucketMs)))}) * ${sql.lit(Math.max(1, Math.floor(bucketMs)))}`;
    const rows = await this.db
      .selectFrom('item_samples')
      .select([bucket.as('bucket'), (eb) => eb.fn.max('rpo_seconds').as('worst'), (eb) => eb.fn.avg('rpo_seconds').as('mean'), (eb) => eb.fn.count('item_id').distinct().as('items')])
      .where('at', '>=', sinceMs)
      .groupBy(bucket)
      .orderBy('bucket', 'asc')
      .execute();
    return rows.map((r) => ({
      at: iso(Number(r.bucket))!,
      worstRpoSeconds: r.worst === null ? null : Number(r.worst),
      meanRpoSeconds: r.mean === null ? null : Number(r.mean),
      items: Number(r.items),
    }));
  }

  async countByHealth(): Promise<{ health: string; state: string; n: number }[]> {
    const rows = await this.db.selectFrom('protected_items').select(['health', 'state']).select((eb) => eb.fn.countAll().as('n')).groupBy(['health', 'state']).execute();
    return rows.map((r) => ({ health: r.health, state: r.state, n: Number(r.n) }));
  }
}
