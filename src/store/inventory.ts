/**
 * Fabrics, their providers and what they report: the inventory. A provider's inventory
 * replaces the fabric's earlier one in one transaction, and the differences come back as
 * changes (added, removed, changed) for the event history.
 */
import type { Kysely } from 'kysely';
import type { FabricCapabilities } from '../domain/capabilities.js';
import { OsrError } from '../domain/errors.js';
import type { Fabric, InventoryDocument, InventoryKind, InventoryObject, Provider } from '../domain/resources.js';
import { affected, clampLimit, iso, json } from './rows.js';
import type { Database, FabricsTable, InventoryTable, ProvidersTable } from './schema.js';
import type { Selectable } from 'kysely';

export interface InventoryChange {
  change: 'added' | 'removed' | 'changed';
  id: string;
  kind: InventoryKind;
  name: string;
}

const toProvider = (r: Selectable<ProvidersTable>): Provider => ({
  id: r.id,
  fabricId: r.fabric_id,
  name: r.name,
  version: r.version,
  certificateSerial: r.cert_serial,
  certificateFingerprint: r.cert_fingerprint,
  nextCertificateFingerprint: r.next_cert_fingerprint,
  proxy: json(r.proxy, null),
  registeredAt: iso(r.registered_at)!,
  lastHeartbeatAt: iso(r.last_heartbeat_at),
});

const toFabric = (r: Selectable<FabricsTable>, providers: Provider[]): Fabric => ({
  id: r.id,
  name: r.name,
  kind: r.kind,
  version: r.version,
  inventoryScope: json(r.inventory_scope, 'all'),
  lastHeartbeatAt: iso(r.last_heartbeat_at),
  heartbeatLost: r.heartbeat_lost !== 0,
  inventoryAt: iso(r.inventory_at),
  createdAt: iso(r.created_at)!,
  capabilities: json<FabricCapabilities | null>(r.capabilities, null),
  providers,
});

const toObject = (r: Selectable<InventoryTable>): InventoryObject => ({
  id: r.id,
  fabricId: r.fabric_id,
  kind: r.kind as InventoryKind,
  name: r.name,
  parentId: r.parent_id,
  updatedAt: iso(r.updated_at)!,
  properties: json(r.body, {}),
});

/** A fabric id from its name: lower case, [a-z0-9-]. */
export function fabricIdFor(name: string): string {
  const id = name
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  if (id === '') throw new OsrError('INVALID_ARGUMENT', `"${name}" cannot name a fabric: use letters and digits`);
  return id;
}

export class FabricStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly now: () => number = Date.now,
  ) {}

  async list(): Promise<Fabric[]> {
    const [fabrics, providers] = await Promise.all([this.db.selectFrom('fabrics').selectAll().orderBy('name').execute(), this.db.selectFrom('providers').selectAll().orderBy('registered_at').execute()]);
    return fabrics.map((f) => toFabric(f, providers.filter((p) => p.fabric_id === f.id).map(toProvider)));
  }

  async get(id: string): Promise<Fabric> {
    const f = await this.db.selectFrom('fabrics').selectAll().where('id', '=', id).executeTakeFirst();
    if (!f) throw new OsrError('NOT_FOUND', `fabric ${id} does not exist`);
    const providers = await this.db.selectFrom('providers').selectAll().where('fabric_id', '=', id).orderBy('registered_at').execute();
    return toFabric(f, providers.map(toProvider));
  }

  async provider(id: string): Promise<Provider | undefined> {
    const p = await this.db.selectFrom('providers').selectAll().where('id', '=', id).executeTakeFirst();
    return p && toProvider(p);
  }

  /**
   * Register a provider for the fabric named (created when new). Every provider of one
   * fabric must run the same version: PROVIDER_VERSION_MISMATCH otherwise.
   */
  async registerProvider(p: { providerId: string; fabricName: string; fabricKind: string; serverName: string; version: string; certSerial: string; certFingerprint: string; proxy: unknown; inventoryScope: 'all' | string[] }): Promise<{ fabric: Fabric; provider: Provider }> {
    const t = this.now();
    const fabricId = fabricIdFor(p.fabricName);
    await this.db.transaction().execute(async (trx) => {
      const existing = await trx.selectFrom('fabrics').selectAll().where('id', '=', fabricId).executeTakeFirst();
      if (existing) {
        if (existing.name !== p.fabricName) throw new OsrError('ALREADY_EXISTS', `fabric id ${fabricId} is taken by ${existing.name}; choose another fabric name`);
        const others = await trx.selectFrom('providers').select(['name', 'version']).where('fabric_id', '=', fabricId).execute();
        const other = others.find((o) => o.version !== p.version && o.name !== p.serverName);
        if (other) {
          throw new OsrError('PROVIDER_VERSION_MISMATCH', `provider ${p.serverName} runs ${p.version} but ${other.name} of fabric ${p.fabricName} runs ${other.version}`, { fabric: fabricId, version: p.version, other: other.name, otherVersion: other.version });
        }
        // a server registering again (a reinstalled provider) replaces its earlier registration
        await trx.deleteFrom('providers').where('fabric_id', '=', fabricId).where('name', '=', p.serverName).execute();
        await trx.updateTable('fabrics').set({ version: p.version, inventory_scope: JSON.stringify(p.inventoryScope) }).where('id', '=', fabricId).execute();
      } else {
        await trx
          .insertInto('fabrics')
          .values({ id: fabricId, name: p.fabricName, kind: p.fabricKind, version: p.version, inventory_scope: JSON.stringify(p.inventoryScope), last_heartbeat_at: t, heartbeat_lost: 0, inventory_at: null, created_at: t })
          .execute();
      }
      await trx
        .insertInto('providers')
        .values({ id: p.providerId, fabric_id: fabricId, name: p.serverName, version: p.version, cert_serial: p.certSerial, cert_fingerprint: p.certFingerprint, next_cert_serial: null, next_cert_fingerprint: null, proxy: p.proxy ? JSON.stringify(p.proxy) : null, registered_at: t, last_heartbeat_at: t })
        .execute();
    });
    const fabric = await this.get(fabricId);
    return { fabric, provider: fabric.providers.find((x) => x.id === p.providerId)! };
  }

  /**
   * A renewed certificate for a provider: kept beside the current one, which stays valid
   * until the provider first calls with the new one (a provider that crashed before it
   * saved the new certificate still gets in, and renews again). Renewing again replaces
   * an unused one.
   */
  async offerProviderCertificate(providerId: string, c: { serial: string; fingerprint: string }): Promise<void> {
    const r = await this.db.updateTable('providers').set({ next_cert_serial: c.serial, next_cert_fingerprint: c.fingerprint }).where('id', '=', providerId).executeTakeFirst();
    if (affected(r) === 0) throw new OsrError('UNAUTHENTICATED', `provider ${providerId} is not registered (it was removed); register it again with a new key`);
  }

  /**
   * The provider called with its renewed certificate: it becomes the current one. Answers
   * the serial it replaced (to revoke), or undefined when another call got there first.
   */
  async adoptProviderCertificate(providerId: string, fingerprint: string): Promise<string | undefined> {
    return this.db.transaction().execute(async (trx) => {
      const p = await trx.selectFrom('providers').select(['cert_serial', 'next_cert_serial']).where('id', '=', providerId).where('next_cert_fingerprint', '=', fingerprint).executeTakeFirst();
      if (!p?.next_cert_serial) return undefined;
      const r = await trx
        .updateTable('providers')
        .set({ cert_serial: p.next_cert_serial, cert_fingerprint: fingerprint, next_cert_serial: null, next_cert_fingerprint: null })
        .where('id', '=', providerId)
        .where('next_cert_fingerprint', '=', fingerprint)
        .executeTakeFirst();
      return affected(r) === 1 ? p.cert_serial : undefined;
    });
  }

  /**
   * A provider's heartbeat, with the fabric's capabilities when it reports them (kept on the
   * fabric); returns whether the fabric had been marked lost (it is found again).
   */
  async heartbeat(providerId: string, capabilities?: FabricCapabilities): Promise<{ fabricId: string; wasLost: boolean }> {
    const t = this.now();
    const p = await this.db.selectFrom('providers').select(['fabric_id']).where('id', '=', providerId).executeTakeFirst();
    if (!p) throw new OsrError('UNAUTHENTICATED', `provider ${providerId} is not registered (it was removed); register it again with a new key`);
    await this.db.updateTable('providers').set({ last_heartbeat_at: t }).where('id', '=', providerId).execute();
    if (capabilities) {
      // written when they change, not at every heartbeat
      const text = JSON.stringify(capabilities);
      await this.db
        .updateTable('fabrics')
        .set({ capabilities: text })
        .where('id', '=', p.fabric_id)
        .where((eb) => eb.or([eb('capabilities', 'is', null), eb('capabilities', '!=', text)]))
        .execute();
    }
    // found again only if this write is the one that clears the mark (the monitor may set it meanwhile)
    const found = await this.db.updateTable('fabrics').set({ last_heartbeat_at: t, heartbeat_lost: 0 }).where('id', '=', p.fabric_id).where('heartbeat_lost', '=', 1).executeTakeFirst();
    if (affected(found) === 0) await this.db.updateTable('fabrics').set({ last_heartbeat_at: t }).where('id', '=', p.fabric_id).execute();
    return { fabricId: p.fabric_id, wasLost: affected(found) === 1 };
  }

  /** Fabrics whose last heartbeat is older than `lostAfterMs` and not yet marked lost: marks and returns them. */
  async markLost(lostAfterMs: number): Promise<Selectable<FabricsTable>[]> {
    const cutoff = this.now() - lostAfterMs;
    const rows = await this.db.selectFrom('fabrics').selectAll().where('heartbeat_lost', '=', 0).where('last_heartbeat_at', '<', cutoff).execute();
    const marked: Selectable<FabricsTable>[] = [];
    for (const r of rows) {
      const u = await this.db.updateTable('fabrics').set({ heartbeat_lost: 1 }).where('id', '=', r.id).where('heartbeat_lost', '=', 0).executeTakeFirst();
      if (affected(u) === 1) marked.push(r);
    }
    return marked;
  }

  async remove(id: string): Promise<void> {
    const used = await this.db.selectFrom('protected_items').select('id').where('fabric_id', '=', id).limit(1).executeTakeFirst();
    if (used) throw new OsrError('INVALID_STATE', `fabric ${id} still has protected items (e.g. ${used.id}); disable their protection first`);
    const r = await this.db.deleteFrom('fabrics').where('id', '=', id).executeTakeFirst();
    if (affected(r) === 0) throw new OsrError('NOT_FOUND', `fabric ${id} does not exist`);
  }

  /**
   * Replace the fabric's inventory with what its provider reports; returns what changed.
   * `alongside` runs in the same transaction, told whether this is the fabric's first
   * inventory (host admission is decided there: one commit or none).
   */
  async replaceInventory(fabricId: string, doc: InventoryDocument, alongside?: (trx: Kysely<Database>, o: { first: boolean; changes: InventoryChange[] }) => Promise<void>): Promise<InventoryChange[]> {
    const t = this.now();
    const rows = flatten(fabricId, doc, t);
    return this.db.transaction().execute(async (trx) => {
      const fabric = await trx.selectFrom('fabrics').select('inventory_at').where('id', '=', fabricId).executeTakeFirst();
      const first = fabric !== undefined && fabric.inventory_at === null;
      const before = await trx.selectFrom('inventory').select(['id', 'kind', 'name', 'parent_id', 'body']).where('fabric_id', '=', fabricId).execute();
      const old = new Map(before.map((r) => [r.id, r]));
      const changes: InventoryChange[] = [];
      const seen = new Set<string>();
      const added: typeof rows = [];
      const changed: typeof rows = [];
      for (const r of rows) {
        if (seen.has(r.id)) throw new OsrError('INVALID_ARGUMENT', `inventory lists ${r.kind} ${r.id} twice`);
        seen.add(r.id);
        const o = old.get(r.id);
        if (!o) {
          changes.push({ change: 'added', id: r.id, kind: r.kind as InventoryKind, name: r.name });
          added.push(r);
        } else if (o.name !== r.name || o.parent_id !== r.parent_id || o.body !== r.body || o.kind !== r.kind) {
          changes.push({ change: 'changed', id: r.id, kind: r.kind as InventoryKind, name: r.name });
          changed.push(r);
        }
      }
      const removed = before.filter((o) => !seen.has(o.id));
      for (const o of removed) changes.push({ change: 'removed', id: o.id, kind: o.kind as InventoryKind, name: o.name });
      // only what changed is written: a report of a thousand VMs, one of them changed, is one update
      for (let i = 0; i < removed.length; i += 500) {
        await trx.deleteFrom('inventory').where('fabric_id', '=', fabricId).where('id', 'in', removed.slice(i, i + 500).map((o) => o.id)).execute();
      }
      for (let i = 0; i < added.length; i += 500) await trx.insertInto('inventory').values(added.slice(i, i + 500)).execute();
      for (const r of changed) {
        await trx.updateTable('inventory').set({ kind: r.kind, name: r.name, parent_id: r.parent_id, body: r.body, updated_at: r.updated_at }).where('id', '=', r.id).where('fabric_id', '=', fabricId).execute();
      }
      await trx.updateTable('fabrics').set({ inventory_at: t }).where('id', '=', fabricId).execute();
      await alongside?.(trx, { first, changes });
      return changes;
    });
  }

  async objects(kind: InventoryKind, f: { fabricId?: string; parentId?: string; after?: string; limit?: number } = {}): Promise<InventoryObject[]> {
    let q = this.db.selectFrom('inventory').selectAll().where('kind', '=', kind);
    if (f.fabricId) q = q.where('fabric_id', '=', f.fabricId);
    if (f.parentId) q = q.where('parent_id', '=', f.parentId);
    if (f.after) q = q.where('id', '>', f.after);
    return (await q.orderBy('id').limit(clampLimit(f.limit)).execute()).map(toObject);
  }

  async object(id: string, kind?: InventoryKind): Promise<InventoryObject> {
    const r = await this.db.selectFrom('inventory').selectAll().where('id', '=', id).executeTakeFirst();
    if (!r || (kind && r.kind !== kind)) throw new OsrError('NOT_FOUND', `${kind ?? 'inventory object'} ${id} does not exist`);
    return toObject(r);
  }

  /** The objects of a kind that a fabric reported under a name. */
  async named(fabricId: string, kind: InventoryKind, name: string): Promise<InventoryObject[]> {
    return (await this.db.selectFrom('inventory').selectAll().where('fabric_id', '=', fabricId).where('kind', '=', kind).where('name', '=', name).limit(10).execute()).map(toObject);
  }

  async findObject(id: string): Promise<InventoryObject | undefined> {
    const r = await this.db.selectFrom('inventory').selectAll().where('id', '=', id).executeTakeFirst();
    return r && toObject(r);
  }

  /** VMs of the clouds given (or all) that no protected item covers yet. */
  async protectable(f: { cloudId?: string; after?: string; limit?: number }): Promise<InventoryObject[]> {
    let q = this.db
      .selectFrom('inventory')
      .selectAll('inventory')
      .leftJoin('protected_items', 'protected_items.id', 'inventory.id')
      .where('inventory.kind', '=', 'vm')
      .where('protected_items.id', 'is', null);
    if (f.cloudId) q = q.where('inventory.parent_id', '=', f.cloudId);
    if (f.after) q = q.where('inventory.id', '>', f.after);
    return (await q.orderBy('inventory.id').limit(clampLimit(f.limit)).execute()).map(toObject);
  }
}

/** The provider's document as rows: ids prefixed with the fabric id, references rewritten the same way. */
function flatten(fabricId: string, d: InventoryDocument, t: number): Selectable<InventoryTable>[] {
  const g = (local: string) => `${fabricId}.${local}`;
  const rows: Selectable<InventoryTable>[] = [];
  const add = (kind: InventoryKind, local: string, name: string, parent: string | null, body: Record<string, unknown>) => {
    if (typeof local !== 'string' || !/^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$/.test(local)) throw new OsrError('INVALID_ARGUMENT', `${kind} id "${String(local)}" is not allowed: use 1 to 128 of A-Z a-z 0-9 . _ -`);
    rows.push({ id: g(local), fabric_id: fabricId, kind, name, parent_id: parent, body: JSON.stringify(body), updated_at: t });
  };
  const groupCloud = new Map<string, string>();
  for (const c of d.clouds) for (const hg of c.hostGroups) groupCloud.set(hg, c.id);
  const hostGroup = new Map<string, string>();
  for (const hg of d.hostGroups) for (const h of hg.hosts) hostGroup.set(h, hg.id);
  for (const c of d.clouds) add('cloud', c.id, c.name, null, { hostGroups: c.hostGroups.map(g) });
  for (const hg of d.hostGroups) add('host-group', hg.id, hg.name, groupCloud.has(hg.id) ? g(groupCloud.get(hg.id)!) : null, { hosts: hg.hosts.map(g) });
  for (const h of d.hosts) {
    add('host', h.id, h.name, hostGroup.has(h.id) ? g(hostGroup.get(h.id)!) : null, { osVersion: h.osVersion, logicalNetworks: h.logicalNetworks.map(g), storageLocations: h.storageLocations.map(g), ...(h.agent ? { agent: h.agent } : {}), ...(h.addresses ? { addresses: h.addresses } : {}) });
  }
  for (const n of d.logicalNetworks) add('logical-network', n.id, n.name, null, {});
  for (const n of d.vmNetworks) add('vm-network', n.id, n.name, g(n.logicalNetwork), { logicalNetwork: g(n.logicalNetwork), subnets: n.subnets });
  for (const p of d.ipPools) add('ip-pool', p.id, p.name, g(p.vmNetwork), { vmNetwork: g(p.vmNetwork), subnet: p.subnet, start: p.start, end: p.end });
  for (const s of d.storageClassifications) add('storage-classification', s.id, s.name, null, {});
  for (const l of d.storageLocations) add('storage-location', l.id, l.name, g(l.classification), { classification: g(l.classification), kind: l.kind, path: l.path, ...(l.freeBytes !== undefined ? { freeBytes: l.freeBytes } : {}) });
  for (const v of d.vms) {
    add('vm', v.id, v.name, g(v.cloud), {
      cloud: g(v.cloud),
      host: g(v.host),
      powerState: v.powerState,
      disks: v.disks.map((k) => ({ id: k.id, name: k.name, sizeBytes: k.sizeBytes, ...(k.storageLocation ? { storageLocation: g(k.storageLocation) } : {}), ...(k.format ? { format: k.format } : {}) })),
      nics: v.nics.map((n) => ({ id: n.id, ...(n.vmNetwork ? { vmNetwork: g(n.vmNetwork) } : {}), ...(n.ip ? { ip: n.ip } : {}) })),
      ...(v.replicaOf ? { replicaOf: v.replicaOf } : {}),
      ...(v.testFailoverOf ? { testFailoverOf: v.testFailoverOf } : {}),
      ...(v.replicationId ? { replicationId: v.replicationId } : {}),
      ...(v.machine ? { machine: v.machine } : {}),
    });
  }
  return rows;
}
