/**
 * Real libvirt domains for the tests: the tiny guest (src/lab/tiny-guest.ts) on qcow2 v3
 * disks, its serial console in a file, run by the host's libvirtd (qemu:///system, TCG).
 * Outside CI the libvirt tests skip when virsh or libvirtd is missing, and say so; in CI
 * (`.ci/run` starts libvirtd) they run.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import crypto from 'node:crypto';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { Virsh } from '../../src/agent/libvirt/virsh.js';
import { removeDomain as remove, startTinyDomain as start, type TinyDomain, type TinyDomainOptions } from '../../src/lab/tiny-domain.js';
import { parseRecords } from '../../src/lab/tiny-guest.js';
import { startPair, tempDir, type Pair } from './lab.js';
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

/**
 * The tiny guest's records on a copy of its system disk (a raw ext4 image), after the file
 * system is recovered as a failover would mount it (e2fsck replays the journal; exit 1 is
 * "errors corrected", anything above is damage).
 */
export function recordsOnImage(image: string): number[] {
  const copy = `${image}.fsck`;
  fs.copyFileSync(image, copy);
  try {
    execFileSync('e2fsck', ['-fy', copy], { stdio: 'pipe' });
  } catch (e) {
    assert.equal((e as { status?: number }).status, 1, `e2fsck found damage in ${image}: ${String((e as { stdout?: Buffer }).stdout)}`);
  }
  try {
    return parseRecords(execFileSync('debugfs', ['-R', 'cat /records', copy], { stdio: ['ignore', 'pipe', 'ignore'] }));
  } finally {
    fs.rmSync(copy, { force: true });
  }
}

/** Where the tiny guest's kernel and initramfs are kept: a recovery agent may boot them (--libvirt-boot-dir). */
export const guestCache = process.env.OSR_GUEST_CACHE ?? path.join(os.homedir(), '.cache', 'osr', 'tiny-guest');

/** The PID of a running domain's QEMU. */
export const qemuPid = (domain: string): number => Number(fs.readFileSync(`/run/libvirt/qemu/${domain}.pid`, 'utf8').trim());

/**
 * A failover between two sites on this libvirtd: the tiny guest as domain PREFIX-a-VM at
 * the primary agent, which owns the `PREFIX-a-` domains, and a recovery agent that owns the
 * `PREFIX-b-` ones (a promoted replica's domain is PREFIX-b-VM there). `close` removes both
 * domains and the directory.
 */
export interface FailoverSites {
  vm: string;
  /** the primary's domain, and the recovery site's once promoted */
  a: string;
  b: string;
  dir: string;
  dom: TinyDomain;
  pair: Pair;
  close(): Promise<void>;
}

export async function startFailoverSites(prefix: string, o: { primaryListens?: boolean } = {}): Promise<FailoverSites> {
  const dir = tempDir(`${prefix}-`);
  const vm = `vm${process.pid}`;
  const a = `${prefix}-a-${vm}`;
  const b = `${prefix}-b-${vm}`;
  const dom = await startTinyDomain(a, path.join(dir, 'domain'), { interval: 0.2 });
  const pair = await startPair(path.join(dir, 'agents'), {
    primaryListens: o.primaryListens === true,
    primaryArgs: ['--host', 'libvirt', '--libvirt-prefix', `${prefix}-a-`],
    replicaArgs: ['--host', 'libvirt', '--libvirt-prefix', `${prefix}-b-`, '--libvirt-boot-dir', guestCache],
  });
  return {
    vm,
    a,
    b,
    dir,
    dom,
    pair,
    async close() {
      await pair.stop();
      await dom.destroy();
      await removeDomain(b);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Every byte of a domain's disks now, hashed: a pull-mode backup that makes no checkpoint, read over NBD (its scratch files in `dir`). */
export async function domainDiskHashes(domain: string, dir: string, disks: readonly string[] = ['vda', 'vdb']): Promise<Record<string, string>> {
  const work = path.join(dir, 'now');
  fs.mkdirSync(work, { recursive: true });
  const sock = path.join(work, 'now.sock');
  const xml = path.join(work, 'now.xml');
  fs.writeFileSync(xml, `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/><disks>${disks.map((k) => `<disk name='${k}' backup='yes' type='file'><scratch file='${path.join(work, `s-${k}.qcow2`)}'/></disk>`).join('')}</disks></domainbackup>`);
  await virsh.run(['backup-begin', domain, xml]);
  try {
    const out: Record<string, string> = {};
    for (const disk of disks) {
      const c = await NbdClient.connect({ socketPath: sock, exportName: disk });
      const h = crypto.createHash('sha256');
      for (let off = 0; off < c.size; off += 4 * 1024 * 1024) h.update(await c.read(off, Math.min(4 * 1024 * 1024, c.size - off)));
      await c.close();
      out[disk] = h.digest('hex');
    }
    return out;
  } finally {
    await virsh.run(['domjobabort', domain]);
  }
}
