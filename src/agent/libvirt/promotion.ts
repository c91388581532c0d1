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
import fs from 'node:fs';
import path from 'node:path';
import { OsrError, toOsrError } from '../../domain/errors.js';
import { checkMachine, type MachineSpec } from '../../domain/machine.js';
import { crashPoint } from '../io/crash-point.js';
import type { HostPromotions, PromotionRun } from '../ports/host.js';
import { readJson, writeJsonDurable } from '../io/durable-file.js';
import { listCheckpoints } from './backup.js';
import { diskXml, domainXml, type DiskLayer } from './domain-xml.js';
import { unfenceDomain } from './fence.js';
import { qemuImg, wrapRawImage } from './images.js';
import { withQemuNbd } from './qemu-nbd.js';
import { parseDomainXml, VM_NAMESPACE, xmlText, type Virsh } from './virsh.js';

const WRITE_CHUNK = 4 * 1024 * 1024;
/** the checkpoint a promoted VM's tracking starts from */
export const PROMOTED_CHECKPOINT = 'osr-1';

interface RunState {
  pointSeq: number;
  /** the top layers hold the point's rolled-back ranges */
  layersReady: boolean;
  /** the disks whose top layer is folded into the image (their top file is gone) */
  folded?: string[] | undefined;
  committed?: boolean | undefined;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
/** virsh takes a domain's number or UUID for its name: osr's domain names are neither, nor an option */
const DOMAIN_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$/;

export interface LibvirtPromotionsContext {
  virsh: Virsh;
  /** the VM's directory in the agent's data */
  dirOf(vmId: string): string;
  /** the libvirt name of the domain of an osr VM */
  domainName(vmName: string): string;
  /** whether a domain of that name is one of the agent's (its prefix, its --libvirt-domains) */
  owns(domain: string): boolean;
  /** the machine with its kernel boot files' real paths, where the operator allows them (else NOT_SUPPORTED) */
  checkBootFiles(machine: MachineSpec): MachineSpec;
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
 * guest run, power the domain off again (QEMU stores the empty bitmap as it exits), or
 * leave it paused for a block job.
 */
export async function startUnderCheckpoint(virsh: Virsh, domain: string, then: 'resume' | 'stop' | 'stay-paused'): Promise<void> {
  // paused already: a start of ours cut short (the guest has not run since)
  if ((await virsh.run(['domstate', domain])).trim() !== 'paused') await virsh.run(['start', domain, '--paused']);
  const { ours } = await listCheckpoints(virsh, domain);
  if (!ours.includes(PROMOTED_CHECKPOINT)) {
    const disks = parseDomainXml(await virsh.run(['dumpxml', domain])).disks.filter((d) => d.device === 'disk');
    await virsh.run(['checkpoint-create-as', domain, PROMOTED_CHECKPOINT, ...disks.flatMap((d) => ['--diskspec', `${d.target},checkpoint=bitmap`])]);
  }
  if (then === 'resume') await virsh.run(['resume', domain]);
  if (then === 'stop') await virsh.run(['destroy', domain]);
}

/**
 * A domain's XML (libvirt's own, from dumpxml) with the disks `chainOf` answers for
 * replaced: the new chain, the disk's own target bus, address and boot order kept.
 */
function replaceDisks(xml: string, chainOf: (target: string) => DiskLayer[] | undefined): string {
  return xml.replace(/<disk\b[^>]*device=['"]disk['"][\s\S]*?<\/disk>/g, (el) => {
    const target = /<target\b[^>]*dev=['"]([^'"]+)['"]/.exec(el)?.[1];
    const chain = target ? chainOf(target) : undefined;
    if (!target || !chain) return el;
    const bus = /<target\b[^>]*bus=['"]([a-z]+)['"]/.exec(el)?.[1];
    const keep = [/<address\b[^>]*\/>/.exec(el)?.[0], /<boot\b[^>]*\/>/.exec(el)?.[0]].filter((x): x is string => x !== undefined);
    return diskXml({ target, chain, ...(bus ? { bus } : {}), keep });
  });
}

export class LibvirtPromotions implements HostPromotions {
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

  /** The guest runs: a paused domain is one of our starts cut short before its checkpoint or its resume. */
  private async ensureStarted(domain: string): Promise<void> {
    if ((await this.c.virsh.run(['domstate', domain])).trim() !== 'running') await this.startTracked(domain);
  }

  async check(r: { vmId: string; vmName: string; machine?: MachineSpec | undefined }): Promise<void> {
    if (!UUID.test(r.vmId)) throw new OsrError('INVALID_ARGUMENT', `a libvirt host runs VMs whose osr id is a lower-case UUID, not ${r.vmId.slice(0, 80)}`);
    const name = readJson<{ domain: string }>(path.join(this.c.dirOf(r.vmId), 'domain.json'))?.domain ?? this.c.domainName(r.vmName);
    if (!DOMAIN_NAME.test(name) || /^\d+$/.test(name) || UUID.test(name.toLowerCase())) {
      throw new OsrError('INVALID_ARGUMENT', `${name} cannot name a libvirt domain osr defines (letters, digits, dots, dashes, underscores; not a number or a UUID); give the agent a --libvirt-prefix`);
    }
    if (!this.c.owns(name)) throw new OsrError('INVALID_STATE', `libvirt domain ${name} would not be one of this agent's domains (its --libvirt-prefix and --libvirt-domains): a failover here could not manage it`, { domain: name });
    if (await this.domainExists(name)) {
      const info = parseDomainXml(await this.c.virsh.run(['dumpxml', name, '--inactive']));
      if (info.osrId !== r.vmId && info.uuid.toLowerCase() !== r.vmId) {
        throw new OsrError('ALREADY_EXISTS', `libvirt domain ${name} exists and is not VM ${r.vmName} (${r.vmId}): rename or remove it, or choose another domain name prefix for this agent`, { domain: name });
      }
      const st = this.state(r.vmId);
      if (!st && (await this.isRunning(name))) throw new OsrError('INVALID_STATE', `libvirt domain ${name} runs: a failover does not take over a running domain; shut it down first`, { domain: name });
      return;
    }
    if (!r.machine) throw new OsrError('INVALID_ARGUMENT', `VM ${r.vmName} has no domain at this host yet: the promote call must carry its machine (vCPUs, memory, NICs)`);
    this.c.checkBootFiles(checkMachine(r.machine));
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
    if (r.start) await this.ensureStarted(domain);
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
      xml = replaceDisks(current, (target) => (targets.has(target) ? chain(target) : undefined));
    } else {
      if (!r.machine) throw new OsrError('INVALID_ARGUMENT', `VM ${r.vmName} has no domain at this host yet: the promote call must carry its machine (vCPUs, memory, NICs)`);
      const machine = this.c.checkBootFiles(checkMachine(r.machine));
      const uuidFree = !(await this.c.virsh.run(['list', '--all', '--uuid'])).split('\n').some((u) => u.trim().toLowerCase() === r.vmId.toLowerCase());
      xml = domainXml({
        name,
        ...(uuidFree ? { uuid: r.vmId } : {}),
        machine,
        disks: r.disks.map((d) => ({ target: d.name, chain: chain(d.name) })),
        consoleLog: path.join(this.c.dirOf(r.vmId), 'console.log'),
        guestAgent: machine.guestAgent === true,
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
    await startUnderCheckpoint(this.c.virsh, domain, 'resume');
  }

  async setRunning(vmId: string, running: boolean): Promise<void> {
    const domain = this.domainOf(vmId);
    const up = await this.isRunning(domain);
    if (running) await this.ensureStarted(domain);
    if (!running && up) {
      // the guest's agent or ACPI asked first; powered off if it has not stopped within a minute
      await this.c.virsh.run(['shutdown', domain, '--mode', 'agent,acpi']).catch(() => undefined);
      const deadline = Date.now() + 60_000;
      while (Date.now() < deadline && (await this.isRunning(domain))) await new Promise((r) => setTimeout(r, 500));
      if (await this.isRunning(domain)) await this.c.virsh.run(['destroy', domain]);
    }
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

  /**
   * Fold each disk's top layer into its image with blockcommit while the guest runs (a
   * domain that is off is started paused for it: QEMU moves the checkpoint's bitmap down,
   * which `qemu-img commit` would not). Each folded disk is recorded, and its top file
   * removed, before the next: a restart never folds a stale layer over newer writes.
   */
  async commit(vmId: string): Promise<void> {
    const st = this.state(vmId);
    if (st?.committed) return this.removeTops(vmId);
    if (!st?.layersReady) throw new OsrError('INVALID_STATE', `VM ${vmId} has no promotion running here to commit`);
    const domain = this.domainOf(vmId);
    const folded = new Set(st.folded ?? []);
    const images = readJson<{ images?: Record<string, string> }>(path.join(this.c.dirOf(vmId), 'domain.json'))?.images ?? {};
    const wasOff = !(await this.isRunning(domain));
    if (wasOff && parseDomainXml(await this.c.virsh.run(['dumpxml', domain, '--inactive'])).disks.some((d) => d.device === 'disk' && !folded.has(d.target))) {
      await startUnderCheckpoint(this.c.virsh, domain, 'stay-paused');
    }
    try {
      for (const d of parseDomainXml(await this.c.virsh.run(['dumpxml', domain])).disks.filter((x) => x.device === 'disk')) {
        if (folded.has(d.target)) continue;
        if (d.file === this.top(vmId, d.target)) await this.blockCommit(domain, d.target);
        folded.add(d.target);
        writeJsonDurable(this.stateFile(vmId), { ...st, folded: [...folded] });
        fs.rmSync(this.top(vmId, d.target), { force: true });
        crashPoint('libvirt:disk-committed');
      }
    } finally {
      if (wasOff) await this.c.virsh.run(['destroy', domain]).catch(() => undefined);
    }
    // the persistent definition names the images, whether libvirt moved it with the pivot or not
    const inactive = await this.c.virsh.run(['dumpxml', domain, '--inactive']);
    const wrapped = replaceDisks(inactive, (target) => (inactive.includes(this.top(vmId, target)) ? [{ file: this.wrapper(vmId, target), format: 'qcow2', dataFile: images[target] }] : undefined));
    if (wrapped !== inactive) await this.c.virsh.withXml(wrapped, (f) => ['define', f]);
    writeJsonDurable(this.stateFile(vmId), { ...st, folded: [...folded], committed: true });
    this.removeTops(vmId);
  }

  private removeTops(vmId: string): void {
    const dir = this.disksDir(vmId);
    if (fs.existsSync(dir)) for (const f of fs.readdirSync(dir)) if (f.includes('.top.qcow2')) fs.rmSync(path.join(dir, f), { force: true });
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
