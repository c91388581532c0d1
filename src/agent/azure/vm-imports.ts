/**
 * VMs brought into this agent from Azure managed disks for a failback (disk-import.ts): the
 * recovery site's provider asks for one with the disks' read URLs and the epoch the VM runs
 * in there; the agent downloads the disks in the background, then holds a stopped VM of
 * those images whose every block counts as changed (its writes in Azure were not tracked).
 * Replicating it home is then a resync by checksums against the old primary's replica.
 *
 *   <data>/imports/<vm>/<disk>.img   the images
 *
 * An import asked for again answers its progress; one whose VM exists answers done. An
 * agent that stopped part-way starts the download again when asked again.
 */
import fs from 'node:fs';
import path from 'node:path';
import { OsrError, toOsrError } from '../../domain/errors.js';
import { safeName } from '../../domain/names.js';
import { fsyncDir } from '../io/durable-file.js';
import type { Host, VmSpec } from '../ports/host.js';
import { parseReadSasUrl } from '../../domain/azure-layout.js';
import { importDisk, rangePieces, readManagedDisk, type DiskSource } from './disk-import.js';

const MAX_DISKS = 16;
/** a lab host's largest disk (hosts/lab-disk.ts; this layer may not import it) */
const MAX_DISK_BYTES = 4 * 1024 ** 4;

export interface ImportRequest {
  /** the VM's id: the replication id its replica at home is kept under */
  id: string;
  /** the epoch the VM runs in at the recovery site (its failover's) */
  epoch: number;
  disks: DiskSource[];
  /**
   * the VM was imported already: read its disks again and write what differs through its
   * own disks (tracked), so that its next delta carries them home (a planned failover's
   * last look at the disks in Azure)
   */
  refresh?: boolean | undefined;
}

export interface ImportProgress {
  vm: string;
  state: 'importing' | 'done' | 'failed';
  bytes: number;
  totalBytes: number;
  error?: { code: string; message: string } | undefined;
}

interface Running {
  progress: ImportProgress;
  abort: AbortController;
  done: Promise<void>;
}

export class VmImports {
  private readonly running = new Map<string, Running>();
  private readonly dir: string;

  constructor(
    dataDir: string,
    private readonly host: Host,
    private readonly now: () => number,
  ) {
    this.dir = path.join(dataDir, 'imports');
  }

  private check(name: string, r: ImportRequest): void {
    safeName(name, 'VM name', 'INVALID_ARGUMENT');
    safeName(r.id, 'VM id', 'INVALID_ARGUMENT');
    if (!Number.isSafeInteger(r.epoch) || r.epoch < 1) throw new OsrError('INVALID_ARGUMENT', `epoch ${r.epoch} is not a positive integer`);
    if (r.disks.length < 1 || r.disks.length > MAX_DISKS) throw new OsrError('DISK_COUNT_LIMIT', `an import takes 1 to ${MAX_DISKS} disks, not ${r.disks.length}`);
    const names = new Set<string>();
    for (const d of r.disks) {
      safeName(d.name, 'disk name', 'INVALID_ARGUMENT');
      safeName(d.id, 'disk id', 'INVALID_ARGUMENT');
      if (names.has(d.name)) throw new OsrError('INVALID_ARGUMENT', `disk ${d.name} is named twice`);
      names.add(d.name);
      if (!Number.isSafeInteger(d.size) || d.size <= 0 || d.size % 512 !== 0) throw new OsrError('INVALID_ARGUMENT', `disk ${d.name}: size ${d.size} is not a positive multiple of 512 bytes`);
      if (d.size > MAX_DISK_BYTES) throw new OsrError('DISK_TOO_LARGE', `disk ${d.name}: ${d.size} bytes exceeds 4 TiB`);
      // refused before anything is read: only a storage service's blob with a SAS is fetched
      parseReadSasUrl(d.url);
    }
  }

  private imageOf(name: string, disk: string): string {
    return path.join(this.dir, name, `${disk}.img`);
  }

  /** Whether a VM of this host was made by an import (its images are the import's). */
  isImported(vm: Pick<VmSpec, 'name' | 'disks'>): boolean {
    return vm.disks.length > 0 && vm.disks.every((d) => d.image === this.imageOf(vm.name, d.name));
  }

  /** Begin the import of VM `name` (or answer how the one under way, or done, stands). */
  start(name: string, r: ImportRequest): ImportProgress {
    this.check(name, r);
    if (this.host.promotions) throw new OsrError('NOT_SUPPORTED', 'this agent\'s host runs its VMs in its hypervisor: a VM is imported from Azure disks by an agent of lab host kind (the region\'s agent)');
    const cur = this.running.get(name);
    if (cur && cur.progress.state === 'importing') return cur.progress;
    let refresh = false;
    if (this.host.has(name)) {
      const vm = this.host.get(name).spec;
      if (vm.id !== r.id || !this.isImported(vm)) throw new OsrError('ALREADY_EXISTS', `VM ${name} already exists on this host and was not imported as ${r.id}`);
      if (vm.origin?.epoch !== r.epoch) throw new OsrError('INVALID_STATE', `VM ${name} was imported in epoch ${vm.origin?.epoch ?? '?'}, not ${r.epoch}: remove it first (DELETE /v1/vms/${name}/import)`);
      if (r.disks.some((d) => !vm.disks.some((x) => x.name === d.name && x.id === d.id && x.size === d.size))) throw new OsrError('INVALID_STATE', `VM ${name} was imported with other disks: remove it first`);
      if (r.refresh !== true) return this.doneProgress(vm);
      refresh = true;
    }
    const totalBytes = r.disks.reduce((a, d) => a + d.size, 0);
    const progress: ImportProgress = { vm: name, state: 'importing', bytes: 0, totalBytes };
    const abort = new AbortController();
    const done = (refresh ? this.runRefresh(name, r, progress, abort.signal) : this.run(name, r, progress, abort.signal)).then(
      () => {
        progress.state = 'done';
      },
      (e: unknown) => {
        const err = toOsrError(e);
        progress.state = 'failed';
        progress.error = { code: err.code, message: err.message };
      },
    );
    this.running.set(name, { progress, abort, done });
    return progress;
  }

  private doneProgress(vm: VmSpec): ImportProgress {
    const total = vm.disks.reduce((a, d) => a + d.size, 0);
    return { vm: vm.name, state: 'done', bytes: total, totalBytes: total };
  }

  /** How the import of `name` stands (NOT_FOUND: none asked for since this agent started, and no such VM). */
  progress(name: string): ImportProgress {
    const cur = this.running.get(name);
    if (cur) return cur.progress;
    if (this.host.has(name) && this.isImported(this.host.get(name).spec)) {
      const vm = this.host.get(name).spec;
      // a refresh an earlier run of the agent left unfinished: not done, ask again
      if (fs.existsSync(this.refreshMark(name))) return { ...this.doneProgress(vm), state: 'failed', error: { code: 'INTERRUPTED', message: `the refresh of ${name} was cut short: ask for it again` } };
      return this.doneProgress(vm);
    }
    throw new OsrError('NOT_FOUND', `no import of VM ${name} on this host`);
  }

  private refreshMark(name: string): string {
    return path.join(this.dir, name, 'refreshing');
  }

  /**
   * Read the disks again and write the 64 KiB pieces that differ through the VM's own disks
   * (their writes are tracked: the next delta carries them). Marked on disk while it runs.
   */
  private async runRefresh(name: string, r: ImportRequest, p: ImportProgress, signal: AbortSignal): Promise<void> {
    const vm = this.host.get(name);
    fs.writeFileSync(this.refreshMark(name), '', { mode: 0o600 });
    fsyncDir(path.join(this.dir, name));
    for (const d of r.disks) {
      const disk = vm.disk(d.name);
      await readManagedDisk(
        d,
        async (offset, data) => {
          const have = await disk.read(offset, data.length);
          for (const p of rangePieces(offset, data)) {
            if (!have.subarray(p.at, p.at + p.data.length).equals(p.data)) await disk.write(p.offset, p.data, { fua: false });
          }
        },
        (n) => (p.bytes += n),
        signal,
      );
    }
    await vm.flush();
    fs.rmSync(this.refreshMark(name), { force: true });
    fsyncDir(path.join(this.dir, name));
  }

  private async run(name: string, r: ImportRequest, p: ImportProgress, signal: AbortSignal): Promise<void> {
    for (const d of r.disks) await importDisk(d, this.imageOf(name, d.name), (n) => (p.bytes += n), signal);
    fsyncDir(this.dir);
    const disks = r.disks.map((d) => ({ id: d.id, name: d.name, size: d.size, image: this.imageOf(name, d.name) }));
    // every block may differ from the replica at home: reverse replication compares them all
    const at = this.now();
    await this.host.adoptVm(name, r.id, disks, { epoch: r.epoch, point: { seq: 0, timeMs: at }, promotedAt: new Date(at).toISOString(), unknownChanges: true }, false);
  }

  /** Forget an imported VM: the host's record and its images go (its replication must be stopped first). */
  async remove(name: string): Promise<void> {
    safeName(name, 'VM name', 'INVALID_ARGUMENT');
    const cur = this.running.get(name);
    if (cur) {
      cur.abort.abort();
      await cur.done;
      this.running.delete(name);
    }
    if (this.host.has(name)) {
      const vm = this.host.get(name).spec;
      if (!this.isImported(vm)) throw new OsrError('INVALID_STATE', `VM ${name} was not imported: it is not removed this way`);
      await this.host.removeVm(name);
    }
    fs.rmSync(path.join(this.dir, name), { recursive: true, force: true });
    if (fs.existsSync(this.dir)) fsyncDir(this.dir);
  }

  /** Stop the downloads under way (the agent is stopping). */
  async stop(): Promise<void> {
    for (const r of this.running.values()) r.abort.abort();
    await Promise.all([...this.running.values()].map((r) => r.done));
  }
}
