/**
 * One set of migrations for both dialects. Each runs once, in order, inside one exclusive
 * transaction with the record of it; two vaults starting at once on one database migrate
 * it once. A database whose schema is newer than this osr knows is refused: an older vault
 * must not write to tables it does not understand.
 */
import { sql, type Kysely } from 'kysely';
import { OsrError } from '../domain/errors.js';
import type { ItemReplication } from '../domain/resources.js';
import { lastDrillAt } from '../domain/runs.js';
import type { Dialect } from './database.js';
import type { Database } from './schema.js';

interface Migration {
  version: number;
  name: string;
  up(db: Kysely<Database>, dialect: Dialect): Promise<void>;
}

const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'registration keys, jobs and their tasks',
    async up(db) {
      await db.schema
        .createTable('registration_keys')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('vault', 'text', (c) => c.notNull())
        .addColumn('secret_hash', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('expires_at', 'bigint', (c) => c.notNull())
        .addColumn('revoked_at', 'bigint')
        .addColumn('used_at', 'bigint')
        .addColumn('used_by', 'text')
        .execute();
      await db.schema
        .createTable('jobs')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('target', 'text')
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('input', 'text', (c) => c.notNull())
        .addColumn('output', 'text')
        .addColumn('error', 'text')
        .addColumn('progress', 'real', (c) => c.notNull().defaultTo(0))
        .addColumn('current_step', 'text')
        .addColumn('attempts', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .addColumn('locked_by', 'text')
        .addColumn('locked_until', 'bigint')
        .execute();
      await db.schema.createIndex('jobs_claimable').on('jobs').columns(['state', 'locked_until', 'created_at']).execute();
      await db.schema.createIndex('jobs_target').on('jobs').column('target').execute();
      await db.schema.createIndex('jobs_created').on('jobs').columns(['created_at', 'id']).execute();
      await db.schema
        .createTable('job_tasks')
        .addColumn('job_id', 'text', (c) => c.notNull().references('jobs.id').onDelete('cascade'))
        .addColumn('position', 'integer', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('started_at', 'bigint')
        .addColumn('ended_at', 'bigint')
        .addColumn('error', 'text')
        .addPrimaryKeyConstraint('job_tasks_pk', ['job_id', 'position'])
        .execute();
    },
  },
  {
    version: 2,
    name: 'tokens and audit, fabrics and inventory, configuration, protected items, plans, events, alerts, provider commands',
    async up(db) {
      const table = (name: string) => db.schema.createTable(name);
      await table('api_tokens')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('secret_hash', 'text', (c) => c.notNull().unique())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('created_by', 'text')
        .addColumn('revoked_at', 'bigint')
        .addColumn('last_used_at', 'bigint')
        .execute();
      await table('audit')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('actor', 'text', (c) => c.notNull())
        .addColumn('role', 'text')
        .addColumn('method', 'text', (c) => c.notNull())
        .addColumn('path', 'text', (c) => c.notNull())
        .addColumn('action', 'text', (c) => c.notNull())
        .addColumn('status', 'integer', (c) => c.notNull())
        .addColumn('code', 'text')
        .execute();
      await table('fabrics')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('version', 'text', (c) => c.notNull())
        .addColumn('inventory_scope', 'text', (c) => c.notNull())
        .addColumn('last_heartbeat_at', 'bigint')
        .addColumn('heartbeat_lost', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('inventory_at', 'bigint')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      await table('providers')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('fabric_id', 'text', (c) => c.notNull().references('fabrics.id').onDelete('cascade'))
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('version', 'text', (c) => c.notNull())
        .addColumn('cert_serial', 'text', (c) => c.notNull())
        .addColumn('cert_fingerprint', 'text', (c) => c.notNull())
        .addColumn('proxy', 'text')
        .addColumn('registered_at', 'bigint', (c) => c.notNull())
        .addColumn('last_heartbeat_at', 'bigint')
        .execute();
      await table('inventory')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('fabric_id', 'text', (c) => c.notNull().references('fabrics.id').onDelete('cascade'))
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('parent_id', 'text')
        .addColumn('body', 'text', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('inventory_kind').on('inventory').columns(['kind', 'fabric_id', 'name']).execute();
      await table('policies')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('settings', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await table('cloud_pairings')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('policy_id', 'text', (c) => c.notNull().references('policies.id'))
        .addColumn('source_cloud_id', 'text', (c) => c.notNull().unique())
        .addColumn('target_cloud_id', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .execute();
      for (const t of ['network_mappings', 'storage_mappings']) {
        await table(t)
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('source_id', 'text', (c) => c.notNull().unique())
          .addColumn('target_id', 'text', (c) => c.notNull())
          .addColumn('created_at', 'bigint', (c) => c.notNull())
          .execute();
      }
      await table('protected_items')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull())
        .addColumn('fabric_id', 'text', (c) => c.notNull())
        .addColumn('pairing_id', 'text', (c) => c.notNull().references('cloud_pairings.id'))
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('health', 'text', (c) => c.notNull())
        .addColumn('health_reasons', 'text', (c) => c.notNull())
        .addColumn('rpo_seconds', 'real')
        .addColumn('last_point_at', 'bigint')
        .addColumn('replication', 'text', (c) => c.notNull())
        .addColumn('progress', 'real')
        .addColumn('active_job_id', 'text')
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await db.schema.createIndex('protected_items_name').on('protected_items').columns(['name', 'id']).execute();
      await db.schema.createIndex('protected_items_health').on('protected_items').columns(['health', 'name']).execute();
      await table('recovery_points')
        .addColumn('item_id', 'text', (c) => c.notNull().references('protected_items.id').onDelete('cascade'))
        .addColumn('id', 'text', (c) => c.notNull())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('consistency', 'text', (c) => c.notNull())
        .addPrimaryKeyConstraint('recovery_points_pk', ['item_id', 'id'])
        .execute();
      await table('recovery_plans')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('name', 'text', (c) => c.notNull().unique())
        .addColumn('body', 'text', (c) => c.notNull())
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('updated_at', 'bigint', (c) => c.notNull())
        .execute();
      await table('events')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('target', 'text')
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('severity', 'text', (c) => c.notNull())
        .addColumn('message', 'text', (c) => c.notNull())
        .addColumn('details', 'text')
        .execute();
      await db.schema.createIndex('events_target').on('events').columns(['target', 'id']).execute();
      await table('alerts')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('severity', 'text', (c) => c.notNull())
        .addColumn('target', 'text')
        .addColumn('message', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('resolved_at', 'bigint')
        .addColumn('dedupe_key', 'text', (c) => c.unique())
        .addColumn('deliveries', 'text', (c) => c.notNull())
        .execute();
      await table('settings')
        .addColumn('key', 'text', (c) => c.primaryKey())
        .addColumn('value', 'text', (c) => c.notNull())
        .execute();
      await table('provider_commands')
        .addColumn('id', 'text', (c) => c.primaryKey())
        .addColumn('fabric_id', 'text', (c) => c.notNull())
        .addColumn('kind', 'text', (c) => c.notNull())
        .addColumn('body', 'text', (c) => c.notNull())
        .addColumn('job_id', 'text')
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('progress', 'text')
        .addColumn('result', 'text')
        .addColumn('error', 'text')
        .addColumn('deliveries', 'integer', (c) => c.notNull().defaultTo(0))
        .addColumn('created_at', 'bigint', (c) => c.notNull())
        .addColumn('sent_at', 'bigint')
        .addColumn('done_at', 'bigint')
        .execute();
      await db.schema.createIndex('provider_commands_pending').on('provider_commands').columns(['fabric_id', 'state', 'id']).execute();
      await db.schema.alterTable('jobs').addColumn('step', 'integer', (c) => c.notNull().defaultTo(0)).execute();
      await db.schema.alterTable('jobs').addColumn('data', 'text').execute();
      await db.schema.alterTable('jobs').addColumn('waiting_for', 'text').execute();
      await db.schema.alterTable('jobs').addColumn('cancel_requested', 'integer', (c) => c.notNull().defaultTo(0)).execute();
      await db.schema.alterTable('jobs').addColumn('created_by', 'text').execute();
      await db.schema.alterTable('jobs').addColumn('started_at', 'bigint').execute();
      await db.schema.alterTable('jobs').addColumn('ended_at', 'bigint').execute();
      await db.schema.alterTable('job_tasks').addColumn('progress', 'real').execute();
      await db.schema.alterTable('job_tasks').addColumn('detail', 'text').execute();
    },
  },
  {
    version: 3,
    name: 'item samples: RPO, churn and pending log bytes over time',
    async up(db) {
      await db.schema
        .createTable('item_samples')
        .addColumn('item_id', 'text', (c) => c.notNull().references('protected_items.id').onDelete('cascade'))
        .addColumn('at', 'bigint', (c) => c.notNull())
        .addColumn('rpo_seconds', 'real')
        .addColumn('churn_bps', 'real')
        .addColumn('peak_churn_bps', 'real')
        .addColumn('pending_bytes', 'bigint')
        .addPrimaryKeyConstraint('item_samples_pk', ['item_id', 'at'])
        .execute();
      await db.schema.createIndex('item_samples_at').on('item_samples').column('at').execute();
    },
  },
  {
    version: 4,
    name: 'certificates issued to providers and agents, and their revocation',
    async up(db) {
      await db.schema
        .createTable('certificates')
        .addColumn('serial', 'text', (c) => c.primaryKey())
        .addColumn('fabric_id', 'text')
        .addColumn('role', 'text', (c) => c.notNull())
        .addColumn('common_name', 'text', (c) => c.notNull())
        .addColumn('issued_at', 'bigint', (c) => c.notNull())
        .addColumn('not_after', 'bigint', (c) => c.notNull())
        .addColumn('revoked_at', 'bigint')
        .addColumn('reason', 'text')
        .execute();
      await db.schema.createIndex('certificates_holder').on('certificates').columns(['fabric_id', 'common_name']).execute();
    },
  },
  {
    version: 5,
    name: 'a provider\'s renewed certificate, accepted beside the current one until the provider first uses it',
    async up(db) {
      await db.schema.alterTable('providers').addColumn('next_cert_serial', 'text').execute();
      await db.schema.alterTable('providers').addColumn('next_cert_fingerprint', 'text').execute();
    },
  },
  {
    version: 6,
    name: 'what a fabric can do, as its provider reports it with each heartbeat',
    async up(db) {
      // JSON (src/domain/capabilities.ts); null until a provider of this version reports
      await db.schema.alterTable('fabrics').addColumn('capabilities', 'text').execute();
    },
  },
  {
    version: 7,
    name: 'host admission: which hosts of a fabric the vault certifies, as its first inventory or an Owner said',
    async up(db) {
      await db.schema
        .createTable('host_admissions')
        .addColumn('fabric_id', 'text', (c) => c.notNull())
        .addColumn('host_name', 'text', (c) => c.notNull())
        .addColumn('state', 'text', (c) => c.notNull())
        .addColumn('first_seen_at', 'bigint', (c) => c.notNull())
        .addColumn('decided_at', 'bigint')
        .addColumn('decided_by', 'text')
        .addPrimaryKeyConstraint('host_admissions_pk', ['fabric_id', 'host_name'])
        .execute();
      // the hosts fabrics report already were certified before admission existed: they stay so
      const hosts = await db.selectFrom('inventory').select(['fabric_id', 'name']).where('kind', '=', 'host').execute();
      const at = Date.now();
      const rows = [...new Map(hosts.map((h) => [`${h.fabric_id}\u0000${h.name}`, h])).values()].map((h) => ({ fabric_id: h.fabric_id, host_name: h.name, state: 'admitted', first_seen_at: at, decided_at: at, decided_by: 'upgrade' }));
      for (let i = 0; i < rows.length; i += 500) await db.insertInto('host_admissions').values(rows.slice(i, i + 500)).execute();
    },
  },
  {
    version: 8,
    name: 'each protected item\'s last drill, so a summary finds the drills due without reading every item',
    async up(db) {
      await db.schema.alterTable('protected_items').addColumn('last_drill_at', 'bigint').execute();
      await db.schema.createIndex('protected_items_drill').on('protected_items').columns(['state', 'last_drill_at']).execute();
      // the items protected already: from the drills their records hold
      let after = '';
      for (;;) {
        const page = await db.selectFrom('protected_items').select(['id', 'replication']).where('id', '>', after).orderBy('id').limit(1000).execute();
        for (const r of page) {
          const at = lastDrillAt((JSON.parse(r.replication) as ItemReplication).drills);
          if (at !== null) await db.updateTable('protected_items').set({ last_drill_at: at }).where('id', '=', r.id).execute();
        }
        if (page.length < 1000) break;
        after = page.at(-1)!.id;
      }
    },
  },
  {
    version: 9,
    name: 'replication groups: the group of each protected item, and the cut a recovery point belongs to',
    async up(db) {
      await db.schema.alterTable('recovery_points').addColumn('cut', 'text').execute();
      // no item was in a group before: the column starts empty
      await db.schema.alterTable('protected_items').addColumn('replication_group', 'text').execute();
      await db.schema.createIndex('protected_items_group').on('protected_items').columns(['replication_group', 'id']).execute();
    },
  },
];

/** The schema version this osr writes. */
export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]!.version;

/** A PostgreSQL advisory lock id that serializes migrations between vault processes. */
const MIGRATION_LOCK = 0x6f7372;

/** Bring the schema up to SCHEMA_VERSION; returns the versions before and after. */
export async function migrate(db: Kysely<Database>, dialect: Dialect, now: () => number = Date.now): Promise<{ from: number; to: number }> {
  return exclusive(db, dialect, async (trx) => {
    await trx.schema
      .createTable('schema_migrations')
      .ifNotExists()
      .addColumn('version', 'integer', (c) => c.primaryKey())
      .addColumn('name', 'text', (c) => c.notNull())
      .addColumn('applied_at', 'bigint', (c) => c.notNull())
      .execute();
    const row = await trx.selectFrom('schema_migrations').select((eb) => eb.fn.max('version').as('v')).executeTakeFirst();
    const from = Number(row?.v ?? 0);
    if (from > SCHEMA_VERSION) {
      throw new OsrError('STORE_SCHEMA_NEWER', `the database is at schema version ${from}, newer than the ${SCHEMA_VERSION} this osr knows`, { databaseVersion: from, knownVersion: SCHEMA_VERSION });
    }
    for (const m of MIGRATIONS) {
      if (m.version <= from) continue;
      await m.up(trx, dialect);
      await trx.insertInto('schema_migrations').values({ version: m.version, name: m.name, applied_at: now() }).execute();
    }
    return { from, to: SCHEMA_VERSION };
  });
}

/** A database this osr may use without migrating it (a read-only standby): at exactly this osr's schema version. */
export async function checkSchema(db: Kysely<Database>): Promise<void> {
  let at = 0;
  try {
    const row = await db.selectFrom('schema_migrations').select((eb) => eb.fn.max('version').as('v')).executeTakeFirst();
    at = Number(row?.v ?? 0);
  } catch {
    at = 0;
  }
  if (at > SCHEMA_VERSION) throw new OsrError('STORE_SCHEMA_NEWER', `the database is at schema version ${at}, newer than the ${SCHEMA_VERSION} this osr knows`, { databaseVersion: at, knownVersion: SCHEMA_VERSION });
  if (at < SCHEMA_VERSION) {
    throw new OsrError('STORE_UNAVAILABLE', `the standby database is at schema version ${at}, older than this osr's ${SCHEMA_VERSION}, and a standby cannot be migrated: start this osr's vault on the primary first (it migrates the database and the standby follows), or run the older osr here`, { databaseVersion: at, knownVersion: SCHEMA_VERSION });
  }
}

/**
 * Run fn in a transaction no other vault process runs beside: on PostgreSQL under an
 * advisory lock, on SQLite as BEGIN IMMEDIATE (the write lock is taken at once).
 */
async function exclusive<T>(db: Kysely<Database>, dialect: Dialect, fn: (db: Kysely<Database>) => Promise<T>): Promise<T> {
  if (dialect === 'postgres') {
    return db.transaction().execute(async (trx) => {
      await sql`select pg_advisory_xact_lock(${MIGRATION_LOCK})`.execute(trx);
      return fn(trx);
    });
  }
  return db.connection().execute(async (conn) => {
    await sql`begin immediate`.execute(conn);
    try {
      // one connection, inside the transaction just begun: every statement of fn runs in it
      const result = await fn(conn);
      await sql`commit`.execute(conn);
      return result;
    } catch (e) {
      await sql`rollback`.execute(conn);
      throw e;
    }
  });
}
