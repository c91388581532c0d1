/**
 * Domain definitions osr makes: a failed-over VM's domain at the recovery host, a drill's
 * test domain. Built from a checked machine (src/domain/machine.ts) and disks osr chose;
 * every text that goes into the XML is escaped here, so nothing a peer or a provider hands
 * the agent becomes markup.
 *
 * A disk is a chain of files (the top first, each backed by the next; a layer may keep its
 * data in a raw file, libvirt's `<dataStore>`), or an NBD export on a Unix socket (a
 * drill's overlay, served by the agent).
 */
import fs from 'node:fs';
import { OsrError } from '../../domain/errors.js';
import type { MachineSpec } from '../../domain/machine.js';
import { xmlText } from './virsh.js';

/** One file of a disk's chain. */
export interface DiskLayer {
  file: string;
  format: 'qcow2' | 'raw';
  /** the raw file a qcow2 keeps its data in (qcow2 `data_file`) */
  dataFile?: string | undefined;
}

export type DomainDiskSpec = ({ target: string; chain: DiskLayer[] } | { target: string; nbd: { socket: string; exportName: string } }) & {
  /** the guest's bus (default virtio) */
  bus?: string | undefined;
  /** elements of libvirt's own definition of the disk kept as they are (its PCI address, boot order) */
  keep?: string[] | undefined;
};

export interface DomainDefinition {
  name: string;
  uuid?: string | undefined;
  machine: MachineSpec;
  disks: DomainDiskSpec[];
  /** the serial console goes to this file (drill evidence, the lab's guests) */
  consoleLog?: string | undefined;
  /** a virtio channel for qemu-guest-agent */
  guestAgent?: boolean | undefined;
  /** XML elements for `<metadata>`, each in its own namespace (built by osr, not from input) */
  metadata?: string[] | undefined;

}

function layerXml(layers: DiskLayer[]): string {
  const [top, ...rest] = layers;
  if (!top) return '<backingStore/>';
  const data = top.dataFile ? `<dataStore type='file'><format type='raw'/><source file='${xmlText(top.dataFile)}'/></dataStore>` : '';
  return `<backingStore type='file'><format type='${top.format}'/><source file='${xmlText(top.file)}'>${data}</source>${layerXml(rest)}</backingStore>`;
}

/**
 * KVM when this machine can run it — /dev/kvm usable and the CPU's virtualization
 * extensions present (a sandbox may offer the device without them) — else TCG.
 */
export function hostAccel(): 'kvm' | 'qemu' {
  try {
    fs.accessSync('/dev/kvm', fs.constants.R_OK | fs.constants.W_OK);
    return /^flags\s*:.*\b(vmx|svm)\b/m.test(fs.readFileSync('/proc/cpuinfo', 'latin1')) ? 'kvm' : 'qemu';
  } catch {
    return 'qemu';
  }
}

/** One disk's element. */
export function diskXml(d: DomainDiskSpec): string {
  const target = `<target dev='${xmlText(d.target)}' bus='${xmlText(d.bus ?? 'virtio')}'/>${(d.keep ?? []).join('')}`;
  if ('nbd' in d) {
    return `<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/><source protocol='nbd' name='${xmlText(d.nbd.exportName)}'><host transport='unix' socket='${xmlText(d.nbd.socket)}'/></source>${target}</disk>`;
  }
  const [top, ...rest] = d.chain;
  if (!top) throw new OsrError('INTERNAL', `disk ${d.target} has no file`);
  const data = top.dataFile ? `<dataStore type='file'><format type='raw'/><source file='${xmlText(top.dataFile)}'/></dataStore>` : '';
  return `<disk type='file' device='disk'><driver name='qemu' type='${top.format}' cache='none' discard='unmap'/><source file='${xmlText(top.file)}'>${data}</source>${layerXml(rest)}${target}</disk>`;
}

function nicXml(n: MachineSpec['nics'][number]): string {
  const mac = n.mac ? `<mac address='${xmlText(n.mac)}'/>` : '';
  const model = `<model type='${xmlText(n.model ?? 'virtio')}'/>`;
  // a NIC on no network keeps its place (and MAC) with its link down
  if (n.network === null) return `<interface type='user'>${mac}${model}<link state='down'/></interface>`;
  return `<interface type='network'>${mac}<source network='${xmlText(n.network)}'/>${model}</interface>`;
}

/** The XML of a domain osr defines. */
export function domainXml(def: DomainDefinition): string {
  const m = def.machine;
  const k = m.kernelBoot;
  const boot = k
    ? `<kernel>${xmlText(k.kernel)}</kernel>${k.initrd ? `<initrd>${xmlText(k.initrd)}</initrd>` : ''}${k.cmdline ? `<cmdline>${xmlText(k.cmdline)}</cmdline>` : ''}`
    : "<boot dev='hd'/>";
  const firmware = m.firmware === 'uefi' ? " firmware='efi'" : '';
  return `<domain type='${m.accel ?? hostAccel()}'>
  <name>${xmlText(def.name)}</name>
  ${def.uuid ? `<uuid>${xmlText(def.uuid)}</uuid>` : ''}
  ${def.metadata && def.metadata.length > 0 ? `<metadata>${def.metadata.join('')}</metadata>` : ''}
  <memory unit='MiB'>${m.memoryMiB}</memory><vcpu>${m.vcpus}</vcpu>
  <os${firmware}><type arch='x86_64' machine='${xmlText(m.machineType ?? 'pc')}'>hvm</type>${boot}</os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    ${def.disks.map(diskXml).join('\n    ')}
    ${m.nics.map(nicXml).join('\n    ')}
    ${def.consoleLog ? `<serial type='pty'><log file='${xmlText(def.consoleLog)}' append='on'/><target port='0'/></serial>` : ''}
    ${def.guestAgent ? "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>" : ''}
  </devices>
</domain>`;
}
