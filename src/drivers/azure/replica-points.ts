/**
 * The recovery points of a VM's replica in its container, as the Azure driver reads them to
 * offer and fail over from (the layout is src/domain/azure-layout.ts; the agent writes it).
 * Only complete sets are points: a set a crash left short of a disk is not offered.
 */
import type { BlobClient, ContainerClient } from '@azure/storage-blob';
import { OsrError } from '../../domain/errors.js';
import { diskBlobName, groupPointSets, MAX_RECORD_BYTES, parseReplicaRecordView, RECORD_BLOB, type PointSet, type ReplicaRecordView, type SnapshotEntry } from '../../domain/azure-layout.js';

export interface ReplicaPoints {
  record: ReplicaRecordView;
  points: PointSet[];
}

/** replica.json's text and its ETag, read with a bound on its size whatever the service says its length is (NOT_FOUND: no replica). */
async function readRecordText(container: ContainerClient): Promise<{ text: string; etag: string }> {
  try {
    const r = await container.getBlockBlobClient(RECORD_BLOB).download();
    const chunks: Buffer[] = [];
    let bytes = 0;
    for await (const c of r.readableStreamBody!) {
      bytes += (c as Buffer).length;
      if (bytes > MAX_RECORD_BYTES) throw new OsrError('REPLICA_STORE_CORRUPT', `${container.containerName}/${RECORD_BLOB} is larger than an osr replica record`);
      chunks.push(c as Buffer);
    }
    return { text: Buffer.concat(chunks).toString('utf8'), etag: r.etag! };
  } catch (e) {
    if (e instanceof OsrError) throw e;
    const status = (e as { statusCode?: number }).statusCode;
    if (status === 404) throw new OsrError('NOT_FOUND', `container ${container.containerName} holds no osr replica`, undefined, { cause: e });
    throw new OsrError('AZURE_STORAGE_ERROR', `reading the replica record in ${container.containerName}: ${(e as Error).message}`, { status: status ?? null }, { cause: e });
  }
}

export async function readReplicaPoints(container: ContainerClient): Promise<ReplicaPoints> {
  const { text } = await readRecordText(container);
  const record = parseReplicaRecordView(text);
  if (!record) throw new OsrError('REPLICA_STORE_CORRUPT', `${container.containerName}/${RECORD_BLOB} is not an osr replica record`);
  const entries: SnapshotEntry[] = [];
  // a replica keeps at most 10,000 points a disk (retention's bound) and a few snapshots more
  const most = record.disks.length * 10_000 * 2;
  try {
    for await (const b of container.listBlobsFlat({ includeSnapshots: true, includeMetadata: true, prefix: 'disks/' })) {
      if (!b.snapshot) continue;
      entries.push({ name: b.name, snapshot: b.snapshot, metadata: b.metadata });
      if (entries.length > most) throw new OsrError('REPLICA_STORE_CORRUPT', `container ${container.containerName} holds more than ${most} disk snapshots: not an osr replica's`);
    }
  } catch (e) {
    if (e instanceof OsrError) throw e;
    throw new OsrError('AZURE_STORAGE_ERROR', `listing the recovery points in ${container.containerName}: ${(e as Error).message}`, undefined, { cause: e });
  }
  const points = groupPointSets(
    entries,
    record.disks.map((d) => d.name),
    record.generation,
  ).filter((s) => s.complete);
  return { record, points };
}

/** The snapshots of point `seq`, one client per disk in the record's order (the OS disk first), to fail over from. */
export function pointDisks(container: ContainerClient, r: ReplicaPoints, seq: number): { name: string; sizeBytes: number; snapshot: BlobClient }[] {
  const set = r.points.find((p) => p.point.seq === seq);
  if (!set) throw new OsrError('NOT_FOUND', `the replica in ${container.containerName} has no recovery point ${seq}`, { points: r.points.map((p) => p.point.seq) });
  return r.record.disks.map((d) => ({ name: d.name, sizeBytes: d.size, snapshot: container.getBlobClient(diskBlobName(d.name)).withSnapshot(set.snapshots.find((s) => s.disk === d.name)!.snapshot) }));
}

/**
 * After a failback the replica is stale: the VM ran in Azure and came home, so every block
 * may differ from the primary that replicates into it next. Recorded in replica.json (the
 * agent's record, changed only here and only while no agent writes: its access is revoked)
 * as `divergent: 'all'` with the epoch the VM came home in; the agent then compares every
 * block before any delta, and its resync's point clears the mark.
 */
export async function markReplicaStale(container: ContainerClient, epoch: number): Promise<void> {
  const { text, etag } = await readRecordText(container);
  if (!parseReplicaRecordView(text)) throw new OsrError('REPLICA_STORE_CORRUPT', `${container.containerName}/${RECORD_BLOB} is not an osr replica record`);
  const record = JSON.parse(text) as Record<string, unknown>;
  const now = typeof record.epoch === 'number' ? record.epoch : 1;
  if (record.divergent === 'all' && now >= epoch) return;
  record.divergent = 'all';
  record.epoch = Math.max(now, epoch);
  const body = JSON.stringify(record);
  try {
    // only over the record read: a change made meanwhile (an agent's) fails this, and the step runs again
    await container.getBlockBlobClient(RECORD_BLOB).upload(body, Buffer.byteLength(body), { conditions: { ifMatch: etag }, blobHTTPHeaders: { blobContentType: 'application/json' } });
  } catch (e) {
    throw new OsrError('AZURE_STORAGE_ERROR', `marking the replica in ${container.containerName} stale: ${(e as Error).message}`, { status: (e as { statusCode?: number }).statusCode ?? null }, { cause: e });
  }
}
