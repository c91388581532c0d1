/**
 * The lab fabric: a management server's view of hosts that are `osr agent` processes on
 * this machine. Its inventory is the site file's (clouds, host groups, hosts, networks
 * with static IP pools, storage) plus the VMs the agents run and the replica VMs it made.
 *
 * This file is the lab's management part (FabricManagement); replication and failover
 * are the agent-backed part every fabric of osr agents shares
 * (src/drivers/agent-replication.ts), which asks this one where each VM is and tells it
 * what a failover changed.
 *
 * - Hosts enrol through the provider (a key pair made here, a certificate from the
 *   vault's CA) and run with a replication listener on a port kept across restarts.
 * - VMs are the agents' lab VMs; a running VM with a workload has a guest writing to its
 *   disks through NBD.
 * - A replica VM is a record here (host, disks on storage locations, NICs with IPs from
 *   the pools); its data is the replica store on that host's agent.
 *
 * What must survive a restart is in DIR/state.json, written whole and synced.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseSize } from '../agent/io/size.js';
import { OsrError } from '../domain/errors.js';
import type { InventoryDocument } from '../domain/resources.js';
import type { RecoveryPointInfo } from '../domain/replicas.js';
import { AGENT_REPLICATION_CAPABILITIES, AgentReplication, asReplica, asVm, claimReplicaSource, deleteReplicaData, openTestOverlay, removeTestOverlay, type AgentSite, type SiteChange } from '../drivers/agent-replication.js';
import type { DriverContext, FabricCapabilities, FabricDriver, FabricManagement, PowerAction, ReplicaEndpoint, ReplicaVm, ReplicaVmSpec, TestVm, TestVmSpec } from '../fabric/driver.js';
import { fsyncDir, generateKeyPairPem, readCertificateInfo, readCrl, renewalDue, signEnrolmentProof, writeFileAtomic, type EnrolmentProof } from '../pki/index.js';
import { startAgentProcess, stopAgentProcess, type RunningAgent } from './agent-process.js';
import { intToIp, ipToInt, slug, type LabVmSpec, type SiteConfig } from './topology.js';
import { DEFAULT_WORKLOAD_BYTES_PER_SECOND, Workload } from './workload.js';

const DEFAULT_OS = 'lab-2025';

interface ReplicaRecord {
  id: string;
  itemId: string;
  /** the source VM's name: the replica store's name on the host's agent */
  name: string;
  hostId: string;
  disks: { id: string; name: string; sizeBytes: number; storageLocation?: string }[];
  nicIds: string[];
  /** NIC id → the source NIC's subnet name: the replica's NIC goes on the subnet of that name */
  nicSubnets?: Record<string, string | null>;
  /** false once protection was disabled with the replica kept: a VM of its own */
  protecting: boolean;
  createdAt: string;
}

interface TestVmRecord {
  id: string;
  itemId: string;
  /** the replica's (source VM's) name on the host's agent */
  replicaName: string;
  hostId: string;
  overlayId: string;
  pointId: string;
  /** the point opened, when a newer one than asked (TestVmSpec.latest) */
  point?: RecoveryPointInfo | undefined;
  nicIds: string[];
  temporaryNetwork: string | null;
  disks: { name: string; nbd: string }[];
  startedAt: string;
}

/** A VM network made for a drill: isolated (its own logical network), removed with the test VM. */
interface TemporaryNetwork {
  id: string;
  name: string;
  cidr: string;
  pool: { start: string; end: string };
}

/** The source VM's NICs' subnets, by NIC id. */
const sourceSubnets = (spec: ReplicaVmSpec): Record<string, string | null> => Object.fromEntries(spec.source.nics.map((n) => [n.id, n.subnet ?? null]));

interface NicLease {
  vmNetwork: string | null;
  /** the subnet of the network it is on (the source NIC's subnet name, else the network's first) */
  subnet?: string | null;
  ip: string | null;
}

/** The logical network every drill's temporary VM network runs on: reached by no host's uplink. */
const ISOLATED_LOGICAL = 'osr-isolated';

interface LabState {
  hosts: Record<string, { replicationPort: number }>;
  /** VM id → power wanted (topology VMs) */
  power: Record<string, 'Running' | 'Off'>;
  replicas: Record<string, ReplicaRecord>;
  /** "vmId/nicId" → its VM network, subnet and address */
  nics: Record<string, NicLease>;
  /** VM id → the peer its replication goes to */
  replications: Record<string, ReplicaEndpoint>;
  testVms: Record<string, TestVmRecord>;
  temporaryNetworks: Record<string, TemporaryNetwork>;
  /** replica records whose point was promoted: they run as VMs now */
  promoted: Record<string, { epoch: number; at: string }>;
  /** topology VMs whose disks became a replica (reverse replication): replicas now */
  demoted: Record<string, { epoch: number; itemId: string; at: string }>;
  /** VMs a newer epoch was promoted for elsewhere: they stay off until demoted */
  fenced: Record<string, { epoch: number; at: string }>;
}

/** One line per host in DIR/agents.json: how to reach its agent (lab status, nbd-uri). */
export interface LabAgentInfo {
  host: string;
  hostId: string;
  fabric: string;
  api: string;
  pid: number;
  replicationPort: number | null;
  nbdSocket: string;
}

interface Located {
  id: string;
  name: string;
  hostId: string;
  isVm: boolean;
  spec?: LabVmSpec & { id: string };
  replica?: ReplicaRecord;
}

interface HostRef {
  id: string;
  name: string;
  osVersion: string;
  logicalNetworks: string[];
  storageLocations: string[];
  cloudId: string;
  hostGroupId: string;
}

export interface LabDriverOptions {
  /** agent retry back-off (default: the agent's own) */
  agentArgs?: string[];
}

/**
 * What the lab does: what replication through osr agents does (not offline initial
 * replication), test failovers, and raw disks, whose writes the lab host tracks on their
 * write path and serves over NBD; tracking in the write path, it replicates continuously
 * both ways.
 */
export const LAB_CAPABILITIES: FabricCapabilities = { ...AGENT_REPLICATION_CAPABILITIES, continuousReplication: ['source', 'target'], consistencyGroups: ['source', 'target'], testFailover: true, rawDisks: true, changedBlockTracking: true, nbdExport: true };

/** The lab fabric's driver: its management part and the agent-backed replication over it. */
export class LabFabricDriver implements FabricDriver {
  readonly kind = 'lab';
  readonly capabilities = LAB_CAPABILITIES;
  readonly management: LabFabric;
  readonly replication: AgentReplication;

  constructor(site: SiteConfig, o: LabDriverOptions = {}) {
    this.management = new LabFabric(site, o);
    this.replication = new AgentReplication(this.management.agentSite);
  }
}

/** The lab's management part: hosts as agent processes, their VMs, replica and test VM records, networks. */
export class LabFabric implements FabricManagement {
  /** what the agent-backed replication asks of this fabric and tells it */
  readonly agentSite: AgentSite;
  private readonly dir: string;
  private state: LabState;
  private readonly agents = new Map<string, RunningAgent>();
  private readonly workloads = new Map<string, Workload>();
  private readonly hosts = new Map<string, HostRef>();
  private readonly vms = new Map<string, LabVmSpec & { id: string }>();
  private ctx: DriverContext | undefined;
  private saving: Promise<void> = Promise.resolve();

  constructor(
    readonly site: SiteConfig,
    private readonly o: LabDriverOptions = {},
  ) {
    this.dir = site.lab.dir;
    fs.mkdirSync(this.dir, { recursive: true });
    const file = path.join(this.dir, 'state.json');
    let saved: Partial<LabState> = {};
    try {
      saved = JSON.parse(fs.readFileSync(file, 'utf8')) as Partial<LabState>;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new OsrError('CONFIG_INVALID', `${file} cannot be read: ${(e as Error).message}`);
    }
    this.state = { hosts: {}, power: {}, replicas: {}, nics: {}, replications: {}, testVms: {}, temporaryNetworks: {}, promoted: {}, demoted: {}, fenced: {}, ...saved };
    for (const c of site.clouds) {
      for (const hg of c.hostGroups) {
        for (const h of hg.hosts) {
          this.hosts.set(slug(h.name), { id: slug(h.name), name: h.name, osVersion: h.osVersion ?? site.osVersion ?? DEFAULT_OS, logicalNetworks: h.logicalNetworks.map(slug), storageLocations: h.storageLocations.map(slug), cloudId: slug(c.name), hostGroupId: slug(`${c.name}-${hg.name}`) });
        }
      }
    }
    for (const v of site.vms) this.vms.set(slug(v.name), { ...v, id: slug(v.name) });
    this.agentSite = {
      name: site.name,
      locate: (id) => this.locate(id),
      agent: (hostId) => this.agent(hostId).api,
      agentEndpoint: (hostId) => this.agentAddress(hostId),
      nics: (id) => this.nicsOf(id, this.nicIdsOf(this.locate(id))),
      replicationPeer: (vmId) => this.state.replications[vmId],
      fencedEpoch: (vmId) => this.state.fenced[vmId]?.epoch ?? 0,
      stoppingVm: (vmId, graceful) => this.stopGuest(vmId, graceful),
      changed: (c) => this.record(c),
      log: { warn: (o, msg) => this.ctx?.log.warn(o, msg) },
    };
  }

  private save(): Promise<void> {
    const text = `${JSON.stringify(this.state, null, 2)}\n`;
    this.saving = this.saving.then(async () => {
      await writeFileAtomic(path.join(this.dir, 'state.json'), text, 0o644);
      await fsyncDir(this.dir);
    });
    return this.saving;
  }

  private changed(): void {
    this.ctx?.inventoryChanged();
  }

  /**
   * What the agent-backed replication did, in the lab's records: the peer a VM replicates
   * to, and after a failover step which record runs as a VM (a promoted replica, a
   * topology VM not demoted), which is off and fenced. Saved before the call answers.
   */
  private async record(c: SiteChange): Promise<void> {
    const at = new Date().toISOString();
    switch (c.kind) {
      case 'replicating':
        if (c.peer) this.state.replications[c.vmId] = c.peer;
        else delete this.state.replications[c.vmId];
        await this.save();
        return;
      case 'shut-down':
        await this.wantPower(c.vmId, 'Off');
        return;
      case 'point-changed':
      case 'committed':
        this.changed();
        return;
      case 'promoted':
        if (this.locate(c.id).replica) this.state.promoted[c.id] = { epoch: c.epoch, at };
        else delete this.state.demoted[c.id];
        delete this.state.fenced[c.id];
        this.state.power[c.id] = 'Running';
        break;
      case 'fenced':
        this.state.fenced[c.vmId] = { epoch: c.epoch, at };
        this.state.power[c.vmId] = 'Off';
        break;
      case 'demoted':
        if (this.locate(c.id).replica) delete this.state.promoted[c.id];
        else this.state.demoted[c.id] = { epoch: c.epoch, itemId: c.itemId, at };
        delete this.state.fenced[c.id];
        delete this.state.replications[c.id];
        this.state.power[c.id] = 'Off';
        break;
    }
    await this.save();
    this.changed();
  }

  // ---- start and stop

  async start(ctx: DriverContext): Promise<void> {
    this.ctx = ctx;
    const pkiDir = path.join(this.dir, 'pki');
    fs.mkdirSync(pkiDir, { recursive: true, mode: 0o700 });
    fs.mkdirSync(path.join(this.dir, 'hosts'), { recursive: true });
    await stopStrayAgents(this.dir);
    try {
      for (const h of this.hosts.values()) {
        await this.enrol(h, pkiDir, ctx);
        const port = this.state.hosts[h.id]?.replicationPort ?? 0;
        const agent = await startAgentProcess({ name: h.name, dataDir: path.join(this.dir, 'hosts', h.name), pkiDir, listenPort: port, extraArgs: this.o.agentArgs ?? [], retryBackoff: '5s,10s,20s', retryEvery: '30s' });
        this.agents.set(h.id, agent);
        this.state.hosts[h.id] = { replicationPort: agent.replicationPort! };
        ctx.log.info({ host: h.name, api: agent.apiUrl, replicationPort: agent.replicationPort }, `host ${h.name} is up`);
      }
      await this.writeAgentsFile();
      for (const v of this.vms.values()) await this.ensureVm(v);
      for (const id of Object.keys(this.state.promoted)) if (this.state.power[id] === 'Running' && !this.state.fenced[id]) await this.setPower(id, 'start');
      await this.save();
    } catch (e) {
      await this.stop();
      throw e;
    }
  }

  /** A host's agent certificate: made once, again when the vault's CA changed or it is two thirds into its life. */
  private async enrol(h: HostRef, pkiDir: string, ctx: DriverContext, again = false): Promise<void> {
    const crt = path.join(pkiDir, `${h.name}.crt`);
    const caFile = path.join(pkiDir, 'ca.crt');
    if (!again && fs.existsSync(crt) && fs.existsSync(caFile) && fs.readFileSync(caFile, 'utf8').trim() === ctx.vaultCa.trim()) {
      const cert = new crypto.X509Certificate(fs.readFileSync(crt));
      const ca = new crypto.X509Certificate(ctx.vaultCa);
      if (!renewalDue(readCertificateInfo(cert.toString()), ctx.clock.now()) && cert.checkIssued(ca) && cert.verify(ca.publicKey)) return;
    }
    const pair = await generateKeyPairPem();
    // a host that holds a certificate from the vault's CA proves it with that key (the vault renews only for the holder)
    let proof: EnrolmentProof | undefined;
    try {
      const certPem = fs.readFileSync(crt, 'utf8');
      const current = new crypto.X509Certificate(certPem);
      const ca = new crypto.X509Certificate(ctx.vaultCa);
      if (current.checkIssued(ca) && current.verify(ca.publicKey)) proof = signEnrolmentProof({ certPem, keyPem: fs.readFileSync(path.join(pkiDir, `${h.name}.key`), 'utf8') }, h.name, pair.publicKeyPem);
    } catch {
      // none yet, or not the vault's: the first enrolment needs no proof
    }
    const r = await ctx.enrolAgent(h.name, pair.publicKeyPem, proof);
    await writeFileAtomic(path.join(pkiDir, `${h.name}.key`), pair.privateKeyPem, 0o600);
    await writeFileAtomic(crt, r.certificate, 0o644);
    await writeFileAtomic(caFile, r.caCertificate, 0o644);
    await fsyncDir(pkiDir);
    ctx.log.info({ host: h.name, notAfter: r.notAfter }, `host ${h.name} enrolled: certificate from the vault's CA`);
  }

  /**
   * The vault's revocation list, for the agents: written beside their certificates (each
   * agent reloads it). A host of this lab whose own certificate is on it, or is two thirds
   * into its life, enrols again first (fetched every minute: certificates are renewed without a restart).
   */
  async revocationList(pem: string): Promise<void> {
    const ctx = this.ctx;
    if (!ctx) return;
    const pkiDir = path.join(this.dir, 'pki');
    const { serials } = await readCrl(pem, ctx.vaultCa);
    for (const h of this.hosts.values()) {
      const crt = path.join(pkiDir, `${h.name}.crt`);
      if (!fs.existsSync(crt)) continue;
      const cert = new crypto.X509Certificate(fs.readFileSync(crt));
      const revoked = serials.includes(cert.serialNumber.toLowerCase());
      // a certificate two thirds into its life is renewed the same way: the agent reloads it
      const ending = renewalDue(readCertificateInfo(cert.toString()), ctx.clock.now());
      if (revoked || ending) {
        ctx.log.warn({ host: h.name, notAfter: cert.validTo }, revoked ? `the certificate of host ${h.name} was revoked; enrolling it again` : `the certificate of host ${h.name} ends soon; enrolling it again`);
        await this.enrol(h, pkiDir, ctx, true);
      }
    }
    const file = path.join(pkiDir, 'crl.pem');
    const current = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : undefined;
    if (current !== pem) await writeFileAtomic(file, pem, 0o644);
  }

  private async writeAgentsFile(): Promise<void> {
    const info: LabAgentInfo[] = [...this.agents.entries()].map(([id, a]) => ({ host: a.name, hostId: id, fabric: this.site.name, api: a.apiUrl, pid: a.child.pid!, replicationPort: a.replicationPort, nbdSocket: a.nbdSocket }));
    await writeFileAtomic(path.join(this.dir, 'agents.json'), `${JSON.stringify(info, null, 2)}\n`, 0o644);
  }

  async stop(): Promise<void> {
    await Promise.all([...this.workloads.values()].map((w) => w.stop().catch(() => undefined)));
    this.workloads.clear();
    await Promise.all([...this.agents.values()].map((a) => stopAgentProcess(a, 'SIGTERM')));
    this.agents.clear();
    fs.rmSync(path.join(this.dir, 'agents.json'), { force: true });
    await this.saving.catch(() => undefined);
  }

  private agent(hostId: string): RunningAgent {
    const a = this.agents.get(hostId);
    if (!a) throw new OsrError('NOT_FOUND', `host ${hostId} is not a running host of fabric ${this.site.name}`, { hosts: [...this.agents.keys()] });
    return a;
  }

  /**
   * Where a VM or replica is, whichever record holds it: a topology VM runs as a VM unless
   * it was demoted (its disks are a replica then); a replica record holds a replica unless
   * its point was promoted (it runs as a VM then).
   */
  private locate(id: string): Located {
    const v = this.vms.get(id);
    if (v) return { id, name: v.name, hostId: slug(v.host), isVm: !this.state.demoted[id], spec: v };
    const r = this.state.replicas[id];
    if (r) return { id, name: r.name, hostId: r.hostId, isVm: !!this.state.promoted[id], replica: r };
    throw new OsrError('VM_NOT_FOUND', `fabric ${this.site.name} has no VM ${id}`, { vms: [...this.vms.keys(), ...Object.keys(this.state.replicas)] });
  }

  /** A VM that runs here (not a replica). */
  private vm(vmId: string): Located {
    return asVm(this.locate(vmId));
  }
  /** The subnet the VM's NIC is on at the source, by name: its NIC here goes on the subnet of that name. */
  private sourceSubnet(l: Located, nicId: string): string | null {
    if (l.replica) return l.replica.nicSubnets?.[nicId] ?? null;
    const i = /^nic(\d+)$/.exec(nicId);
    return (i && l.spec?.nics[Number(i[1])]?.subnet) ?? null;
  }

  /** A replica held here (not a running VM). */
  private replicaOf(id: string): Located {
    return asReplica(this.locate(id));
  }
  /** Create a topology VM on its host the first time, connect its NICs, and power it as wanted. */
  private async ensureVm(v: LabVmSpec & { id: string }): Promise<void> {
    if (this.state.demoted[v.id]) return; // its disks are a replica now
    const a = this.agent(slug(v.host)).api;
    const present = await a.get<{ name: string }[]>('/v1/vms');
    if (!present.some((x) => x.name === v.name)) await a.post('/v1/vms', { name: v.name, disks: v.disks.map((d) => d.size) });
    for (const [i, n] of v.nics.entries()) {
      if (!this.state.nics[`${v.id}/nic${i}`]) this.allocate(v.id, `nic${i}`, n.network ? slug(n.network) : null, n.subnet ?? null);
    }
    const want = this.state.power[v.id] ?? (v.running === false ? 'Off' : 'Running');
    await this.setPower(v.id, want === 'Running' ? 'start' : 'stop');
  }

  // ---- inventory

  async inventory(): Promise<InventoryDocument> {
    const s = this.site;
    let freeBytes: number | undefined;
    try {
      const st = fs.statfsSync(this.dir);
      freeBytes = Number(st.bavail) * Number(st.bsize);
    } catch {
      freeBytes = undefined;
    }
    const doc: InventoryDocument = {
      clouds: s.clouds.map((c) => ({ id: slug(c.name), name: c.name, hostGroups: c.hostGroups.map((hg) => slug(`${c.name}-${hg.name}`)) })),
      hostGroups: s.clouds.flatMap((c) => c.hostGroups.map((hg) => ({ id: slug(`${c.name}-${hg.name}`), name: hg.name, hosts: hg.hosts.map((h) => slug(h.name)) }))),
      // a lab host's agent listens on loopback: its certificate names 127.0.0.1
      hosts: [...this.hosts.values()].map((h) => ({ id: h.id, name: h.name, osVersion: h.osVersion, logicalNetworks: h.logicalNetworks, storageLocations: h.storageLocations, addresses: ['127.0.0.1'], ...(this.state.hosts[h.id] ? { agent: { address: '127.0.0.1', replicationPort: this.state.hosts[h.id]!.replicationPort } } : {}) })),
      logicalNetworks: s.logicalNetworks.map((n) => ({ id: slug(n), name: n })),
      vmNetworks: s.vmNetworks.map((n) => ({ id: slug(n.name), name: n.name, logicalNetwork: slug(n.logicalNetwork), subnets: n.subnets.map((x) => ({ name: x.name, cidr: x.cidr })) })),
      ipPools: s.vmNetworks.flatMap((n) => n.subnets.filter((x) => x.pool).map((x) => ({ id: slug(`${n.name}-${x.name}-pool`), name: `${n.name} ${x.name} pool`, vmNetwork: slug(n.name), subnet: x.name, start: x.pool!.start, end: x.pool!.end }))),
      storageClassifications: s.storage.classifications.map((c) => ({ id: slug(c), name: c })),
      storageLocations: s.storage.locations.map((l) => ({ id: slug(l.name), name: l.name, classification: slug(l.classification), kind: l.kind, path: path.join(this.dir, 'storage', slug(l.name)), ...(freeBytes !== undefined ? { freeBytes } : {}) })),
      vms: [],
    };
    const running = await this.hostVms();
    for (const v of this.vms.values()) {
      const host = this.hosts.get(slug(v.host))!;
      const demoted = this.state.demoted[v.id];
      doc.vms.push({
        id: v.id,
        name: v.name,
        cloud: host.cloudId,
        host: host.id,
        powerState: !demoted && running.get(`${host.id}/${v.name}`)?.running ? 'Running' : 'Off',
        disks: v.disks.map((d, i) => ({ id: `disk${i}`, name: d.name, sizeBytes: parseSize(d.size), ...(d.storage ? { storageLocation: slug(d.storage) } : {}) })),
        nics: v.nics.map((_n, i) => this.nicView(v.id, `nic${i}`)),
        // a demoted VM whose replica was removed (itemId emptied) is the replica of nothing
        ...(demoted?.itemId ? { replicaOf: demoted.itemId } : {}),
        ...(running.has(`${host.id}/${v.name}`) ? { replicationId: running.get(`${host.id}/${v.name}`)!.id } : {}),
      });
    }
    const temporary = Object.values(this.state.temporaryNetworks);
    if (temporary.length > 0) {
      doc.logicalNetworks.push({ id: ISOLATED_LOGICAL, name: 'osr isolated (drills)' });
      for (const n of temporary) {
        doc.vmNetworks.push({ id: n.id, name: n.name, logicalNetwork: ISOLATED_LOGICAL, subnets: [{ name: 'Subnet1', cidr: n.cidr }] });
        doc.ipPools.push({ id: `${n.id}-pool`, name: `${n.name} pool`, vmNetwork: n.id, subnet: 'Subnet1', start: n.pool.start, end: n.pool.end });
      }
    }
    for (const t of Object.values(this.state.testVms)) {
      const host = this.hosts.get(t.hostId);
      const replica = Object.values(this.state.replicas).find((r) => r.itemId === t.itemId);
      if (!host) continue;
      doc.vms.push({ id: t.id, name: `${t.replicaName}-test`, cloud: host.cloudId, host: host.id, powerState: 'Running', disks: replica?.disks ?? [], nics: t.nicIds.map((n) => this.nicView(t.id, n)), testFailoverOf: t.itemId });
    }
    for (const r of Object.values(this.state.replicas)) {
      const host = this.hosts.get(r.hostId);
      if (!host) continue;
      doc.vms.push({
        id: r.id,
        name: r.name,
        cloud: host.cloudId,
        host: host.id,
        powerState: this.state.promoted[r.id] && running.get(`${host.id}/${r.name}`)?.running ? 'Running' : 'Off',
        disks: r.disks,
        nics: r.nicIds.map((n) => this.nicView(r.id, n)),
        replicaOf: r.protecting && !this.state.promoted[r.id] ? r.itemId : undefined,
      });
    }
    return doc;
  }

  private nicView(vmId: string, nicId: string): { id: string; vmNetwork?: string; subnet?: string; ip?: string } {
    const n = this.state.nics[`${vmId}/${nicId}`];
    return { id: nicId, ...(n?.vmNetwork ? { vmNetwork: n.vmNetwork } : {}), ...(n?.vmNetwork && n.subnet ? { subnet: n.subnet } : {}), ...(n?.ip ? { ip: n.ip } : {}) };
  }

  /** The VMs the hosts have now, by "host/VM name": the agent's id of each, and whether it runs (one call per host). */
  private async hostVms(): Promise<Map<string, { id: string; running: boolean }>> {
    const out = new Map<string, { id: string; running: boolean }>();
    for (const [hostId, a] of this.agents) {
      try {
        for (const v of await a.api.get<{ id: string; name: string; running: boolean }[]>('/v1/vms')) out.set(`${hostId}/${v.name}`, { id: v.id, running: v.running });
      } catch {
        // a host that does not answer runs nothing the vault should count on
      }
    }
    return out;
  }

  // ---- power

  async setPower(vmId: string, action: PowerAction): Promise<{ powerState: string }> {
    const v = this.vm(vmId);
    const a = this.agent(v.hostId);
    const w = this.workloads.get(vmId);
    if (action === 'start') {
      const fence = this.state.fenced[vmId];
      if (fence) throw new OsrError('EPOCH_STALE', `${v.name} was failed over to the other site (epoch ${fence.epoch}); it cannot start here until it is reprotected`, { epoch: fence.epoch });
      await a.api.post(`/v1/vms/${v.name}/start`);
      const workload = v.spec?.workload;
      if (!w && v.spec && workload !== false) {
        const disks = await a.api.get<{ nbd: { unix: string } }[]>(`/v1/vms/${v.name}/disks`);
        this.workloads.set(vmId, new Workload(disks.map((d) => d.nbd.unix), (workload || {}).bytesPerSecond ?? DEFAULT_WORKLOAD_BYTES_PER_SECOND));
      }
    } else {
      await this.stopGuest(vmId, action === 'shutdown');
      await a.api.post(`/v1/vms/${v.name}/stop`);
    }
    await this.wantPower(vmId, action === 'start' ? 'Running' : 'Off');
    return { powerState: action === 'start' ? 'Running' : 'Off' };
  }

  /** Shut down: the guest stops writing and flushes first; otherwise it is cut short. */
  private async stopGuest(vmId: string, graceful: boolean): Promise<void> {
    const w = this.workloads.get(vmId);
    if (!w) return;
    this.workloads.delete(vmId);
    if (graceful) await w.stop();
    else void w.stop().catch(() => undefined);
  }

  private async wantPower(vmId: string, powerState: 'Running' | 'Off'): Promise<void> {
    if (this.state.power[vmId] === powerState) return;
    this.state.power[vmId] = powerState;
    await this.save();
    this.changed();
  }

  // ---- networks

  /**
   * A NIC on a VM network: on the subnet of the same name as the source NIC's (wanted), else
   * the network's first, with an address from that subnet's static pool not leased to
   * another NIC (none when the subnet has no pool).
   */
  private allocate(vmId: string, nicId: string, vmNetwork: string | null, wanted: string | null = null): NicLease {
    const key = `${vmId}/${nicId}`;
    delete this.state.nics[key];
    let ip: string | null = null;
    let subnetName: string | null = null;
    if (vmNetwork) {
      const temporary = this.state.temporaryNetworks[vmNetwork];
      const net = temporary ? { name: temporary.name, subnets: [{ name: 'Subnet1', cidr: temporary.cidr, pool: temporary.pool }] } : this.site.vmNetworks.find((n) => slug(n.name) === vmNetwork);
      if (!net) throw new OsrError('NOT_FOUND', `fabric ${this.site.name} has no VM network ${vmNetwork}`);
      const subnet = net.subnets.find((x) => x.name === wanted) ?? net.subnets[0];
      subnetName = subnet?.name ?? null;
      if (subnet?.pool) {
        const used = new Set(Object.values(this.state.nics).filter((n) => n.vmNetwork === vmNetwork && n.ip).map((n) => n.ip));
        for (let a = ipToInt(subnet.pool.start); a <= ipToInt(subnet.pool.end); a++) {
          if (!used.has(intToIp(a))) {
            ip = intToIp(a);
            break;
          }
        }
        if (ip === null) throw new OsrError('INVALID_STATE', `the static IP pool of ${net.name} ${subnet.name} (${subnet.pool.start}–${subnet.pool.end}) has no free address; widen it or free addresses`);
      }
    }
    this.state.nics[key] = { vmNetwork, subnet: subnetName, ip };
    return this.state.nics[key]!;
  }

  async connectNic(vmId: string, nicId: string, vmNetwork: string | null): Promise<{ ip: string | null }> {
    if (!this.vms.has(vmId) && !this.state.replicas[vmId]) throw new OsrError('VM_NOT_FOUND', `fabric ${this.site.name} has no VM ${vmId}`);
    const current = this.state.nics[`${vmId}/${nicId}`];
    if (current && current.vmNetwork === vmNetwork) return { ip: current.ip };
    const n = this.lease(vmId, nicId, vmNetwork, this.sourceSubnet(this.locate(vmId), nicId));
    await this.save();
    this.changed();
    return { ip: n.ip };
  }

  // ---- recovery site

  async ensureReplicaVm(spec: ReplicaVmSpec): Promise<ReplicaVm> {
    const existing = Object.values(this.state.replicas).find((r) => r.itemId === spec.itemId || (r.name === spec.source.name && !r.protecting));
    if (existing) {
      // a replica kept when protection was disabled is taken up again; one this protection
      // made already (the command run a second time) is simply answered again
      const reused = !existing.protecting;
      existing.protecting = true;
      existing.itemId = spec.itemId;
      for (const nic of spec.source.nics) if (!existing.nicIds.includes(nic.id)) existing.nicIds.push(nic.id);
      existing.nicSubnets = { ...existing.nicSubnets, ...sourceSubnets(spec) };
      for (const nic of existing.nicIds) this.lease(existing.id, nic, spec.networks[nic] ?? null, existing.nicSubnets[nic] ?? null);
      await this.claimReplica(existing.hostId, spec);
      await this.save();
      this.changed();
      return this.replicaView(existing, reused);
    }
    const host = this.hosts.get(spec.hostId);
    if (!host) throw new OsrError('NOT_FOUND', `fabric ${this.site.name} has no host ${spec.hostId} to place the replica of ${spec.source.name} on`);
    let id = `${slug(spec.source.name)}-replica`;
    for (let i = 2; this.vms.has(id) || this.state.replicas[id]; i++) id = `${slug(spec.source.name)}-replica${i}`;
    const r: ReplicaRecord = {
      id,
      itemId: spec.itemId,
      name: spec.source.name,
      hostId: host.id,
      disks: spec.source.disks.map((d) => ({ id: d.id, name: d.name, sizeBytes: d.sizeBytes, ...(spec.storage[d.id] ? { storageLocation: spec.storage[d.id] } : {}) })),
      nicIds: spec.source.nics.map((n) => n.id),
      nicSubnets: sourceSubnets(spec),
      protecting: true,
      createdAt: new Date().toISOString(),
    };
    await this.claimReplica(host.id, spec);
    this.state.replicas[id] = r;
    for (const nic of r.nicIds) this.allocate(id, nic, spec.networks[nic] ?? null, r.nicSubnets?.[nic] ?? null);
    await this.save();
    this.changed();
    this.ctx?.log.info({ replica: id, host: host.name }, `replica VM ${id} created on ${host.name}`);
    return this.replicaView(r, false);
  }
  /** The vault's word, before the first copy: only the source host's agent may replicate the VM into this host. */
  private async claimReplica(hostId: string, spec: ReplicaVmSpec): Promise<void> {
    const { replicationId, agent, grant } = spec.source;
    if (replicationId !== undefined && agent !== undefined) await claimReplicaSource(this.agent(hostId).api, replicationId, agent, grant);
  }
  /** A NIC on a network: its lease kept when it is there already, a new one otherwise (saved by the caller). */
  private lease(vmId: string, nicId: string, vmNetwork: string | null, subnet: string | null): NicLease {
    const current = this.state.nics[`${vmId}/${nicId}`];
    return current && current.vmNetwork === vmNetwork ? current : this.allocate(vmId, nicId, vmNetwork, subnet);
  }

  /** The NICs of a VM as the port answers them: network and address. */
  private nicsOf(vmId: string, nicIds: string[]): { id: string; vmNetwork: string | null; ip: string | null }[] {
    return nicIds.map((n) => ({ id: n, vmNetwork: this.state.nics[`${vmId}/${n}`]?.vmNetwork ?? null, ip: this.state.nics[`${vmId}/${n}`]?.ip ?? null }));
  }

  /** Where primaries reach a host's agent: its kept replication port. */
  private agentAddress(hostId: string): { address: string; port: number; name: string } {
    return { address: '127.0.0.1', port: this.state.hosts[hostId]?.replicationPort ?? this.agent(hostId).replicationPort!, name: this.hosts.get(hostId)?.name ?? hostId };
  }

  private replicaView(r: ReplicaRecord, reused: boolean): ReplicaVm {
    return {
      replicaVmId: r.id,
      hostId: r.hostId,
      agent: this.agentAddress(r.hostId),
      nics: this.nicsOf(r.id, r.nicIds),
      reused,
    };
  }

  async removeReplicaVm(replicaVmId: string, o: { deleteData: boolean }): Promise<void> {
    const demoted = this.state.demoted[replicaVmId];
    if (demoted) {
      // a reprotected item's replica is the old primary's own disks
      if (o.deleteData) await this.deleteReplica(slug(this.vms.get(replicaVmId)!.host), this.vms.get(replicaVmId)!.name);
      demoted.itemId = '';
      await this.save();
      this.changed();
      return;
    }
    const r = this.state.replicas[replicaVmId];
    if (!r) return; // already gone
    if (!o.deleteData) {
      r.protecting = false;
    } else {
      await this.deleteReplica(r.hostId, r.name);
      delete this.state.replicas[replicaVmId];
      for (const key of Object.keys(this.state.nics)) if (key.startsWith(`${replicaVmId}/`)) delete this.state.nics[key];
    }
    await this.save();
    this.changed();
  }

  private async deleteReplica(hostId: string, name: string): Promise<void> {
    await deleteReplicaData(this.agent(hostId).api, name);
  }

  // ---- test failover

  async startTestVm(spec: TestVmSpec): Promise<TestVm> {
    const running = Object.values(this.state.testVms).find((t) => t.itemId === spec.itemId);
    if (running) return this.testVmView(running);
    const r = this.replicaOf(spec.replicaVmId);
    const id = `${r.id.replace(/-replica\d*$/, '')}-test`;
    const overlay = await openTestOverlay(this.agent(r.hostId).api, r.name, spec.pointId, spec.latest);
    let temporaryNetwork: string | null = null;
    if (spec.network.mode === 'temporary') {
      temporaryNetwork = this.isolatedNetwork(`osr-test-${slug(r.name)}`, `osr-test-${r.name}`);
    } else if (spec.network.mode === 'existing' && this.state.temporaryNetworks[spec.network.vmNetwork]) {
      // a drill's network made by createTestNetwork
    } else if (spec.network.mode === 'existing' && !this.site.vmNetworks.some((n) => slug(n.name) === (spec.network as { vmNetwork: string }).vmNetwork)) {
      throw new OsrError('NOT_FOUND', `fabric ${this.site.name} has no VM network ${spec.network.vmNetwork}`);
    }
    const network = spec.network.mode === 'temporary' ? temporaryNetwork : spec.network.mode === 'existing' ? spec.network.vmNetwork : null;
    const t: TestVmRecord = { id, itemId: spec.itemId, replicaName: r.name, hostId: r.hostId, overlayId: overlay.id, pointId: overlay.point.id, ...(overlay.point.id !== spec.pointId ? { point: overlay.point } : {}), nicIds: this.nicIdsOf(r), temporaryNetwork, disks: overlay.disks, startedAt: new Date().toISOString() };
    for (const nic of t.nicIds) this.allocate(id, nic, network, this.sourceSubnet(r, nic));
    this.state.testVms[id] = t;
    await this.save();
    this.changed();
    this.ctx?.log.info({ testVm: id, point: t.pointId, network }, `test VM ${id} runs point ${t.pointId} of ${r.name}`);
    return this.testVmView(t);
  }

  /** An isolated VM network (on a logical network no host reaches) with a /24 of its own; kept when it exists. */
  private isolatedNetwork(id: string, name: string): string {
    if (this.state.temporaryNetworks[id]) return id;
    const used = new Set(Object.values(this.state.temporaryNetworks).map((n) => n.cidr));
    let third = 1;
    while (used.has(`172.31.${third}.0/24`)) third++;
    if (third > 254) throw new OsrError('INVALID_STATE', `fabric ${this.site.name} has no free 172.31.x.0/24 for another drill network; clean up test failovers`);
    this.state.temporaryNetworks[id] = { id, name, cidr: `172.31.${third}.0/24`, pool: { start: `172.31.${third}.10`, end: `172.31.${third}.250` } };
    return id;
  }

  async createTestNetwork(name: string): Promise<{ vmNetwork: string }> {
    const id = this.isolatedNetwork(`osr-drill-${slug(name)}`, `osr-drill-${name}`);
    await this.save();
    this.changed();
    return { vmNetwork: id };
  }

  async removeTestNetwork(vmNetwork: string): Promise<void> {
    if (!this.state.temporaryNetworks[vmNetwork]) return; // gone already
    const on = Object.entries(this.state.nics).filter(([, n]) => n.vmNetwork === vmNetwork).map(([k]) => k.split('/')[0]);
    if (on.length > 0) throw new OsrError('INVALID_STATE', `drill network ${vmNetwork} still has test VMs on it (${[...new Set(on)].join(', ')}); clean them up first`);
    delete this.state.temporaryNetworks[vmNetwork];
    await this.save();
    this.changed();
  }

  private testVmView(t: TestVmRecord): TestVm {
    return { testVmId: t.id, hostId: t.hostId, temporaryNetwork: t.temporaryNetwork, nics: this.nicsOf(t.id, t.nicIds), disks: t.disks, startedAt: t.startedAt, ...(t.point ? { point: t.point } : {}) };
  }

  async removeTestVm(testVmId: string): Promise<void> {
    const t = this.state.testVms[testVmId];
    if (!t) return; // already gone
    await removeTestOverlay(this.agent(t.hostId).api, t.replicaName, t.overlayId);
    for (const key of Object.keys(this.state.nics)) if (key.startsWith(`${testVmId}/`)) delete this.state.nics[key];
    if (t.temporaryNetwork) delete this.state.temporaryNetworks[t.temporaryNetwork];
    delete this.state.testVms[testVmId];
    await this.save();
    this.changed();
  }

  private nicIdsOf(l: Located): string[] {
    return l.replica ? l.replica.nicIds : (l.spec?.nics ?? []).map((_n, i) => `nic${i}`);
  }
}

/**
 * Agents a provider left running when it was killed: found by agents.json and checked by
 * their command line (the same data directory), then stopped, so the new ones can listen.
 */
export async function stopStrayAgents(dir: string): Promise<number> {
  let old: LabAgentInfo[];
  try {
    old = JSON.parse(fs.readFileSync(path.join(dir, 'agents.json'), 'utf8')) as LabAgentInfo[];
  } catch {
    return 0;
  }
  let stopped = 0;
  for (const a of old) {
    let cmdline = '';
    try {
      cmdline = fs.readFileSync(`/proc/${a.pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (!cmdline.includes(path.join(dir, 'hosts', a.host))) continue;
    process.kill(a.pid, 'SIGTERM');
    for (let i = 0; i < 600 && fs.existsSync(`/proc/${a.pid}`); i++) await new Promise((r) => setTimeout(r, 100));
    stopped++;
  }
  fs.rmSync(path.join(dir, 'agents.json'), { force: true });
  return stopped;
}
