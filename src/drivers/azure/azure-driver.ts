/**
 * Azure as a recovery fabric behind the FabricDriver port (`osr provider --fabric azure`,
 * docs/design/azure.md). The Azure provider:
 *
 * - prepares a protected VM's replica: its container in the storage account, made once,
 *   and a SAS for that container only, which the vault hands to the source host's agent
 *   (the agent writes the replica itself: no disk data through the vault or a provider);
 * - reads the replica's recovery points from the container (complete snapshot sets only);
 * - makes what a failover or a drill needs from a point (managed disks, NICs, the VM) with
 *   AzureRecovery, and removes it by its job's tag;
 * - reports the resource group's virtual networks and the disk types as its inventory,
 *   and the VMs its failovers made.
 *
 * Its records (each replica's disks, mapped networks, size and disk type; the drills and
 * failovers it made) are an owner-only file in its data directory. Every step is safe to
 * run again: Azure resources are read before they are made, tagged with their job, and
 * a record is written before the step it announces.
 *
 * Failback: a committed failover's VM replicates home through the osr agent in the
 * region (`regionAgent` in the site file). The VM is deallocated, its managed disks are
 * read through their read SAS into a VM of that agent, and the agent replicates it to the
 * old primary's disks (demoted by the vault's reprotect) with the replication every agent
 * runs: every block compared by checksum, only those that differ sent. A planned failover
 * home then brings the VM up on premises; the reprotect that follows removes what the
 * failover made in Azure and hands the primary the replica's container again, marked
 * stale so that it is resynchronized by checksums, not copied anew.
 */
import { generateBlobSASQueryParameters, SASProtocol, StorageSharedKeyCredential, type ContainerClient } from '@azure/storage-blob';
import { RECORD_BLOB, replicaContainerName } from '../../domain/azure-layout.js';
import { isErrorCode, OsrError } from '../../domain/errors.js';
import { inCidr } from '../../domain/ipv4.js';
import { isSafeName } from '../../domain/names.js';
import type { InventoryDocument } from '../../domain/resources.js';
import type {
  DriverContext,
  FabricDriver,
  FabricManagement,
  FabricReplication,
  PowerAction,
  RecoveryPointInfo,
  ReplicaEndpoint,
  ReplicaVm,
  ReplicationRequest,
  ReplicaVmSpec,
  ReplicationStatus,
  TestVm,
  TestVmSpec,
} from '../../fabric/driver.js';
import { agentCertificateSerial, enrolAgent, handRevocationList, type AgentTrust } from '../agent-enrolment.js';
import { readCrl } from '../../pki/index.js';
import type { AgentHostConfig } from '../site-fields.js';
import { AgentReplication, type AgentApi, type AgentSite } from '../agent-replication.js';
import { loadRecords, RecordsWriter } from '../records-file.js';
import { AZURE_CAPABILITIES } from './capabilities.js';
import { defaultVmSize, VM_SIZES } from './vm-sizes.js';
import type { AzureClients } from './clients.js';
import { azureHostId, azureInventory, DISK_TYPES } from './inventory.js';
import { armError, AzureRecovery, OSR_TAG, resourceName, type AzureRecoveryOptions, type VmFromPoint } from './recovery.js';
import { markReplicaStale, pointDisks, readReplicaPoints, type ReplicaPoints } from './replica-points.js';
import type { AzureSiteConfig } from './site.js';

/** A replica this provider prepared: where it is, and what a failover of it makes. */
export interface AzureReplicaRecord {
  /** the replica's id here: its container's name */
  id: string;
  itemId: string;
  replicationId: string;
  vmName: string;
  disks: { id: string; name: string; sizeBytes: number }[];
  /** the managed-disk type (the storage classification placement chose) */
  diskSku: string;
  vmSize: string;
  generation: 'V1' | 'V2';
  /** NIC → the virtual network it goes on (null: none), the source NIC's subnet name and address */
  nics: { id: string; vmNetwork: string | null; subnet: string | null; ip: string | null }[];
  createdAt: string;
}

export interface AzureTestRecord {
  id: string;
  itemId: string;
  replicaId: string;
  pointId: string;
  /** the network made for this drill alone (removed with it), or null */
  temporaryNetwork: string | null;
  vmNetwork: string | null;
  startedAt: string;
}

export interface AzureFailoverRecord {
  /** the failed-over VM's id here */
  vmId: string;
  replicaId: string;
  itemId: string;
  /** the job tag of what the current point made, and its point */
  job: string;
  seq: number;
  /** a change of point under way: what it makes (the old job's resources are removed first) */
  next?: { job: string; seq: number } | undefined;
  epoch: number;
  committed: boolean;
  at: string;
  /** failback under way: the VM deallocated and (once `imported`) a VM of the region's agent, replicating home to `peer` */
  failback?: { imported: boolean; peer?: ReplicaEndpoint | null | undefined } | undefined;
}

export interface AzureState {
  replicas: Record<string, AzureReplicaRecord>;
  tests: Record<string, AzureTestRecord>;
  failovers: Record<string, AzureFailoverRecord>;
  /** drill networks a recovery plan made: virtual network → its job tag */
  drillNetworks: Record<string, string>;
  /** the region's agent was seen enrolled since the site file gave this bootstrap fingerprint (that bootstrap certificate is spent) */
  regionEnrolled?: { agentFingerprint: string | null; at: string } | undefined;
  /** the serials of the vault's revocation list, as last handed to the provider */
  revoked?: string[] | undefined;
}

const STATE_FILE = 'azure-state.json';

/** A container's points as the vault takes them (none when the replica has no record yet). */
function pointInfos(replica: ReplicaPoints | undefined): RecoveryPointInfo[] {
  return (replica?.points ?? []).map((p) => ({ id: String(p.point.seq), at: new Date(p.point.timeMs).toISOString(), consistency: p.point.consistency === 'app-consistent' ? 'app' : 'crash' }));
}

export interface AzureDriverOptions extends AzureRecoveryOptions {
  /** how far ahead the agents' access to their containers is extended (default 7 days) */
  sasValidityMs?: number;
  /** how often it is extended (default 1 h) */
  accessRenewMs?: number;
  clock?: { now(): number };
  /** how the provider reaches the osr agent in the region (the site file's regionAgent), given what the driver knows of its trust: failback runs through it */
  connectRegionAgent?: ((host: AgentHostConfig, trust: AgentTrust) => AgentApi) | undefined;
  /** how often the region agent's import of a VM's disks is looked at (ms, default 2000) */
  importPollMs?: number;
}

const DAY_MS = 24 * 3600 * 1000;
/** the SAS an agent needs: read, add, create, write, delete (blobs and snapshots), list */
const AGENT_PERMISSIONS = 'racwdl';
/** the container's stored access policy the agent's SAS is bound to */
const AGENT_POLICY = 'osr-agent';

export class AzureFabricDriver implements FabricDriver, FabricManagement, FabricReplication {
  readonly kind = 'azure';
  readonly capabilities = AZURE_CAPABILITIES;
  readonly management: FabricManagement = this;
  readonly replication: FabricReplication = this;
  private readonly state: AzureState;
  private readonly writer: RecordsWriter<AzureState>;
  private ctx: DriverContext | undefined;
  private renewer: AbortController | undefined;
  /** the last change of each container's access policy, which the next waits for */
  private readonly policyChanges = new Map<string, Promise<void>>();
  private readonly clock: { now(): number };
  /** replication home through the region's agent (failback) */
  private readonly home: AgentReplication;
  private readonly regionApi: AgentApi | undefined;

  constructor(
    private readonly site: AzureSiteConfig,
    private readonly clients: AzureClients,
    private readonly o: AzureDriverOptions = {},
  ) {
    this.state = loadRecords<AzureState>(site.dir, STATE_FILE, { replicas: {}, tests: {}, failovers: {}, drillNetworks: {} });
    this.writer = new RecordsWriter<AzureState>(site.dir, STATE_FILE);
    this.clock = o.clock ?? { now: () => Date.now() };
    this.home = new AgentReplication(this.regionSite());
    const a = site.regionAgent;
    this.regionApi = a && o.connectRegionAgent ? o.connectRegionAgent(a, this.regionTrust(a)) : undefined;
  }

  private save(): Promise<void> {
    return this.writer.save(this.state);
  }

  private get hostId(): string {
    return azureHostId(this.site);
  }

  private container(replicaId: string): ContainerClient {
    return this.clients.blobs.getContainerClient(replicaId);
  }

  private recovery(replicaId: string): AzureRecovery {
    return new AzureRecovery(this.clients.compute, this.clients.network, this.container(replicaId), { subscriptionId: this.site.subscriptionId, resourceGroup: this.site.resourceGroup, location: this.site.location, storageAccountId: this.site.storageAccount.resourceId }, this.o);
  }

  private replica(id: string): AzureReplicaRecord {
    const r = this.state.replicas[id];
    if (!r) throw new OsrError('VM_NOT_FOUND', `fabric ${this.site.name} holds no replica ${id}`);
    return r;
  }

  private failover(vmId: string): AzureFailoverRecord {
    const f = this.state.failovers[vmId];
    if (!f) throw new OsrError('VM_NOT_FOUND', `fabric ${this.site.name} has no failed-over VM ${vmId}`);
    return f;
  }

  // ---- management

  async start(ctx: DriverContext): Promise<void> {
    this.ctx = ctx;
    // the storage account answers (a wrong key or endpoint is said now, not at the first replica)
    try {
      await this.clients.blobs.getProperties();
    } catch (e) {
      throw armError(e, `reaching storage account ${this.site.storageAccount.name} at ${this.site.storageAccount.blobEndpoint}`);
    }
    await this.enrolRegionAgent();
    const renewer = (this.renewer = new AbortController());
    void (async () => {
      while (!renewer.signal.aborted) {
        await this.renewAccess();
        await new Promise<void>((r) => {
          const t = setTimeout(r, this.o.accessRenewMs ?? 3600_000);
          t.unref();
          renewer.signal.addEventListener('abort', () => (clearTimeout(t), r()), { once: true });
        });
      }
    })();
  }

  /**
   * The region's agent gets a certificate from the vault's CA: at start, and again with each
   * revocation list the provider hands (every inventory interval) while it has none, or its
   * own is revoked or due for renewal. (Not from inventory(): enrolment reports the inventory first.)
   */
  private async enrolRegionAgent(again = false): Promise<void> {
    const a = this.site.regionAgent;
    if (!a || !this.regionApi || !this.ctx) return;
    try {
      await enrolAgent(this.regionApi, a.name, this.ctx, again);
    } catch (e) {
      this.ctx.log.warn({ host: a.name, err: (e as Error).message }, `the region's agent ${a.name} could not be enrolled now; trying again with the next revocation list`);
    }
  }

  /** What the client of the region's agent over its provider channel checks (as for a libvirt host). */
  private regionTrust(a: AgentHostConfig): AgentTrust {
    const fingerprint = a.agentFingerprint?.toUpperCase() ?? null;
    return {
      revoked: () => new Set(this.state.revoked ?? []),
      bootstrapSpent: () => this.state.regionEnrolled !== undefined && this.state.regionEnrolled.agentFingerprint === fingerprint,
      enrolledSeen: () => {
        if (this.state.regionEnrolled?.agentFingerprint === fingerprint) return;
        this.state.regionEnrolled = { agentFingerprint: fingerprint, at: new Date(this.clock.now()).toISOString() };
        this.save().catch((e: unknown) => this.ctx?.log.warn({ host: a.name, err: (e as Error).message }, `that the region's agent is enrolled was not saved`));
      },
    };
  }

  /** The vault's revocation list: kept for the region agent's client, handed to the agent; a revoked or ageing certificate is enrolled again first. */
  async revocationList(pem: string): Promise<void> {
    const ctx = this.ctx;
    if (!ctx) return;
    const { serials } = await readCrl(pem, ctx.vaultCa);
    this.state.revoked = [...serials];
    await this.save();
    const api = this.regionApi;
    if (!api || !this.site.regionAgent) return;
    try {
      const serial = await agentCertificateSerial(api);
      await this.enrolRegionAgent(serial !== null && serials.includes(serial));
      await handRevocationList(api, pem);
    } catch (e) {
      ctx.log.warn({ host: this.site.regionAgent.name, err: (e as Error).message }, 'the revocation list could not be handed to the region\'s agent now; it is handed again at the next inventory');
    }
  }

  async stop(): Promise<void> {
    this.renewer?.abort();
    await this.writer.settled();
  }

  async inventory(): Promise<InventoryDocument> {
    const doc = await azureInventory(this.site, this.clients.network);
    const cloud = doc.clouds[0]!.id;
    // the VMs failovers made run here now
    for (const f of Object.values(this.state.failovers)) {
      const r = this.state.replicas[f.replicaId];
      if (!r) continue;
      doc.vms.push({
        id: f.vmId,
        name: r.vmName,
        cloud,
        host: this.hostId,
        // a VM failing back is deallocated
        powerState: f.failback ? 'Off' : 'Running',
        disks: r.disks.map((d) => ({ id: d.id, name: d.name, sizeBytes: d.sizeBytes })),
        nics: r.nics.map((n) => ({ id: n.id, ...(n.vmNetwork !== null ? { vmNetwork: n.vmNetwork } : {}), ...(n.ip !== null ? { ip: n.ip } : {}) })),
      });
    }
    return doc;
  }

  async setPower(vmId: string, action: PowerAction): Promise<{ powerState: string }> {
    const f = this.failover(vmId);
    // its disks were read for the trip home: what it wrote from now on would not follow it
    if (action === 'start' && f.failback) throw new OsrError('INVALID_STATE', `${vmId} is failing back (reprotected home): it stays deallocated until the planned failover brings it up at home`);
    return this.vmPower(vmId, action);
  }

  /** Start or deallocate a failed-over VM (osr's own steps: a failback's deallocation included). */
  private async vmPower(vmId: string, action: PowerAction): Promise<{ powerState: string }> {
    const f = this.failover(vmId);
    const name = resourceName(this.replica(f.replicaId).vmName);
    const vms = this.clients.compute.virtualMachines;
    const lro = { updateIntervalInMs: this.o.pollMs ?? 5000 };
    try {
      if (action === 'start') await vms.start(this.site.resourceGroup, name, lro);
      // Azure bills a VM that is only stopped: osr deallocates it
      else await vms.deallocate(this.site.resourceGroup, name, lro);
    } catch (e) {
      throw armError(e, `${action} of VM ${name}`);
    }
    return { powerState: action === 'start' ? 'Running' : 'Stopped' };
  }

  /**
   * The source agent's access to one container: a SAS bound to the container's stored
   * access policy (`osr-agent`), so that this provider extends it while the replica is
   * protected (renewAccess) and revokes it at a failover or when protection ends — the SAS
   * itself never changes hands again. It needs the account's key (a SAS of a principal's
   * user-delegation key cannot be bound to a policy, and lasts at most 7 days).
   */
  private async grantAgent(container: string): Promise<{ sas: string; expiresAt: string }> {
    const cred = this.clients.blobs.credential;
    if (!(cred instanceof StorageSharedKeyCredential)) {
      throw new OsrError('CONFIG_INVALID', `fabric ${this.site.name}: replicating into storage account ${this.site.storageAccount.name} needs its key (storageAccount.keyFile in the site file): the agents' access is bound to a policy only the key can sign for`);
    }
    const expiresAt = await this.agentAccess(container, true);
    const sas = generateBlobSASQueryParameters({ containerName: container, identifier: AGENT_POLICY, protocol: this.site.storageAccount.blobEndpoint.startsWith('https:') ? SASProtocol.Https : SASProtocol.HttpsAndHttp }, cred).toString();
    return { sas, expiresAt: expiresAt! };
  }

  /**
   * Set (on) or revoke (off) the agent's access to a replica's container: one change at a
   * time per container, and never on for a replica a failover took — checked when the
   * change runs, so that a renewal that began before a failover cannot undo its revocation.
   */
  private agentAccess(container: string, on: boolean): Promise<string | undefined> {
    const run = (this.policyChanges.get(container) ?? Promise.resolve()).then(async () => {
      if (on && Object.values(this.state.failovers).some((f) => f.replicaId === container)) {
        throw new OsrError('INVALID_STATE', `replica ${container} was failed over: its source's access to it stays revoked`);
      }
      return this.setAgentPolicy(container, on);
    });
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.policyChanges.set(container, settled);
    void settled.then(() => {
      if (this.policyChanges.get(container) === settled) this.policyChanges.delete(container);
    });
    return run;
  }

  /** Set the agent's policy on a container to end `validity` from now (on), or remove it (off); answers the new end. */
  private async setAgentPolicy(container: string, on: boolean): Promise<string | undefined> {
    const now = this.clock.now();
    const expiresOn = new Date(now + (this.o.sasValidityMs ?? 7 * DAY_MS));
    try {
      await this.container(container).setAccessPolicy(undefined, on ? [{ id: AGENT_POLICY, accessPolicy: { permissions: AGENT_PERMISSIONS, startsOn: new Date(now - 5 * 60_000), expiresOn } }] : []);
    } catch (e) {
      throw armError(e, `${on ? 'setting' : 'revoking'} the agent's access to container ${container}`);
    }
    return on ? expiresOn.toISOString() : undefined;
  }

  /**
   * Extend the agents' access to every replica still replicating here (none failed over):
   * run every `accessRenewMs` (default 1 h) while the provider runs. A replica whose
   * container cannot be reached is tried again at the next round (its access lasts days).
   */
  async renewAccess(): Promise<void> {
    for (const r of Object.values(this.state.replicas)) {
      // (a replica a failover took is skipped when its turn comes: agentAccess checks then)
      if (Object.values(this.state.failovers).some((f) => f.replicaId === r.id)) continue;
      try {
        await this.agentAccess(r.id, true);
      } catch (e) {
        if ((e as OsrError).code === 'INVALID_STATE') continue;
        this.ctx?.log.warn({ replica: r.id, err: (e as Error).message }, `the agent's access to ${r.id} could not be extended now; trying again at the next round`);
      }
    }
  }

  async ensureReplicaVm(spec: ReplicaVmSpec): Promise<ReplicaVm> {
    const replicationId = spec.source.replicationId;
    if (replicationId === undefined || !isSafeName(replicationId)) throw new OsrError('INVALID_ARGUMENT', `VM ${spec.source.name} has no replication id; its replica's container is named from it`);
    if (spec.hostId !== this.hostId) throw new OsrError('NOT_FOUND', `fabric ${this.site.name} has one host, ${this.hostId}, not ${spec.hostId}`);
    const id = replicaContainerName(replicationId);
    const known = this.state.replicas[id];
    if (known && known.itemId !== spec.itemId) throw new OsrError('ALREADY_EXISTS', `container ${id} holds the replica of item ${known.itemId}, not ${spec.itemId}`);
    // the disk type: the classification placement chose (one for the VM: Azure takes one SKU per disk, osr keeps them alike)
    const skus = new Set(Object.values(spec.storage).map((loc) => DISK_TYPES.find((t) => loc.endsWith(`-${t.id}`))?.id ?? 'StandardSSD_LRS'));
    const chosen = spec.recoveryVm;
    if (chosen?.size !== undefined && !VM_SIZES.some((s) => s.name === chosen.size)) throw new OsrError('NOT_SUPPORTED', `fabric ${this.site.name} offers no VM size ${chosen.size}; it offers ${VM_SIZES.map((s) => s.name).join(', ')}`);
    if (chosen?.diskType !== undefined && !DISK_TYPES.some((t) => t.id === chosen.diskType)) throw new OsrError('NOT_SUPPORTED', `fabric ${this.site.name} offers no disk type ${chosen.diskType}; it offers ${DISK_TYPES.map((t) => t.id).join(', ')}`);
    const diskSku = chosen?.diskType ?? (skus.has('Premium_LRS') ? 'Premium_LRS' : skus.has('StandardSSD_LRS') ? 'StandardSSD_LRS' : [...skus][0] ?? 'StandardSSD_LRS');
    const subnets = await this.subnets();
    const nics = spec.source.nics.map((n) => {
      const vnet = spec.networks[n.id] ?? null;
      const ip = n.ip ?? null;
      const subnet = vnet === null ? null : this.pickSubnet(subnets, vnet, n.subnet);
      // a static address is kept where it fits the mapped subnet (ASR's rule); otherwise Azure gives one
      const keep = subnet !== null && ip !== null && inCidr(ip, subnet.cidr) ? ip : null;
      return { id: n.id, vmNetwork: vnet, subnet: subnet?.name ?? null, ip: keep };
    });
    const container = this.container(id);
    let reused = false;
    try {
      const made = await container.createIfNotExists({ metadata: { osritem: spec.itemId } });
      if (!made.succeeded) {
        // a container made before: this item's, or refused (another item's, or not osr's)
        const owner = (await container.getProperties()).metadata?.osritem;
        if (owner !== spec.itemId) throw new OsrError('ALREADY_EXISTS', `container ${id} exists and is ${owner ? `the replica of item ${owner}` : 'not an osr replica'}, not of ${spec.itemId}; osr does not write into it`, { container: id });
        reused = await container.getBlockBlobClient(RECORD_BLOB).exists();
      }
    } catch (e) {
      throw armError(e, `making container ${id}`);
    }
    const record: AzureReplicaRecord = {
      id,
      itemId: spec.itemId,
      replicationId,
      vmName: spec.source.name,
      disks: spec.source.disks.map((d) => ({ id: d.id, name: d.name, sizeBytes: d.sizeBytes })),
      diskSku,
      vmSize: chosen?.size ?? known?.vmSize ?? defaultVmSize(spec.source.machine),
      generation: spec.source.machine?.firmware === 'uefi' ? 'V2' : 'V1',
      nics,
      createdAt: known?.createdAt ?? new Date(this.clock.now()).toISOString(),
    };
    this.state.replicas[id] = record;
    await this.save();
    this.ctx?.inventoryChanged();
    const containerUrl = container.url.split('?')[0]!;
    return { replicaVmId: id, hostId: this.hostId, agent: { kind: 'azure', containerUrl }, access: await this.grantAgent(id), nics: nics.map((n) => ({ id: n.id, vmNetwork: n.vmNetwork, ip: n.ip })), reused };
  }

  /** The resource group's virtual networks and their subnets. */
  private async subnets(): Promise<Map<string, { name: string; id: string; cidr: string }[]>> {
    const out = new Map<string, { name: string; id: string; cidr: string }[]>();
    try {
      for await (const v of this.clients.network.virtualNetworks.list(this.site.resourceGroup)) {
        if (!v.name) continue;
        out.set(
          v.name,
          (v.subnets ?? []).flatMap((s) => (s.name && s.id && s.addressPrefix ? [{ name: s.name, id: s.id, cidr: s.addressPrefix }] : [])),
        );
      }
    } catch (e) {
      throw armError(e, `listing the virtual networks of ${this.site.resourceGroup}`);
    }
    return out;
  }

  /** The subnet of the same name as the source's, else the network's first (the rule between sites). */
  private pickSubnet(subnets: Map<string, { name: string; id: string; cidr: string }[]>, vnet: string, name: string | null | undefined): { name: string; id: string; cidr: string } {
    const list = subnets.get(vnet);
    if (!list || list.length === 0) throw new OsrError('NOT_FOUND', `virtual network ${vnet} of ${this.site.resourceGroup} has no subnet to put a NIC on`);
    return list.find((s) => s.name === name) ?? list[0]!;
  }

  async removeReplicaVm(replicaVmId: string, o: { deleteData: boolean }): Promise<void> {
    const failedOver = Object.values(this.state.failovers).find((f) => f.replicaId === replicaVmId);
    if (failedOver && !failedOver.committed) throw new OsrError('INVALID_STATE', `replica ${replicaVmId} runs as VM ${failedOver.vmId} (a failover not committed): commit or undo it first`);
    const drill = Object.values(this.state.tests).find((t) => t.replicaId === replicaVmId);
    if (drill) throw new OsrError('INVALID_STATE', `a drill of replica ${replicaVmId} runs (${drill.id}): clean it up first`);
    if (o.deleteData) {
      try {
        await this.container(replicaVmId).deleteIfExists();
      } catch (e) {
        throw armError(e, `deleting container ${replicaVmId}`);
      }
    } else if (this.state.replicas[replicaVmId]) {
      // a replica kept as it is: nobody's agent writes into it any more
      await this.agentAccess(replicaVmId, false).catch((e: unknown) => {
        if ((e as OsrError).code !== 'NOT_FOUND') throw e;
      });
    }
    // a committed failover's VM runs from what the record says (its inventory, its power): the record stays with it
    if (!failedOver) delete this.state.replicas[replicaVmId];
    await this.save();
    this.ctx?.inventoryChanged();
  }

  async connectNic(vmId: string, nicId: string, vmNetwork: string | null): Promise<{ ip: string | null }> {
    const r = this.replica(vmId);
    const nic = r.nics.find((n) => n.id === nicId);
    if (!nic) throw new OsrError('NOT_FOUND', `replica ${vmId} has no NIC ${nicId}`);
    const subnet = vmNetwork === null ? null : this.pickSubnet(await this.subnets(), vmNetwork, nic.subnet);
    nic.vmNetwork = vmNetwork;
    if (subnet === null || nic.ip === null || !inCidr(nic.ip, subnet.cidr)) nic.ip = null;
    nic.subnet = subnet?.name ?? nic.subnet;
    await this.save();
    return { ip: nic.ip };
  }

  /** The plan of a VM from point `seq` of a replica. */
  private async plan(r: AzureReplicaRecord, seq: number, o: { jobId: string; role: VmFromPoint['role']; vmName: string; nics: VmFromPoint['nics'] }): Promise<VmFromPoint> {
    const container = this.container(r.id);
    const points = await this.readPoints(r);
    const nics = o.nics;
    if (nics.length === 0) throw new OsrError('INVALID_STATE', `VM ${r.vmName} has no NIC on a mapped network, and an Azure VM needs one: map its network (osr mapping create network …)`);
    return { itemId: r.itemId, jobId: o.jobId, role: o.role, vmName: o.vmName, vmSize: r.vmSize, generation: r.generation, osType: 'Linux', diskSku: r.diskSku, disks: pointDisks(container, points, seq), nics };
  }

  private pointSeq(pointId: string): number {
    const seq = Number(pointId);
    if (!Number.isSafeInteger(seq) || seq < 0) throw new OsrError('INVALID_ARGUMENT', `${JSON.stringify(pointId.slice(0, 40))} is not a recovery point of an Azure replica (a number)`);
    return seq;
  }

  async startTestVm(spec: TestVmSpec): Promise<TestVm> {
    const r = this.replica(spec.replicaVmId);
    const seq = this.pointSeq(spec.pointId);
    // one drill of a replica at a time (the vault holds the item); its id is its job's tag
    const id = resourceName('test', r.replicationId, String(seq));
    const startedAt = this.state.tests[id]?.startedAt ?? new Date(this.clock.now()).toISOString();
    const rec = this.recovery(r.id);
    // an Azure VM needs a NIC: "no network" is a network of its own, isolated like a drill's
    const temporary = spec.network.mode !== 'existing' ? resourceName('osr-drill', id) : null;
    const vmNetwork = spec.network.mode === 'existing' ? spec.network.vmNetwork : temporary;
    this.state.tests[id] = { id, itemId: spec.itemId, replicaId: r.id, pointId: spec.pointId, temporaryNetwork: temporary, vmNetwork, startedAt };
    await this.save();
    let subnetId: string;
    if (temporary !== null) {
      subnetId = (await rec.createDrillNetwork({ itemId: spec.itemId, jobId: id, name: temporary, addressPrefix: '10.250.0.0/24' })).subnetId;
    } else {
      subnetId = this.pickSubnet(await this.subnets(), vmNetwork!, null).id;
    }
    // every source NIC goes on the drill's network, with an address Azure gives (no clash with production)
    const plan = await this.plan(r, seq, { jobId: id, role: 'test', vmName: resourceName(r.vmName, 'test'), nics: r.nics.length > 0 ? r.nics.map(() => ({ subnetId })) : [{ subnetId }] });
    await rec.createVm(plan, (step, detail) => this.ctx?.log.info({ test: id, step, ...detail }, `drill ${id}: ${step}`));
    this.ctx?.inventoryChanged();
    return { testVmId: id, hostId: this.hostId, temporaryNetwork: temporary, nics: r.nics.map((n) => ({ id: n.id, vmNetwork, ip: null })), disks: [], startedAt };
  }

  async removeTestVm(testVmId: string): Promise<void> {
    // the record is written before anything is made and removed after all of it: none, nothing to remove
    const t = this.state.tests[testVmId];
    if (!t) return;
    const { removed } = await this.recovery(t.replicaId).removeJob(testVmId);
    this.ctx?.log.info({ test: testVmId, removed }, `drill ${testVmId} removed: ${removed.length} resource(s)`);
    delete this.state.tests[testVmId];
    await this.save();
    this.ctx?.inventoryChanged();
  }

  async createTestNetwork(name: string): Promise<{ vmNetwork: string }> {
    const vnet = resourceName('osr-drill', name);
    const job = resourceName('net', name);
    this.state.drillNetworks[vnet] = job;
    await this.save();
    // (a network is no replica's: the container named is not used)
    await this.recovery('osr-none').createDrillNetwork({ itemId: 'plan', jobId: job, name: vnet, addressPrefix: '10.251.0.0/24' });
    // the vault waits for it in the inventory
    this.ctx?.inventoryChanged();
    return { vmNetwork: vnet };
  }

  async removeTestNetwork(vmNetwork: string): Promise<void> {
    const job = this.state.drillNetworks[vmNetwork];
    if (job === undefined) return;
    await this.recovery('osr-none').removeJob(job, undefined, { copies: false });
    delete this.state.drillNetworks[vmNetwork];
    await this.save();
    this.ctx?.inventoryChanged();
  }

  // ---- replication: the recovery side

  async recoveryPoints(replicaVmId: string): Promise<RecoveryPointInfo[]> {
    return pointInfos(await this.readPointsIfAny(this.replica(replicaVmId)));
  }

  /** The replica's points, or undefined when it has no record yet (the first copy has not begun). */
  private async readPointsIfAny(r: AzureReplicaRecord): Promise<ReplicaPoints | undefined> {
    try {
      return await this.readPoints(r);
    } catch (e) {
      if (e instanceof OsrError && e.code === 'NOT_FOUND') return undefined;
      throw e;
    }
  }

  /** The replica's points, from a container whose record is this replica's (the storage account is not trusted). */
  private async readPoints(r: AzureReplicaRecord): Promise<ReplicaPoints> {
    const points = await readReplicaPoints(this.container(r.id));
    if (points.record.vmId !== r.replicationId) throw new OsrError('REPLICA_STORE_CORRUPT', `container ${r.id} holds the replica of VM ${points.record.vmId.slice(0, 80)}, not of ${r.replicationId}`, { container: r.id });
    return points;
  }

  private async pointInfo(r: AzureReplicaRecord, seq: number): Promise<RecoveryPointInfo> {
    const p = (await this.recoveryPoints(r.id)).find((x) => x.id === String(seq));
    if (!p) throw new OsrError('NOT_FOUND', `the replica of ${r.vmName} has no recovery point ${seq}`);
    return p;
  }

  /** The NIC of a failed-over VM: its mapped subnet, its address kept where it fits. */
  private async makeFailoverVm(r: AzureReplicaRecord, seq: number, job: string): Promise<void> {
    const subnets = await this.subnets();
    const nics = r.nics.flatMap((n) => (n.vmNetwork === null ? [] : [{ subnetId: this.pickSubnet(subnets, n.vmNetwork, n.subnet).id, ...(n.ip !== null ? { privateIp: n.ip } : {}) }]));
    const plan = await this.plan(r, seq, { jobId: job, role: 'failover', vmName: r.vmName, nics });
    await this.recovery(r.id).createVm(plan, (step, detail) => this.ctx?.log.info({ failover: job, step, ...detail }, `failover ${job}: ${step}`));
  }

  async promoteReplica(replicaVmId: string, pointId: string | null): Promise<{ vmId: string; epoch: number; point: RecoveryPointInfo; points?: RecoveryPointInfo[] }> {
    const r = this.replica(replicaVmId);
    const vmId = resourceName('vm', r.replicationId);
    const replica = await this.readPointsIfAny(r);
    const points = pointInfos(replica);
    let f = this.state.failovers[vmId];
    // a committed failover's VM is an Azure VM of its own: failing over again needs failback first
    if (f?.committed) throw new OsrError('INVALID_STATE', `${r.vmName} was failed over to Azure and committed (VM ${vmId}); bring it home before failing over again`);
    if (!f) {
      const point = pointId !== null ? points.find((p) => p.id === pointId) : points.at(-1);
      if (!point) throw new OsrError('NOT_FOUND', pointId !== null ? `the replica of ${r.vmName} has no recovery point ${pointId}` : `the replica of ${r.vmName} has no recovery point yet`);
      const seq = this.pointSeq(point.id);
      // the record first: a promote run again finds what it started, whatever point is newest by then
      // the VM runs in a newer epoch than its replica's primary: one that writes on is refused
      const epoch = (replica?.record.epoch ?? 1) + 1;
      f = { vmId, replicaId: r.id, itemId: r.itemId, job: resourceName('failover', r.replicationId, String(seq), String(epoch)), seq, epoch, committed: false, at: new Date(this.clock.now()).toISOString() };
      this.state.failovers[vmId] = f;
      await this.save();
    }
    // the old primary writes no more into the replica: its access is revoked (Azure applies it within 30 s; a failover copies its point and never reads the live blobs)
    await this.agentAccess(r.id, false);
    // a change of point cut short is finished (its VM is the one that runs), else the point's VM made
    if (f.next) await this.finishChange(r, f);
    else await this.makeFailoverVm(r, f.seq, f.job);
    this.ctx?.inventoryChanged();
    return { vmId, epoch: f.epoch, point: await this.pointInfo(r, f.seq), points };
  }

  async changeRecoveryPoint(vmId: string, pointId: string): Promise<{ point: RecoveryPointInfo }> {
    const f = this.failover(vmId);
    if (f.committed) throw new OsrError('INVALID_STATE', `the failover of ${vmId} is committed: its point cannot change`);
    const r = this.replica(f.replicaId);
    const seq = this.pointSeq(pointId);
    // the point must be there before anything of the running VM goes
    const point = await this.pointInfo(r, seq);
    if (f.next && f.next.seq !== seq) {
      // another point asked for than the change cut short: what that change made goes, the new one starts over
      await this.recovery(r.id).removeJob(f.next.job);
      f.next = undefined;
      await this.save();
    }
    if (f.seq !== seq || f.next) {
      f.next ??= { job: resourceName('failover', r.replicationId, String(seq), String(this.clock.now())), seq };
      await this.save();
      await this.finishChange(r, f);
    }
    return { point };
  }

  /** A change of point recorded in `f.next`: what the old point made goes first (its VM holds the name the new one takes), then the new point's VM. */
  private async finishChange(r: AzureReplicaRecord, f: AzureFailoverRecord): Promise<void> {
    const next = f.next!;
    await this.recovery(r.id).removeJob(f.job);
    await this.makeFailoverVm(r, next.seq, next.job);
    f.job = next.job;
    f.seq = next.seq;
    f.next = undefined;
    await this.save();
  }

  async commitFailover(vmId: string): Promise<{ point: RecoveryPointInfo }> {
    const f = this.failover(vmId);
    const r = this.replica(f.replicaId);
    if (f.next) throw new OsrError('INVALID_STATE', `a change of ${vmId}'s recovery point is under way: run it again before the commit`);
    const point = await this.pointInfo(r, f.seq).catch(() => ({ id: String(f.seq), at: f.at, consistency: 'crash' as const }));
    if (!f.committed) {
      // the managed disks hold the VM now: the copies they were imported from go
      await this.recovery(r.id).removeCopies(f.job);
      f.committed = true;
      await this.save();
    }
    return { point };
  }

  // ---- replication from Azure: failback through the region's agent

  /** The region's agent, which failback needs (NOT_SUPPORTED without one). */
  private regionAgent(): AgentApi {
    if (!this.regionApi || !this.site.regionAgent) {
      throw new OsrError('NOT_SUPPORTED', `fabric ${this.site.name} (Azure) has no osr agent in its region (regionAgent in the site file): failback reads the Azure disks there and sends home only what differs`, { option: 'regionAgent' });
    }
    return this.regionApi;
  }

  /** What the replication every agent runs needs of this site: one host, the region's agent, whose VMs are failbacks under way. */
  private regionSite(): AgentSite {
    return {
      name: this.site.name,
      locate: (id) => {
        const f = this.state.failovers[id];
        if (!f?.failback?.imported) throw new OsrError('VM_NOT_FOUND', `VM ${id} of fabric ${this.site.name} is not being failed back (it is not at the region's agent)`);
        return { id, name: this.replica(f.replicaId).vmName, hostId: this.hostId, isVm: true };
      },
      agent: (hostId) => {
        if (hostId !== this.hostId) throw new OsrError('NOT_FOUND', `fabric ${this.site.name} has one host, ${this.hostId}, not ${hostId}`);
        return this.regionAgent();
      },
      agentEndpoint: () => {
        this.regionAgent();
        const a = this.site.regionAgent!;
        return { name: a.name, address: a.addresses[0]!, port: a.replicationPort };
      },
      nics: (id) => this.replica(this.failover(id).replicaId).nics.map((n) => ({ id: n.id, vmNetwork: n.vmNetwork, ip: n.ip })),
      replicationPeer: (vmId) => this.state.failovers[vmId]?.failback?.peer ?? undefined,
      fencedEpoch: () => 0,
      // the VM in Azure is deallocated before its disks are read: nothing writes to them
      stoppingVm: async (vmId) => {
        await this.vmPower(vmId, 'stop');
      },
      changed: async (c) => {
        if (c.kind !== 'replicating') return;
        const f = this.state.failovers[c.vmId];
        if (!f?.failback) return;
        f.failback.peer = c.peer;
        await this.save();
      },
      log: { warn: (o, msg) => this.ctx?.log.warn(o, msg) },
    };
  }

  /**
   * Replicate a failed-over VM home (the vault's reprotect, after the old primary was
   * demoted): deallocated, its disks read into the region's agent, which replicates them
   * to `req.peer` comparing every block. Safe to run again at every step.
   */
  async ensureReplication(req: ReplicationRequest): Promise<void> {
    const f = this.failover(req.vmId);
    if (!f.committed) throw new OsrError('INVALID_STATE', `the failover of ${req.vmId} is not committed: commit it before it replicates home`);
    const api = this.regionAgent();
    if (!f.failback) {
      f.failback = { imported: false };
      await this.save();
      // it is deallocated from here on: the inventory says so
      this.ctx?.inventoryChanged();
    }
    if (!f.failback.imported) {
      await this.importForFailback(f, api);
      f.failback.imported = true;
      await this.save();
    }
    await this.home.ensureReplication(req);
  }

  /**
   * Deallocate the VM, then have the region's agent read its managed disks through read SASs
   * (granted for the read, revoked after): into a VM of its own (`refresh` false), or again
   * into that VM, what differs written through its tracked disks (a planned failover's last
   * look). Each managed disk is checked to be the failover's own (its job's and item's
   * tags) before access to it is asked.
   */
  private async importForFailback(f: AzureFailoverRecord, api: AgentApi, refresh = false): Promise<void> {
    const r = this.replica(f.replicaId);
    await this.vmPower(f.vmId, 'stop');
    const record = (await this.readPoints(r)).record;
    const disks = this.clients.compute.disks;
    const rg = this.site.resourceGroup;
    const lro = { updateIntervalInMs: this.o.pollMs ?? 5000 };
    const base = resourceName(r.vmName);
    const sources: { id: string; name: string; size: number; url: string }[] = [];
    try {
      // the disks as the replica's record names them (the failover made its managed disks from those names); each checked below to be the failover's own
      if (record.disks.length !== r.disks.length) throw new OsrError('REPLICA_STORE_CORRUPT', `the replica of ${r.vmName} records ${record.disks.length} disks; the VM has ${r.disks.length}`);
      for (const d of record.disks) {
        const name = resourceName(base, d.name);
        let made;
        try {
          made = await disks.get(rg, name);
        } catch (e) {
          throw armError(e, `reading disk ${name}`);
        }
        if (made.tags?.[OSR_TAG.job] !== f.job || made.tags[OSR_TAG.item] !== f.itemId) throw new OsrError('AZURE_CONFLICT', `disk ${name} is not the one the failover of ${r.vmName} made (job ${f.job})`, { disk: name });
        let access;
        try {
          access = await disks.grantAccess(rg, name, { access: 'Read', durationInSeconds: 4 * 3600 }, lro);
        } catch (e) {
          throw armError(e, `granting read access to disk ${name}`);
        }
        if (!access.accessSAS) throw new OsrError('AZURE_OPERATION_FAILED', `Azure granted access to disk ${name} without a URL`);
        sources.push({ id: d.id, name: d.name, size: d.size, url: access.accessSAS });
      }
      const path = `/v1/vms/${encodeURIComponent(r.vmName)}/import`;
      let p = await api.post<{ state: string; bytes: number; totalBytes: number; error?: { code: string; message: string } }>(path, { id: record.vmId, epoch: f.epoch, disks: sources, ...(refresh ? { refresh: true } : {}) });
      let logged = 0;
      while (p.state === 'importing') {
        if (this.clock.now() - logged >= 30_000) {
          logged = this.clock.now();
          this.ctx?.log.info({ vm: r.vmName, bytes: p.bytes, totalBytes: p.totalBytes }, `failback of ${r.vmName}: the region's agent has read ${p.bytes} of ${p.totalBytes} bytes`);
        }
        await new Promise((res) => setTimeout(res, this.o.importPollMs ?? 2000));
        p = await api.get(path);
      }
      if (p.state !== 'done') {
        const code = p.error?.code !== undefined && isErrorCode(p.error.code) ? p.error.code : 'AZURE_OPERATION_FAILED';
        throw new OsrError(code, `the region's agent could not read the disks of ${r.vmName}: ${p.error?.message ?? p.state}`, { vm: r.vmName });
      }
    } finally {
      // the access ends as soon as the disks are read (or the import failed: the next try grants it again)
      for (const d of record.disks) {
        const name = resourceName(base, d.name);
        await disks.revokeAccess(rg, name, lro).catch((e: unknown) => this.ctx?.log.warn({ disk: name, err: (e as Error).message }, `the read access to disk ${name} could not be ended now; it expires on its own`));
      }
    }
  }

  private homeOrRefuse(vmId: string, what: string): void {
    if (!this.state.failovers[vmId]?.failback?.imported) throw new OsrError('INVALID_STATE', `fabric ${this.site.name} (Azure) is a recovery site: ${what} of ${vmId} runs only while it fails back (reprotect it first)`);
  }

  replicationStatus(vmId: string): Promise<ReplicationStatus> {
    this.homeOrRefuse(vmId, 'the replication status');
    return this.home.replicationStatus(vmId);
  }

  async resync(vmId: string): Promise<void> {
    this.homeOrRefuse(vmId, 'a resync');
    await this.home.resync(vmId);
  }

  async stopReplication(vmId: string): Promise<void> {
    // nothing replicates from Azure but a failback
    if (this.state.failovers[vmId]?.failback?.imported) await this.home.stopReplication(vmId);
  }

  /**
   * The planned failover home: the disks in Azure are read once more (the VM deallocated; a
   * VM started meanwhile outside osr wrote since the reprotect read them), what differs is
   * written through the region's VM, and its last delta is the point.
   */
  async prepareFailover(vmId: string): Promise<{ point: RecoveryPointInfo }> {
    this.homeOrRefuse(vmId, 'a planned failover');
    await this.importForFailback(this.failover(vmId), this.regionAgent(), true);
    return this.home.prepareFailover(vmId);
  }

  async fenceVm(vmId: string): Promise<void> {
    // a failed-over VM that another site took over again is deallocated and stays so
    if (this.state.failovers[vmId]) await this.setPower(vmId, 'stop');
  }

  /**
   * After the VM came home (a planned failover of the failback, committed there): what the
   * failover made in Azure goes — the region agent's copy, the VM, its NICs and managed
   * disks — and the replica's container is the replica again, marked stale so that the
   * primary at home compares every block before any delta. Its access is handed anew.
   */
  async demoteVm(vmId: string, epoch: number, itemId: string): Promise<ReplicaVm> {
    const f = this.state.failovers[vmId];
    // run again after it finished: the replica record is there, the failover's gone
    const r = f ? this.replica(f.replicaId) : Object.values(this.state.replicas).find((x) => resourceName('vm', x.replicationId) === vmId);
    if (!r) throw new OsrError('VM_NOT_FOUND', `fabric ${this.site.name} has no failed-over VM ${vmId}`);
    if (r.itemId !== itemId) throw new OsrError('INVALID_STATE', `VM ${vmId} is of item ${r.itemId}, not ${itemId}`);
    if (f) {
      if (!f.committed) throw new OsrError('INVALID_STATE', `the failover of ${vmId} is not committed`);
      // only a newer copy (the VM at home, promoted after this failover) takes its place
      if (epoch <= f.epoch) throw new OsrError('EPOCH_STALE', `${vmId} runs in epoch ${f.epoch}; a demote for epoch ${epoch} is not from a newer copy`, { epoch, current: f.epoch });
      if (f.failback?.imported) {
        await this.home.stopReplication(vmId).catch((e: unknown) => {
          if ((e as OsrError).code !== 'VM_NOT_FOUND' && (e as OsrError).code !== 'NOT_FOUND') throw e;
        });
        await this.regionAgent().delete(`/v1/vms/${encodeURIComponent(r.vmName)}/import`);
      }
      await this.vmPower(vmId, 'stop').catch(() => undefined);
      const { removed } = await this.recovery(r.id).removeJob(f.job, undefined, { copies: true });
      this.ctx?.log.info({ vm: vmId, removed }, `${r.vmName} came home: ${removed.length} Azure resource(s) of its failover removed`);
      await markReplicaStale(this.container(r.id), epoch);
      delete this.state.failovers[vmId];
      await this.save();
      this.ctx?.inventoryChanged();
    }
    const containerUrl = this.container(r.id).url.split('?')[0]!;
    return { replicaVmId: r.id, hostId: this.hostId, agent: { kind: 'azure', containerUrl }, access: await this.grantAgent(r.id), nics: r.nics.map((n) => ({ id: n.id, vmNetwork: n.vmNetwork, ip: n.ip })), reused: true };
  }

}

