/**
 * The layout of a VM's replica in its Azure storage container (docs/design/azure.md), as
 * both sides read it: the agent that writes the replica (src/agent/azure) and the Azure
 * driver that fails over from its points (src/drivers/azure). One page blob per disk, a
 * snapshot of each per recovery point with the point in its metadata, and `replica.json`.
 */

import { OsrError } from './errors.js';
import { MAX_DISK_BYTES, isSafeName } from './names.js';

/** The container of a VM's replica, named from its replication id: lower-case letters, digits and single hyphens, 3–63 long. */
export function replicaContainerName(vmId: string): string {
  const name = `osr-${vmId.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '')}`.slice(0, 63).replace(/-+$/, '');
  if (name.length < 5) throw new OsrError('INVALID_ARGUMENT', `VM id ${JSON.stringify(vmId)} gives no container name`);
  return name;
}

export const RECORD_BLOB = 'replica.json';
/** The most replica.json may be: it holds a few disks' names and numbers. */
export const MAX_RECORD_BYTES = 1024 * 1024;

/** The live blob of a disk (its name checked by the caller). */
export function diskBlobName(disk: string): string {
  return `disks/${disk}.vhd`;
}

const META = { seq: 'osrseq', time: 'osrtime', consistency: 'osrconsistency', deltaBytes: 'osrdeltabytes', generation: 'osrgen' } as const;

/** A recovery point as a snapshot's metadata carries it. */
export interface BlobPointMeta {
  seq: number;
  timeMs: number;
  consistency: 'crash-consistent' | 'app-consistent';
  /** bytes of guest data the delta carried */
  deltaBytes: number;
}

export function pointMetadata(p: BlobPointMeta, generation: string): Record<string, string> {
  return { [META.seq]: String(p.seq), [META.time]: String(p.timeMs), [META.consistency]: p.consistency, [META.deltaBytes]: String(p.deltaBytes), [META.generation]: generation };
}

/** A snapshot's metadata as a point of this generation of the replica, or undefined (not osr's, or of an earlier copy). */
export function parsePointMetadata(m: Record<string, string> | undefined, generation: string): BlobPointMeta | undefined {
  if (!m || m[META.generation] !== generation) return undefined;
  // decimal digits only: Number() would take '', '0x5' or ' 7 '
  const int = (v: string | undefined): number => (v !== undefined && /^\d{1,16}$/.test(v) ? Number(v) : NaN);
  const seq = int(m[META.seq]);
  const timeMs = int(m[META.time]);
  const deltaBytes = m[META.deltaBytes] === undefined ? 0 : int(m[META.deltaBytes]);
  const consistency = m[META.consistency];
  if (!Number.isSafeInteger(seq) || seq < 0 || !Number.isSafeInteger(timeMs) || !Number.isSafeInteger(deltaBytes)) return undefined;
  if (consistency !== 'crash-consistent' && consistency !== 'app-consistent') return undefined;
  return { seq, timeMs, consistency, deltaBytes };
}

/** A disk's snapshot as a listing of the container gives it. */
export interface SnapshotEntry {
  /** the blob's name */
  name: string;
  snapshot: string;
  metadata?: Record<string, string> | undefined;
}

export interface PointSet {
  point: BlobPointMeta;
  /** one snapshot per disk that has one: the first the listing gave */
  snapshots: { disk: string; snapshot: string }[];
  /** every snapshot carrying the point (a snapshot made again after a lost answer is one more) */
  every: { disk: string; snapshot: string }[];
  /** every disk of the replica has its snapshot: only then is it a point */
  complete: boolean;
}

/** Group a container's snapshots into point sets, in order of their numbers. */
export function groupPointSets(entries: Iterable<SnapshotEntry>, disks: readonly string[], generation: string): PointSet[] {
  const byBlob = new Map(disks.map((d) => [diskBlobName(d), d]));
  const sets = new Map<number, Omit<PointSet, 'complete'> & { agree: boolean }>();
  for (const e of entries) {
    const disk = byBlob.get(e.name);
    if (disk === undefined) continue;
    const point = parsePointMetadata(e.metadata, generation);
    if (!point) continue;
    const set = sets.get(point.seq) ?? { point, snapshots: [], every: [], agree: true };
    // every disk's snapshot of a point says the same of it, or the set is not a point
    if (point.timeMs !== set.point.timeMs || point.consistency !== set.point.consistency || point.deltaBytes !== set.point.deltaBytes) set.agree = false;
    if (!set.snapshots.some((s) => s.disk === disk)) set.snapshots.push({ disk, snapshot: e.snapshot });
    set.every.push({ disk, snapshot: e.snapshot });
    sets.set(point.seq, set);
  }
  return [...sets.values()].sort((a, b) => a.point.seq - b.point.seq).map(({ agree, ...s }) => ({ ...s, complete: agree && disks.length > 0 && s.snapshots.length === disks.length }));
}

/** the largest replication epoch a record may hold (one per failover: far beyond any VM's life) */
export const MAX_EPOCH = 1_000_000;

/** What a reader of the replica needs of replica.json. */
export interface ReplicaRecordView {
  vmId: string;
  vmName: string;
  generation: string;
  disks: { id: string; name: string; size: number }[];
  /** the replication epoch the replica is at (1 when none is recorded) */
  epoch: number;
}

/** replica.json's text as a view, or undefined when it is not an osr replica record (the storage account is not trusted). */
export function parseReplicaRecordView(text: string): ReplicaRecordView | undefined {
  let r: unknown;
  try {
    r = JSON.parse(text);
  } catch {
    return undefined;
  }
  const x = r as Partial<ReplicaRecordView> & { version?: unknown };
  if (typeof x !== 'object' || x === null || x.version !== 1 || typeof x.vmId !== 'string' || typeof x.vmName !== 'string' || typeof x.generation !== 'string') return undefined;
  if (!Array.isArray(x.disks) || x.disks.length === 0 || x.disks.length > 64) return undefined;
  if (!x.disks.every((d) => typeof d?.id === 'string' && typeof d.name === 'string' && isSafeName(d.name) && Number.isSafeInteger(d.size) && d.size > 0 && d.size <= MAX_DISK_BYTES)) return undefined;
  if (new Set(x.disks.map((d) => d.name)).size !== x.disks.length) return undefined;
  const epoch = (x as { epoch?: unknown }).epoch;
  return { vmId: x.vmId, vmName: x.vmName, generation: x.generation, disks: x.disks.map((d) => ({ id: d.id, name: d.name, size: d.size })), epoch: typeof epoch === 'number' && Number.isSafeInteger(epoch) && epoch >= 1 && epoch <= MAX_EPOCH ? epoch : 1 };
}

const CONTAINER_NAME = /^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$/;
/** the hosts a plain-http URL may name: a storage emulator on this machine */
export const LOOPBACK_HOSTS: ReadonlySet<string> = new Set(['127.0.0.1', 'localhost', '[::1]']);

/**
 * A container's URL as a replication names it: https (or http to a loopback address, a
 * storage emulator on this host), no credentials, no query, its last segment a container
 * name. The SAS travels apart from it (parseSas).
 */
export function parseContainerUrl(text: string): string {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new OsrError('INVALID_ARGUMENT', `${JSON.stringify(text.slice(0, 200))} is not a container URL (https://ACCOUNT.blob.core.windows.net/CONTAINER)`);
  }
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname))) {
    throw new OsrError('INVALID_ARGUMENT', `a container URL is https (plain http only to a storage emulator on this host): ${url.protocol}//${url.host}`);
  }
  if (url.username || url.password || url.search || url.hash) throw new OsrError('INVALID_ARGUMENT', 'a container URL carries no credentials, query or fragment: give the SAS as azureSas');
  const container = url.pathname.replace(/\/+$/, '').split('/').at(-1) ?? '';
  if (!CONTAINER_NAME.test(container)) throw new OsrError('INVALID_ARGUMENT', `${JSON.stringify(container.slice(0, 80))} is not a container name (3 to 63 lower-case letters, digits and single hyphens)`);
  return `${url.origin}${url.pathname.replace(/\/+$/, '')}`;
}

/** A SAS token as the query of a container's URL (without the leading "?"). */
export function parseSas(text: string): string {
  if (text.length > 4096 || !/^[A-Za-z0-9%&=._~+/:,-]+$/.test(text) || !/(^|&)sig=/.test(text)) {
    throw new OsrError('INVALID_ARGUMENT', 'azureSas is not a shared access signature (the query of a SAS URL without its "?", with sig=…)');
  }
  return text;
}

/** Whether a text is a container URL as parseContainerUrl gives it back (a grant's end may name one). */
export function isContainerUrl(v: unknown): v is string {
  if (typeof v !== 'string' || v.length > 2048) return false;
  try {
    return parseContainerUrl(v) === v;
  } catch {
    return false;
  }
}

/**
 * A blob's URL with a read SAS, as Azure hands one for a managed disk (`beginGrantAccess`):
 * https (or http to a storage emulator on this host), no credentials in the authority,
 * a SAS in the query. What a failback downloads in the region; anything else is refused.
 */
export function parseReadSasUrl(text: string): URL {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw new OsrError('INVALID_ARGUMENT', 'a disk\'s access URL is not a URL');
  }
  if (text.length > 4096) throw new OsrError('INVALID_ARGUMENT', 'a disk\'s access URL is longer than 4096 characters');
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && LOOPBACK_HOSTS.has(url.hostname))) {
    throw new OsrError('INVALID_ARGUMENT', `a disk's access URL is https (plain http only to a storage emulator on this host): ${url.protocol}//${url.host}`);
  }
  if (url.username || url.password || url.hash) throw new OsrError('INVALID_ARGUMENT', 'a disk\'s access URL carries no user name, password or fragment');
  // a storage service's blob endpoint on its https port (md-….blob.storage.azure.net, ….blob.core.windows.net and the sovereign clouds'), or the emulator here: no other address is fetched
  const azureBlob = /^[a-z0-9-]{1,63}(\.z[0-9]{1,3})?\.blob\.(storage\.azure\.net|core\.windows\.net|core\.usgovcloudapi\.net|core\.chinacloudapi\.cn)$/i.test(url.hostname) && url.protocol === 'https:' && url.port === '';
  if (!LOOPBACK_HOSTS.has(url.hostname) && !azureBlob) {
    throw new OsrError('INVALID_ARGUMENT', `a disk's access URL names an Azure storage blob endpoint (….blob.storage.azure.net, ….blob.core.windows.net, or a sovereign cloud's) on port 443, not ${url.host}`);
  }
  parseSas(url.search.replace(/^\?/, ''));
  return url;
}
