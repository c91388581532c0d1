/**
 * Rules every ReplicaTarget applies the same way: when a resynchronization may begin, and
 * which connection holds a VM's replica. Kept here so that the replica store and the Azure
 * target cannot drift apart.
 */
import { OsrError } from '../../domain/errors.js';
import type { DiskChange, RecoveryPoint, ReplicaDiskSpec, ReplicaHolder } from './replica-target.js';

/** A resync ends in a point after the latest one, of a replica that has one, in power-of-two blocks of 512 bytes to 16 MiB. */
export function checkResyncBegin(vmId: string, latest: RecoveryPoint | undefined, initialDone: boolean, seq: number, blockSize: number): void {
  if (!latest || !initialDone) throw new OsrError('INVALID_STATE', `the replica of ${vmId} has no recovery point to resynchronize; it needs an initial copy`);
  if (!(seq > latest.seq)) throw new OsrError('INVALID_ARGUMENT', `a resync must end after the latest recovery point ${latest.seq}, not at ${seq}`);
  if (!Number.isInteger(blockSize) || blockSize < 512 || blockSize > 16 * 1024 * 1024 || (blockSize & (blockSize - 1)) !== 0) {
    throw new OsrError('INVALID_ARGUMENT', `resync block size ${blockSize} is not a power of two between 512 bytes and 16 MiB`);
  }
}

/**
 * How the primary's disks differ from the replica's: matched by name, a disk's id must not
 * change (a different disk under an old name is refused: its points would mix two disks).
 */
export function diskChangeOf(vmName: string, current: readonly ReplicaDiskSpec[], wanted: readonly ReplicaDiskSpec[]): DiskChange {
  const change: DiskChange = { added: [], grown: [], shrunk: [], removed: [] };
  const byName = new Map(current.map((d) => [d.name, d]));
  for (const w of wanted) {
    const c = byName.get(w.name);
    if (!c) change.added.push({ ...w });
    else if (c.id !== w.id) throw new OsrError('DISK_CHANGE_UNSUPPORTED', `disk ${w.name} of ${vmName} is another disk than the replica's (id ${w.id}, the replica's is ${c.id}); remove the disk and add it under a new name`);
    else if (w.size > c.size) change.grown.push({ name: w.name, from: c.size, to: w.size });
    else if (w.size < c.size) change.shrunk.push({ name: w.name, from: c.size, to: w.size });
  }
  const names = new Set(wanted.map((d) => d.name));
  for (const c of current) if (!names.has(c.name)) change.removed.push({ ...c });
  return change;
}

/** Whether a disk change changes anything. */
export function diskChangeEmpty(c: DiskChange): boolean {
  return c.added.length + c.grown.length + c.shrunk.length + c.removed.length === 0;
}

/** What a disk change does, in a few words per disk (for logs, health and refusals). */
export function describeDiskChange(c: DiskChange): string {
  return [
    ...c.added.map((d) => `${d.name} added (${d.size} bytes)`),
    ...c.grown.map((d) => `${d.name} grown from ${d.from} to ${d.to} bytes`),
    ...c.shrunk.map((d) => `${d.name} shrunk from ${d.from} to ${d.to} bytes`),
    ...c.removed.map((d) => `${d.name} removed`),
  ].join(', ');
}

/** A shrink or a removal: the next points lose bytes, so the user confirms it first. */
export function diskChangeNeedsConfirmation(c: DiskChange): boolean {
  return c.shrunk.length + c.removed.length > 0;
}

/** One connection holds a VM's replica at a time: a newer one closes the older (the sender reconnected). */
export class ReplicaHolders<H extends ReplicaHolder = ReplicaHolder> {
  private readonly holders = new Map<string, H>();

  get(vmId: string): H | undefined {
    return this.holders.get(vmId);
  }

  claim(vmId: string, holder: H): void {
    const old = this.holders.get(vmId);
    if (old && old !== holder) old.destroy(new OsrError('NETWORK_ERROR', `replaced by a newer connection for ${vmId}`));
    this.holders.set(vmId, holder);
  }

  release(vmId: string, holder: H): void {
    if (this.holders.get(vmId) === holder) this.holders.delete(vmId);
  }

  /** Close the VM's connection, if one holds it, telling it why. */
  drop(vmId: string, why: OsrError): void {
    const h = this.holders.get(vmId);
    this.holders.delete(vmId);
    h?.destroy(why);
  }
}
