/**
 * A VM's machine, as a hypervisor needs it to define the VM anew at another host: its
 * vCPUs, memory, firmware, how it boots and its NICs. A libvirt source domain's is read
 * from its definition (src/agent/libvirt/virsh.ts); a recovery host defines its replica's
 * domain from it when a failover or a drill starts the VM there (docs/design/libvirt.md).
 *
 * A machine crosses trust boundaries (a provider hands it to an agent, which runs as root),
 * so `checkMachine` bounds every field before anything is built from it.
 */
import { OsrError } from './errors.js';

export interface MachineNic {
  /** the hypervisor's network at the host that runs the VM; null: not connected */
  network: string | null;
  mac?: string | undefined;
  /** virtio, e1000, rtl8139, … */
  model?: string | undefined;
}

/** Direct kernel boot (the tiny lab guests'): files at the host that runs the VM. */
export interface MachineKernelBoot {
  kernel: string;
  initrd?: string | undefined;
  cmdline?: string | undefined;
}

export interface MachineSpec {
  vcpus: number;
  memoryMiB: number;
  /** bios (the default) or uefi */
  firmware?: 'bios' | 'uefi' | undefined;
  /** how the hypervisor runs it: kvm (hardware virtualization, the default) or qemu (emulated) — the source's, so a recovery host runs it the same way */
  accel?: 'kvm' | 'qemu' | undefined;
  /** the hypervisor's machine type (pc, q35, …); default pc */
  machineType?: string | undefined;
  kernelBoot?: MachineKernelBoot | undefined;
  /** a qemu-guest-agent channel (the guest's agent answers shutdowns, freezes and pings): the source's, so a recovered VM keeps it */
  guestAgent?: boolean | undefined;
  nics: MachineNic[];
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i;
const WORD = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const bad = (field: string, why: string) => new OsrError('INVALID_ARGUMENT', `machine.${field} ${why}`, { field: `machine.${field}` });

function absolutePath(field: string, v: unknown): string {
  if (typeof v !== 'string' || !v.startsWith('/') || v.length > 1024 || v.split('/').includes('..') || /[\0\n]/.test(v)) throw bad(field, 'must be an absolute path without ".." of at most 1024 characters');
  return v;
}

/** A machine from untrusted JSON, every field bounded (INVALID_ARGUMENT naming the field). */
export function checkMachine(v: unknown): MachineSpec {
  if (!v || typeof v !== 'object') throw bad('', 'must be an object');
  const m = v as Record<string, unknown>;
  const vcpus = m.vcpus;
  if (!Number.isSafeInteger(vcpus) || (vcpus as number) < 1 || (vcpus as number) > 512) throw bad('vcpus', 'must be an integer from 1 to 512');
  const memoryMiB = m.memoryMiB;
  if (!Number.isSafeInteger(memoryMiB) || (memoryMiB as number) < 16 || (memoryMiB as number) > 16 * 1024 * 1024) throw bad('memoryMiB', 'must be an integer from 16 to 16777216');
  if (m.firmware !== undefined && m.firmware !== 'bios' && m.firmware !== 'uefi') throw bad('firmware', 'must be bios or uefi');
  if (m.accel !== undefined && m.accel !== 'kvm' && m.accel !== 'qemu') throw bad('accel', 'must be kvm or qemu');
  if (m.guestAgent !== undefined && typeof m.guestAgent !== 'boolean') throw bad('guestAgent', 'must be true or false');
  if (m.machineType !== undefined && (typeof m.machineType !== 'string' || !WORD.test(m.machineType))) throw bad('machineType', 'must be a word of letters, digits, dots, dashes and underscores');
  let kernelBoot: MachineKernelBoot | undefined;
  if (m.kernelBoot !== undefined) {
    const k = m.kernelBoot as Record<string, unknown> | null;
    if (!k || typeof k !== 'object') throw bad('kernelBoot', 'must be an object');
    const cmdline = k.cmdline;
    if (cmdline !== undefined && (typeof cmdline !== 'string' || cmdline.length > 2048 || /[\0\n]/.test(cmdline))) throw bad('kernelBoot.cmdline', 'must be one line of at most 2048 characters');
    kernelBoot = { kernel: absolutePath('kernelBoot.kernel', k.kernel), ...(k.initrd !== undefined ? { initrd: absolutePath('kernelBoot.initrd', k.initrd) } : {}), ...(cmdline !== undefined ? { cmdline: cmdline as string } : {}) };
  }
  if (!Array.isArray(m.nics) || m.nics.length > 32) throw bad('nics', 'must be a list of at most 32 NICs');
  const nics = m.nics.map((raw: unknown, i: number): MachineNic => {
    const n = (raw ?? {}) as Record<string, unknown>;
    if (n.network !== null && (typeof n.network !== 'string' || !WORD.test(n.network))) throw bad(`nics[${i}].network`, 'must be a network name (letters, digits, dots, dashes, underscores) or null');
    if (n.mac !== undefined && (typeof n.mac !== 'string' || !MAC.test(n.mac))) throw bad(`nics[${i}].mac`, 'must be a MAC address like 52:54:00:12:34:56');
    if (n.model !== undefined && (typeof n.model !== 'string' || !WORD.test(n.model))) throw bad(`nics[${i}].model`, 'must be a NIC model name');
    return { network: n.network as string | null, ...(n.mac !== undefined ? { mac: (n.mac as string).toLowerCase() } : {}), ...(n.model !== undefined ? { model: n.model as string } : {}) };
  });
  return {
    vcpus: vcpus as number,
    memoryMiB: memoryMiB as number,
    ...(m.firmware !== undefined ? { firmware: m.firmware as 'bios' | 'uefi' } : {}),
    ...(m.accel !== undefined ? { accel: m.accel as 'kvm' | 'qemu' } : {}),
    ...(m.guestAgent !== undefined ? { guestAgent: m.guestAgent } : {}),
    ...(m.machineType !== undefined ? { machineType: m.machineType as string } : {}),
    ...(kernelBoot ? { kernelBoot } : {}),
    nics,
  };
}
