/**
 * The lab fabric's host (the Host port, ports/host.ts): lab VMs whose disks are raw sparse
 * images in a storage location of the host. A running VM's disks are served over NBD (the
 * NBD client is the guest), and every write passes through change tracking (lab-disk.ts).
 *
 *   <data>/vms/<vm>/vm.json            the VM's spec
 *   <data>/vms/<vm>/tracking.json      change-tracking facts; logs under <data>/vms/<vm>/logs/
 *   <storage>/<vm>/<disk>.img          the disk images
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { OsrError } from '../../domain/errors.js';
import { VmChangeTracker } from '../tracking/change-tracker.js';
import { fsyncDir, readJson, writeJsonDurable } from '../io/durable-file.js';
import { checkDiskSize, LabDisk, MAX_DISK_BYTES } from './lab-disk.js';
import type { DiskRanges } from '../io/ranges.js';
import type { Host, HostDiskChanges, HostLoadNote, HostVm, VmDiskSpec, VmOrigin, VmSpec } from '../ports/host.js';
import { hasSparseSupport } from '../io/sparse.js';
import { WriteGate } from '../io/write-gate.js';

const MAX_DISKS_PER_VM = 16;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

/** The number of the next disk added (disk<n>): past every disk the VM has or had. */
function nextDisk(spec: VmSpec): number {
  return spec.nextDisk ?? Math.max(spec.disks.length, ...spec.disks.map((d) => Number(/^disk(\d+)$/.exec(d.name)?.[1] ?? -1) + 1));
}

export class LabVm implements HostVm {
  disks: LabDisk[] = [];
  readonly tracker: VmChangeTracker;
  readonly capabilities = { sparseRanges: hasSparseSupport };
  /** guest writes pass it: a consistency group's cut holds it (every write goes through the agent here) */
  readonly writeGate = new WriteGate();
  constructor(
    readonly spec: VmSpec,
    readonly dir: string,
    now: () => number,
  ) {
    this.tracker = new VmChangeTracker(dir, spec.disks, now);
  }

  get name(): string {
    return this.spec.name;
  }
  get id(): string {
    return this.spec.id;
  }
  get tracking(): VmChangeTracker {
    return this.tracker;
  }
  get running(): boolean {
    return this.spec.running;
  }

  /** Open the images and recover change tracking; must run before any guest I/O. */
  /** why writes are refused (a fenced VM), or undefined */
  readonly fencedWhy = (): string | undefined => (this.spec.fenced ? `${this.spec.fenced.reason} (since ${this.spec.fenced.at})` : undefined);

  open(): { recovered: boolean; tornBytes: number } {
    // a shrink a crash cut short (the record says the new size first): the image is cut to it
    for (const d of this.spec.disks) if (fs.existsSync(d.image) && fs.statSync(d.image).size > d.size) fs.truncateSync(d.image, d.size);
    this.disks = this.spec.disks.map((d, i) => new LabDisk(d.id, d.name, d.image, d.size, this.tracker, i, this.fencedWhy, this.writeGate));
    return this.tracker.recover(this.disks.map((d) => d.imageFd));
  }

  async flush(): Promise<void> {
    for (const d of this.disks) await d.flush();
  }

  disk(name: string): LabDisk {
    const d = this.disks.find((x) => x.name === name);
    if (!d) throw new OsrError('NOT_FOUND', `VM ${this.name} has no disk ${name}`, { disks: this.disks.map((x) => x.name) });
    return d;
  }

  /** ranges known to differ from the last common point beyond the change logs */
  divergence(): DiskRanges | undefined {
    return this.spec.origin?.divergence;
  }

  divergesEverywhere(): boolean {
    return this.spec.origin?.unknownChanges === true;
  }

  clearDivergence(): void {
    if (!this.spec.origin?.divergence && !this.spec.origin?.unknownChanges) return;
    this.spec.origin.divergence = undefined;
    this.spec.origin.unknownChanges = undefined;
    this.saveSpec();
  }

  /** Refuse writes from now on: another site holds a newer epoch (durable before it returns). */
  fence(reason: string, epoch: number): void {
    if (this.spec.fenced) return;
    this.spec.fenced = { reason, at: new Date().toISOString(), epoch };
    this.saveSpec();
  }

  saveSpec(): void {
    writeJsonDurable(path.join(this.dir, 'vm.json'), this.spec);
  }

  /** Sync images and logs, and record a clean stop. */
  closeClean(): void {
    for (const d of this.disks) fs.fdatasyncSync(d.imageFd);
    if (this.tracker.enabled) this.tracker.markCleanShutdown(this.disks.map((d) => d.imageFd));
    for (const d of this.disks) d.close();
    this.disks = [];
  }
}

export class LabHost implements Host {
  readonly servesDisks = true;
  private readonly vms = new Map<string, LabVm>();
  readonly vmsDir: string;

  constructor(
    readonly dataDir: string,
    readonly storageDir: string,
    private readonly now: () => number,
  ) {
    this.vmsDir = path.join(dataDir, 'vms');
    fs.mkdirSync(this.vmsDir, { recursive: true });
    fs.mkdirSync(storageDir, { recursive: true });
  }

  /**
   * Load every VM and recover its change tracking. A VM whose images are gone is either a
   * demote that took them (`adopted` says a replica store of its id holds them: the VM is
   * forgotten) or broken (it is left as it is, not loaded, and reported `missingImages`).
   */
  async loadAll(adopted: (vmId: string) => boolean): Promise<HostLoadNote[]> {
    const out: HostLoadNote[] = [];
    for (const name of fs.readdirSync(this.vmsDir)) {
      const spec = readJson<VmSpec>(path.join(this.vmsDir, name, 'vm.json'));
      if (!spec) continue;
      const missing = spec.disks.filter((d) => !fs.existsSync(d.image)).map((d) => d.image);
      if (missing.length > 0) {
        if (adopted(spec.id)) {
          fs.rmSync(path.join(this.vmsDir, name), { recursive: true, force: true });
          fsyncDir(this.vmsDir);
          out.push({ vm: name, recovered: false, tornBytes: 0, removed: true });
        } else out.push({ vm: name, recovered: false, tornBytes: 0, missingImages: missing });
        continue;
      }
      const vm = new LabVm(spec, path.join(this.vmsDir, name), this.now);
      const r = vm.open();
      this.vms.set(name, vm);
      out.push({ vm: name, ...r });
    }
    return out;
  }

  async createVm(name: string, diskSizes: number[]): Promise<LabVm> {
    if (!NAME_RE.test(name)) throw new OsrError('INVALID_ARGUMENT', `VM name "${name}" must be 1-63 letters, digits, '.', '_' or '-'`);
    if (this.vms.has(name)) throw new OsrError('ALREADY_EXISTS', `VM ${name} already exists on this host`);
    if (diskSizes.length < 1 || diskSizes.length > MAX_DISKS_PER_VM) {
      throw new OsrError('DISK_COUNT_LIMIT', `VM ${name} asks for ${diskSizes.length} disks; a lab VM has 1 to ${MAX_DISKS_PER_VM}`);
    }
    for (const s of diskSizes) {
      if (s > MAX_DISK_BYTES) throw new OsrError('DISK_TOO_LARGE', `a disk of ${s} bytes exceeds 4 TiB`);
    }
    const dir = path.join(this.vmsDir, name);
    const storage = path.join(this.storageDir, name);
    fs.mkdirSync(dir, { recursive: true });
    fs.mkdirSync(storage, { recursive: true });
    const disks: VmDiskSpec[] = diskSizes.map((size, i) => ({
      id: crypto.randomUUID(),
      name: `disk${i}`,
      size,
      image: path.join(storage, `disk${i}.img`),
    }));
    for (const d of disks) LabDisk.createImage(d.image, d.size);
    fsyncDir(storage);
    const spec: VmSpec = { id: crypto.randomUUID(), name, disks, running: false, createdAt: new Date(this.now()).toISOString() };
    writeJsonDurable(path.join(dir, 'vm.json'), spec);
    const vm = new LabVm(spec, dir, this.now);
    vm.open();
    this.vms.set(name, vm);
    return vm;
  }

  /**
   * Make a VM of existing images (a promoted replica's): they stay where they are. Change
   * tracking starts at once, so every write from now on is known to reverse replication.
   */
  async adoptVm(name: string, id: string, disks: VmDiskSpec[], origin: VmOrigin, running: boolean): Promise<LabVm> {
    if (!NAME_RE.test(name)) throw new OsrError('INVALID_ARGUMENT', `VM name "${name}" must be 1-63 letters, digits, '.', '_' or '-'`);
    if (this.vms.has(name)) throw new OsrError('ALREADY_EXISTS', `VM ${name} already exists on this host`);
    const dir = path.join(this.vmsDir, name);
    fs.rmSync(dir, { recursive: true, force: true });
    fs.mkdirSync(dir, { recursive: true });
    const spec: VmSpec = { id, name, disks, running, createdAt: new Date(this.now()).toISOString(), origin };
    writeJsonDurable(path.join(dir, 'vm.json'), spec);
    fsyncDir(this.vmsDir);
    const vm = new LabVm(spec, dir, this.now);
    vm.open();
    vm.tracker.start();
    this.vms.set(name, vm);
    return vm;
  }

  /** Forget a VM whose images were handed over (demoted to a replica): its state and logs go. */
  async removeVm(name: string): Promise<void> {
    const vm = this.get(name);
    vm.tracker.stop();
    for (const d of vm.disks) d.close();
    vm.disks = [];
    this.vms.delete(name);
    fs.rmSync(vm.dir, { recursive: true, force: true });
    fsyncDir(this.vmsDir);
  }

  get(name: string): LabVm {
    const vm = this.vms.get(name);
    if (!vm) throw new OsrError('VM_NOT_FOUND', `VM ${name} does not exist on this host`, { vms: [...this.vms.keys()] });
    return vm;
  }

  has(name: string): boolean {
    return this.vms.has(name);
  }

  list(): LabVm[] {
    return [...this.vms.values()];
  }

  /** A lab VM runs when its disks are served: the guest is whoever connects to them. */
  async start(name: string): Promise<LabVm> {
    return this.setRunning(name, true);
  }

  /** Its disks are flushed, then no longer served (the agent disconnects their clients). */
  async shutdown(name: string, _timeoutMs: number): Promise<LabVm> {
    await this.get(name).flush();
    return this.setRunning(name, false);
  }

  /** Its disks are no longer served, at once (the agent disconnects their clients). */
  async stop(name: string): Promise<LabVm> {
    return this.setRunning(name, false);
  }

  private setRunning(name: string, running: boolean): LabVm {
    const vm = this.get(name);
    vm.spec.running = running;
    writeJsonDurable(path.join(vm.dir, 'vm.json'), vm.spec);
    return vm;
  }

  async closeAll(): Promise<void> {
    for (const vm of this.vms.values()) vm.closeClean();
    this.vms.clear();
  }

  readonly diskChanges: HostDiskChanges = {
    /**
     * Hot-add: the image is made and synced, tracking opens its log, then the VM's record
     * names the disk. A crash before the record leaves an image no record names, replaced
     * by the next add of that name.
     */
    addDisk: async (name, size) => {
      const vm = this.get(name);
      checkDiskSize(size);
      if (vm.spec.disks.length >= MAX_DISKS_PER_VM) throw new OsrError('DISK_COUNT_LIMIT', `VM ${name} has ${vm.spec.disks.length} disks already; a lab VM has at most ${MAX_DISKS_PER_VM}`);
      let n = nextDisk(vm.spec);
      while (vm.spec.disks.some((d) => d.name === `disk${n}`)) n++;
      // the writes before the add are in a delta of the disks before it
      vm.tracker.beforeShapeChange();
      const storage = path.dirname(vm.spec.disks[0]?.image ?? path.join(this.storageDir, name, 'x'));
      const disk: VmDiskSpec = { id: crypto.randomUUID(), name: `disk${n}`, size, image: path.join(storage, `disk${n}.img`) };
      fs.rmSync(disk.image, { force: true });
      LabDisk.createImage(disk.image, size);
      fsyncDir(storage);
      vm.tracker.addDisk(disk);
      vm.spec.disks.push(disk);
      vm.spec.nextDisk = n + 1;
      vm.saveSpec();
      vm.disks.push(new LabDisk(disk.id, disk.name, disk.image, disk.size, vm.tracker, vm.disks.length, vm.fencedWhy, vm.writeGate));
      return { ...disk };
    },
    /**
     * Grow in place (the guest sees the new size when it reconnects): the new range reads as
     * zeros, and the change log says so (a replica that kept older bytes there, from before
     * a shrink, is zeroed too). A shrink needs the VM stopped: the record says the new size
     * before the image is cut, so a crash between leaves the bytes past the end unread.
     */
    resizeDisk: async (name, diskName, size) => {
      const vm = this.get(name);
      const disk = vm.disk(diskName);
      const spec = vm.spec.disks.find((d) => d.name === diskName)!;
      checkDiskSize(size);
      if (size === disk.size) return { ...spec };
      const from = disk.size;
      if (size < from && vm.running) throw new OsrError('INVALID_STATE', `shut down ${name} before shrinking disk ${diskName}`);
      vm.tracker.beforeShapeChange();
      if (size < from) {
        spec.size = size;
        vm.saveSpec();
        disk.resize(size);
      } else {
        disk.resize(size);
        vm.tracker.appendZero(disk.index, from, size - from);
        spec.size = size;
        vm.saveSpec();
      }
      return { ...spec };
    },
    /** The VM must be stopped: the image goes, with the disk's change logs. */
    removeDisk: async (name, diskName) => {
      const vm = this.get(name);
      const disk = vm.disk(diskName);
      if (vm.running) throw new OsrError('INVALID_STATE', `shut down ${name} before removing disk ${diskName}`);
      if (vm.spec.disks.length === 1) throw new OsrError('DISK_COUNT_LIMIT', `disk ${diskName} is the last disk of ${name}; a lab VM has at least one`);
      const spec = vm.spec.disks.find((d) => d.name === diskName)!;
      // a removed disk's name is not given to a new one (its replica keeps the old disk's points)
      vm.spec.nextDisk = nextDisk(vm.spec);
      vm.tracker.beforeShapeChange();
      // tracking keeps the disk's closed logs first: a crash before the record forgets the
      // disk leaves it in both, and the disk stays (tracking.ts drops it from the removed)
      vm.tracker.removeDisk(diskName);
      vm.spec.disks = vm.spec.disks.filter((d) => d.name !== diskName);
      vm.saveSpec();
      disk.close();
      vm.disks = vm.disks.filter((d) => d !== disk);
      vm.disks.forEach((d, i) => (d.index = i));
      fs.rmSync(spec.image, { force: true });
      fsyncDir(path.dirname(spec.image));
    },
  };
}
