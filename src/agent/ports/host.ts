/**
 * The Host port: what the agent needs of the machine it runs on (docs/design/host-port.md).
 * The agent is given its Host when it is made (`osr agent --host KIND` chooses the
 * HostFactory) and uses nothing else of the machine: it lists the VMs, powers them, reads and serves their disks, replicates each
 * as a ChangeSource (change-source.ts), and makes and forgets VMs as failover needs.
 *
 * The lab host (hosts/lab-host.ts) implements it with VMs whose disks osr serves itself over
 * NBD, tracking changes on their write path. A libvirt host will list libvirt domains, power
 * them through libvirt, and take changes from QEMU dirty bitmaps (checkpoints and pull-mode
 * backup) instead.
 *
 * A host keeps its VMs in memory once loaded: `list`, `has` and `get` answer from there.
 * This module owns the types of the port: implementations import them from here.
 */
import type { BlockDevice } from '../io/block-device.js';
import type { DiskRanges } from '../io/ranges.js';
import type { ChangeSource } from './change-source.js';
import type { MachineSpec } from '../../domain/machine.js';
import type { HostDrills } from './host-drills.js';

export interface VmDiskSpec {
  id: string;
  name: string;
  size: number;
  /** where the disk's bytes are on the host (a lab VM's image file) */
  image: string;
}

/** Where a VM made by promoting a replica came from. */
export interface VmOrigin {
  /** the replication epoch this VM is primary in */
  epoch: number;
  /** the recovery point it was promoted from */
  point: { seq: number; timeMs: number };
  promotedAt: string;
  /** not committed yet: the VM runs from an overlay on the point, which may still change */
  pending?: boolean | undefined;
  /**
   * ranges that differ from what the old primary's replica last held beyond this VM's own
   * change logs: the points after `point` that promotion rolled back. Reverse replication
   * sends them; cleared once it has.
   */
  divergence?: DiskRanges | undefined;
  /**
   * every block may differ from the old primary's replica: the VM ran where its writes were
   * not tracked (a failback from Azure); reverse replication compares them all. Cleared once
   * it has.
   */
  unknownChanges?: true | undefined;
}

/** A VM that refuses writes: a newer epoch was promoted elsewhere. */
export interface VmFence {
  reason: string;
  at: string;
  epoch: number;
}

/** What a host records of a VM; the local API shows it as it is (GET /v1/vms). */
export interface VmSpec {
  id: string;
  name: string;
  disks: VmDiskSpec[];
  running: boolean;
  createdAt: string;
  /** set on a VM made by promoting a replica: where it came from */
  origin?: VmOrigin | undefined;
  /** the number of the next disk added (disk<n>): a removed disk's name is not given to a new one */
  nextDisk?: number | undefined;
  /** set when a newer epoch was promoted elsewhere: the VM refuses writes until demoted */
  fenced?: VmFence | undefined;
}

/**
 * One VM of the host: its record, its disks, and what replication reads of it (the
 * ChangeSource: disks to read, change tracking that cuts a point of all disks at one
 * instant and hands over each point's changes, divergence and fencing).
 */
export interface HostVm extends ChangeSource {
  readonly spec: Readonly<VmSpec>;
  readonly running: boolean;
  /** a disk as a block device: what NBD serves, and what a promotion's commit hands its clients (NOT_FOUND) */
  disk(name: string): BlockDevice;
  /** make every acknowledged write of every disk durable */
  flush(): Promise<void>;
  divergence(): DiskRanges | undefined;
  clearDivergence(): void;
  /** refuse writes from now on, durably before it returns */
  fence(reason: string, epoch: number): void;
}

/** What loading a VM found. */
export interface HostLoadNote {
  vm: string;
  /** change tracking was recovered after an unclean stop */
  recovered: boolean;
  tornBytes: number;
  /** the VM was forgotten: a demote cut short had made its disks a replica already */
  removed?: boolean | undefined;
  /** the VM is not loaded: these disk images are missing, and no replica holds them */
  missingImages?: string[] | undefined;
  /** the VM is not loaded: why it cannot be replicated from this host (a disk osr cannot track) */
  notReplicable?: { code: string; message: string } | undefined;
}

/** What the agent tells the host it makes: where it keeps its state, and its clock. */
export interface HostContext {
  /** the agent's data directory (it exists); a host keeps its own state under it */
  dataDir: string;
  now: () => number;
  /** what the host reports of work it does on its own (a fence applied in the background) */
  log?: { warn(o: object, msg?: string): void; error(o: object, msg?: string): void } | undefined;
}

/** What a host that runs promoted VMs itself needs of the replica it runs one from. */
export interface PromotionRun {
  vmId: string;
  vmName: string;
  /** the replica's images: the VM's disks once the promotion is committed */
  disks: { id: string; name: string; size: number; image: string }[];
  /** the point, per disk: where it differs from the images (later points rolled back), with its bytes */
  rollback(disk: string): { ranges: readonly (readonly [number, number])[]; read(offset: number, length: number): Buffer };
  pointSeq: number;
  /** the machine the VM is defined with, when the host has no definition of it yet */
  machine?: MachineSpec | undefined;
  start: boolean;
}

/**
 * A host whose hypervisor runs a promoted replica's VM from the replica's images itself (a
 * libvirt host: a copy-on-write layer over the images takes the VM's writes), instead of
 * from an overlay the agent serves (the lab). Each call may be made twice; the second finds
 * the work done.
 */
export interface HostPromotions {
  /** refuse, before anything is recorded, a promotion the host could not run (a name, an id or a machine it cannot take) */
  check(r: { vmId: string; vmName: string; machine?: MachineSpec | undefined }): Promise<void>;
  /** run the point as the VM, its writes kept in a layer of their own until `commit` */
  run(r: PromotionRun): Promise<void>;
  /** power the running promotion's VM on or off (its layer stays) */
  setRunning(vmId: string, running: boolean): Promise<void>;
  /** stop the VM and drop its layer (what it wrote is discarded): a change of point runs it again */
  discard(vmId: string): Promise<void>;
  /**
   * fold the layer into the images: the VM goes on from them, its hypervisor's own disks.
   * Its change tracking holds every write it made since `run` (a libvirt host's first
   * checkpoint is made before the guest runs), so reverse replication sends them.
   */
  commit(vmId: string): Promise<void>;
}

/** How the agent makes its host, once its data directory exists. */
export type HostFactory = (ctx: HostContext) => Host;

export interface Host {
  /** whether the agent serves its VMs' disks over NBD (the lab's guests reach them so); a hypervisor's guests reach theirs through the hypervisor */
  readonly servesDisks: boolean;
  /** set when the host runs promoted VMs itself (libvirt); otherwise they run from overlays the agent serves */
  readonly promotions?: HostPromotions | undefined;
  /**
   * Before a demote: the VM's disks as raw images of its size that the replica store can
   * take over (a libvirt domain's qcow2 disks are converted once; wrapped ones hand over
   * their data files). Default: `spec.disks[].image`.
   */
  demoteImages?(name: string): Promise<Record<string, string>>;
  /** a hypervisor host's inventory, drill networks and test domains (host-drills.ts); absent: the API answers NOT_SUPPORTED */
  readonly drills?: HostDrills | undefined;
  /**
   * Load the VMs and recover their change tracking, before any guest I/O. `adopted` says
   * whether a replica here holds a VM's disks (a demote cut short): such a VM is forgotten.
   */
  loadAll(adopted: (vmId: string) => boolean): Promise<HostLoadNote[]>;
  list(): HostVm[];
  has(name: string): boolean;
  /** the VM of that name (VM_NOT_FOUND) */
  get(name: string): HostVm;
  /** power on */
  start(name: string): Promise<HostVm>;
  /** power off cleanly, the guest's writes made durable; a guest still running after timeoutMs is stopped as by `stop` */
  shutdown(name: string, timeoutMs: number): Promise<HostVm>;
  /** power off at once (what was written and not flushed is the guest's loss, as in a crash) */
  stop(name: string): Promise<HostVm>;
  /** a new VM with empty disks of these sizes, stopped */
  createVm(name: string, diskSizes: number[]): Promise<HostVm>;
  /**
   * A VM of existing disk images (a promoted replica's): they stay where they are. Change
   * tracking is on from its first write, so reverse replication knows every write.
   */
  adoptVm(name: string, id: string, disks: VmDiskSpec[], origin: VmOrigin, running: boolean): Promise<HostVm>;
  /** Forget a VM whose disk images were handed over (demoted to a replica): its state and change logs go, its images stay. */
  removeVm(name: string): Promise<void>;
  /** Sync every VM's disks and change tracking and record a clean stop. */
  closeAll(): Promise<void>;
  /**
   * Change a VM's disks the way its admin would on the hypervisor (the lab's hosts: what
   * replication must follow, disks changed under protection). Absent: NOT_SUPPORTED.
   */
  readonly diskChanges?: HostDiskChanges | undefined;
}

export interface HostDiskChanges {
  /** a new empty disk of `size` bytes, named by the host (running or not) */
  addDisk(vm: string, size: number): Promise<VmDiskSpec>;
  /** grow (running or not) or shrink (stopped only) a disk */
  resizeDisk(vm: string, disk: string, size: number): Promise<VmDiskSpec>;
  /** remove a disk and its image (stopped only) */
  removeDisk(vm: string, disk: string): Promise<void>;
}
