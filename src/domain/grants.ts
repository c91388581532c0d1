/**
 * A replication grant: the vault's word that one host's agent may replicate one VM to
 * another host's agent. The vault signs it (src/pki/grant.ts); agents check it
 * (docs/design/agent-channel.md, Replication grants).
 */

/** One end of a replication: a host (its agent's certificate's common name) of a fabric (its certificate's fabric). */
export interface GrantEnd {
  fabricId: string;
  /** the host's name; a target in Azure storage is the container's URL (src/domain/azure-layout.ts) */
  host: string;
}

export interface ReplicationGrant {
  /** the VM's replication id: the id its agents know it by (the replica store's VM id) */
  replicationId: string;
  /** the protected item it was granted for (for logs and audits) */
  item: string;
  source: GrantEnd;
  target: GrantEnd;
  /** when the vault signed it (ISO time): of two grants for one VM, the newer one counts */
  issuedAt: string;
}
