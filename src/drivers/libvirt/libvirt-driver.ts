/**
 * The libvirt fabric: KVM hosts whose libvirtd each host's `osr agent --host libvirt`
 * drives (docs/design/libvirt.md). This is its management part (FabricManagement); the
 * data path is the agent-backed replication every fabric of osr agents shares
 * (../agent-replication.ts), which asks this part where each VM is.
 *
 * - Hosts are the site file's; the provider reaches each one's agent through the AgentApi
 *   the CLI made for it, checks it answers, and enrols it with the vault's CA through it.
 * - The inventory is each host's libvirt inventory (its agent's selected domains, networks,
 *   pools) mapped through the site file: libvirt networks are VM networks, pools storage.
 *   A VM's id is its domain's UUID; its NICs are nic0, nic1… in the order of its machine's.
 * - A replica VM is a record here (host, disks, NICs with addresses from the pools, the
 *   source's machine); its data is the replica store at the host's agent.
 * - A test failover opens the point as an overlay at the replica's agent and boots a
 *   test domain from its NBD disks on an isolated libvirt network made for the drill.
 *
 * What must survive a restart is in DIR/libvirt-state.json (state.ts).
 */
import { OsrError, toOsrError } from '../../domain/errors.js';
import type { MachineSpec } from '../../domain/machine.js';
import type { InventoryDocument } from '../../domain/resources.js';
import { DRILL_CONSOLE_BYTES, type DrillEvidence } from '../../domain/runs.js';
import type { DriverContext, FabricCapabilities, FabricDriver, FabricManagement, PowerAction, ReplicaVm, ReplicaVmSpec, TestVm, TestVmSpec } from '../../fabric/driver.js';
import { readCrl } from '../../pki/index.js';
import { AGENT_REPLICATION_CAPABILITIES, AgentReplication, asReplica, asVm, claimReplicaSource, deleteReplicaData, openTestOverlay, removeTestOverlay, type AgentApi, type AgentSite, type Held, type SiteChange } from '../agent-replication.js';
import type { AgentTrust } from '../agent-enrolment.js';
import { agentCertificateSerial, enrolAgent, handRevocationList, hostInventory, removeDrillNetwork, removeTestDomain, startTestDomain, testDomainEvidence, type AgentHostInventory } from './host-api.js';

export { testDomainName } from './inventory-map.js';
import { mapInventory, siteDomains, type DomainRef } from './inventory-map.js';
import { intToIp, ipToInt, type LibvirtHostConfig, type LibvirtSiteConfig } from './site.js';
import { loadState, StateWriter, type LibvirtState, type NicLease, type ReplicaRecord, type TestVmRecord } from './state.js';

/**
 * What the libvirt fabric does: what replication through osr agents does, test failovers
 * on NBD overlays, changed-block tracking from QEMU's dirty bitmaps — and no raw disks
 * (they cannot carry a bitmap: their VMs are refused before a job starts). Tracking by
 * checkpoints, it is not a source of continuous replication (its shortest cycle is 30 s);
 * its replicas are the agents' stores, so it is a target of one.
 */
export const LIBVIRT_CAPABILITIES: FabricCapabilities = { ...AGENT_REPLICATION_CAPABILITIES, continuousReplication: ['target'], consistencyGroups: ['target'], testFailover: true, rawDisks: false, changedBlockTracking: true, nbdExport: true };


export interface LibvirtDriverOptions {
  /**
   * the API of a host's agent (the CLI: the local API's client, or the provider channel's,
   * which takes what the driver knows of the host's trust)
   */
  connect(host: LibvirtHostConfig, trust: AgentTrust): AgentApi;
  /** how long a clean shutdown may take before the domain is stopped (default 5 min) */
  shutdownTimeout?: string | undefined;
}

export type { AgentTrust };

export class LibvirtFabricDriver implements FabricDriver {
  readonly kind = 'libvirt';
  readonly capabilities = LIBVIRT_CAPABILITIES;
  readonly management: LibvirtFabric;
  readonly replication: AgentReplication;

  constructor(site: LibvirtSiteConfig, o: LibvirtDriverOptions) {
    this.management = new LibvirtFabric(site, o);
    this.replication = new AgentReplication(this.management.agentSite);
  }
}

interface Located extends Held {
  replica?: ReplicaRecord;
  domain?: DomainRef;
}

export class LibvirtFabric implements FabricManagement {
  readonly agentSite: AgentSite;
  private state: LibvirtState;
  private readonly writer: StateWriter;
  private readonly hosts = new Map<string, LibvirtHostConfig>();
  private readonly apis = new Map<string, AgentApi>();
  /** hosts whose agent answered and is enrolled */
  private readonly up = new Set<string>();
  /** the serials the vault's revocation list names, as last handed to the provider */
  private revokedSerials: ReadonlySet<string> = new Set();
  /** each host's libvirt inventory, as last read */
  private readonly hostInventories = new Map<string, AgentHostInventory>();
  /** the site's domains by id (UUID), as last read */
  private domains = new Map<string, DomainRef>();
  /** the VMs each host's agent runs, by "host/name" (a promoted replica's among them), as last read */
  private agentVms = new Map<string, boolean>();
  private ctx: DriverContext | undefined;
  /** a host is being enrolled: the provider reads the inventory meanwhile, which must not enrol again */
  private enrolling = false;

  constructor(
    readonly site: LibvirtSiteConfig,
    private readonly o: LibvirtDriverOptions,
  ) {
    this.state = loadState(site.dir);
    this.revokedSerials = new Set(this.state.revoked);
    this.writer = new StateWriter(site.dir);
    for (const h of site.hosts) this.hosts.set(h.name, h);
    this.agentSite = {
      name: site.name,
      locate: (id) => this.locate(id),
      agent: (hostId) => this.agent(hostId),
      agentEndpoint: (hostId) => this.endpoint(hostId),
      nics: (id) => this.nicsOf(id, this.nicIdsOf(this.locate(id))),
      replicationPeer: (vmId) => this.state.replications[vmId],
      fencedEpoch: (vmId) => this.state.fenced[vmId]?.epoch ?? 0,
      // a libvirt guest writes through QEMU: the agent stops the domain itself
      stoppingVm: async () => undefined,
      machineOf: (id) => this.machineOf(id),
      changed: (c) => this.record(c),
      log: { warn: (o, msg) => this.ctx?.log.warn(o, msg) },
    };
  }

  private save(): Promise<void> {
    return this.writer.save(this.state);
  }

  private changed(): void {
    this.ctx?.inventoryChanged();
  }

  // ---- hosts

  async start(ctx: DriverContext): Promise<void> {
    this.ctx = ctx;
    for (const h of this.hosts.values()) await this.bringUp(h);
    if (this.up.size === 0) throw new OsrError('NETWORK_ERROR', `no host of fabric ${this.site.name} answers: start osr agent --host libvirt on them (${[...this.hosts.keys()].join(', ')}) and check the site file's agent addresses`);
    await this.refresh();
  }

  private trustOf(h: LibvirtHostConfig): AgentTrust {
    const fingerprint = h.agentFingerprint?.toUpperCase() ?? null;
    return {
      revoked: () => this.revokedSerials,
      bootstrapSpent: () => this.state.enrolled[h.name] !== undefined && this.state.enrolled[h.name]!.agentFingerprint === fingerprint,
      enrolledSeen: () => {
        if (this.state.enrolled[h.name]?.agentFingerprint === fingerprint) return;
        this.state.enrolled[h.name] = { agentFingerprint: fingerprint, at: new Date().toISOString() };
        // saved in the background: at worst a crash forgets it, and the bootstrap certificate, whose key the agent deleted, is looked at again
        this.writer.save(this.state).catch((e: unknown) => this.ctx?.log.warn({ host: h.name, err: toOsrError(e).message }, `that host ${h.name} is enrolled was not saved`));
      },
    };
  }

  /** Reach a host's agent, check it is the host's, and enrol it (a host that does not answer is tried again at the next inventory). */
  private async bringUp(h: LibvirtHostConfig): Promise<boolean> {
    const ctx = this.ctx;
    if (!ctx) return false;
    const api = this.apis.get(h.name) ?? this.o.connect(h, this.trustOf(h));
    this.apis.set(h.name, api);
    try {
      const status = await api.get<{ name: string }>('/v1/status');
      if (status.name !== h.name) throw new OsrError('CONFIG_INVALID', `the agent at ${h.agent} is ${status.name}, not host ${h.name}: start it with --name ${h.name} or correct the site file`, { host: h.name, agent: status.name });
      this.enrolling = true;
      try {
        await enrolAgent(api, h.name, ctx);
      } finally {
        this.enrolling = false;
      }
      this.up.add(h.name);
      ctx.log.info({ host: h.name, agent: h.agent }, `host ${h.name} is up`);
      return true;
    } catch (e) {
      const err = toOsrError(e);
      if (err.code === 'CONFIG_INVALID') throw err;
      this.up.delete(h.name);
      ctx.log.warn({ host: h.name, code: err.code, err: err.message }, err.code === 'HOST_NOT_APPROVED' ? `host ${h.name} waits for an Owner's approval (osr host approve); it is tried again at the next inventory` : `host ${h.name} is not up (${err.code}: ${err.message}); it is tried again at the next inventory`);
      return false;
    }
  }

  async stop(): Promise<void> {
    this.up.clear();
    await this.writer.settled();
  }

  /**
   * The vault's revocation list, for the agents: a host whose own certificate it names, or
   * that is due for renewal, is enrolled again first; then each agent gets the list. An
   * agent reached over the provider channel whose certificate the list names is refused by
   * its client (agent-client.ts) and is not enrolled again: it is enrolled anew on its host.
   */
  async revocationList(pem: string): Promise<void> {
    const ctx = this.ctx;
    if (!ctx) return;
    const { serials } = await readCrl(pem, ctx.vaultCa);
    this.revokedSerials = new Set(serials);
    if (serials.length !== this.state.revoked.length || serials.some((s) => !this.state.revoked.includes(s))) {
      this.state.revoked = [...serials];
      await this.writer.save(this.state);
    }
    for (const name of this.up) {
      const api = this.agent(name);
      // a renewal that fails (a host waiting for admission, an agent that gives no proof) must
      // not keep the list from the agent: it would refuse the provider once its list expired
      try {
        const serial = await agentCertificateSerial(api);
        const revoked = serial !== null && serials.includes(serial);
        if (revoked) ctx.log.warn({ host: name }, `the certificate of host ${name} was revoked; enrolling it again`);
        this.enrolling = true;
        try {
          await enrolAgent(api, name, ctx, revoked);
        } finally {
          this.enrolling = false;
        }
      } catch (e) {
        const err = toOsrError(e);
        ctx.log.warn({ host: name, code: err.code, err: err.message }, `host ${name} was not enrolled again now: ${err.message}`);
      }
      try {
        await handRevocationList(api, pem);
      } catch (e) {
        ctx.log.warn({ host: name, err: toOsrError(e).message }, `host ${name} did not take the revocation list now`);
      }
    }
  }

  private agent(hostId: string): AgentApi {
    const api = this.apis.get(hostId);
    if (!api || !this.up.has(hostId)) throw new OsrError('NOT_FOUND', `host ${hostId} is not a running host of fabric ${this.site.name}`, { hosts: [...this.up] });
    return api;
  }

  private host(hostId: string): LibvirtHostConfig {
    const h = this.hosts.get(hostId);
    if (!h) throw new OsrError('NOT_FOUND', `fabric ${this.site.name} has no host ${hostId}`, { hosts: [...this.hosts.keys()] });
    return h;
  }

  /** Where primaries reach a host's agent for replication. */
  private endpoint(hostId: string): { address: string; port: number; name: string } {
    const h = this.host(hostId);
    return { address: h.addresses[0]!, port: h.replicationPort, name: h.name };
  }

  /** Read every host's libvirt inventory (hosts that were down are brought up first). */
  private async refresh(): Promise<void> {
    const domains = new Map<string, DomainRef>();
    for (const h of this.hosts.values()) {
      if (this.up.has(h.name) || (!this.enrolling && (await this.bringUp(h)))) {
        try {
          this.hostInventories.set(h.name, await hostInventory(this.agent(h.name)));
          for (const key of [...this.agentVms.keys()]) if (key.startsWith(`${h.name}/`)) this.agentVms.delete(key);
          for (const v of await this.agent(h.name).get<{ name: string; running: boolean }[]>('/v1/vms')) this.agentVms.set(`${h.name}/${v.name}`, v.running);
        } catch (e) {
          this.ctx?.log.warn({ host: h.name, err: toOsrError(e).message }, `the inventory of host ${h.name} cannot be read now; its last one stands`);
        }
      }
      // a host that does not answer now keeps the VMs it had: they are not gone
      const inv = this.hostInventories.get(h.name);
      for (const d of siteDomains(this.site, h.name, inv, this.state)) domains.set(d.id, d);
    }
    this.domains = domains;
  }

  // ---- where things are

  private locate(id: string): Located {
    const r = this.state.replicas[id];
    if (r) return { id, name: r.name, hostId: r.hostId, isVm: !!this.state.promoted[id], replica: r };
    const d = this.domains.get(id);
    if (d) return { id, name: d.name, hostId: d.hostId, isVm: !this.state.demoted[id], domain: d };
    throw new OsrError('VM_NOT_FOUND', `fabric ${this.site.name} has no VM ${id}`, { vms: [...this.domains.keys(), ...Object.keys(this.state.replicas)] });
  }

  private nicIdsOf(l: Located): string[] {
    if (l.replica) return l.replica.nicIds;
    return (l.domain?.domain.machine.nics ?? []).map((_n, i) => `nic${i}`);
  }

  /** The libvirt network a VM network is at the hosts (drill networks: osr's own, made by the agent). */
  private libvirtNetwork(vmNetwork: string | null): string | null {
    if (vmNetwork === null) return null;
    return this.site.networks.find((n) => n.vmNetwork === vmNetwork)?.libvirt ?? null;
  }

  /** A replica's machine at its host: the source's, each NIC on the libvirt network its VM network maps to. */
  private machineOf(id: string): MachineSpec | undefined {
    const r = this.state.replicas[id];
    if (!r?.machine) return undefined;
    return { ...r.machine, nics: r.machine.nics.map((n, i) => ({ ...n, network: this.libvirtNetwork(this.state.nics[`${id}/nic${i}`]?.vmNetwork ?? null) })) };
  }

  /** What a failover step changed, in the records (saved before the call answers). */
  private async record(c: SiteChange): Promise<void> {
    const at = new Date().toISOString();
    switch (c.kind) {
      case 'replicating':
        if (c.peer) this.state.replications[c.vmId] = c.peer;
        else delete this.state.replications[c.vmId];
        break;
      case 'shut-down':
      case 'point-changed':
      case 'committed':
        break;
      case 'promoted':
        if (this.state.replicas[c.id]) this.state.promoted[c.id] = { epoch: c.epoch, at };
        else delete this.state.demoted[c.id];
        delete this.state.fenced[c.id];
        break;
      case 'fenced':
        this.state.fenced[c.vmId] = { epoch: c.epoch, at };
        break;
      case 'demoted':
        if (this.state.replicas[c.id]) delete this.state.promoted[c.id];
        else this.state.demoted[c.id] = { epoch: c.epoch, itemId: c.itemId, at };
        delete this.state.fenced[c.id];
        delete this.state.replications[c.id];
        break;
    }
    await this.save();
    this.changed();
  }

  // ---- inventory

  async inventory(): Promise<InventoryDocument> {
    await this.refresh();
    return mapInventory(this.site, this.hostInventories, { domains: [...this.domains.values()], state: this.state, agentVms: this.agentVms });
  }

  private nicsOf(vmId: string, nicIds: string[]): { id: string; vmNetwork: string | null; ip: string | null }[] {
    return nicIds.map((n) => ({ id: n, vmNetwork: this.state.nics[`${vmId}/${n}`]?.vmNetwork ?? null, ip: this.state.nics[`${vmId}/${n}`]?.ip ?? null }));
  }

  // ---- power

  async setPower(vmId: string, action: PowerAction): Promise<{ powerState: string }> {
    const v = asVm(this.locate(vmId));
    const api = this.agent(v.hostId);
    if (action === 'start') {
      const fence = this.state.fenced[vmId];
      if (fence) throw new OsrError('EPOCH_STALE', `${v.name} was failed over to the other site (epoch ${fence.epoch}); it cannot start here until it is reprotected`, { epoch: fence.epoch });
      await api.post(`/v1/vms/${encodeURIComponent(v.name)}/start`);
    } else if (action === 'stop') {
      await api.post(`/v1/vms/${encodeURIComponent(v.name)}/stop`, { force: true });
    } else {
      // the agent shuts the domain down (ACPI), and stops it when the guest has not after the timeout
      await api.post(`/v1/vms/${encodeURIComponent(v.name)}/stop`, { timeout: this.o.shutdownTimeout ?? '5m' });
    }
    const d = this.domains.get(vmId);
    if (d) d.running = action === 'start';
    this.changed();
    return { powerState: action === 'start' ? 'Running' : 'Off' };
  }

  // ---- NICs

  /** A NIC on a VM network: the subnet named like the source's, else the first, and a free address of its pool. */
  private allocate(vmId: string, nicId: string, vmNetwork: string | null, wanted: string | null): NicLease {
    const key = `${vmId}/${nicId}`;
    delete this.state.nics[key];
    let ip: string | null = null;
    let subnetName: string | null = null;
    if (vmNetwork) {
      const drill = this.state.drillNetworks[vmNetwork];
      const net = drill ? { name: drill.name, subnets: [{ name: 'Subnet1', cidr: drill.cidr, pool: drill.pool }] } : this.site.networks.find((n) => n.vmNetwork === vmNetwork);
      if (!net) throw new OsrError('NOT_FOUND', `fabric ${this.site.name} has no VM network ${vmNetwork}`, { vmNetworks: this.site.networks.map((n) => n.vmNetwork) });
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
        if (ip === null) throw new OsrError('INVALID_STATE', `the static IP pool of ${vmNetwork} ${subnet.name} (${subnet.pool.start}–${subnet.pool.end}) has no free address; widen it in the site file or free addresses`);
      }
    }
    this.state.nics[key] = { vmNetwork, subnet: subnetName, ip };
    return this.state.nics[key]!;
  }

  private lease(vmId: string, nicId: string, vmNetwork: string | null, subnet: string | null): NicLease {
    const current = this.state.nics[`${vmId}/${nicId}`];
    return current && current.vmNetwork === vmNetwork ? current : this.allocate(vmId, nicId, vmNetwork, subnet);
  }

  async connectNic(vmId: string, nicId: string, vmNetwork: string | null): Promise<{ ip: string | null }> {
    const l = this.locate(vmId);
    if (!this.nicIdsOf(l).includes(nicId)) throw new OsrError('NOT_FOUND', `${l.name} has no NIC ${nicId}`, { nics: this.nicIdsOf(l) });
    const current = this.state.nics[`${vmId}/${nicId}`];
    if (current && current.vmNetwork === vmNetwork) return { ip: current.ip };
    const n = this.lease(vmId, nicId, vmNetwork, l.replica?.nicSubnets[nicId] ?? null);
    await this.save();
    this.changed();
    return { ip: n.ip };
  }

  // ---- replica VMs

  async ensureReplicaVm(spec: ReplicaVmSpec): Promise<ReplicaVm> {
    const existing = Object.values(this.state.replicas).find((r) => r.itemId === spec.itemId || (r.name === spec.source.name && !r.protecting));
    const subnets = Object.fromEntries(spec.source.nics.map((n) => [n.id, n.subnet ?? null]));
    if (existing) {
      // one kept when protection was disabled is taken up again; one this protection made is answered again
      const reused = !existing.protecting;
      existing.protecting = true;
      existing.itemId = spec.itemId;
      for (const nic of spec.source.nics) if (!existing.nicIds.includes(nic.id)) existing.nicIds.push(nic.id);
      existing.nicSubnets = { ...existing.nicSubnets, ...subnets };
      if (spec.source.machine) existing.machine = spec.source.machine;
      for (const nic of existing.nicIds) this.lease(existing.id, nic, spec.networks[nic] ?? null, existing.nicSubnets[nic] ?? null);
      await this.claim(existing.hostId, spec);
      await this.save();
      this.changed();
      return this.replicaView(existing, reused);
    }
    const host = this.host(spec.hostId);
    const base = spec.source.name.toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[-.]+/, '').slice(0, 40) || 'vm';
    let id = `${base}-replica`;
    for (let i = 2; this.state.replicas[id] || this.domains.has(id); i++) id = `${base}-replica${i}`;
    const r: ReplicaRecord = {
      id,
      itemId: spec.itemId,
      name: spec.source.name,
      hostId: host.name,
      ...(spec.source.replicationId !== undefined ? { replicationId: spec.source.replicationId } : {}),
      disks: spec.source.disks.map((d) => ({ id: d.id, name: d.name, sizeBytes: d.sizeBytes, ...(spec.storage[d.id] ? { storageLocation: spec.storage[d.id] } : {}) })),
      nicIds: spec.source.nics.map((n) => n.id),
      nicSubnets: subnets,
      ...(spec.source.machine ? { machine: spec.source.machine } : {}),
      protecting: true,
      createdAt: new Date().toISOString(),
    };
    await this.claim(host.name, spec);
    this.state.replicas[id] = r;
    for (const nic of r.nicIds) this.allocate(id, nic, spec.networks[nic] ?? null, r.nicSubnets[nic] ?? null);
    await this.save();
    this.changed();
    this.ctx?.log.info({ replica: id, host: host.name }, `replica VM ${id} created on ${host.name}`);
    return this.replicaView(r, false);
  }

  private async claim(hostId: string, spec: ReplicaVmSpec): Promise<void> {
    const { replicationId, agent, grant } = spec.source;
    if (replicationId !== undefined && agent !== undefined) await claimReplicaSource(this.agent(hostId), replicationId, agent, grant);
  }

  private replicaView(r: ReplicaRecord, reused: boolean): ReplicaVm {
    return { replicaVmId: r.id, hostId: r.hostId, agent: this.endpoint(r.hostId), nics: this.nicsOf(r.id, r.nicIds), reused };
  }

  async removeReplicaVm(replicaVmId: string, o: { deleteData: boolean }): Promise<void> {
    const demoted = this.state.demoted[replicaVmId];
    if (demoted) {
      const d = this.domains.get(replicaVmId);
      if (o.deleteData && d) await deleteReplicaData(this.agent(d.hostId), d.name);
      demoted.itemId = '';
      await this.save();
      this.changed();
      return;
    }
    const r = this.state.replicas[replicaVmId];
    if (!r) return; // gone already
    if (!o.deleteData) r.protecting = false;
    else {
      await deleteReplicaData(this.agent(r.hostId), r.name);
      delete this.state.replicas[replicaVmId];
      for (const key of Object.keys(this.state.nics)) if (key.startsWith(`${replicaVmId}/`)) delete this.state.nics[key];
    }
    await this.save();
    this.changed();
  }

  // ---- test failover

  async startTestVm(spec: TestVmSpec): Promise<TestVm> {
    const running = Object.values(this.state.testVms).find((t) => t.itemId === spec.itemId);
    if (running) {
      // asked again: the record is there; the domain is made sure of
      await this.bootTestDomain(running);
      return this.testVmView(running);
    }
    const l = asReplica(this.locate(spec.replicaVmId));
    const r = l.replica;
    if (!r) throw new OsrError('INVALID_STATE', `${l.name} (${l.id}) holds the replica of a reprotected VM; a test failover runs from a replica VM of its own`);
    if (!r.machine) throw new OsrError('NOT_SUPPORTED', `the machine of ${r.name} is not known here (its source fabric reported none), so its test domain cannot be defined; protect it from a libvirt site`);
    const id = `${r.id.replace(/-replica\d*$/, '')}-test`;
    let network: string | null = null;
    let temporaryNetwork: string | null = null;
    if (spec.network.mode === 'temporary') {
      temporaryNetwork = this.drillNetwork(`osr-test-${id}`, `osr-test-${r.name}`);
      network = temporaryNetwork;
    } else if (spec.network.mode === 'existing') {
      if (!this.state.drillNetworks[spec.network.vmNetwork]) {
        throw new OsrError('NOT_SUPPORTED', `a test domain of fabric ${this.site.name} runs on an isolated drill network only, not on VM network ${spec.network.vmNetwork}: choose a temporary network, or one made for drills (a recovery plan's)`, { vmNetwork: spec.network.vmNetwork });
      }
      network = spec.network.vmNetwork;
    }
    // a test domain of this name that no record knows (a record lost with a crash) goes first
    await removeTestDomain(this.agent(r.hostId), id);
    const overlay = await openTestOverlay(this.agent(r.hostId), r.name, spec.pointId, spec.latest);
    const t: TestVmRecord = { id, itemId: spec.itemId, replicaId: r.id, replicaName: r.name, hostId: r.hostId, overlayId: overlay.id, pointId: overlay.point.id, ...(overlay.point.id !== spec.pointId ? { point: overlay.point } : {}), nicIds: [...r.nicIds], network, temporaryNetwork, disks: overlay.disks, startedAt: new Date().toISOString() };
    for (const nic of t.nicIds) this.allocate(id, nic, network, r.nicSubnets[nic] ?? null);
    this.state.testVms[id] = t;
    await this.save();
    try {
      await this.bootTestDomain(t);
    } catch (e) {
      await this.removeTestVm(id).catch(() => undefined);
      throw e;
    }
    this.changed();
    this.ctx?.log.info({ testVm: id, point: t.pointId, network }, `test VM ${id} runs point ${t.pointId} of ${r.name}`);
    return this.testVmView(t);
  }

  /** Define and start the test domain from the overlay, its NICs on the drill network. */
  private async bootTestDomain(t: TestVmRecord): Promise<void> {
    const r = this.state.replicas[t.replicaId];
    if (!r?.machine) throw new OsrError('INVALID_STATE', `the replica record of test VM ${t.id} is gone; clean the test failover up`);
    await startTestDomain(this.agent(t.hostId), t.id, { replica: t.replicaName, overlay: t.overlayId, machine: r.machine, network: t.network === null ? null : this.drillLibvirtName(t.network) });
  }

  /** The evidence of a drill's test VM now: its console's last 4 KiB and the guest agent's answer to a ping. */
  async testVmEvidence(testVmId: string): Promise<DrillEvidence> {
    const t = this.state.testVms[testVmId];
    if (!t) throw new OsrError('VM_NOT_FOUND', `fabric ${this.site.name} has no test VM ${testVmId}`);
    const e = await testDomainEvidence(this.agent(t.hostId), t.id);
    return { at: new Date(this.ctx?.clock.now() ?? Date.now()).toISOString(), running: e.running, console: e.console.slice(-DRILL_CONSOLE_BYTES), guestAgentAnswered: e.guestPing !== null };
  }

  private testVmView(t: TestVmRecord): TestVm {
    return { testVmId: t.id, hostId: t.hostId, temporaryNetwork: t.temporaryNetwork, nics: this.nicsOf(t.id, t.nicIds), disks: t.disks, startedAt: t.startedAt, ...(t.point ? { point: t.point } : {}) };
  }

  async removeTestVm(testVmId: string): Promise<void> {
    const t = this.state.testVms[testVmId];
    if (!t) return; // gone already
    const api = this.agent(t.hostId);
    // the domain first: its disks are the overlay's exports
    await removeTestDomain(api, t.id);
    await removeTestOverlay(api, t.replicaName, t.overlayId);
    if (t.temporaryNetwork) {
      await removeDrillNetwork(api, this.drillLibvirtName(t.temporaryNetwork));
      delete this.state.drillNetworks[t.temporaryNetwork];
    }
    for (const key of Object.keys(this.state.nics)) if (key.startsWith(`${testVmId}/`)) delete this.state.nics[key];
    delete this.state.testVms[testVmId];
    await this.save();
    this.changed();
  }

  /** A drill network's record (a /24 of 172.31.x.0 of its own for its leases); kept when it exists. */
  private drillNetwork(id: string, name: string): string {
    if (this.state.drillNetworks[id]) return id;
    const used = new Set(Object.values(this.state.drillNetworks).map((n) => n.cidr));
    let third = 1;
    while (used.has(`172.31.${third}.0/24`)) third++;
    if (third > 254) throw new OsrError('INVALID_STATE', `fabric ${this.site.name} has no free 172.31.x.0/24 for another drill network; clean up test failovers`);
    this.state.drillNetworks[id] = { id, name, cidr: `172.31.${third}.0/24`, pool: { start: `172.31.${third}.10`, end: `172.31.${third}.250` } };
    return id;
  }

  /** The name a drill network has at the agents (which prefix it with osr-net-). */
  private drillLibvirtName(vmNetwork: string): string {
    return vmNetwork.replace(/^osr-/, '').slice(0, 64);
  }

  async createTestNetwork(name: string): Promise<{ vmNetwork: string }> {
    const id = this.drillNetwork(`osr-drill-${name.toLowerCase().replace(/[^a-z0-9._-]+/g, '-').replace(/^[-.]+/, '').slice(0, 40) || 'drill'}`, `osr-drill-${name}`);
    await this.save();
    this.changed();
    return { vmNetwork: id };
  }

  async removeTestNetwork(vmNetwork: string): Promise<void> {
    if (!this.state.drillNetworks[vmNetwork]) return; // gone already
    const on = Object.entries(this.state.nics).filter(([, n]) => n.vmNetwork === vmNetwork).map(([k]) => k.split('/')[0]);
    if (on.length > 0) throw new OsrError('INVALID_STATE', `drill network ${vmNetwork} still has test VMs on it (${[...new Set(on)].join(', ')}); clean them up first`);
    for (const h of this.up) await removeDrillNetwork(this.agent(h), this.drillLibvirtName(vmNetwork));
    delete this.state.drillNetworks[vmNetwork];
    await this.save();
    this.changed();
  }
}
