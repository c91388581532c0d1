/**
 * The provider's side of the channel: heartbeats, inventory, commands by long-poll, and
 * their progress and results, all over mutual TLS with the provider's certificate.
 */
import type { FabricCapabilities } from '../domain/capabilities.js';
import type { CommandBody, CommandKind } from '../domain/commands.js';
import type { InventoryDocument } from '../domain/resources.js';
import { OsrError } from '../domain/errors.js';
import { generateKeyPairPem, readCertificateInfo, renewalDue } from '../pki/index.js';
import { saveRenewal, type ProviderRegistration } from './registration.js';
import { VaultClient } from './vault-client.js';
import type { EnrolmentProof } from '../domain/enrolment.js';

/** A command as the vault's queue hands it out: any kind, its body not checked yet. */
export interface WireCommand {
  id: string;
  kind: string;
  body: Record<string, unknown>;
  jobId: string | null;
  deliveries: number;
  createdAt: string;
}

/** A command of a kind the provider knows, its body checked and typed (src/domain/commands.ts). */
export interface VaultCommand<K extends CommandKind = CommandKind> extends Omit<WireCommand, 'kind' | 'body'> {
  kind: K;
  body: CommandBody<K>;
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
  private current: VaultClient;
  private renewal: Promise<boolean> | undefined;

  constructor(
    public registration: ProviderRegistration,
    private readonly o: { /** where the registration is kept (a renewed certificate is saved there) */ dir?: string } = {},
  ) {
    this.current = new VaultClient(registration.vault.url, { tls: registration.tls });
  }

  get client(): VaultClient {
    return this.current;
  }

  close(): void {
    this.current.close();
  }

  /**
   * Renew this provider's certificate when two thirds of its life have passed (at `now`,
   * the provider's clock): a new key pair made here, certified by the vault, saved whole
   * to the registration directory, and used from the next call on. Calls under way finish
   * on the old connection. Answers whether it renewed.
   */
  renewIfDue(now: number): Promise<boolean> {
    this.renewal ??= this.renew(now).finally(() => (this.renewal = undefined));
    return this.renewal;
  }

  private async renew(now: number): Promise<boolean> {
    if (!renewalDue(readCertificateInfo(this.registration.tls.cert), now)) return false;
    const pair = await generateKeyPairPem();
    const r = await this.current.request<{ certificate: string; caCertificate: string; notAfter: string }>('POST', '/api/v1/provider/certificate', { publicKey: pair.publicKeyPem });
    if (r.caCertificate.trim() !== this.registration.tls.ca.trim()) throw new OsrError('TLS_PEER_CERT_UNTRUSTED', 'the vault answered the renewal with a CA other than the one this provider registered with; register the provider again');
    const info = readCertificateInfo(r.certificate);
    if (info.role !== 'provider' || info.commonName !== this.registration.providerId) throw new OsrError('PROTOCOL_ERROR', `the vault answered the renewal with a certificate for ${info.commonName} (${info.role ?? 'no role'}), not this provider's`);
    const next: ProviderRegistration = { ...this.registration, tls: { ...this.registration.tls, cert: r.certificate, key: pair.privateKeyPem }, notAfter: r.notAfter };
    if (this.o.dir) await saveRenewal(this.o.dir, next);
    const old = this.current;
    this.registration = next;
    this.current = new VaultClient(next.vault.url, { tls: next.tls });
    old.closeWhenIdle();
    return true;
  }

  /** The provider is alive; with the fabric's capabilities, which the vault keeps on the fabric (GET /api/v1/fabrics/:id). */
  heartbeat(body: { status?: Record<string, unknown>; capabilities?: FabricCapabilities } = {}): Promise<{ time: string; heartbeatIntervalSeconds: number }> {
    return this.client.request('POST', '/api/v1/provider/heartbeat', body);
  }

  /** The CA's certificate revocation list (PEM), for this fabric's agents. */
  revocationList(): Promise<string> {
    return this.client.request<string>('GET', '/api/v1/provider/crl', undefined, { text: true });
  }

  putInventory(inventory: InventoryDocument, scope: 'all' | string[] = 'all'): Promise<{ changes: number }> {
    return this.client.request('PUT', '/api/v1/provider/inventory', { scope, inventory }, { timeoutMs: 120_000 });
  }

  async commands(waitSeconds: number, signal?: AbortSignal): Promise<WireCommand[]> {
    const r = await this.client.request<{ commands: WireCommand[] }>('GET', `/api/v1/provider/commands?waitSeconds=${waitSeconds}`, undefined, { timeoutMs: (waitSeconds + 30) * 1000, signal });
    return r.commands;
  }

  async progress(id: string, progress: object): Promise<void> {
    await this.client.request('POST', `/api/v1/provider/commands/${encodeURIComponent(id)}/progress`, { progress });
  }

  async result(id: string, outcome: { result?: unknown; error?: { code: string; message: string; details?: Record<string, unknown> } }): Promise<void> {
    await this.client.request('POST', `/api/v1/provider/commands/${encodeURIComponent(id)}/result`, outcome);
  }

  /** Enrol a host agent: the vault's CA certifies the public key the agent made (its private key never leaves the host). */
  enrolAgent(name: string, publicKey: string, names: { dnsNames?: string[]; ipAddresses?: string[] } = {}, proof?: EnrolmentProof): Promise<{ certificate: string; caCertificate: string; notAfter: string }> {
    return this.client.request('POST', '/api/v1/provider/agent-certificates', { name, publicKey, ...names, ...(proof !== undefined ? { proof } : {}) });
  }

  async itemStatus(itemId: string, status: ItemStatus): Promise<void> {
    await this.client.request('POST', `/api/v1/provider/items/${encodeURIComponent(itemId)}/status`, status);
  }
}
