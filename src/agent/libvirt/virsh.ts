/**
 * libvirt through `virsh`: every call names its connection, takes XML in and gives XML
 * out, and is logged as the command an admin could type. A call that finds the domain busy
 * with another job (another backup tool's, a migration) is tried again with back-off.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { XMLParser } from 'fast-xml-parser';
import { OsrError } from '../../domain/errors.js';

/** Messages of a domain held by another job: worth waiting for. */
const BUSY = /another (migration )?job|job is already active|is being backed up|cannot acquire state change lock|Timed out during operation/i;

export interface VirshOptions {
  /** the libvirt connection (default qemu:///system) */
  uri?: string;
  /** how long to keep trying a call that finds the domain busy (default 60 s) */
  busyTimeoutMs?: number;
  log?: { debug?(o: object, msg?: string): void };
}

export class Virsh {
  readonly uri: string;

  constructor(private readonly o: VirshOptions = {}) {
    this.uri = o.uri ?? 'qemu:///system';
  }

  /** Run `virsh --connect URI ARGS…`; answers standard output. */
  async run(args: string[], o: { input?: string; timeoutMs?: number } = {}): Promise<string> {
    const deadline = Date.now() + (this.o.busyTimeoutMs ?? 60_000);
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.once(args, o);
      } catch (e) {
        if (!(e instanceof OsrError) || e.code !== 'DOMAIN_BUSY' || Date.now() >= deadline) throw e;
        await new Promise((r) => setTimeout(r, Math.min(250 * 2 ** attempt, 5000)));
      }
    }
  }

  /** Run with an XML document given as a file argument (virsh takes XML from files). */
  async withXml(xml: string, args: (file: string) => string[]): Promise<string> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-virsh-'));
    const file = path.join(dir, 'doc.xml');
    try {
      fs.writeFileSync(file, xml, { mode: 0o600 });
      return await this.run(args(file));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  }

  private once(args: string[], o: { timeoutMs?: number }): Promise<string> {
    this.o.log?.debug?.({ cmd: ['virsh', '--connect', this.uri, ...args].join(' ') }, 'virsh');
    return new Promise((resolve, reject) => {
      execFile('virsh', ['--quiet', '--connect', this.uri, ...args], { timeout: o.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        const e = err as NodeJS.ErrnoException & { killed?: boolean };
        if (e.code === 'ENOENT') return reject(new OsrError('NOT_SUPPORTED', 'virsh is not installed: install libvirt-clients (scripts/libvirt-up.sh sets up a host without systemd)'));
        const message = (stderr || err.message).replace(/^error: /gm, '').trim().replace(/\s+/g, ' ');
        if (BUSY.test(message)) return reject(new OsrError('DOMAIN_BUSY', `virsh ${args[0]}: ${message}`, { command: args[0] }));
        if (/failed to get domain|Domain not found|no domain with matching/i.test(message)) return reject(new OsrError('VM_NOT_FOUND', `virsh ${args.slice(0, 2).join(' ')}: ${message}`));
        reject(new OsrError('HYPERVISOR_ERROR', `virsh ${args.slice(0, 2).join(' ')}: ${message}`, { command: args[0] }));
      });
    });
  }
}

const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: '@', parseAttributeValue: false, parseTagValue: false, isArray: (name) => ['disk', 'interface', 'checkpoint'].includes(name) });

type Node = Record<string, unknown>;
const obj = (v: unknown): Node => (v && typeof v === 'object' ? (v as Node) : {});
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

export interface DomainDisk {
  /** the guest's name for it (vda): libvirt's disk name in backups and checkpoints */
  target: string;
  /** the image file, for disks that are files */
  file?: string;
  /** raw, qcow2, … */
  format?: string;
  /** the raw data file under a qcow2 (a qcow2 with an external data file) */
  dataFile?: string;
  device: string;
}

export interface DomainInfo {
  name: string;
  uuid: string;
  disks: DomainDisk[];
  nics: { mac?: string; network?: string; bridge?: string; model?: string }[];
  /** osr's fence in the domain's metadata, if it carries one */
  fenceEpoch?: number;
  /** the id of the VM osr defined this domain for (a promoted replica's: its source's id), if it did */
  osrId?: string;
}

export const FENCE_NAMESPACE = 'https://osr.dev/xmlns/fence';
/** The namespace of the VM id osr puts in the domains it defines. */
export const VM_NAMESPACE = 'https://osr.dev/xmlns/vm';
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The facts osr needs from a domain's XML (`virsh dumpxml`). */
export function parseDomainXml(xml: string): DomainInfo {
  const d = obj(parser.parse(xml).domain);
  const name = str(d.name);
  const uuid = str(d.uuid);
  if (!name || !uuid) throw new OsrError('HYPERVISOR_ERROR', 'libvirt answered a domain XML without a name or UUID');
  // the UUID names the domain's directory in the agent's data and its replica at the peer
  if (!UUID.test(uuid)) throw new OsrError('HYPERVISOR_ERROR', `libvirt answered domain ${name} with a UUID that is not one: ${uuid.slice(0, 60)}`);
  const devices = obj(d.devices);
  const disks: DomainDisk[] = [];
  for (const raw of (devices.disk as unknown[] | undefined) ?? []) {
    const disk = obj(raw);
    const target = str(obj(disk.target)['@dev']);
    if (!target) continue;
    const source = obj(disk.source);
    const dataStore = obj(source.dataStore);
    const dataFile = str(obj(dataStore.source)['@file']);
    disks.push({
      target,
      device: str(disk['@device']) ?? 'disk',
      ...(str(source['@file']) ? { file: str(source['@file']) } : {}),
      ...(str(obj(disk.driver)['@type']) ? { format: str(obj(disk.driver)['@type']) } : {}),
      ...(dataFile ? { dataFile } : {}),
    });
  }
  const nics = ((devices.interface as unknown[] | undefined) ?? []).map((raw) => {
    const n = obj(raw);
    const source = obj(n.source);
    return {
      ...(str(obj(n.mac)['@address']) ? { mac: str(obj(n.mac)['@address']) } : {}),
      ...(str(source['@network']) ? { network: str(source['@network']) } : {}),
      ...(str(source['@bridge']) ? { bridge: str(source['@bridge']) } : {}),
      ...(str(obj(n.model)['@type']) ? { model: str(obj(n.model)['@type']) } : {}),
    };
  });
  const metadata = obj(d.metadata);
  const fence = Number(findOsrElement(metadata, 'fence', FENCE_NAMESPACE)?.['@epoch']);
  // the id names the VM's directory in the agent's data: a UUID, or it is not osr's
  const osrId = str(findOsrElement(metadata, 'vm', VM_NAMESPACE)?.['@id']);
  return { name, uuid, disks, nics, ...(Number.isSafeInteger(fence) ? { fenceEpoch: fence } : {}), ...(osrId && UUID.test(osrId) ? { osrId: osrId.toLowerCase() } : {}) };
}

/** osr's element `local` of the domain's metadata, in its namespace. */
function findOsrElement(metadata: Node, local: string, namespace: string): Node | undefined {
  for (const [key, value] of Object.entries(metadata)) {
    if (key !== local && !key.endsWith(`:${local}`)) continue;
    const v = obj(value);
    if (str(v['@xmlns']) !== undefined && !Object.entries(v).some(([k, x]) => k.startsWith('@xmlns') && x === namespace)) continue;
    return v;
  }
  return undefined;
}

/** Escape text for an XML attribute or element. */
export function xmlText(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}
