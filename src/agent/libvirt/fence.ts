/**
 * Fencing that libvirt enforces: after a failover the old primary domain carries a fence
 * in its own metadata (the epoch of the promotion that replaced it) and has autostart off;
 * a libvirt hook script refuses to start a fenced domain, even from `virsh start` by hand,
 * until reprotect removes the fence.
 *
 * The hook goes to /etc/libvirt/hooks/qemu.d/ (libvirt runs every executable there, with
 * the domain's XML on standard input; a non-zero exit at `prepare begin` refuses the
 * start), beside any hook another tool keeps. libvirtd looks for hooks when it starts: the
 * directory must exist then (scripts/libvirt-up.sh makes it; after a first install, restart
 * libvirtd once).
 */
import fs from 'node:fs';
import path from 'node:path';
import { OsrError } from '../../domain/errors.js';
import { FENCE_NAMESPACE, parseDomainXml, type Virsh } from './virsh.js';

export const HOOK_NAME = '50-osr-fence';

/** The hook: refuse `prepare begin` of a domain whose XML carries osr's fence. */
export const FENCE_HOOK = `#!/bin/sh
# Installed by osr: refuses to start a libvirt domain that osr fenced after a failover
# (its XML carries <fence epoch="N"/> in the ${FENCE_NAMESPACE} namespace). Reprotect the
# VM with osr to lift the fence; do not start the old primary by hand.
[ "$2" = "prepare" ] && [ "$3" = "begin" ] || exit 0
xml=$(cat)
case "$xml" in
  *'${FENCE_NAMESPACE}'*)
    epoch=$(printf '%s' "$xml" | tr '\n' ' ' | grep -o '<[^>]*${FENCE_NAMESPACE}[^>]*>' | grep -o 'epoch="[0-9]*"' | head -n 1 | tr -dc '0-9')
    echo "osr: domain $1 is fenced: it failed over to the recovery site (epoch \${epoch:-?}); starting it would run two copies of the VM. Reprotect it with osr (osr item reprotect) instead." >&2
    exit 1
    ;;
esac
exit 0
`;

/**
 * Put the hook in place (written whole, mode 0755). Answers whether it changed: then
 * libvirtd must be restarted once before it runs the new script.
 */
export function installFenceHook(hooksDir = '/etc/libvirt/hooks'): { file: string; changed: boolean } {
  const dir = path.join(hooksDir, 'qemu.d');
  fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const file = path.join(dir, HOOK_NAME);
  const current = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : undefined;
  if (current === FENCE_HOOK) return { file, changed: false };
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, FENCE_HOOK, { mode: 0o755 });
  fs.renameSync(tmp, file);
  return { file, changed: true };
}

/** Fence a domain with the epoch of the promotion that replaced it: autostart off, the fence in its persistent metadata. */
export async function fenceDomain(virsh: Virsh, domain: string, epoch: number): Promise<void> {
  if (!Number.isSafeInteger(epoch) || epoch < 0) throw new OsrError('INVALID_ARGUMENT', `a fence epoch is a non-negative integer, not ${epoch}`);
  await virsh.run(['autostart', domain, '--disable']);
  await virsh.run(['metadata', domain, '--uri', FENCE_NAMESPACE, '--key', 'osr', '--set', `<fence epoch="${epoch}"/>`, '--config']);
}

/** Lift the fence (reprotect made the domain the replica of the running copy). */
export async function unfenceDomain(virsh: Virsh, domain: string): Promise<void> {
  try {
    await virsh.run(['metadata', domain, '--uri', FENCE_NAMESPACE, '--key', 'osr', '--remove', '--config']);
  } catch (e) {
    // no fence to remove
    if (!(e instanceof OsrError) || !/metadata not found|Requested metadata element is not present/i.test(e.message)) throw e;
  }
}

/** The epoch a domain is fenced with, if any (read from its persistent XML). */
export async function fenceOf(virsh: Virsh, domain: string): Promise<number | undefined> {
  return parseDomainXml(await virsh.run(['dumpxml', domain, '--inactive'])).fenceEpoch;
}
