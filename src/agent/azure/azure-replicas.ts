/**
 * The Azure replicas of the VMs this agent replicates to a storage container: opened for
 * the replication sessions the agent runs in process (replica-client.ts `over`). The
 * container and its SAS come from the replication (the SAS is renewed by whoever enabled
 * it); nothing here is reachable from the network.
 */
import path from 'node:path';
import { ContainerClient } from '@azure/storage-blob';
import { OsrError } from '../../domain/errors.js';
import { safeName } from '../../domain/names.js';
import type { ReplicaHolder, ReplicaOpener, ReplicaOpenRequest, SourceAgent } from '../ports/replica-target.js';
import { ReplicaHolders } from '../ports/target-rules.js';
import { AzureBlobReplica } from './blob-replica.js';

/** A container and the SAS that grants this agent access to it. */
export interface ContainerAccess {
  containerUrl: string;
  sas: string;
}

export class AzureReplicas implements ReplicaOpener {
  private readonly opened = new Map<string, { key: string; replica: AzureBlobReplica }>();
  /** replicas being retired (their calls under way ending): a new one opens only after */
  private readonly retiring = new Map<string, Promise<void>>();
  private readonly holders = new ReplicaHolders();

  constructor(
    private readonly spoolRoot: string,
    private readonly agentName: string,
    /** the container of the VM's replication to Azure, if it has one */
    private readonly access: (vmId: string) => ContainerAccess | undefined,
    private readonly now: () => number = Date.now,
  ) {}

  async open(req: ReplicaOpenRequest, source: SourceAgent): Promise<AzureBlobReplica> {
    safeName(req.vmId, 'VM id');
    if (source.name !== this.agentName) throw new OsrError('AUTH_FAILED', `an Azure replica is written only by the agent that replicates the VM (${this.agentName}), not by ${source.name}`);
    const access = this.access(req.vmId);
    if (!access) throw new OsrError('NOT_FOUND', `VM ${req.vmName} is not replicated to Azure from this agent`);
    const key = `${access.containerUrl}?${access.sas}`;
    const cur = this.opened.get(req.vmId);
    if (cur && cur.key === key && !cur.replica.broken && AzureBlobReplica.sameDisks(cur.replica.disks, req.disks)) {
      await cur.replica.setRetention(req.retention);
      return cur.replica;
    }
    // one object per replica at a time: the old one (another SAS, a failed record write,
    // other disks) takes no more calls, and its calls under way end before the new one opens
    if (cur) this.retire(req.vmId);
    await this.retiring.get(req.vmId);
    const container = new ContainerClient(key);
    const replica = await AzureBlobReplica.open(container, req, { spoolDir: path.join(this.spoolRoot, safeName(req.vmId, 'VM id')), now: this.now });
    this.opened.set(req.vmId, { key, replica });
    return replica;
  }

  /** The replica opened for a VM, if one is. */
  get(vmId: string): AzureBlobReplica | undefined {
    return this.opened.get(vmId)?.replica;
  }

  claim(vmId: string, holder: ReplicaHolder): void {
    this.holders.claim(vmId, holder);
  }

  release(vmId: string, holder: ReplicaHolder): void {
    this.holders.release(vmId, holder);
  }

  private retire(vmId: string): void {
    const cur = this.opened.get(vmId);
    if (!cur) return;
    this.opened.delete(vmId);
    const before = this.retiring.get(vmId) ?? Promise.resolve();
    const done = before.then(() => cur.replica.retire());
    this.retiring.set(vmId, done);
    void done.then(() => {
      if (this.retiring.get(vmId) === done) this.retiring.delete(vmId);
    });
  }

  /** The VM's replication to Azure ended: its replica is no longer held here (the container stays). */
  forget(vmId: string): void {
    this.retire(vmId);
    this.holders.drop(vmId, new OsrError('NETWORK_ERROR', `the replication of ${vmId} ended`));
  }
}

