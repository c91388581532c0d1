/**
 * Tiny guests as libvirt domains (for the libvirt tests, the benchmark, and the KVM lab):
 * the tiny guest (tiny-guest.ts) on qcow2 v3 disks, its serial console in a file, run by
 * the host's libvirtd (TCG where there is no KVM).
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { xmlText, type Virsh } from '../agent/libvirt/virsh.js';
import { tinyGuest, type TinyGuest } from './tiny-guest.js';

export interface TinyDomain {
  name: string;
  dir: string;
  /** the disk images, by target */
  images: Record<string, string>;
  console: string;
  /** the highest record number the guest acknowledged so far (-1: none) */
  acked(): number;
  destroy(): Promise<void>;
}

/**
 * Define and start a tiny guest: vda an ext4 file system of `systemMiB`, vdb a raw
 * `dataMiB` disk, both qcow2 v3 (compat 1.1, so they carry persistent bitmaps).
 */
export interface TinyDomainOptions {
  systemMiB?: number;
  dataMiB?: number;
  /** an existing qcow2 v3 image to use as the data disk (vdb) instead of an empty one */
  dataImage?: string;
  /** seconds between records (default 0.1) */
  interval?: number;
  /** mount and write nothing: a VM that stays still */
  idle?: boolean;
  /** KiB of random bytes a second written to the data disk (vdb), records or not (default none) */
  writeKiBps?: number;
  /** carry qemu-guest-agent */
  agent?: boolean;
  /** a virtio NIC on this libvirt network (default: no NIC) */
  network?: string;
  /** how long to wait for the guest (default 120 s) */
  bootTimeoutMs?: number;
}

export async function startTinyDomain(virsh: Virsh, name: string, dir: string, o: TinyDomainOptions = {}): Promise<TinyDomain> {
  const guest = await tinyGuest({ agent: o.agent === true });
  fs.mkdirSync(dir, { recursive: true });
  const images = { vda: path.join(dir, 'vda.qcow2'), vdb: o.dataImage ?? path.join(dir, 'vdb.qcow2') };
  makeSystemImage(images.vda, o.systemMiB ?? 64);
  if (!o.dataImage) makeDataImage(images.vdb, o.dataMiB ?? 16);
  const consoleLog = path.join(dir, 'console.log');
  fs.rmSync(consoleLog, { force: true });
  const xml = tinyDomainXml({ name, guest, disks: Object.entries(images).map(([target, file]) => ({ target, file })), consoleLog, networks: o.network ? [o.network] : [], agent: o.agent === true, interval: o.interval, idle: o.idle, writeKiBps: o.writeKiBps });
  await removeDomain(virsh, name);
  await virsh.withXml(xml, (f) => ['define', f]);
  await virsh.run(['start', name]);
  const acked = () => {
    let text = '';
    try {
      text = fs.readFileSync(consoleLog, 'latin1');
    } catch {
      return -1;
    }
    const all = [...text.matchAll(/osr-guest: ack (\d+)/g)];
    return all.length > 0 ? Number(all.at(-1)![1]) : -1;
  };
  const ready = () => (o.idle ? (fs.existsSync(consoleLog) && fs.readFileSync(consoleLog, 'latin1').includes('osr-guest: mounted')) : acked() >= 2);
  const deadline = Date.now() + (o.bootTimeoutMs ?? 120_000);
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`${name} did not come up in time (console: ${consoleLog})`);
    await new Promise((r) => setTimeout(r, 200));
  }
  return { name, dir, images, console: consoleLog, acked, destroy: () => removeDomain(virsh, name) };
}

/** A qcow2 v3 image holding an empty ext4 file system: the tiny guest's system disk (vda). */
export function makeSystemImage(file: string, sizeMiB: number): void {
  const raw = `${file}.raw`;
  fs.rmSync(raw, { force: true });
  fs.writeFileSync(raw, '');
  fs.truncateSync(raw, sizeMiB * 1024 * 1024);
  try {
    execFileSync('mkfs.ext4', ['-q', '-F', raw]);
    execFileSync('qemu-img', ['convert', '-q', '-O', 'qcow2', '-o', 'compat=1.1', raw, file]);
  } finally {
    fs.rmSync(raw, { force: true });
  }
}

/** An empty qcow2 v3 image (compat 1.1: it carries persistent bitmaps). */
export function makeDataImage(file: string, sizeMiB: number): void {
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'compat=1.1', file, `${sizeMiB}M`]);
}

export interface TinyDomainDefinition {
  name: string;
  guest: TinyGuest;
  /** vda first: the guest mounts vda and writes its records there and to vdb */
  disks: { target: string; file: string }[];
  consoleLog: string;
  /** a virtio NIC on each of these libvirt networks */
  networks: string[];
  agent: boolean;
  interval?: number | undefined;
  idle?: boolean | undefined;
  writeKiBps?: number | undefined;
}

/** The tiny guest's domain XML (type qemu: the host's accel is the agent's business when it promotes). */
export function tinyDomainXml(d: TinyDomainDefinition): string {
  const cmdline = `${d.guest.cmdline} osr.interval=${d.interval ?? 0.1}${d.idle ? ' osr.idle=1' : ''}${d.writeKiBps ? ` osr.rate=${Math.round(d.writeKiBps)}` : ''}`;
  return `<domain type='qemu'>
  <name>${xmlText(d.name)}</name>
  <memory unit='MiB'>256</memory><vcpu>1</vcpu>
  <features><acpi/></features>
  <os><type arch='x86_64' machine='pc'>hvm</type><kernel>${xmlText(d.guest.kernel)}</kernel><initrd>${xmlText(d.guest.initrd)}</initrd><cmdline>${xmlText(cmdline)}</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    ${d.disks.map((k) => `<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${xmlText(k.file)}'/><target dev='${xmlText(k.target)}' bus='virtio'/></disk>`).join('\n    ')}
    ${d.networks.map((n) => `<interface type='network'><source network='${xmlText(n)}'/><model type='virtio'/></interface>`).join('\n    ')}
    <serial type='file'><source path='${xmlText(d.consoleLog)}' append='on'/><target port='0'/></serial>
    ${d.agent ? "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>" : ''}
  </devices>
</domain>`;
}

/** Stop and forget a domain with its checkpoints' metadata (the images stay). */
export async function removeDomain(virsh: Virsh, name: string): Promise<void> {
  const exists = await virsh.run(['list', '--all', '--name']).then((out) => out.split('\n').map((s) => s.trim()).includes(name));
  if (!exists) return;
  await virsh.run(['destroy', name]).catch(() => undefined);
  await virsh.run(['undefine', name, '--checkpoints-metadata']).catch(() => virsh.run(['undefine', name]));
}
