/**
 * A promoted replica run by libvirt itself (the Host port's HostPromotions): the VM's
 * domain runs from the replica's raw images, through files libvirt manages, with no osr
 * process in its data path.
 *
 *   <vm dir>/disks/<disk>.qcow2       a qcow2 whose data is the replica's raw image (images.ts)
 *   <vm dir>/disks/<disk>.top.qcow2   the VM's writes until the commit, over the one above
 *   <vm dir>/promotion.json           the point the top layers were made for
 *
 * - **run**: each top layer starts with the point's rolled-back ranges (the replica's undo,
 *   written through qemu-nbd), so the chain reads as the point; the domain is defined (or
 *   an existing one of that VM, the old primary in a failback, gets the new disks), started
 *   paused, given checkpoint `osr-1` and resumed: the checkpoint's bitmap holds every write
 *   the guest makes, which reverse replication ships.
 * - **discard** (a change of point): the domain stops, the top layers go.
 * - **commit**: `virsh blockcommit --active --pivot` folds each top layer into the image
 *   while the guest runs (an offline domain's with `qemu-img commit`); the checkpoint's
 *   bitmap moves down with it, so tracking goes on from `osr-1`.
 *
 * Every step looks at what is there first: run twice, or after a crash, it finishes the work.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { OsrError, toOsrError } from '../../domain/errors.js';
import { checkMachine, type MachineSpec } from '../../domain/machine.js';
import { crashPoint } from '../io/crash-point.js';
import { readJson, writeJsonDurable } from '../io/durable-file.js';
import { listCheckpoints } from './backup.js';
import { diskXml, domainXml } from './domain-xml.js';
import { unfenceDomain } from './fence.js';
import { wrapRawImage } from './images.js';
import { withQemuNbd } from './qemu-nbd.js';
import { parseDomainXml, VM_NAMESPACE, xmlText, type Virsh } from './virsh.js';

const execFileAsync = promisify(execFile);
const WRITE_CHUNK = 4 * 1024 * 1024;
/** the checkpoint a promoted VM's tracking starts from */
export const PROMOTED_CHECKPOINT = 'osr-1';

interface RunState {
  pointSeq: number;
  /** the top layers hold the point's rolled-back ranges */
  layersReady: boolean;
  committed?: boolean | undefined;
}

/** A replica's point to run (the Host port's PromotionRun, which libvirt/ does not import). */
export interface PromotionRun {
  vmId: string;
  vmName: string;
  disks: { id: string; name: string; size: number; image: string }[];
  rollback(disk: string): { ranges: readonly (readonly [number, number])[]; read(offset: number, length: number): Buffer };
  pointSeq: number;
  machine?: MachineSpec | undefined;
  start: boolean;
}

export interface LibvirtPromotionsContext {
  virsh: Virsh;
  /** the VM's directory in the agent's data */
  dirOf(vmId: string): string;
  /** the libvirt name of the domain of an osr VM */
  domainName(vmName: string): string;
  /** whether a machine's kernel boot files are where the operator allows them (else NOT_SUPPORTED) */
  checkBootFiles(machine: MachineSpec): void;
}

async function qemuImg(args: string[]): Promise<string> {
  try {
    return (await execFileAsync('qemu-img', args, { maxBuffer: 16 * 1024 * 1024 })).stdout;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    throw new OsrError('HYPERVISOR_ERROR', `qemu-img ${args[0]}: ${(err.stderr ?? err.message).trim()}`);
  }
}

function fsyncPath(p: string): void {
  const fd = fs.openSync(p, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Write `ranges` of a qcow2 file through qemu-nbd (qemu-img cannot write at offsets), flushed before it returns. */
async function writeIntoQcow2(file: string, ranges: readonly (readonly [number, number])[], read: (offset: number, length: number) => Buffer): Promise<void> {
  await withQemuNbd(file, {}, async (client) => {
    for (const [start, end] of ranges) {
      for (let at = start; at < end; at += WRITE_CHUNK) await client.write(at, read(at, Math.min(WRITE_CHUNK, end - at)));
    }
    await client.flush();
  });
}

/**
 * Start a shut-off domain paused and make checkpoint `osr-1` (libvirt makes none of an
 * inactive domain), so that its bitmap holds every write the guest makes; then let the
 * guest run, or power the domain off again (QEMU stores the empty bitmap as it exits).
 */
export async function startUnderCheckpoint(virsh: Virsh, domain: string, resume: boolean): Promise<void> {
  await virsh.run(['start', domain, '--paused']);
  const { ours } = await listCheckpoints(virsh, domain);
  if (!ours.includes(PROMOTED_CHECKPOINT)) {
    const disks = parseDomainXml(await virsh.run(['dumpxml', domain])).disks.filter((d) => d.device === 'disk');
    await virsh.run(['checkpoint-create-as', domain, PROMOTED_CHECKPOINT, ...disks.flatMap((d) => ['--diskspec', `${d.target},checkpoint=bitmap`])]);
  }
  await virsh.run(resume ? ['resume', domain] : ['destroy', domain]);
}

export class LibvirtPromotions {
  constructor(private readonly c: LibvirtPromotionsContext) {}

  private disksDir(vmId: string): string {
    return path.join(this.c.dirOf(vmId), 'disks');
  }
  private wrapper(vmId: string, disk: string): string {
    return path.join(this.disksDir(vmId), `${disk}.qcow2`);
  }
  private top(vmId: string, disk: string): string {
    return path.join(this.disksDir(vmId), `${disk}.top.qcow2`);
  }
  private stateFile(vmId: string): string {
    return path.join(this.c.dirOf(vmId), 'promotion.json');
  }
  private state(vmId: string): RunState | undefined {
    return readJson<RunState>(this.stateFile(vmId));
  }
  /** the domain the VM runs as (recorded at run: a failback's may be the old primary's, under its own name) */
  private domainOf(vmId: string): string {
    const d = readJson<{ domain: string }>(path.join(this.c.dirOf(vmId), 'domain.json'))?.domain;
    if (!d) throw new OsrError('INVALID_STATE', `no domain was defined for VM ${vmId} here`);
    return d;
  }

  private async domainExists(name: string): Promise<boolean> {
    return (await this.c.virsh.run(['list', '--all', '--name'])).split('\n').map((s) => s.trim()).includes(name);
  }

  private async isRunning(domain: string): Promise<boolean> {
    const state = (await this.c.virsh.run(['domstate', domain])).trim();
    return state === 'running' || state === 'paused';
  }

  async run(r: PromotionRun): Promise<void> {
    const dir = this.disksDir(r.vmId);
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    let st = this.state(r.vmId);
    if (st?.committed) throw new OsrError('INVALID_STATE', `the promotion of ${r.vmName} is committed here; it runs from its own disks`);
    if (st && st.pointSeq !== r.pointSeq) {
      await this.discard(r.vmId);
      st = undefined;
    }
    if (!st?.layersReady) {
      for (const d of r.disks) {
        await wrapRawImage(d.image, this.wrapper(r.vmId, d.name));
        const tmp = `${this.top(r.vmId, d.name)}.tmp`;
        fs.rmSync(tmp, { force: true });
        await qemuImg(['create', '-q', '-f', 'qcow2', '-o', 'compat=1.1', '-b', this.wrapper(r.vmId, d.name), '-F', 'qcow2', tmp]);
        const rollback = r.rollback(d.name);
        if (rollback.ranges.length > 0) await writeIntoQcow2(tmp, rollback.ranges, rollback.read);
        fsyncPath(tmp);
        fs.renameSync(tmp, this.top(r.vmId, d.name));
      }
      fsyncPath(dir);
      st = { pointSeq: r.pointSeq, layersReady: true };
      writeJsonDurable(this.stateFile(r.vmId), st);
      crashPoint('libvirt:layers-made');
    }
    const domain = await this.define(r);
    crashPoint('libvirt:defined');
    if (r.start && !(await this.isRunning(domain))) await this.startTracked(domain);
  }

  /**
   * The domain with the top layers as its disks: an existing one of this VM (by its osr
   * id, or its UUID: the old primary in a failback) gets them in place of its disks,
   * keeping the rest of its definition; else one is defined from the machine.
   */
  private async define(r: PromotionRun): Promise<string> {
    const known = readJson<{ domain: string }>(path.join(this.c.dirOf(r.vmId), 'domain.json'))?.domain;
    const name = known ?? this.c.domainName(r.vmName);
    const chain = (disk: string) => [
      { file: this.top(r.vmId, disk), format: 'qcow2' as const },
      { file: this.wrapper(r.vmId, disk), format: 'qcow2' as const, dataFile: r.disks.find((d) => d.name === disk)!.image },
    ];
    let xml: string;
    if (await this.domainExists(name)) {
      const current = await this.c.virsh.run(['dumpxml', name, '--inactive']);
      const info = parseDomainXml(current);
      if (info.osrId !== r.vmId && info.uuid.toLowerCase() !== r.vmId.toLowerCase()) {
        throw new OsrError('ALREADY_EXISTS', `libvirt domain ${name} exists and is not VM ${r.vmName} (${r.vmId}): rename or remove it, or choose another domain name prefix for this agent`, { domain: name });
      }
      const tops = info.disks.filter((d) => d.device === 'disk');
      if (tops.every((d) => d.file === this.top(r.vmId, d.target)) && tops.length === r.disks.length) return this.ready(r, name);
      const targets = new Set(r.disks.map((d) => d.name));
      if (tops.length !== r.disks.length || tops.some((d) => !targets.has(d.target))) {
        throw new OsrError('INVALID_STATE', `libvirt domain ${name} has disks [${tops.map((d) => d.target).join(', ')}], the replica [${[...targets].join(', ')}]`, { domain: name });
      }
      xml = current.replace(/<disk\b[^>]*device=['"]disk['"][\s\S]*?<\/disk>/g, (el) => {
        const target = /<target\b[^>]*dev=['"]([^'"]+)['"]/.exec(el)?.[1];
        return target && targets.has(target) ? diskXml({ target, chain: chain(target) }) : el;
      });
    } else {
      if (!r.machine) throw new OsrError('INVALID_ARGUMENT', `VM ${r.vmName} has no domain at this host yet: the promote call must carry its machine (vCPUs, memory, NICs)`);
      const machine = checkMachine(r.machine);
      this.c.checkBootFiles(machine);
      const uuidFree = !(await this.c.virsh.run(['list', '--all', '--uuid'])).split('\n').some((u) => u.trim().toLowerCase() === r.vmId.toLowerCase());
      xml = domainXml({
        name,
        ...(uuidFree ? { uuid: r.vmId } : {}),
        machine,
        disks: r.disks.map((d) => ({ target: d.name, chain: chain(d.name) })),
        consoleLog: path.join(this.c.dirOf(r.vmId), 'console.log'),
        metadata: [`<osr:vm xmlns:osr='${VM_NAMESPACE}' id='${xmlText(r.vmId)}'/>`],
      });
    }
    await this.c.virsh.withXml(xml, (f) => ['define', f]);
    return this.ready(r, name);
  }

  /** The domain carries the VM's id and no fence; recorded as the VM's. */
  private async ready(r: PromotionRun, name: string): Promise<string> {
    await unfenceDomain(this.c.virsh, name);
    await this.c.virsh.run(['metadata', name, '--uri', VM_NAMESPACE, '--key', 'osr', '--set', `<vm id="${xmlText(r.vmId)}"/>`, '--config']);
    writeJsonDurable(path.join(this.c.dirOf(r.vmId), 'domain.json'), { domain: name, images: Object.fromEntries(r.disks.map((d) => [d.name, d.image])) });
    return name;
  }

  private async startTracked(domain: string): Promise<void> {
    await startUnderCheckpoint(this.c.virsh, domain, true);
  }

  async setRunning(vmId: string, running: boolean): Promise<void> {
    const domain = this.domainOf(vmId);
    const up = await this.isRunning(domain);
    if (running && !up) await this.startTracked(domain);
    if (!running && up) await this.c.virsh.run(['destroy', domain]);
  }

  async discard(vmId: string): Promise<void> {
    const st = this.state(vmId);
    if (st?.committed) throw new OsrError('INVALID_STATE', `the promotion of ${vmId} is committed; its writes are the VM's disks now`);
    let domain: string | undefined;
    try {
      domain = this.domainOf(vmId);
    } catch {
      domain = undefined;
    }
    if (domain && (await this.domainExists(domain))) {
      if (await this.isRunning(domain)) await this.c.virsh.run(['destroy', domain]);
      // the checkpoint's bitmap lives in the layer that goes: its metadata goes too
      for (const c of (await listCheckpoints(this.c.virsh, domain)).ours) await this.c.virsh.run(['checkpoint-delete', domain, c, '--metadata']);
    }
    fs.rmSync(this.stateFile(vmId), { force: true });
    const dir = this.disksDir(vmId);
    if (fs.existsSync(dir)) for (const f of fs.readdirSync(dir)) if (f.includes('.top.qcow2')) fs.rmSync(path.join(dir, f), { force: true });
  }

  async commit(vmId: string): Promise<void> {
    const st = this.state(vmId);
    if (st?.committed) return;
    if (!st?.layersReady) throw new OsrError('INVALID_STATE', `VM ${vmId} has no promotion running here to commit`);
    const domain = this.domainOf(vmId);
    const live = parseDomainXml(await this.c.virsh.run(['dumpxml', domain])).disks.filter((d) => d.device === 'disk');
    const running = await this.isRunning(domain);
    for (const d of live) {
      const top = this.top(vmId, d.target);
      if (running) {
        if (d.file === top) await this.blockCommit(domain, d.target);
        crashPoint('libvirt:disk-committed');
      } else if (fs.existsSync(top) && (d.file === top || d.file === undefined)) {
        await qemuImg(['commit', '-q', '-f', 'qcow2', '-t', 'none', top]);
      }
    }
    // the persistent definition names the images too, whether libvirt moved it with the pivot or not
    const inactive = await this.c.virsh.run(['dumpxml', domain, '--inactive']);
    const images = readJson<{ images?: Record<string, string> }>(path.join(this.c.dirOf(vmId), 'domain.json'))?.images ?? {};
    const wrapped = inactive.replace(/<disk\b[^>]*device=['"]disk['"][\s\S]*?<\/disk>/g, (el) => {
      const target = /<target\b[^>]*dev=['"]([^'"]+)['"]/.exec(el)?.[1];
      if (!target || !el.includes(this.top(vmId, target))) return el;
      return diskXml({ target, chain: [{ file: this.wrapper(vmId, target), format: 'qcow2', dataFile: images[target] }] });
    });
    if (wrapped !== inactive) await this.c.virsh.withXml(wrapped, (f) => ['define', f]);
    writeJsonDurable(this.stateFile(vmId), { ...st, committed: true });
    for (const d of live) fs.rmSync(this.top(vmId, d.target), { force: true });
  }

  /** Fold a running disk's top layer into the image below and pivot to it; a job left by a crash is finished. */
  private async blockCommit(domain: string, target: string): Promise<void> {
    const info = await this.c.virsh.run(['blockjob', domain, target, '--info']).catch(() => '');
    try {
      if (/commit/i.test(info)) {
        // a commit a crash left: once its copy is done, pivot
        const deadline = Date.now() + 3_600_000;
        while (!/100 ?%/.test(await this.c.virsh.run(['blockjob', domain, target, '--info']))) {
          if (Date.now() > deadline) throw new OsrError('HYPERVISOR_ERROR', `the commit of ${domain}/${target} did not finish`);
          await new Promise((r) => setTimeout(r, 500));
        }
        await this.c.virsh.run(['blockjob', domain, target, '--pivot']);
      } else {
        await this.c.virsh.run(['blockcommit', domain, target, '--active', '--pivot', '--wait'], { timeoutMs: 3_600_000 });
      }
    } catch (e) {
      throw new OsrError('HYPERVISOR_ERROR', `the writes of ${domain} could not be folded into disk ${target}: ${toOsrError(e).message}; the commit can be run again`, { domain, disk: target }, { cause: e });
    }
  }
}
