/**
 * The vault's replication grants (src/pki/grant.ts, agent-channel.md): when a workflow sets
 * replication up it names, from its own inventory, the VM and the two hosts, and signs
 * that. Hosts are named as their agents' certificates name them (the inventory's host name
 * and the fabric's id), so the agents can check the grant against the peer they talk to.
 */
import { replicaContainerName } from '../domain/azure-layout.js';
import { OsrError } from '../domain/errors.js';
import { isSafeName } from '../domain/names.js';
import type { ReplicationGrant } from '../domain/grants.js';
import type { VaultStore } from '../store/index.js';

/** Signs a grant (the vault's CA key, at the vault's time): the vault hands this to its workflows. */
export type GrantSigner = (g: Omit<ReplicationGrant, 'issuedAt'>) => string;

export interface GrantRequest {
  item: string;
  /** the VM's replication id (its agents' id of it); undefined: not known, no grant */
  replicationId: string | undefined;
  source: { fabricId: string; hostId: string | undefined };
  target: { fabricId: string; hostId: string | undefined };
}

/**
 * A signed grant for replication from the source host to the target host, or undefined
 * when the inventory does not name both hosts and the VM (a provider that forwards grants
 * then refuses to set replication up without one: nothing is weakened).
 */
export async function replicationGrant(store: VaultStore, sign: GrantSigner, r: GrantRequest): Promise<string | undefined> {
  if (r.replicationId === undefined || r.source.hostId === undefined || r.target.hostId === undefined) return undefined;
  const [source, target] = await Promise.all([store.fabrics.findObject(r.source.hostId), store.fabrics.findObject(r.target.hostId)]);
  if (source?.kind !== 'host' || target?.kind !== 'host') return undefined;
  // a host whose name no agent certificate could carry gets no grant (signGrant refuses it)
  if (!isSafeName(source.name) || !isSafeName(target.name) || !isSafeName(r.replicationId) || !isSafeName(r.item)) return undefined;
  // nor does a host the vault has not admitted (docs/security.md, host admission)
  const admitted = await Promise.all([store.hostAdmissions.get(r.source.fabricId, source.name), store.hostAdmissions.get(r.target.fabricId, target.name)]);
  if (admitted.some((a) => a?.state !== 'admitted')) return undefined;
  return sign({ replicationId: r.replicationId, item: r.item, source: { fabricId: r.source.fabricId, host: source.name }, target: { fabricId: r.target.fabricId, host: target.name } });
}

/**
 * A signed grant for replication from the source host into an Azure container (the
 * target fabric's, named by its URL), or undefined when the inventory does not name the
 * source host and the VM.
 */
export async function containerGrant(store: VaultStore, sign: GrantSigner, r: Omit<GrantRequest, 'target'> & { targetFabricId: string; containerUrl: string }): Promise<string | undefined> {
  if (r.replicationId === undefined || r.source.hostId === undefined) return undefined;
  const source = await store.fabrics.findObject(r.source.hostId);
  if (source?.kind !== 'host' || !isSafeName(source.name) || !isSafeName(r.replicationId) || !isSafeName(r.item)) return undefined;
  if ((await store.hostAdmissions.get(r.source.fabricId, source.name))?.state !== 'admitted') return undefined;
  return sign({ replicationId: r.replicationId, item: r.item, source: { fabricId: r.source.fabricId, host: source.name }, target: { fabricId: r.targetFabricId, host: r.containerUrl } });
}

/**
 * A container URL a recovery fabric answered for a VM's replica, checked before the vault
 * signs a grant for it: named from the VM's replication id, in a storage account the
 * fabric's inventory reported (`accounts`: the storage locations' paths to accept), never
 * one the answer alone names.
 */
export function checkReplicaContainer(containerUrl: string, replicationId: string | undefined, accounts: readonly unknown[], vmName: string): void {
  const expected = replicationId !== undefined ? accounts.filter((a): a is string => typeof a === 'string').map((a) => `${a.replace(/\/+$/, '')}/${replicaContainerName(replicationId)}`) : [];
  if (!expected.includes(containerUrl)) {
    throw new OsrError('INVALID_STATE', `the recovery fabric answered container ${containerUrl} for ${vmName}; its replica's container is ${expected.join(' or ') || '(unknown: the VM has no replication id, or its storage no account)'}`);
  }
}
