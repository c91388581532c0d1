/**
 * A KVM host under libvirt (the Host port, ports/host.ts): its VMs are the libvirt
 * domains of the agent's connection (optionally only those whose names match
 * `--libvirt-domains`), powered through libvirt, replicated from QEMU's dirty bitmaps
 * (libvirt/tracking.ts). Their disks must be qcow2 v3 files (libvirt/images.ts); osr
 * does not serve them over NBD: the guests reach their disks through QEMU.
 *
 *   <data>/libvirt/<domain uuid>/tracking.json, logs/, backup/    per domain
 *
 * A domain's osr id is its libvirt UUID (stable across renames, the id its replica is kept
 * under), or, for a domain osr defined for a promoted replica, its source's id, kept in the
 * domain's metadata. An agent may own only the domains whose names begin with a prefix
 * (`--libvirt-prefix`): the osr name of a VM is its domain's name without it, so two sites
 * can share one libvirtd (the KVM lab).
 *
 * A promoted replica runs from its images through files libvirt manages
 * (libvirt/promotion.ts); committed, it is adopted as one of this host's domains, tracked
 * from the checkpoint made before it ran. A demote hands the domain's disks to the replica
 * store as raw images (a wrapped disk's data file as it is; a plain qcow2 converted once)
 * and keeps the domain defined, fenced.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { OsrError, toOsrError } from '../../domain/errors.js';
import type { BlockDevice } from '../io/block-device.js';
import type { DiskRanges } from '../io/ranges.js';
import type { MachineSpec } from '../../domain/machine.js';
import { readJson, writeJsonDurable } from '../io/durable-file.js';
import { listCheckpoints } from '../libvirt/backup.js';
import { fenceDomain } from '../libvirt/fence.js';
import { checkTrackable, imageInfo } from '../libvirt/images.js';
import { readDomain, type HostDomain } from '../libvirt/inventory.js';
import { LibvirtPromotions, PROMOTED_CHECKPOINT, startUnderCheckpoint } from '../libvirt/promotion.js';
import { offlineBitmapRanges } from '../libvirt/qemu-nbd.js';
import { LibvirtTracking } from '../libvirt/tracking.js';
import { LibvirtDrills } from './libvirt-drills.js';
import { parseDomainXml, Virsh } from '../libvirt/virsh.js';
import type { DiskReader } from '../ports/change-source.js';
import type { Host, HostLoadNote, HostPromotions, HostVm, VmDiskSpec, VmFence, VmOrigin, VmSpec } from '../ports/host.js';
import { TEST_DOMAIN_PREFIX } from '../ports/host-drills.js';

export interface LibvirtHostOptions {
  uri?: string;
  /** which domains are this agent's (default all) */
  domains?: (name: string) => boolean;
  /** the agent's domains are those whose names begin with it; a VM's osr name is the rest (default none) */
  prefix?: string;
  /** directories a promoted VM's direct kernel boot files may be in (default none: such a VM is refused) */
  bootDirs?: string[];
  log?: { warn(o: object, msg?: string): void; error(o: object, msg?: string): void };
}

/** What the host keeps of a VM beside libvirt's definition (`<vm dir>/vm.json`). */
interface VmRecord {
  origin?: VmOrigin | undefined;
  fenced?: VmFence | undefined;
}

const execFileAsync = promisify(execFile);

export class LibvirtVm implements HostVm {
  readonly tracking: LibvirtTracking;
  readonly capabilities = { sparseRanges: true };
  readonly disks: { id: string; name: string; size: number; reader: DiskReader }[];
  spec: VmSpec;

  constructor(
    private readonly virsh: Virsh,
    private domain: HostDomain,
    name: string,
    /** each disk's virtual size and, for a wrapped qcow2, its raw data file (from the image's header: libvirt's XML may not show it) */
    images: Record<string, { size: number; dataFile?: string | undefined }>,
    private readonly dir: string,
    now: () => number,
    private readonly log?: LibvirtHostOptions['log'],
  ) {
    const disks = domain.disks.filter((d) => d.device === 'disk');
    const id = domain.osrId ?? domain.uuid;
    const record = readJson<VmRecord>(path.join(dir, 'vm.json')) ?? {};
    const fenced = record.fenced ?? (domain.fenceEpoch !== undefined ? { reason: `fenced by osr (epoch ${domain.fenceEpoch})`, at: new Date(now()).toISOString(), epoch: domain.fenceEpoch } : undefined);
    this.spec = {
      id,
      name,
      // a wrapped disk's bytes are its data file: what a demote hands the replica store
      disks: disks.map((d) => ({ id: `${id}-${d.target}`, name: d.target, size: images[d.target]?.size ?? 0, image: images[d.target]?.dataFile ?? d.file ?? '' })),
      running: domain.running,
      createdAt: new Date(now()).toISOString(),
      ...(record.origin ? { origin: record.origin } : {}),
      ...(fenced ? { fenced } : {}),
    };
    this.tracking = new LibvirtTracking(
      virsh,
      domain.name,
      this.spec.disks.map((d) => ({ id: d.id, target: d.name, size: d.size, file: disks.find((x) => x.target === d.name)?.file })),
      dir,
      now,
      (o, msg) => this.log?.warn(o, msg),
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
  /** libvirt's name of the domain */
  get domainName(): string {
    return this.domain.name;
  }
  /** the domain's disks: libvirt's file, and the raw image a wrapped one keeps its data in */
  get domainDisks(): { target: string; file?: string | undefined; dataFile?: string | undefined }[] {
    return this.domain.disks.filter((d) => d.device === 'disk').map((d) => {
      const image = this.spec.disks.find((x) => x.name === d.target)?.image;
      return { target: d.target, file: d.file, dataFile: image && image !== d.file ? image : undefined };
    });
  }

  refresh(domain: HostDomain): void {
    this.domain = domain;
    this.spec.running = domain.running;
  }

  /**
   * The domain's disks as libvirt has them now. A disk resized (virsh blockresize) takes its
   * new size here, for tracking and for replication, which then has the replica grow or,
   * once confirmed, shrink. A disk added or removed cannot be followed by the checkpoints
   * tracking the domain: answered as why (the domain is protected again to take it).
   */
  async refreshDisks(): Promise<string | undefined> {
    // one call each cycle: the disks are all it needs of the domain (readDomain makes three)
    const now = parseDomainXml(await this.virsh.run(['dumpxml', this.domainName])).disks.filter((d) => d.device === 'disk');
    const targets = now.map((d) => d.target);
    const mine = this.spec.disks.map((d) => d.name);
    const added = targets.filter((t) => !mine.includes(t));
    const removed = mine.filter((t) => !targets.includes(t));
    if (added.length + removed.length > 0) {
      return `${[...added.map((t) => `disk ${t} was added to`), ...removed.map((t) => `disk ${t} was removed from`)].join(' and ')} domain ${this.domainName}; its checkpoints do not cover the new set of disks, so replication cannot follow it: put the disks back, or disable protection and enable it again`;
    }
    for (const d of now) {
      if (!d.file) continue;
      const size = (await imageInfo(d.file)).virtualSize;
      const spec = this.spec.disks.find((x) => x.name === d.target)!;
      if (size === spec.size) continue;
      spec.size = size;
      for (const x of this.disks) if (x.name === d.target) x.size = size;
      for (const x of this.tracking.disks) if (x.target === d.target) x.size = size;
    }
    return undefined;
  }

  private saveRecord(): void {
    writeJsonDurable(path.join(this.dir, 'vm.json'), { origin: this.spec.origin, fenced: this.spec.fenced } satisfies VmRecord);
  }

  setOrigin(origin: VmOrigin): void {
    this.spec.origin = origin;
    this.saveRecord();
  }

  disk(name: string): BlockDevice {
    throw new OsrError('NOT_FOUND', `disk ${name} of libvirt domain ${this.domainName} is QEMU's: osr does not serve it over NBD`);
  }

  async flush(): Promise<void> {
    // QEMU holds the guest's writes; a backup's view is of what the guest wrote
  }

  divergence(): DiskRanges | undefined {
    return this.spec.origin?.divergence;
  }

  clearDivergence(): void {
    if (!this.spec.origin?.divergence) return;
    this.spec.origin.divergence = undefined;
    this.saveRecord();
  }

  /**
   * Refuse to start from now on: durable in the agent's record before it returns; then, in
   * the background, the domain is powered off if it runs and the fence goes into its own
   * definition, where libvirt's hook finds it (again at each load).
   */
  fence(reason: string, epoch: number): void {
    this.spec.fenced = { reason, at: new Date().toISOString(), epoch };
    this.saveRecord();
    void this.applyFence().catch((e: unknown) => this.log?.error({ vm: this.name, code: toOsrError(e).code }, `${this.domainName} is fenced in osr's record, but libvirt could not be told (${toOsrError(e).message}); the agent tries again at its next start`));
  }

  /** The fence into libvirt's definition, the domain powered off (also when a restart finds it missing there). */
  async applyFence(): Promise<void> {
    const f = this.spec.fenced;
    if (!f) return;
    const state = (await this.virsh.run(['domstate', this.domainName])).trim();
    if (state === 'running' || state === 'paused') {
      await this.virsh.run(['destroy', this.domainName]);
      this.spec.running = false;
      this.log?.warn({ vm: this.name, epoch: f.epoch }, `${this.domainName} ran though a newer copy was promoted elsewhere (epoch ${f.epoch}): powered off`);
    }
    if (this.domain.fenceEpoch !== f.epoch) await fenceDomain(this.virsh, this.domainName, f.epoch);
  }
}

export class LibvirtHost implements Host {
  readonly servesDisks = false;
  private readonly vms = new Map<string, LibvirtVm>();
  readonly virsh: Virsh;
  readonly promotions: HostPromotions;
  private readonly prefix: string;
  /** inventory, drill networks and test domains for the provider's libvirt driver */
  readonly drills: LibvirtDrills;

  constructor(
    readonly dataDir: string,
    private readonly now: () => number,
    private readonly o: LibvirtHostOptions = {},
  ) {
    this.virsh = new Virsh({ ...(o.uri ? { uri: o.uri } : {}) });
    this.prefix = o.prefix ?? '';
    this.drills = new LibvirtDrills(this.virsh, this.prefix, (n) => this.vmNameOf(n) ?? (n.startsWith(this.prefix + TEST_DOMAIN_PREFIX) ? n.slice(this.prefix.length) : undefined), (m) => this.checkBootFiles(m));
    fs.mkdirSync(path.join(dataDir, 'libvirt'), { recursive: true, mode: 0o700 });
    this.promotions = new LibvirtPromotions({ virsh: this.virsh, dirOf: (id) => this.dirOf(id), domainName: (n) => this.prefix + n, owns: (d) => this.vmNameOf(d) !== undefined, checkBootFiles: (m) => this.checkBootFiles(m) });
  }

  private dirOf(vmId: string): string {
    return path.join(this.dataDir, 'libvirt', vmId);
  }

  /**
   * A promoted VM's kernel and initrd must be in a directory the operator named, and
   * neither they nor a directory between them and it may be writable by anyone but their
   * owner, root or this agent's user (libvirt gives the files to QEMU at each start). The
   * machine answered names their real paths, so a link changed later changes nothing.
   */
  private checkBootFiles(m: MachineSpec): MachineSpec {
    const k = m.kernelBoot;
    if (!k) return m;
    const uid = process.getuid?.() ?? 0;
    const safe = (p: string) => {
      const st = fs.statSync(p);
      return (st.uid === 0 || st.uid === uid) && (st.mode & 0o022) === 0;
    };
    const real = (file: string): string => {
      let r: string;
      try {
        r = fs.realpathSync(file);
      } catch {
        throw new OsrError('NOT_FOUND', `the VM's boot file ${file} does not exist at this host`);
      }
      const dir = (this.o.bootDirs ?? []).map((d) => fs.realpathSync(d)).find((d) => r.startsWith(d + path.sep));
      if (!dir) throw new OsrError('NOT_SUPPORTED', `the VM boots a kernel file directly (${file}), which this agent does not allow: start it with --libvirt-boot-dir naming the directory that holds such files`, { file });
      for (let p = r; ; p = path.dirname(p)) {
        if (!safe(p)) throw new OsrError('NOT_SUPPORTED', `${p} may be changed by another user: a VM's boot files and the directories above them up to --libvirt-boot-dir must be writable only by root or the agent's user`, { file });
        if (p === dir) break;
      }
      return r;
    };
    return { ...m, kernelBoot: { ...k, kernel: real(k.kernel), ...(k.initrd ? { initrd: real(k.initrd) } : {}) } };
  }

  /** The osr name of a domain of this agent's, or undefined when the domain is not one. */
  private vmNameOf(domain: string): string | undefined {
    if (!domain.startsWith(this.prefix) || domain.length === this.prefix.length) return undefined;
    if (this.o.domains && !this.o.domains(domain)) return undefined;
    const name = domain.slice(this.prefix.length);
    // a drill's test domain is the drills' (libvirt-drills.ts), not a VM to track
    return name.startsWith(TEST_DOMAIN_PREFIX) ? undefined : name;
  }

  private async load(domainName: string): Promise<LibvirtVm> {
    const domain = await readDomain(this.virsh, domainName);
    const images: Record<string, { size: number; dataFile?: string | undefined }> = {};
    for (const d of domain.disks.filter((x) => x.device === 'disk')) {
      const info = d.file ? await imageInfo(d.file) : undefined;
      checkTrackable(domain.name, d, info);
      images[d.target] = { size: info!.virtualSize, dataFile: info!.dataFile ? path.resolve(path.dirname(d.file!), info!.dataFile) : undefined };
    }
    const vm = new LibvirtVm(this.virsh, domain, this.vmNameOf(domainName) ?? domainName, images, this.dirOf(domain.osrId ?? domain.uuid), this.now, this.o.log);
    await vm.tracking.recover();
    await vm.applyFence().catch((e: unknown) => this.o.log?.error({ vm: vm.name, code: toOsrError(e).code }, `the fence of ${domainName} could not be put into libvirt's definition: ${toOsrError(e).message}`));
    this.vms.set(vm.name, vm);
    return vm;
  }

  async loadAll(adopted: (vmId: string) => boolean): Promise<HostLoadNote[]> {
    const out: HostLoadNote[] = [];
    const names = (await this.virsh.run(['list', '--all', '--name'])).split('\n').map((s) => s.trim()).filter(Boolean);
    for (const name of names) {
      const vmName = this.vmNameOf(name);
      if (vmName === undefined) continue;
      try {
        const info = await readDomain(this.virsh, name);
        const id = info.osrId ?? info.uuid;
        // a promotion not committed is the replica side's; a demoted domain's disks are a
        // replica's now (a demote cut short before it forgot the domain is finished here)
        if (this.promotionPending(id)) continue;
        if (adopted(id)) {
          if (fs.existsSync(this.dirOf(id))) {
            for (const c of (await listCheckpoints(this.virsh, name)).ours) await this.virsh.run(['checkpoint-delete', name, c, '--metadata']).catch(() => undefined);
            fs.rmSync(this.dirOf(id), { recursive: true, force: true });
            out.push({ vm: vmName, recovered: false, tornBytes: 0, removed: true });
          }
          continue;
        }
        await this.load(name);
        out.push({ vm: vmName, recovered: false, tornBytes: 0 });
      } catch (e) {
        // a domain osr cannot track (a raw disk, say) is not replicated; the agent logs why
        const err = toOsrError(e);
        out.push({ vm: vmName, recovered: false, tornBytes: 0, notReplicable: { code: err.code, message: err.message } });
      }
    }
    return out;
  }

  private promotionPending(vmId: string): boolean {
    const st = readJson<{ committed?: boolean }>(path.join(this.dirOf(vmId), 'promotion.json'));
    return st !== undefined && st.committed !== true;
  }

  list(): HostVm[] {
    return [...this.vms.values()];
  }

  has(name: string): boolean {
    return this.vms.has(name);
  }

  get(name: string): LibvirtVm {
    const vm = this.vms.get(name);
    if (!vm) throw new OsrError('VM_NOT_FOUND', `libvirt domain ${this.prefix}${name} is not one of this agent's (not defined, not selected, or its disks cannot be tracked)`);
    return vm;
  }

  private async refresh(name: string): Promise<LibvirtVm> {
    const vm = this.get(name);
    vm.refresh(await readDomain(this.virsh, vm.domainName));
    return vm;
  }

  async start(name: string): Promise<HostVm> {
    const vm = this.get(name);
    if (vm.spec.fenced) throw new OsrError('EPOCH_STALE', `${name} is fenced (${vm.spec.fenced.reason}): a newer copy was promoted elsewhere; reprotect it instead of starting it`);
    if (!vm.running) await this.virsh.run(['start', vm.domainName]);
    return this.refresh(name);
  }

  async shutdown(name: string, timeoutMs: number): Promise<HostVm> {
    const vm = await this.refresh(name);
    const ran = vm.running;
    if (vm.running) {
      // the guest agent's shutdown where the guest has one, else ACPI's power button
      await this.virsh.run(['shutdown', vm.domainName, '--mode', 'agent,acpi']).catch(() => this.virsh.run(['shutdown', vm.domainName]).catch(() => undefined));
      const deadline = Date.now() + timeoutMs;
      while (Date.now() < deadline && (await this.refresh(name)).running) await new Promise((r) => setTimeout(r, 500));
      if ((await this.refresh(name)).running) await this.virsh.run(['destroy', vm.domainName]);
    }
    // shut down through the agent (a planned failover's): its last writes are read though it is off
    vm.tracking.armOfflineSwap(ran);
    return this.refresh(name);
  }

  async stop(name: string): Promise<HostVm> {
    // libvirt's word, not the last one read: the domain may have been started since
    const vm = await this.refresh(name);
    if (vm.running) await this.virsh.run(['destroy', vm.domainName]);
    return this.refresh(name);
  }

  async createVm(name: string, _diskSizes: number[]): Promise<HostVm> {
    throw new OsrError('NOT_SUPPORTED', `a libvirt host does not make VMs through osr (${name}): define the domain with libvirt`);
  }

  /**
   * A committed promotion's domain (libvirt/promotion.ts defined and runs it) becomes one of
   * this host's VMs. Its tracking goes on from the checkpoint made before the guest ran.
   */
  async adoptVm(name: string, id: string, _disks: VmDiskSpec[], origin: VmOrigin, running: boolean): Promise<HostVm> {
    const domain = this.prefix + name;
    fs.mkdirSync(this.dirOf(id), { recursive: true, mode: 0o700 });
    const vm = await this.load(domain);
    if (vm.id !== id) throw new OsrError('INVALID_STATE', `libvirt domain ${domain} is VM ${vm.id}, not ${id}`);
    vm.setOrigin(origin);
    if (!vm.tracking.enabled) {
      let { ours } = await listCheckpoints(this.virsh, domain);
      if (ours.length === 0 && !(await this.refresh(name)).running) {
        // promoted without being started: its first checkpoint is made now, before any guest code runs
        await startUnderCheckpoint(this.virsh, domain, running ? 'resume' : 'stop');
        ({ ours } = await listCheckpoints(this.virsh, domain));
      }
      if (ours.length === 1 && ours[0] === PROMOTED_CHECKPOINT) vm.tracking.adopt(1);
      // otherwise its writes are not known: reverse replication compares every block
    }
    if (running && !(await this.refresh(name)).running) await this.start(name);
    return this.refresh(name);
  }

  /**
   * Before a demote: the domain is off, and each disk is a raw image of its size — a
   * wrapped disk's data file, or a plain qcow2 converted (once, beside the VM's state; its
   * file stays where it was). The writes since the last point are read from the active
   * checkpoint's bitmap first, with the domain off, so that reverse replication sends
   * those ranges only; a bitmap QEMU did not store cleanly (it was killed) cannot be read,
   * and then every block is compared and only those that differ are sent.
   */
  async demoteImages(name: string): Promise<Record<string, string>> {
    const vm = await this.stop(name).then(() => this.get(name));
    const t = vm.tracking;
    if (t.enabled && !t.resyncRequired) {
      try {
        const ranges: Record<string, [number, number][]> = {};
        for (const d of vm.domainDisks) ranges[d.target] = await offlineBitmapRanges(d.file!, t.activeCheckpoint);
        t.noteActiveRanges(ranges);
      } catch (e) {
        t.markResyncRequired(`demoted: the writes since the last point cannot be read from QEMU's bitmap (${toOsrError(e).message})`);
      }
    }
    const out: Record<string, string> = {};
    const dir = path.join(this.dirOf(vm.id), 'demote');
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const d of vm.domainDisks) {
      if (d.dataFile) {
        out[d.target] = d.dataFile;
        continue;
      }
      if (!d.file) throw new OsrError('NOT_SUPPORTED', `disk ${d.target} of ${vm.domainName} is not a file`);
      const raw = path.join(dir, `${d.target}.raw`);
      if (!fs.existsSync(raw)) {
        const tmp = `${raw}.tmp`;
        fs.rmSync(tmp, { force: true });
        try {
          await execFileAsync('qemu-img', ['convert', '-q', '-f', 'qcow2', '-O', 'raw', '-t', 'none', d.file, tmp]);
        } catch (e) {
          throw new OsrError('HYPERVISOR_ERROR', `disk ${d.target} of ${vm.domainName} could not be made a raw image: ${((e as { stderr?: string }).stderr ?? String(e)).trim()}`, { disk: d.target });
        }
        const fd = fs.openSync(tmp, 'r');
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        fs.renameSync(tmp, raw);
        const dfd = fs.openSync(dir, 'r');
        fs.fsyncSync(dfd);
        fs.closeSync(dfd);
      }
      out[d.target] = raw;
    }
    return out;
  }

  /** Forget a demoted domain: its disks are the replica's now; it stays defined, fenced, for a failback to take up. */
  async removeVm(name: string): Promise<void> {
    const vm = this.get(name);
    for (const c of (await listCheckpoints(this.virsh, vm.domainName)).ours) await this.virsh.run(['checkpoint-delete', vm.domainName, c, '--metadata']).catch(() => undefined);
    this.vms.delete(name);
    fs.rmSync(this.dirOf(vm.id), { recursive: true, force: true });
  }

  async closeAll(): Promise<void> {
    this.vms.clear();
  }
}
