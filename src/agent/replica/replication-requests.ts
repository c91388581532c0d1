/**
 * What a primary may ask of a replica, read from the wire. Every request and control
 * message the replica end acts on is parsed here first: names that become file names
 * (VM id, disk names, resync id) pass the one rule of src/domain/names.ts, numbers are
 * integers in range, and shapes are what the handlers expect. Anything else is refused
 * with PROTOCOL_ERROR before it reaches the replica store.
 */
import { OsrError } from '../../domain/errors.js';
import { MAX_REPLICATION_EPOCH } from '../../domain/replicas.js';
import { MAX_DISK_BYTES, MAX_DISKS, safeBoolean, safeInteger, safeName, safeObject, safeSeq } from '../../domain/names.js';
import type { DiskRanges, Range } from '../io/ranges.js';
import { Consistency } from '../ports/change-source.js';
import type { RecoveryPoint, ReplicaDiskSpec, RetentionSpec } from '../ports/replica-target.js';
import type { OpenRequest } from '../wire/replication-types.js';

const MAX_EPOCH = MAX_REPLICATION_EPOCH;
const MAX_RANGES_PER_DISK = 1_000_000;

export function parseDisks(value: unknown): ReplicaDiskSpec[] {
  if (!Array.isArray(value) || value.length < 1 || value.length > MAX_DISKS) throw new OsrError('PROTOCOL_ERROR', `disks must be a list of 1 to ${MAX_DISKS} disks`);
  const disks = value.map((d, i) => {
    const o = safeObject(d, `disk ${i}`);
    return { id: safeName(o.id, 'disk id'), name: safeName(o.name, 'disk name'), size: safeInteger(o.size, 'disk size', 1, MAX_DISK_BYTES) };
  });
  if (new Set(disks.map((d) => d.name)).size !== disks.length || new Set(disks.map((d) => d.id)).size !== disks.length) throw new OsrError('PROTOCOL_ERROR', 'two disks share a name or an id');
  return disks;
}

export function parseRetention(value: unknown): RetentionSpec {
  const o = safeObject(value, 'retention');
  return {
    hours: safeInteger(o.hours, 'retention hours', 0, 24 * 365),
    maxPoints: safeInteger(o.maxPoints, 'retention points', 1, 1_000_000),
    ...(o.minSpacingMs !== undefined ? { minSpacingMs: safeInteger(o.minSpacingMs, 'retention spacing', 0, 3600_000) } : {}),
  };
}

export function parseEpoch(value: unknown): number {
  return safeInteger(value, 'epoch', 0, MAX_EPOCH);
}

export interface OpenArgs extends OpenRequest {
  reset: boolean;
}

export function parseOpen(args: Record<string, unknown>): OpenArgs {
  return {
    vmId: safeName(args.vmId, 'VM id'),
    vmName: safeName(args.vmName, 'VM name'),
    disks: parseDisks(args.disks),
    retention: parseRetention(args.retention),
    epoch: parseEpoch(args.epoch),
    reset: safeBoolean(args.reset, 'reset'),
    ...(args.confirmedShrink !== undefined ? { confirmedShrink: safeBoolean(args.confirmedShrink, 'confirmedShrink') } : {}),
  };
}

const CONSISTENCIES = new Set<string>(Object.values(Consistency));

export function parsePoint(value: unknown): RecoveryPoint {
  const o = safeObject(value, 'point');
  if (typeof o.consistency !== 'string' || !CONSISTENCIES.has(o.consistency)) throw new OsrError('PROTOCOL_ERROR', 'point consistency must be crash-consistent or app-consistent');
  return {
    seq: safeSeq(o.seq),
    timeMs: safeInteger(o.timeMs, 'point time'),
    consistency: o.consistency as Consistency,
    deltaBytes: safeInteger(o.deltaBytes, 'point delta bytes'),
    ...(o.cut !== undefined ? { cut: safeName(o.cut, 'point cut') } : {}),
  };
}

/** Ranges per disk, each range inside its disk (`sizes`: disk name → bytes). */
export function parseDiskRanges(value: unknown, sizes: ReadonlyMap<string, number>): DiskRanges {
  const o = safeObject(value, 'ranges');
  const out: DiskRanges = {};
  for (const [disk, list] of Object.entries(o)) {
    const size = sizes.get(disk);
    if (size === undefined) throw new OsrError('PROTOCOL_ERROR', `ranges name disk ${JSON.stringify(disk.slice(0, 80))}, which this replica does not have`);
    if (!Array.isArray(list) || list.length > MAX_RANGES_PER_DISK) throw new OsrError('PROTOCOL_ERROR', `ranges of disk ${disk} must be a list of at most ${MAX_RANGES_PER_DISK} [offset, length] pairs`);
    out[disk] = list.map((r): Range => {
      if (!Array.isArray(r) || r.length !== 2) throw new OsrError('PROTOCOL_ERROR', `a range of disk ${disk} is not an [offset, length] pair`);
      const offset = safeInteger(r[0], `range offset of ${disk}`, 0, size);
      const length = safeInteger(r[1], `range length of ${disk}`, 0, size - offset);
      return [offset, length];
    });
  }
  return out;
}

/** A resync's id, the point it ends in and its block size. */
export function parseResyncBegin(args: Record<string, unknown>): { id: string; seq: number; blockSize: number } {
  return { id: safeName(args.id, 'resync id'), seq: safeSeq(args.seq), blockSize: safeInteger(args.blockSize, 'resync block size', 512, 16 * 1024 * 1024) };
}
