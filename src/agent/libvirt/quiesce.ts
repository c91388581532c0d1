/**
 * App-consistent points of a libvirt domain: the guest's file systems are frozen through
 * qemu-guest-agent (`domfsfreeze`), the point is cut (the backup begins), and they are
 * thawed again — always, even when cutting the point failed, and bounded in time. A domain
 * whose guest agent does not answer gets a crash-consistent point and the reason.
 */
import { OsrError, toOsrError } from '../../domain/errors.js';
import type { Virsh } from './virsh.js';

export interface QuiesceOutcome<T> {
  result: T;
  /** whether the file systems were frozen while `cut` ran */
  frozen: boolean;
  /** why they were not */
  reason?: string;
}

/** Messages of a guest without a working agent: the point is crash-consistent instead. */
const NO_AGENT = /guest agent is not (connected|responding|configured)|agent unavailable|QEMU guest agent is not|Guest agent not available|unable to execute QEMU agent command/i;

export async function withFrozenFilesystems<T>(virsh: Virsh, domain: string, cut: () => Promise<T>, o: { timeoutMs?: number } = {}): Promise<QuiesceOutcome<T>> {
  const timeoutMs = o.timeoutMs ?? 10_000;
  let frozen = false;
  let reason: string | undefined;
  try {
    await virsh.run(['domfsfreeze', domain], { timeoutMs });
    frozen = true;
  } catch (e) {
    const err = toOsrError(e);
    if (err.code === 'VM_NOT_FOUND') throw err;
    reason = NO_AGENT.test(err.message) ? `the guest agent of ${domain} does not answer: ${err.message}` : `freezing the file systems of ${domain} failed: ${err.message}`;
    // a freeze that timed out may have frozen some file systems: thaw whatever it did
    await thaw(virsh, domain, timeoutMs).catch(() => undefined);
  }
  try {
    return { result: await cut(), frozen, ...(reason ? { reason } : {}) };
  } finally {
    if (frozen) await thaw(virsh, domain, timeoutMs);
  }
}

/** Thaw, tried three times: a guest left frozen stops its applications. */
async function thaw(virsh: Virsh, domain: string, timeoutMs: number): Promise<void> {
  let last: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      await virsh.run(['domfsthaw', domain], { timeoutMs });
      return;
    } catch (e) {
      last = e;
      await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
    }
  }
  throw new OsrError('HYPERVISOR_ERROR', `the file systems of ${domain} could not be thawed: ${toOsrError(last).message}; thaw them now with virsh domfsthaw ${domain}`, { domain });
}
