/**
 * Real libvirt domains for the tests: the tiny guest (src/lab/tiny-guest.ts) on qcow2 v3
 * disks, its serial console in a file, run by the host's libvirtd (qemu:///system, TCG).
 * Outside CI the libvirt tests skip when virsh or libvirtd is missing, and say so; in CI
 * (`.ci/run` starts libvirtd) they run.
 */
import { execFileSync } from 'node:child_process';
import { Virsh } from '../../src/agent/libvirt/virsh.js';
import { removeDomain as remove, startTinyDomain as start, type TinyDomain, type TinyDomainOptions } from '../../src/lab/tiny-domain.js';
import { onPath } from './unit.js';

export type { TinyDomain };

export const virsh = new Virsh({ uri: 'qemu:///system' });

/** The skip reason for a libvirt test, outside CI only. */
export function libvirtSkip(): string | false {
  if (process.env.CI) return false;
  if (!onPath('virsh') || !onPath('qemu-system-x86_64') || !onPath('mkfs.ext4')) return 'libvirt is not installed (bash scripts/libvirt-up.sh installs and starts it)';
  try {
    execFileSync('virsh', ['--connect', 'qemu:///system', 'version'], { stdio: 'pipe' });
  } catch {
    return 'libvirtd does not run (bash scripts/libvirt-up.sh starts it)';
  }
  return false;
}

/** Define and start a tiny guest on the test host's libvirtd (src/lab/tiny-domain.ts). */
export function startTinyDomain(name: string, dir: string, o: TinyDomainOptions = {}): Promise<TinyDomain> {
  return start(virsh, name, dir, o);
}

export function removeDomain(name: string): Promise<void> {
  return remove(virsh, name);
}
