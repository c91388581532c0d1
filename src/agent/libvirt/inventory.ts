/**
 * What a KVM host has, read from its libvirtd: domains (state, memory, vCPUs, disks, NICs),
 * networks and storage pools. The provider maps these facts to osr's inventory through
 * the site file (docs/design/libvirt.md); nothing here knows clouds or VM networks.
 * Isolated networks for drills are made and removed here too.
 */
import { XMLParser } from 'fast-xml-parser';
import { OsrError } from '../../domain/errors.js';
import type { MachineSpec } from '../../domain/machine.js';
import { parseDomainXml, xmlText, type DomainInfo, type Virsh } from './virsh.js';

const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@', parseTagValue: false });
type Node = Record<string, unknown>;
const obj = (v: unknown): Node => (v && typeof v === 'object' ? (v as Node) : {});
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : undefined);

export interface HostDomain extends DomainInfo {
  /** what a recovery host needs to define the domain anew (its NICs on this host's networks) */
  machine: MachineSpec;
  state: string;
  running: boolean;
  memoryMiB: number;
  vcpus: number;
  autostart: boolean;
}

export interface HostNetwork {
  name: string;
  bridge?: string;
  /** nat, route, bridge, open…; absent: isolated */
  forward?: string;
  active: boolean;
}

export interface HostPool {
  name: string;
  type: string;
  path?: string;
  capacityBytes: number;
  availableBytes: number;
  active: boolean;
}

export interface HostInventory {
  domains: HostDomain[];
  networks: HostNetwork[];
  pools: HostPool[];
}

const names = (out: string) => out.split('\n').map((s) => s.trim()).filter(Boolean);

/** Size in bytes of a libvirt `<memory unit=…>`-style element. */
function bytesOf(v: unknown): number {
  const n = obj(v);
  const value = Number(str(n['#text']) ?? str(v) ?? 0);
  const unit = (str(n['@unit']) ?? 'KiB').toLowerCase();
  const scale: Record<string, number> = { b: 1, bytes: 1, k: 1024, kib: 1024, kb: 1000, m: 1024 ** 2, mib: 1024 ** 2, mb: 1e6, g: 1024 ** 3, gib: 1024 ** 3, gb: 1e9, t: 1024 ** 4, tib: 1024 ** 4, tb: 1e12 };
  return value * (scale[unit] ?? 1024);
}

export async function readDomain(virsh: Virsh, name: string): Promise<HostDomain> {
  const xml = await virsh.run(['dumpxml', name]);
  const info = parseDomainXml(xml);
  const d = obj(parser.parse(xml).domain);
  const state = (await virsh.run(['domstate', name])).trim();
  const autostart = /Autostart:\s+enable/.test(await virsh.run(['dominfo', name]));
  const memoryMiB = Math.round(bytesOf(d.memory) / 1024 ** 2);
  const vcpus = Number(str(obj(d.vcpu)['#text']) ?? str(d.vcpu) ?? 1);
  return { ...info, machine: machineOf(d, info, vcpus, memoryMiB), state, running: state === 'running' || state === 'paused', memoryMiB, vcpus, autostart };
}

/** The domain's machine (src/domain/machine.ts), from its XML. */
function machineOf(d: Node, info: DomainInfo, vcpus: number, memoryMiB: number): MachineSpec {
  const os = obj(d.os);
  const type = obj(os.type);
  const firmware = str(os['@firmware']) === 'efi' || os.loader !== undefined ? 'uefi' : 'bios';
  const machineType = str(type['@machine']);
  const kernel = str(os.kernel);
  const accel = str(d['@type']);
  const channels = obj(d.devices).channel;
  const guestAgent = (Array.isArray(channels) ? channels : channels === undefined ? [] : [channels]).some((c) => str(obj(obj(c).target)['@name']) === 'org.qemu.guest_agent.0');
  return {
    vcpus,
    memoryMiB,
    firmware,
    ...(accel === 'kvm' || accel === 'qemu' ? { accel } : {}),
    ...(machineType ? { machineType } : {}),
    ...(guestAgent ? { guestAgent } : {}),
    ...(kernel ? { kernelBoot: { kernel, ...(str(os.initrd) ? { initrd: str(os.initrd) } : {}), ...(str(os.cmdline) ? { cmdline: str(os.cmdline) } : {}) } } : {}),
    nics: info.nics.map((n) => ({ network: n.network ?? null, ...(n.mac ? { mac: n.mac } : {}), ...(n.model ? { model: n.model } : {}) })),
  };
}

export async function readHostInventory(virsh: Virsh, o: { domains?: (name: string) => boolean } = {}): Promise<HostInventory> {
  const domains: HostDomain[] = [];
  for (const name of names(await virsh.run(['list', '--all', '--name']))) {
    if (o.domains && !o.domains(name)) continue;
    try {
      domains.push(await readDomain(virsh, name));
    } catch (e) {
      // undefined between the list and the read: not there any more
      if (!(e instanceof OsrError) || e.code !== 'VM_NOT_FOUND') throw e;
    }
  }
  const networks: HostNetwork[] = [];
  const active = new Set(names(await virsh.run(['net-list', '--name'])));
  for (const name of names(await virsh.run(['net-list', '--all', '--name']))) {
    const n = obj(parser.parse(await virsh.run(['net-dumpxml', name])).network);
    const forward = str(obj(n.forward)['@mode']) ?? (n.forward !== undefined ? 'nat' : undefined);
    networks.push({ name, active: active.has(name), ...(str(obj(n.bridge)['@name']) ? { bridge: str(obj(n.bridge)['@name']) } : {}), ...(forward ? { forward } : {}) });
  }
  const pools: HostPool[] = [];
  const activePools = new Set(names(await virsh.run(['pool-list', '--name'])));
  for (const name of names(await virsh.run(['pool-list', '--all', '--name']))) {
    const p = obj(parser.parse(await virsh.run(['pool-dumpxml', name])).pool);
    pools.push({
      name,
      type: str(p['@type']) ?? 'dir',
      active: activePools.has(name),
      capacityBytes: bytesOf(p.capacity),
      availableBytes: bytesOf(p.available),
      ...(str(obj(p.target).path) ? { path: str(obj(p.target).path) } : {}),
    });
  }
  return { domains, networks, pools };
}

/**
 * An isolated network for a drill: no forward and no address (libvirt starts no DHCP
 * server), so test VMs on it reach each other and nothing else. Made once per name.
 */
export async function ensureIsolatedNetwork(virsh: Virsh, name: string): Promise<{ name: string; bridge: string }> {
  const existing = names(await virsh.run(['net-list', '--all', '--name']));
  if (!existing.includes(name)) {
    await virsh.withXml(`<network><name>${xmlText(name)}</name><bridge stp='off'/></network>`, (f) => ['net-define', f]);
  }
  if (!names(await virsh.run(['net-list', '--name'])).includes(name)) await virsh.run(['net-start', name]);
  const n = obj(parser.parse(await virsh.run(['net-dumpxml', name])).network);
  if (n.forward !== undefined) throw new OsrError('INVALID_STATE', `libvirt network ${name} forwards traffic: it is not a drill's isolated network; choose another name`);
  return { name, bridge: str(obj(n.bridge)['@name']) ?? '' };
}

/** Remove a drill's network (idempotent). */
export async function removeNetwork(virsh: Virsh, name: string): Promise<void> {
  const all = names(await virsh.run(['net-list', '--all', '--name']));
  if (!all.includes(name)) return;
  if (names(await virsh.run(['net-list', '--name'])).includes(name)) await virsh.run(['net-destroy', name]);
  await virsh.run(['net-undefine', name]);
}
