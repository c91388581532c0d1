/**
 * A KVM host under libvirt (the Host port, ports/host.ts): its VMs are the libvirt
 * domains of the agent's connection (optionally only those whose names match
 * `--libvirt-domains`), powered through libvirt, replicated from QEMU's dirty bitmaps
 * (libvirt/tracking.ts). Their disks must be qcow2 v3 files (libvirt/images.ts); osr
 * does not serve them over NBD: the guests reach their disks through QEMU.
 *
 *   <data>/libvirt/<domain uuid>/tracking.json, logs/, backup/    per domain
 *
 * A domain's osr id is its libvirt UUID: stable across renames, and the id its replica is
 * kept under. Making VMs (promote, adopt) is the replica side's part and comes with the
 * libvirt failover; here it is refused with NOT_SUPPORTED.
 */
import fs from 'node:fs';
import path from 'node:path';
import { OsrError, toOsrError } from '../../domain/errors.js';
import type { BlockDevice } from '../io/block-device.js';
import type { DiskRanges } from '../io/ranges.js';
import { fenceDomain } from '../libvirt/fence.js';
import { checkTrackable, imageInfo } from '../libvirt/images.js';
import { readDomain, type HostDomain } from '../libvirt/inventory.js';
import { LibvirtTracking } from '../libvirt/tracking.js';
import { LibvirtDrills } from './libvirt-drills.js';
import { Virsh } from '../libvirt/virsh.js';
import type { DiskReader } from '../ports/change-source.js';
import type { Host, HostLoadNote, HostVm, VmDiskSpec, VmOrigin, VmSpec } from '../ports/host.js';

export interface LibvirtHostOptions {
  uri?: string;
  /** which domains are this agent's (default all) */
  domains?: (name: string) => boolean;
  /** where direct kernel boot files of test domains may be (default: none allowed) */
  bootDir?: string;
}

export class LibvirtVm implements HostVm {
  readonly tracking: LibvirtTracking;
  readonly capabilities = { sparseRanges: true };
  readonly disks: { id: string; name: string; size: number; reader: DiskReader }[];
  spec: VmSpec;

  constructor(
    private readonly virsh: Virsh,
    private domain: HostDomain,
    sizes: Record<string, number>,
    dir: string,
    now: () => number,
  ) {
    const disks = domain.disks.filter((d) => d.device === 'disk');
    this.spec = {
      id: domain.uuid,
      name: domain.name,
      disks: disks.map((d) => ({ id: `${domain.uuid}-${d.target}`, name: d.target, size: sizes[d.target] ?? 0, image: d.file ?? '' })),
      running: domain.running,
      createdAt: new Date(now()).toISOString(),
      ...(domain.fenceEpoch !== undefined ? { fenced: { reason: `fenced by osr (epoch ${domain.fenceEpoch})`, at: new Date(now()).toISOString(), epoch: domain.fenceEpoch } } : {}),
    };
    this.tracking = new LibvirtTracking(
      virsh,
      domain.name,
      this.spec.disks.map((d) => ({ id: d.id, target: d.name, size: d.size })),
      dir,
      now,
    );
    const t = this.tracking;
    this.disks = this.spec.disks.map((d) => ({
      id: d.id,
      name: d.name,
      size: d.size,
      reader: {
        read: (offset, length, into) => t.read(d.name, offset, length, into),
        readPieces: async (buf, pieces) => {
          for (const [at, bufAt, length] of pieces) await t.read(d.name, at, length, buf.subarray(bufAt, bufAt + length));
          return buf;
        },
        blockDigests: (offset, length, blockSize) => t.digests(d.name, offset, length, blockSize),
        dataRanges: (from, size) => t.allocated(d.name, from, size),
      },
    }));
  }

  get id(): string {
    return this.spec.id;
  }
  get name(): string {
    return this.spec.name;
  }
  get running(): boolean {
    return this.spec.running;
  }

  refresh(domain: HostDomain): void {
    this.domain = domain;
    this.spec.running = domain.running;
  }

  disk(name: string): BlockDevice {
    throw new OsrError('NOT_FOUND', `disk ${name} of libvirt domain ${this.name} is QEMU's: osr does not serve it over NBD`);
  }

  async flush(): Promise<void> {
    // QEMU holds the guest's writes; a backup's view is of what the guest wrote
  }

  divergence(): DiskRanges | undefined {
    return this.spec.origin?.divergence;
  }

  clearDivergence(): void {
    if (this.spec.origin) this.spec.origin.divergence = undefined;
  }

  /** Refuse to start from now on: the fence goes into the domain's own definition, where libvirt's hook finds it. */
  fence(reason: string, epoch: number): void {
    this.spec.fenced = { reason, at: new Date().toISOString(), epoch };
    void fenceDomain(this.virsh, this.domain.name, epoch).catch(() => undefined);
  }
}

export class LibvirtHost implements Host {
  readonly servesDisks = false;
  private readonly vms = new Map<string, LibvirtVm>();
  readonly virsh: Virsh;
  /** inventory, drill networks and test domains for the provider's libvirt driver */
  readonly drills: LibvirtDrills;

  constructor(
    readonly dataDir: string,
    private readonly now: () => number,
    private readonly o: LibvirtHostOptions = {},
  ) {
    this.virsh = new Virsh({ ...(o.uri ? { uri: o.uri } : {}) });
    this.drills = new LibvirtDrills(this.virsh, o.domains, o.bootDir);
    fs.mkdirSync(path.join(dataDir, 'libvirt'), { recursive: true, mode: 0o700 });
  }

  private async load(name: string): Promise<LibvirtVm> {
    const domain = await readDomain(this.virsh, name);
    const sizes: Record<string, number> = {};
    for (const d of domain.disks.filter((x) => x.device === 'disk')) {
      const info = d.file ? await imageInfo(d.file) : undefined;
      checkTrackable(domain.name, d, info);
      sizes[d.target] = info!.virtualSize;
    }
    const vm = new LibvirtVm(this.virsh, domain, sizes, path.join(this.dataDir, 'libvirt', domain.uuid), this.now);
    await vm.tracking.recover();
    this.vms.set(vm.name, vm);
    return vm;
  }

  async loadAll(_adopted: (vmId: string) => boolean): Promise<HostLoadNote[]> {
    const out: HostLoadNote[] = [];
    const names = (await this.virsh.run(['list', '--all', '--name'])).split('\n').map((s) => s.trim()).filter(Boolean);
    for (const name of names) {
      if (this.o.domains && !this.o.domains(name)) continue;
      try {
        await this.load(name);
        out.push({ vm: name, recovered: false, tornBytes: 0 });
      } catch (e) {
        // a domain osr cannot track (a raw disk, say) is not replicated; the agent logs why
        const err = toOsrError(e);
        out.push({ vm: name, recovered: false, tornBytes: 0, notReplicable: { code: err.code, message: err.message } });
      }
    }
    return out;
  }

  list(): HostVm[] {
    return [...this.vms.values()];
  }

  has(name: string): boolean {
    return this.vms.has(name);
  }

  get(name: string): LibvirtVm {
    const vm = this.vms.get(name);
    if (!vm) throw new OsrError('VM_NOT_FOUND', `libvirt domain ${name} is not one of this agent's (not defined, not selected, or its disks cannot be tracked)`);
    return vm;
  }

  private async refresh(name: string): Promise<LibvirtVm> {
    const vm = this.get(name);
    vm.refresh(await readDomain(this.virsh, name));
    return vm;
  }

  async start(name: string): Promise<HostVm> {
    const vm = this.get(name);
    if (!vm.running) await this.virsh.run(['start', name]);
    return this.refresh(name);
  }

  async shutdown(name: string, timeoutMs: number): Promise<HostVm> {
    const vm = this.get(name);
    if (vm.running) {
      await this.virsh.run(['shutdown', name]).catch(() => undefined);
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline && (await this.refresh(name)).running) await new Promise((r) => setTimeout(r, 500));
      if ((await this.refresh(name)).running) await this.virsh.run(['destroy', name]);
    }
    return this.refresh(name);
  }

  async stop(name: string): Promise<HostVm> {
    if (this.get(name).running) await this.virsh.run(['destroy', name]);
    return this.refresh(name);
  }

  async createVm(name: string, _diskSizes: number[]): Promise<HostVm> {
    throw new OsrError('NOT_SUPPORTED', `a libvirt host does not make VMs through osr (${name}): define the domain with libvirt`);
  }

  async adoptVm(name: string, _id: string, _disks: VmDiskSpec[], _origin: VmOrigin, _running: boolean): Promise<HostVm> {
    throw new OsrError('NOT_SUPPORTED', `promoting a replica to a libvirt domain (${name}) is not built yet`);
  }

  async removeVm(name: string): Promise<void> {
    throw new OsrError('NOT_SUPPORTED', `demoting libvirt domain ${name} to a replica is not built yet`);
  }

  async closeAll(): Promise<void> {
    this.vms.clear();
  }
}
