/**
 * What a failover makes in Azure (docs/design/azure.md, Failover): each disk's snapshot of
 * the chosen point copied to a blob of its own (the live blob is never touched), a managed
 * disk imported from each copy, a NIC per source NIC on its mapped subnet, and the VM with
 * the disks attached. Every resource is tagged with the protected item, the job and the
 * role, so a job that crashed finds what it made, and a cleanup removes exactly that.
 *
 * Each step is safe to run again: a resource this job made already is taken as it is
 * (waited for if it is still being made); one with the same name that another job or a
 * person made is refused (AZURE_CONFLICT), never overwritten. A 409 from Resource Manager
 * is resolved by reading the resource, not by sending the request again blindly. 429 and
 * 5xx answers are retried by the SDK's pipeline, honouring Retry-After.
 */
import crypto from 'node:crypto';
import type { ComputeManagementClient, Disk, VirtualMachine } from '@azure/arm-compute';
import type { NetworkInterface, NetworkManagementClient, VirtualNetwork } from '@azure/arm-network';
import type { BlobClient, ContainerClient } from '@azure/storage-blob';
import { isRestError } from '@azure/storage-blob';
import { OsrError } from '../../domain/errors.js';
import { pageBlobBytes, readVhdFooter, VHD_FOOTER_BYTES, azureDiskBytes } from '../../domain/vhd.js';

export const OSR_TAG = { item: 'osr-item', job: 'osr-job', role: 'osr-role' } as const;
export type AzureRole = 'failover' | 'test' | 'failback';

/** The resource group, region and storage account osr makes its resources in. */
export interface AzurePlacement {
  subscriptionId: string;
  resourceGroup: string;
  location: string;
  /** the Resource Manager id of the storage account holding the replicas (a disk import names it) */
  storageAccountId: string;
}

export interface VmFromPoint {
  itemId: string;
  jobId: string;
  role: AzureRole;
  /** the VM's name in Azure */
  vmName: string;
  vmSize: string;
  /** BIOS sources become V1, UEFI sources V2 */
  generation: 'V1' | 'V2';
  osType: 'Linux' | 'Windows';
  /** Standard_LRS, StandardSSD_LRS, Premium_LRS, … */
  diskSku: string;
  /** the point's snapshot of each disk, the OS disk first, then the data disks in LUN order */
  disks: { name: string; sizeBytes: number; snapshot: BlobClient }[];
  /** a NIC per source NIC: the subnet it goes on, and its static address if it had one */
  nics: { subnetId: string; privateIp?: string | undefined }[];
}

export interface MadeVm {
  vmId: string;
  diskIds: string[];
  nicIds: string[];
  /** the blobs the disks were imported from */
  copies: string[];
}

/** A step's progress, for the job that runs it. */
export type StepReport = (step: string, detail: Record<string, unknown>) => void;

const NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}[a-zA-Z0-9_]$/;

/**
 * A name for a resource osr makes: letters, digits, hyphens; at most 64 characters. A name
 * whose parts had to change (other characters, or too long) keeps its start and ends in a
 * hash of the parts as given, so that parts differing only in what was changed (`data_1`
 * and `data.1`, two disks' numbers past the 64th character) never share a name.
 */
export function resourceName(...parts: string[]): string {
  const given = parts.join('-');
  const full = given
    .replace(/[^a-zA-Z0-9-]+/g, '-')
    .replace(/-+/g, '-')
    .replace(/^-|-$/g, '');
  const hash = () => crypto.createHash('sha256').update(parts.join('\0')).digest('hex').slice(0, 8);
  const name = full === given && full.length <= 64 ? full : `${full.slice(0, 55).replace(/-+$/, '')}-${hash()}`;
  if (!NAME.test(name)) throw new OsrError('INVALID_ARGUMENT', `${JSON.stringify(parts.join('-').slice(0, 80))} gives no Azure resource name`);
  return name;
}

function tagsOf(o: { itemId: string; jobId: string; role: AzureRole }): Record<string, string> {
  return { [OSR_TAG.item]: o.itemId, [OSR_TAG.job]: o.jobId, [OSR_TAG.role]: o.role };
}

/** A Resource Manager failure as an osr error. */
export function armError(e: unknown, what: string): OsrError {
  if (e instanceof OsrError) return e;
  if (isRestError(e)) {
    const details = { status: e.statusCode ?? null, azureCode: e.code ?? null };
    if (e.statusCode === 401 || e.statusCode === 403) return new OsrError('AUTH_FAILED', `Azure refused ${what}: ${e.code ?? e.statusCode}`, details, { cause: e });
    if (e.statusCode === 404) return new OsrError('NOT_FOUND', `${what}: Azure has no such resource (${e.code ?? 404})`, details, { cause: e });
    return new OsrError('AZURE_OPERATION_FAILED', `${what} failed: ${e.code ?? ''} ${e.message}`.trim(), details, { cause: e });
  }
  const err = e as { code?: string; message?: string };
  return new OsrError('AZURE_OPERATION_FAILED', `${what} failed: ${err?.code ? `${err.code}: ` : ''}${err?.message ?? String(e)}`, { azureCode: err?.code ?? null }, { cause: e });
}

function isStatus(e: unknown, status: number): boolean {
  return (isRestError(e) || (typeof e === 'object' && e !== null && 'statusCode' in e)) && (e as { statusCode?: number }).statusCode === status;
}

export interface AzureRecoveryOptions {
  /** how often a long-running operation is polled (ms); Resource Manager's Retry-After wins when it gives one */
  pollMs?: number;
  /** how often a blob copy is polled (ms) */
  copyPollMs?: number;
}

export class AzureRecovery {
  constructor(
    private readonly compute: ComputeManagementClient,
    private readonly network: NetworkManagementClient,
    /** the container the point's snapshots are in: the copies go beside them */
    private readonly container: ContainerClient,
    private readonly placement: AzurePlacement,
    private readonly o: AzureRecoveryOptions = {},
  ) {}

  private get rg(): string {
    return this.placement.resourceGroup;
  }

  /** the options of a long-running operation's call */
  private get lro(): { updateIntervalInMs: number } {
    return { updateIntervalInMs: this.o.pollMs ?? 5000 };
  }

  /**
   * Make, or take up what this job made of, a resource: read it first (another's is refused,
   * a finished one of ours taken), then PUT and wait; a 409 is answered by reading it again.
   */
  private async ensure<T extends { tags?: Record<string, string>; provisioningState?: string }>(
    what: string,
    owner: { itemId: string; jobId: string },
    get: () => Promise<T>,
    put: () => PromiseLike<T>,
  ): Promise<T> {
    const jobId = owner.jobId;
    const mine = (r: T): boolean => r.tags?.[OSR_TAG.job] === jobId && r.tags[OSR_TAG.item] === owner.itemId;
    const existing = await get().catch((e: unknown) => {
      if (isStatus(e, 404)) return undefined;
      throw armError(e, `reading ${what}`);
    });
    if (existing && !mine(existing)) {
      throw new OsrError('AZURE_CONFLICT', `${what} exists and was not made by this job (its ${OSR_TAG.job} tag is ${existing.tags?.[OSR_TAG.job] ?? 'absent'}): osr does not overwrite it`, { job: jobId, other: existing.tags?.[OSR_TAG.job] ?? null });
    }
    if (existing && existing.provisioningState === 'Succeeded') return existing;
    try {
      return await put();
    } catch (e) {
      if (!isStatus(e, 409)) throw armError(e, `making ${what}`);
      // a conflict: someone else's resource, or ours still being made by an earlier try
      for (let i = 0; i < 120; i++) {
        const now = await get().catch((err: unknown) => {
          throw armError(err, `reading ${what} after a conflict`);
        });
        if (!mine(now)) throw new OsrError('AZURE_CONFLICT', `${what} was made by another job or person while this job made it`, { job: jobId, other: now.tags?.[OSR_TAG.job] ?? null });
        if (now.provisioningState === 'Succeeded') return now;
        if (now.provisioningState === 'Failed') throw new OsrError('AZURE_OPERATION_FAILED', `${what} failed to be made (provisioning state Failed)`, { job: jobId });
        await new Promise((r) => setTimeout(r, this.o.pollMs ?? 5000));
      }
      throw new OsrError('AZURE_OPERATION_FAILED', `${what} is still being made after a conflict; run the step again`, { job: jobId });
    }
  }

  /** Copy a snapshot to a blob of its own (server side), checked for length and footer. */
  private async copySnapshot(jobId: string, disk: { name: string; sizeBytes: number; snapshot: BlobClient }): Promise<string> {
    const target = this.container.getPageBlobClient(`failover/${resourceName(jobId)}/${resourceName(disk.name)}.vhd`);
    const length = pageBlobBytes(disk.sizeBytes);
    // which snapshot a copy came from: a step run again with another point copies again
    const source = crypto.createHash('sha256').update(disk.snapshot.url).digest('hex').slice(0, 32);
    const wait = (): Promise<void> => new Promise((r) => setTimeout(r, this.o.copyPollMs ?? 2000));
    try {
      let props = await target.getProperties().catch((e: unknown) => (isStatus(e, 404) ? undefined : Promise.reject(e)));
      // a copy an earlier try began is waited for, not begun again over it
      while (props?.copyStatus === 'pending') {
        await wait();
        props = await target.getProperties();
      }
      if (props?.copyStatus !== 'success' || props.metadata?.osrjob !== jobId || props.metadata.osrsource !== source) {
        const poller = await target.beginCopyFromURL(disk.snapshot.url, { metadata: { osrjob: jobId, osrsource: source }, intervalInMs: this.o.copyPollMs ?? 2000 });
        await poller.pollUntilDone();
      }
      const made = await target.getProperties();
      if (made.contentLength !== length) throw new OsrError('AZURE_DISK_INVALID', `the copy of disk ${disk.name} is ${made.contentLength} bytes, not ${length}`, { blob: target.name });
      const footer = await target.downloadToBuffer(length - VHD_FOOTER_BYTES, VHD_FOOTER_BYTES);
      if (readVhdFooter(footer, `the copy of disk ${disk.name}`).currentSize !== azureDiskBytes(disk.sizeBytes)) {
        throw new OsrError('AZURE_DISK_INVALID', `the copy of disk ${disk.name} has a footer for another size`, { blob: target.name });
      }
    } catch (e) {
      if (e instanceof OsrError) throw e;
      throw new OsrError('AZURE_STORAGE_ERROR', `copying the point of disk ${disk.name}: ${(e as Error).message}`, undefined, { cause: e });
    }
    return target.url;
  }

  /** Make the VM of a point: copies, managed disks, NICs, the VM. Safe to run again after a crash at any step. */
  async createVm(plan: VmFromPoint, report: StepReport = () => undefined): Promise<MadeVm> {
    if (plan.disks.length === 0) throw new OsrError('INVALID_ARGUMENT', `VM ${plan.vmName} has no disk to fail over`);
    const tags = tagsOf(plan);
    const base = resourceName(plan.vmName);
    const { location } = this.placement;
    const copies: string[] = [];
    for (const [i, d] of plan.disks.entries()) {
      report('copy-point', { disk: d.name, index: i, of: plan.disks.length });
      copies.push(await this.copySnapshot(plan.jobId, d));
    }
    const diskIds: string[] = [];
    for (const [i, d] of plan.disks.entries()) {
      const name = resourceName(base, d.name);
      report('import-disk', { disk: d.name, name });
      const body: Disk = {
        location,
        tags,
        sku: { name: plan.diskSku as NonNullable<Disk['sku']>['name'] },
        ...(i === 0 ? { osType: plan.osType, hyperVGeneration: plan.generation } : {}),
        creationData: { createOption: 'Import', sourceUri: copies[i]!, storageAccountId: this.placement.storageAccountId },
      };
      const made = await this.ensure<Disk>(`disk ${name}`, plan, () => this.compute.disks.get(this.rg, name), () => this.compute.disks.createOrUpdate(this.rg, name, body, this.lro));
      diskIds.push(made.id!);
    }
    const nicIds: string[] = [];
    for (const [i, n] of plan.nics.entries()) {
      const name = resourceName(base, `nic${i}`);
      report('make-nic', { nic: i, name });
      const body: NetworkInterface = {
        location,
        tags,
        ipConfigurations: [{ name: 'ipconfig1', subnet: { id: n.subnetId }, privateIPAllocationMethod: n.privateIp ? 'Static' : 'Dynamic', ...(n.privateIp ? { privateIPAddress: n.privateIp } : {}), primary: true }],
      };
      const made = await this.ensure<NetworkInterface>(`NIC ${name}`, plan, () => this.network.networkInterfaces.get(this.rg, name), () => this.network.networkInterfaces.createOrUpdate(this.rg, name, body, this.lro));
      nicIds.push(made.id!);
    }
    report('make-vm', { name: base });
    const vm: VirtualMachine = {
      location,
      tags,
      hardwareProfile: { vmSize: plan.vmSize },
      storageProfile: {
        osDisk: { createOption: 'Attach', osType: plan.osType, managedDisk: { id: diskIds[0]! } },
        dataDisks: diskIds.slice(1).map((id, lun) => ({ lun, createOption: 'Attach', managedDisk: { id } })),
      },
      networkProfile: { networkInterfaces: nicIds.map((id, i) => ({ id, primary: i === 0 })) },
      diagnosticsProfile: { bootDiagnostics: { enabled: true } },
    };
    const made = await this.ensure<VirtualMachine>(`VM ${base}`, plan, () => this.compute.virtualMachines.get(this.rg, base), () => this.compute.virtualMachines.createOrUpdate(this.rg, base, vm, this.lro));
    return { vmId: made.id!, diskIds, nicIds, copies };
  }

  /** An isolated virtual network for a drill: one subnet, no peering, no gateway. */
  async createDrillNetwork(o: { itemId: string; jobId: string; name: string; addressPrefix: string }): Promise<{ vnetId: string; subnetId: string }> {
    const name = resourceName(o.name);
    const body: VirtualNetwork = {
      location: this.placement.location,
      tags: tagsOf({ ...o, role: 'test' }),
      addressSpace: { addressPrefixes: [o.addressPrefix] },
      subnets: [{ name: 'drill', addressPrefix: o.addressPrefix }],
    };
    const made = await this.ensure<VirtualNetwork>(`virtual network ${name}`, o, () => this.network.virtualNetworks.get(this.rg, name), () => this.network.virtualNetworks.createOrUpdate(this.rg, name, body, this.lro));
    const subnet = made.subnets?.find((s) => s.name === 'drill');
    if (!subnet?.id) throw new OsrError('AZURE_OPERATION_FAILED', `virtual network ${name} came back without its subnet`);
    return { vnetId: made.id!, subnetId: subnet.id };
  }

  /**
   * Remove everything a job made, found by its tag: VMs first (a disk or NIC attached to a
   * VM cannot go), then NICs, disks, virtual networks, and the blob copies. Safe to run
   * again; what is gone already is skipped. Answers what was removed. `copies: false`: the
   * job made no blob (a drill network of a recovery plan).
   */
  async removeJob(jobId: string, report: StepReport = () => undefined, o: { copies?: boolean } = {}): Promise<{ removed: string[] }> {
    const removed: string[] = [];
    const ours = (t: Record<string, string> | undefined): boolean => t?.[OSR_TAG.job] === jobId;
    const gone = async (what: string, del: () => PromiseLike<unknown>): Promise<void> => {
      report('remove', { resource: what });
      try {
        await del();
      } catch (e) {
        if (!isStatus(e, 404)) throw armError(e, `removing ${what}`);
      }
      removed.push(what);
    };
    try {
      for await (const vm of this.compute.virtualMachines.list(this.rg)) if (ours(vm.tags)) await gone(`VM ${vm.name}`, () => this.compute.virtualMachines.delete(this.rg, vm.name!, this.lro));
      for await (const nic of this.network.networkInterfaces.list(this.rg)) if (ours(nic.tags)) await gone(`NIC ${nic.name}`, () => this.network.networkInterfaces.delete(this.rg, nic.name!, this.lro));
      for await (const d of this.compute.disks.listByResourceGroup(this.rg)) if (ours(d.tags)) await gone(`disk ${d.name}`, () => this.compute.disks.delete(this.rg, d.name!, this.lro));
      for await (const v of this.network.virtualNetworks.list(this.rg)) if (ours(v.tags)) await gone(`virtual network ${v.name}`, () => this.network.virtualNetworks.delete(this.rg, v.name!, this.lro));
    } catch (e) {
      throw armError(e, `removing what job ${jobId} made`);
    }
    if (o.copies !== false) removed.push(...(await this.removeCopies(jobId)).removed);
    return { removed };
  }

  /** Remove the blob copies a job's disks were imported from (the disks hold their data once made); safe to run again. */
  async removeCopies(jobId: string): Promise<{ removed: string[] }> {
    const removed: string[] = [];
    try {
      for await (const b of this.container.listBlobsFlat({ prefix: `failover/${resourceName(jobId)}/`, includeMetadata: true })) {
        // only the copies this job made
        if (b.metadata?.osrjob !== jobId) continue;
        await this.container.deleteBlob(b.name, { deleteSnapshots: 'include' }).catch((e: unknown) => {
          if (!isStatus(e, 404)) throw e;
        });
        removed.push(`blob ${b.name}`);
      }
    } catch (e) {
      throw new OsrError('AZURE_STORAGE_ERROR', `removing the blob copies of job ${jobId}: ${(e as Error).message}`, undefined, { cause: e });
    }
    return { removed };
  }
}
