/**
 * The lab on libvirt (`osr lab up --topology kvm`, or any topology with `hypervisor:
 * libvirt`): the same two-site lab, but each host is an `osr agent --host libvirt` on this
 * machine's libvirtd and each demo VM a tiny Linux guest (tiny-guest.ts) under QEMU that
 * writes numbered records to its disks. A site's provider is `osr provider --fabric
 * libvirt` with a site file the lab writes.
 *
 * Every libvirt object the lab makes is named with the lab's tag (`lab` and six hex digits
 * of the lab directory's path), so two labs on one libvirtd never meet, and the objects of
 * a host carry the host's name too:
 *   domain     TAG-HOST-VM            (the host's agent runs with --libvirt-prefix TAG-HOST-,
 *                                      so the VM is VM to osr; a promoted replica's domain at
 *                                      the recovery host is TAG-RECOVERYHOST-VM)
 *   network    TAG-FABRIC-VMNETWORK   isolated (no forward): one per VM network of the topology
 *   pool       TAG-FABRIC-LOCATION    a directory pool per storage location, in sites/FABRIC/pools/
 *
 * What the lab keeps of it (kvm.json in the lab directory): each host's replication port
 * (the site file names it, so it stays the same from run to run) and which of the lab's
 * domains ran when the lab was stopped, so that the next `lab up` starts them again. A
 * stop powers the lab's domains off after the providers and agents have stopped.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { parseSize } from '../agent/io/size.js';
import { ensureIsolatedNetwork, removeNetwork } from '../agent/libvirt/inventory.js';
import { Virsh } from '../agent/libvirt/virsh.js';
import { OsrError, toOsrError } from '../domain/errors.js';
import type { LibvirtSiteConfig } from '../drivers/libvirt/site.js';
import { writeFileAtomic } from '../pki/index.js';
import type { LabAgentInfo } from './lab-driver.js';
import { makeDataImage, makeSystemImage, removeDomain, tinyDomainXml } from './tiny-domain.js';
import { tinyGuest, type TinyGuest } from './tiny-guest.js';
import { slug, type FabricSpec, type TopologySpec } from './topology.js';

/** What the lab keeps of its libvirt side (kvm.json). */
interface KvmLabState {
  tag: string;
  /**
   * each host's replication and provider-channel ports, fixed at its agent's first start,
   * and its bootstrap certificate's fingerprint (printed only before its enrolment)
   */
  hosts: Record<string, { replicationPort: number; providerApiPort?: number | undefined; agentFingerprint?: string | undefined }>;
  /** the lab's domains that ran when the lab last stopped */
  running: string[];
}

/** How the launcher starts a process of the lab and waits for its ready line. */
export type SpawnReady = (args: string[], logFile: string, ready: (line: Record<string, unknown>) => boolean, name: string) => Promise<{ pid: number; line: Record<string, unknown> }>;

/** The tag every libvirt object of the lab in `dir` begins with. */
export function kvmLabTag(dir: string): string {
  return `lab${crypto.createHash('sha256').update(path.resolve(dir)).digest('hex').slice(0, 6)}`;
}

export const domainPrefix = (tag: string, host: string): string => `${tag}-${host}-`;
const networkName = (tag: string, f: FabricSpec, vmNetwork: string) => `${tag}-${slug(f.name)}-${slug(vmNetwork)}`;
const poolName = (tag: string, f: FabricSpec, location: string) => `${tag}-${slug(f.name)}-${slug(location)}`;
const poolDir = (siteDir: string, location: string) => path.join(siteDir, 'pools', slug(location));

const stateFile = (dir: string) => path.join(dir, 'kvm.json');

function readState(dir: string): KvmLabState {
  try {
    const s = JSON.parse(fs.readFileSync(stateFile(dir), 'utf8')) as Partial<KvmLabState>;
    return { tag: s.tag ?? kvmLabTag(dir), hosts: s.hosts ?? {}, running: s.running ?? [] };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { tag: kvmLabTag(dir), hosts: {}, running: [] };
    throw new OsrError('CONFIG_INVALID', `${stateFile(dir)} cannot be read: ${(e as Error).message}; remove the lab's directory to start over`);
  }
}

/** Change kvm.json: one change at a time (the sites start side by side). */
let updating: Promise<void> = Promise.resolve();
function updateState(dir: string, change: (s: KvmLabState) => void): Promise<void> {
  const next = updating.then(async () => {
    const s = readState(dir);
    change(s);
    await writeFileAtomic(stateFile(dir), `${JSON.stringify(s, null, 2)}\n`, 0o644);
  });
  updating = next.catch(() => undefined);
  return next;
}

/**
 * This machine can run the kvm lab: libvirtd answers, and qemu-img and mkfs.ext4 are
 * there. Refused with what to do, before any process starts.
 */
export async function checkKvmHost(virsh: Virsh): Promise<void> {
  const howTo = 'on Debian or Ubuntu, `sudo bash scripts/libvirt-up.sh` (in osr\'s source tree) installs libvirt and QEMU and starts libvirtd; then run `osr lab up --topology kvm` again, or use the lab without libvirt (`osr lab up`)';
  try {
    await virsh.run(['version'], { timeoutMs: 20_000 });
  } catch (e) {
    throw new OsrError('NOT_SUPPORTED', `the kvm lab needs libvirtd with QEMU on this machine, and ${virsh.uri} does not answer (${toOsrError(e).message}): ${howTo}`, { uri: virsh.uri });
  }
  for (const tool of ['qemu-img', 'mkfs.ext4']) {
    const found = (process.env.PATH ?? '/usr/bin:/bin').split(':').concat(['/usr/sbin', '/sbin']).some((d) => d !== '' && fs.existsSync(path.join(d, tool)));
    if (!found) throw new OsrError('NOT_SUPPORTED', `the kvm lab needs ${tool} on this machine (packages qemu-utils and e2fsprogs): ${howTo}`, { tool });
  }
}

/**
 * A lab made anew in a directory (no kvm.json) takes over nothing: libvirt objects with
 * its tag are what a lab in the same directory left when the directory was removed (their
 * disks went with it), and are removed before anything is made. Then kvm.json is written.
 */
export async function prepareKvmLab(dir: string, virsh: Virsh, out: (l: string) => void): Promise<void> {
  if (fs.existsSync(stateFile(dir))) return;
  await removeKvmObjects(dir, virsh, (names) => `  libvirt    removing what an earlier lab in ${dir} left: ${names.join(', ')}`, out);
  fs.mkdirSync(dir, { recursive: true });
  await updateState(dir, () => undefined);
}

/**
 * Remove every libvirt object of the lab in `dir` (by its tag): domains with their
 * checkpoints' metadata, networks, pools. Their files are in the lab's directory.
 */
export async function removeKvmObjects(dir: string, virsh: Virsh, say: (names: string[]) => string, out: (l: string) => void): Promise<void> {
  const tag = kvmLabTag(dir);
  const mine = (text: string) => text.split('\n').map((x) => x.trim()).filter((n) => n.startsWith(`${tag}-`));
  const domains = mine(await virsh.run(['list', '--all', '--name']));
  const networks = mine(await virsh.run(['net-list', '--all', '--name']));
  const pools = mine(await virsh.run(['pool-list', '--all', '--name']));
  if (domains.length + networks.length + pools.length > 0) out(say([...domains, ...networks, ...pools]));
  for (const d of domains) await removeDomain(virsh, d);
  for (const n of networks) await removeNetwork(virsh, n);
  for (const p of pools) {
    await virsh.run(['pool-destroy', p]).catch(() => undefined);
    await virsh.run(['pool-undefine', p]);
  }
}

/** The tiny guest the lab's domains run (built once into its cache; the first time takes a minute). */
export async function kvmLabGuest(out: (l: string) => void): Promise<TinyGuest> {
  out('  guest      preparing the tiny Linux guest (Debian\'s cloud kernel and busybox; fetched and built once)…');
  return tinyGuest({ agent: true });
}

/** The lab's domains that exist now (defined), running or not. */
async function labDomains(virsh: Virsh, tag: string): Promise<{ all: string[]; running: string[] }> {
  const names = (out: string) => out.split('\n').map((s) => s.trim()).filter((n) => n.startsWith(`${tag}-`));
  return { all: names(await virsh.run(['list', '--all', '--name'])), running: names(await virsh.run(['list', '--name'])) };
}

async function ensurePool(virsh: Virsh, name: string, dir: string): Promise<void> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
  const names = (out: string) => out.split('\n').map((s) => s.trim());
  if (!names(await virsh.run(['pool-list', '--all', '--name'])).includes(name)) await virsh.run(['pool-define-as', name, 'dir', '--target', dir]);
  if (!names(await virsh.run(['pool-list', '--name'])).includes(name)) await virsh.run(['pool-start', name]);
}

/** A VM of the topology as a tiny guest's domain, defined once; answers whether it was made now. */
async function ensureDomain(virsh: Virsh, guest: TinyGuest, tag: string, f: FabricSpec, v: FabricSpec['vms'][number], siteDir: string): Promise<{ name: string; made: boolean }> {
  const name = `${domainPrefix(tag, v.host)}${v.name}`;
  if ((await labDomains(virsh, tag)).all.includes(name)) return { name, made: false };
  if (v.disks.length > 8) throw new OsrError('CONFIG_INVALID', `VM ${v.name}: a kvm lab VM has 1 to 8 disks`);
  const host = f.clouds.flatMap((c) => c.hostGroups.flatMap((g) => g.hosts)).find((h) => h.name === v.host)!;
  const disks = v.disks.map((d, i) => {
    const location = d.storage ?? host.storageLocations[0];
    const dir = location !== undefined ? poolDir(siteDir, location) : path.join(siteDir, 'disks');
    fs.mkdirSync(dir, { recursive: true, mode: 0o711 });
    const file = path.join(dir, `${v.name}-${slug(d.name)}.qcow2`);
    const mib = Math.max(1, Math.ceil(parseSize(d.size) / (1024 * 1024)));
    fs.rmSync(file, { force: true });
    // the first disk holds the guest's file system; the others are raw data it writes to
    if (i === 0) makeSystemImage(file, Math.max(mib, 16));
    else makeDataImage(file, mib);
    return { target: `vd${String.fromCharCode(97 + i)}`, file };
  });
  const consoles = path.join(siteDir, 'consoles');
  fs.mkdirSync(consoles, { recursive: true });
  const networks = v.nics.map((n) => networkName(tag, f, n.network ?? f.vmNetworks[0]!.name));
  const rate = v.workload === false ? undefined : Math.round((v.workload?.bytesPerSecond ?? 64 * 1024) / 1024);
  const xml = tinyDomainXml({ name, guest, disks, consoleLog: path.join(consoles, `${v.name}.log`), networks, agent: true, interval: 1, idle: v.workload === false, writeKiBps: rate });
  await virsh.withXml(xml, (file) => ['define', file]);
  return { name, made: true };
}

/** The directory that holds the guest's kernel and initramfs (what a promoted or test domain may boot). */
function bootDir(guest: TinyGuest): string {
  const a = path.dirname(guest.kernel).split(path.sep);
  const b = path.dirname(guest.initrd).split(path.sep);
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return a.slice(0, n).join(path.sep) || path.sep;
}

export interface KvmSiteStart {
  /** the site file for `osr provider --fabric libvirt` */
  siteFile: string;
  /** what `osr lab status` shows of the site's agents */
  agents: LabAgentInfo[];
}

/**
 * Make one site of the kvm lab ready for its provider: networks, pools and domains
 * (started as the topology or the last stop says), one agent per host, and the site file.
 * Safe to run again: what exists is taken as it is.
 */
export async function startKvmSite(o: { dir: string; f: FabricSpec; siteDir: string; guest: TinyGuest; virsh: Virsh; spawn: SpawnReady; out: (l: string) => void; caFile: string }): Promise<KvmSiteStart> {
  const { dir, f, siteDir, guest, virsh } = o;
  const state = readState(dir);
  const tag = state.tag;
  fs.mkdirSync(siteDir, { recursive: true });
  for (const n of f.vmNetworks) await ensureIsolatedNetwork(virsh, networkName(tag, f, n.name));
  for (const l of f.storage.locations) await ensurePool(virsh, poolName(tag, f, l.name), poolDir(siteDir, l.name));
  for (const v of f.vms) {
    const d = await ensureDomain(virsh, guest, tag, f, v, siteDir);
    const start = d.made ? v.running !== false : state.running.includes(d.name);
    if (start && !(await labDomains(virsh, tag)).running.includes(d.name)) await virsh.run(['start', d.name]);
  }
  // a promoted replica's domain at one of this site's hosts, running when the lab stopped
  const hosts = f.clouds.flatMap((c) => c.hostGroups.flatMap((g) => g.hosts));
  const now = await labDomains(virsh, tag);
  for (const name of state.running.filter((n) => hosts.some((h) => n.startsWith(domainPrefix(tag, h.name))) && !now.running.includes(n) && now.all.includes(n))) {
    // a fenced old primary stays off: libvirt's hook refuses it, and that is right
    await virsh.run(['start', name]).catch((e: unknown) => o.out(`  domain     ${name} stays off: ${toOsrError(e).message}`));
  }

  // each agent is reached by its provider as on a real site: over the provider channel,
  // enrolled by the vault's CA through it (its bootstrap certificate pinned in the site
  // file), taking replication only on the vault's grants
  const agents: (LabAgentInfo & { providerApi: string; agentFingerprint: string | undefined })[] = [];
  for (const h of hosts) {
    const known = state.hosts[h.name];
    const args = ['agent', '--name', h.name, '--data-dir', path.join(siteDir, 'hosts', h.name), '--ca', o.caFile, '--provider-api', `127.0.0.1:${known?.providerApiPort ?? 0}`, '--host', 'libvirt', '--libvirt-uri', virsh.uri, '--libvirt-prefix', domainPrefix(tag, h.name), '--libvirt-boot-dir', bootDir(guest), '--listen', `127.0.0.1:${known?.replicationPort ?? 0}`, '--retry-backoff', '5s,10s,20s', '--retry-every', '30s', '--log-level', 'warn'];
    const a = await o.spawn(args, path.join(siteDir, 'hosts', `${h.name}.log`), (l) => typeof l.api === 'string', h.name);
    const replicationPort = Number(a.line.replicationPort);
    const providerApi = String(a.line.providerApi);
    const providerApiPort = Number(new URL(providerApi).port);
    // printed until the agent is enrolled; the first one stays in the site file
    const agentFingerprint = typeof a.line.bootstrapFingerprint === 'string' ? a.line.bootstrapFingerprint : known?.agentFingerprint;
    await updateState(dir, (s) => (s.hosts[h.name] = { replicationPort, providerApiPort, agentFingerprint }));
    agents.push({ host: h.name, hostId: h.name, fabric: f.name, api: String(a.line.api), pid: a.pid, replicationPort, nbdSocket: String(a.line.nbdSocket ?? ''), providerApi, agentFingerprint });
  }
  await writeFileAtomic(path.join(siteDir, 'agents.json'), `${JSON.stringify(agents.map(({ providerApi: _p, agentFingerprint: _f, ...a }) => a), null, 2)}\n`, 0o644);

  const site: Omit<LibvirtSiteConfig, 'domains'> & { domains: { include: string[] } } = {
    name: f.name,
    ...(f.server ? { server: f.server } : {}),
    dir: path.join(siteDir, 'provider'),
    hosts: agents.map((a) => ({ name: a.host, agent: a.providerApi, ...(a.agentFingerprint !== undefined ? { agentFingerprint: a.agentFingerprint } : {}), addresses: ['127.0.0.1'], replicationPort: a.replicationPort!, ...(f.osVersion ? { osVersion: f.osVersion } : {}) })),
    clouds: f.clouds.map((c) => ({ name: c.name, hostGroups: c.hostGroups.map((g) => ({ name: g.name, hosts: g.hosts.map((h) => h.name) })) })),
    networks: f.vmNetworks.map((n) => ({ libvirt: networkName(tag, f, n.name), vmNetwork: n.name, logicalNetwork: n.logicalNetwork, subnets: n.subnets })),
    storage: f.storage.locations.map((l) => ({ pool: poolName(tag, f, l.name), classification: l.classification })),
    domains: { include: ['*'] },
  };
  const siteFile = path.join(path.dirname(siteDir), `${slug(f.name)}.yaml`);
  await writeFileAtomic(siteFile, YAML.stringify(site), 0o644);
  return { siteFile, agents };
}

/**
 * Power off the lab's domains (after its providers and agents stopped), remembering which
 * ran so that the next `lab up` starts them again. libvirt's destroy asks QEMU to quit
 * (SIGTERM first): its dirty bitmaps are stored, and the guests' records are fsynced.
 */
export async function stopKvmDomains(dir: string, out: (l: string) => void, virsh = new Virsh()): Promise<void> {
  if (!fs.existsSync(stateFile(dir))) return;
  const state = readState(dir);
  const { running } = await labDomains(virsh, state.tag);
  if (running.length === 0) return;
  await updateState(dir, (s) => (s.running = running));
  out(`powering off the lab's domains: ${running.join(', ')}…`);
  for (const name of running) await virsh.run(['destroy', name]).catch((e: unknown) => out(`  ${name}: ${toOsrError(e).message}`));
}

/** The topology runs on libvirt. */
export const isKvmTopology = (t: TopologySpec): boolean => t.hypervisor === 'libvirt';
