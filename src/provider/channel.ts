/**
 * The provider's side of the channel: heartbeats, inventory, commands by long-poll, and
 * their progress and results, all over mutual TLS with the provider's certificate.
 */
import type { InventoryDocument } from '../domain/resources.js';
import type { ProviderRegistration } from './registration.js';
import { VaultClient } from './vault-client.js';

export interface VaultCommand {
  id: string;
  kind: string;
  body: Record<string, unknown>;
  jobId: string | null;
  deliveries: number;
  createdAt: string;
}

export interface ItemStatus {
  health?: 'Healthy' | 'Warning' | 'Critical';
  healthReasons?: { code: string; message: string }[];
  rpoSeconds?: number | null;
  recoveryPoints?: { id: string; at: string; consistency: 'crash' | 'app' }[];
  /** measured at the source: change-log bytes per second (last hour, busiest delta) and log bytes not yet at the replica */
  churnBytesPerSec?: number | null;
  peakChurnBytesPerSec?: number | null;
  pendingLogBytes?: number | null;
}

export class ProviderChannel {
  readonly client: VaultClient;

  constructor(readonly registration: ProviderRegistration) {
    this.client = new VaultClient(registration.vault.url, { tls: registration.tls });
  }

  close(): void {
    this.client.close();
  }

  heartbeat(status?: Record<string, unknown>): Promise<{ time: string; heartbeatIntervalSeconds: number }> {
    return this.client.request('POST', '/api/v1/provider/heartbeat', status ? { status } : {});
  }

  /** The CA's certificate revocation list (PEM), for this fabric's agents. */
  revocationList(): Promise<string> {
    return this.client.request<string>('GET', '/api/v1/provider/crl', undefined, { text: true });
  }

  putInventory(inventory: InventoryDocument, scope: 'all' | string[] = 'all'): Promise<{ changes: number }> {
    return this.client.request('PUT', '/api/v1/provider/inventory', { scope, inventory }, { timeoutMs: 120_000 });
  }

  async commands(waitSeconds: number, signal?: AbortSignal): Promise<VaultCommand[]> {
    const r = await this.client.request<{ commands: VaultCommand[] }>('GET', `/api/v1/provider/commands?waitSeconds=${waitSeconds}`, undefined, { timeoutMs: (waitSeconds + 30) * 1000, signal });
    return r.commands;
  }

  async progress(id: string, progress: Record<string, unknown>): Promise<void> {
    await this.client.request('POST', `/api/v1/provider/commands/${encodeURIComponent(id)}/progress`, { progress });
  }

  async result(id: string, outcome: { result?: unknown; error?: { code: string; message: string; details?: Record<string, unknown> } }): Promise<void> {
    await this.client.request('POST', `/api/v1/provider/commands/${encodeURIComponent(id)}/result`, outcome);
  }

  /** Enrol a host agent: the vault's CA certifies the public key the agent made (its private key never leaves the host). */
  enrolAgent(name: string, publicKey: string, names: { dnsNames?: string[]; ipAddresses?: string[] } = {}): Promise<{ certificate: string; caCertificate: string; notAfter: string }> {
    return this.client.request('POST', '/api/v1/provider/agent-certificates', { name, publicKey, ...names });
  }

  async itemStatus(itemId: string, status: ItemStatus): Promise<void> {
    await this.client.request('POST', `/api/v1/provider/items/${encodeURIComponent(itemId)}/status`, status);
  }
}
