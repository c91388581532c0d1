/**
 * Rules every ReplicaTarget applies the same way: when a resynchronization may begin, and
 * which connection holds a VM's replica. Kept here so that the replica store and the Azure
 * target cannot drift apart.
 */
import { OsrError } from '../../domain/errors.js';
import type { RecoveryPoint, ReplicaHolder } from './replica-target.js';

/** A resync ends in a point after the latest one, of a replica that has one, in power-of-two blocks of 512 bytes to 16 MiB. */
export function checkResyncBegin(vmId: string, latest: RecoveryPoint | undefined, initialDone: boolean, seq: number, blockSize: number): void {
  if (!latest || !initialDone) throw new OsrError('INVALID_STATE', `the replica of ${vmId} has no recovery point to resynchronize; it needs an initial copy`);
  if (!(seq > latest.seq)) throw new OsrError('INVALID_ARGUMENT', `a resync must end after the latest recovery point ${latest.seq}, not at ${seq}`);
  if (!Number.isInteger(blockSize) || blockSize < 512 || blockSize > 16 * 1024 * 1024 || (blockSize & (blockSize - 1)) !== 0) {
    throw new OsrError('INVALID_ARGUMENT', `resync block size ${blockSize} is not a power of two between 512 bytes and 16 MiB`);
  }
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
