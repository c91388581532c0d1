/**
 * The Azure VM sizes a replica VM may be given, and the default: the smallest with the
 * source's vCPUs and memory (ASR's rule). A size chosen at enable must be one of these.
 */
import type { MachineSpec } from '../../domain/machine.js';
import { OsrError } from '../../domain/errors.js';

/** A VM size Azure offers, for the default: the smallest that has the source's vCPUs and memory. */
export const VM_SIZES: readonly { name: string; vcpus: number; memoryMiB: number }[] = [
  { name: 'Standard_B1s', vcpus: 1, memoryMiB: 1024 },
  { name: 'Standard_B1ms', vcpus: 1, memoryMiB: 2048 },
  { name: 'Standard_B2s', vcpus: 2, memoryMiB: 4096 },
  { name: 'Standard_B2ms', vcpus: 2, memoryMiB: 8192 },
  { name: 'Standard_D4s_v5', vcpus: 4, memoryMiB: 16384 },
  { name: 'Standard_D8s_v5', vcpus: 8, memoryMiB: 32768 },
  { name: 'Standard_D16s_v5', vcpus: 16, memoryMiB: 65536 },
  { name: 'Standard_D32s_v5', vcpus: 32, memoryMiB: 131072 },
  { name: 'Standard_D64s_v5', vcpus: 64, memoryMiB: 262144 },
];

/** The size a replica VM gets by default: the smallest with at least the source's vCPUs and memory (the smallest of all when the source's are not known). */
export function defaultVmSize(m: Pick<MachineSpec, 'vcpus' | 'memoryMiB'> | undefined): string {
  if (!m) return VM_SIZES[0]!.name;
  const fit = VM_SIZES.find((s) => s.vcpus >= m.vcpus && s.memoryMiB >= m.memoryMiB);
  if (!fit) throw new OsrError('NOT_SUPPORTED', `no Azure size osr knows has ${m.vcpus} vCPUs and ${m.memoryMiB} MiB; the largest is ${VM_SIZES.at(-1)!.name}`);
  return fit.name;
}

