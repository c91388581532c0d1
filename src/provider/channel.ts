/**
 * The provider's side of the channel: heartbeats, inventory, commands by long-poll, and
 * their progress and results, all over mutual TLS with the provider's certificate.
 */
import type { FabricCapabilities } from '../domain/capabilities.js';
import type { CommandBody, CommandKind } from '../domain/commands.js';
import type { InventoryDocument } from '../domain/resources.js';
import type { RecoveryPointInfo } from '../domain/replicas.js';
import { OsrError } from '../domain/errors.js';
import { generateKeyPairPem, readCertificateInfo, renewalDue } from '../pki/index.js';
import { saveRenewal, saveVaultInfo, type ProviderRegistration } from './registration.js';
import { checkVaultUrls, isTerm, TERM_HEADER } from '../domain/vault-status.js';
import { newestPrimary, probeVaults, VaultClient } from './vault-client.js';
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
  recoveryPoints?: RecoveryPointInfo[];
  /** measured at the source: change-log bytes per second (last hour, busiest delta) and log bytes not yet at the replica */
  churnBytesPerSec?: number | null;
  peakChurnBytesPerSec?: number | null;
  pendingLogBytes?: number | null;
  /** the recovery site: its replica was promoted at the host (by hand, without the vault): the vault records the failover */
  promoted?: { epoch: number; point: { id: string; at: string; consistency: 'crash' | 'app' }; pending: boolean };
}

/** Answers after which the provider looks for the vault's primary among the URLs it knows. */
const FOLLOW_CODES: ReadonlySet<string> = new Set(['NETWORK_ERROR', 'VAULT_STANDBY', 'VAULT_STALE', 'STORE_UNAVAILABLE']);

export interface ChannelLog {
  info?(o: object, msg: string): void;
  warn(o: object, msg: string): void;
}

/**
 * The channel follows the vault's primary: it knows every URL of the vault's processes
 * (registration, `--vault`, and each heartbeat's answer) and the newest term it was
 * answered with. When its vault is unreachable, a standby or stale, or answers with an
 * older term, it asks every URL for its role and term (GET /api/v1/vault) and moves to
 * the primary of the newest term, of the same vault; it never goes back to an older
 * term. What it learns is kept in registration.json.
 */
export class ProviderChannel {
  private current: VaultClient;
  private renewal: Promise<boolean> | undefined;
  private finding: Promise<boolean> | undefined;
  private saving: Promise<void> = Promise.resolve();
  /** the term the vault in use answered with last */
  private currentTerm: number | undefined;

  constructor(
    public registration: ProviderRegistration,
    private readonly o: { /** where the registration is kept (a renewed certificate is saved there) */ dir?: string; log?: ChannelLog } = {},
  ) {
    this.current = this.clientFor(registration.vault.url);
  }

  get client(): VaultClient {
    return this.current;
  }

  /** The newest vault term this provider was answered with (0: none yet). */
  get term(): number {
    return this.registration.vault.term ?? 0;
  }

  /** Every URL of the vault this provider knows, the one it uses first. */
  get urls(): string[] {
    const v = this.registration.vault;
    return [v.url, ...(v.urls ?? []).filter((u) => u !== v.url)];
  }

  close(): void {
    this.current.close();
  }

  private clientFor(url: string): VaultClient {
    return new VaultClient(url, {
      tls: this.registration.tls,
      headers: (): Record<string, string> => (this.term > 0 ? { [TERM_HEADER]: String(this.term) } : {}),
      // an answer given in an older term than one seen is not obeyed (a vault fenced since the call began)
      checkAnswer: (h) => {
        const t = Number(h[TERM_HEADER]);
        if (!isTerm(t)) return undefined;
        this.currentTerm = t;
        return t < this.term ? new OsrError('VAULT_STALE', `the vault at ${url} answered in term ${t}, older than the term ${this.term} this provider was answered with before`, { term: this.term, url }) : undefined;
      },
    });
  }

  /** A call to the vault it follows; after a refusal that says another one is the primary (or none answers), once more at the primary found. */
  private async call<T>(fn: (c: VaultClient) => Promise<T>, signal?: AbortSignal): Promise<T> {
    // a vault of an older term than one seen is not obeyed: the newest primary is looked for, else the call is refused
    if (this.currentTerm !== undefined && this.currentTerm < this.term) await this.findPrimary();
    if (this.currentTerm !== undefined && this.currentTerm < this.term) {
      throw new OsrError('VAULT_STALE', `the vault at ${this.registration.vault.url} answers with term ${this.currentTerm}, older than the term ${this.term} this provider was answered with before, and no vault of that term answers; this provider waits for it`, { term: this.term, url: this.registration.vault.url });
    }
    const used = this.current;
    try {
      return await fn(used);
    } catch (e) {
      const code = (e as { code?: unknown }).code;
      if (signal?.aborted || typeof code !== 'string' || !FOLLOW_CODES.has(code) || this.urls.length < 2) throw e;
      if (this.current === used && !(await this.findPrimary())) throw e;
      return fn(this.current);
    }
  }

  /**
   * Ask every URL the provider knows for its role and term; move to the primary of the
   * newest term (not older than any seen), of this vault. Answers whether it moved.
   */
  findPrimary(): Promise<boolean> {
    this.finding ??= this.find().finally(() => (this.finding = undefined));
    return this.finding;
  }

  private async find(): Promise<boolean> {
    const best = newestPrimary(await probeVaults(this.urls, this.registration.tls.ca), { vaultId: this.registration.vault.id, atLeast: this.term, prefer: this.registration.vault.url });
    if (!best) return false;
    const moved = best.url !== this.registration.vault.url;
    this.currentTerm = best.term;
    await this.learn({ url: best.url, term: best.term });
    if (moved) {
      const old = this.current;
      this.current = this.clientFor(best.url);
      old.closeWhenIdle();
      this.o.log?.warn({ vault: best.url, term: best.term }, `following the vault's primary at ${best.url} (term ${best.term})`);
    }
    return moved;
  }

  /** Keep what was learnt of the vault: the URL in use, more URLs, a newer term (saved in registration.json). */
  private async learn(o: { url?: string; urls?: string[]; term?: number }): Promise<void> {
    const v = this.registration.vault;
    const urls = [...new Set([...(v.urls ?? [v.url]), ...(o.urls ?? []), ...(o.url ? [o.url] : [])])].slice(0, 16);
    const next = { ...v, url: o.url ?? v.url, urls, term: Math.max(v.term ?? 0, o.term ?? 0) || undefined };
    if (next.url === v.url && next.term === v.term && urls.length === (v.urls ?? []).length && urls.every((u, i) => v.urls?.[i] === u)) return;
    this.registration = { ...this.registration, vault: next };
    const dir = this.o.dir;
    if (!dir) return;
    await this.persist(() => saveVaultInfo(dir, this.registration.vault)).catch((e: unknown) => this.o.log?.warn({ err: String(e) }, 'keeping the vault\'s URLs and term in registration.json failed'));
  }

  /** Writes of registration.json, one after another: a renewal and what is learnt of the vault never interleave. */
  private persist(fn: () => Promise<void>): Promise<void> {
    const p = this.saving.then(fn);
    this.saving = p.catch(() => undefined);
    return p;
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
    const r = await this.call((c) => c.request<{ certificate: string; caCertificate: string; notAfter: string }>('POST', '/api/v1/provider/certificate', { publicKey: pair.publicKeyPem }));
    if (r.caCertificate.trim() !== this.registration.tls.ca.trim()) throw new OsrError('TLS_PEER_CERT_UNTRUSTED', 'the vault answered the renewal with a CA other than the one this provider registered with; register the provider again');
    const info = readCertificateInfo(r.certificate);
    if (info.role !== 'provider' || info.commonName !== this.registration.providerId) throw new OsrError('PROTOCOL_ERROR', `the vault answered the renewal with a certificate for ${info.commonName} (${info.role ?? 'no role'}), not this provider's`);
    const next: ProviderRegistration = { ...this.registration, tls: { ...this.registration.tls, cert: r.certificate, key: pair.privateKeyPem }, notAfter: r.notAfter };
    const dir = this.o.dir;
    // saved in turn with what the channel learns of the vault, from the registration as it is then
    if (dir) await this.persist(() => saveRenewal(dir, { ...this.registration, tls: next.tls, notAfter: next.notAfter }));
    const old = this.current;
    this.registration = { ...this.registration, tls: next.tls, notAfter: next.notAfter };
    this.current = this.clientFor(this.registration.vault.url);
    old.closeWhenIdle();
    return true;
  }

  /** The provider is alive; with the fabric's capabilities, which the vault keeps on the fabric (GET /api/v1/fabrics/:id). */
  async heartbeat(body: { status?: Record<string, unknown>; capabilities?: FabricCapabilities } = {}): Promise<{ time: string; heartbeatIntervalSeconds: number }> {
    const r = await this.call((c) => c.request<{ time: string; heartbeatIntervalSeconds: number; vault?: { term?: unknown; urls?: unknown } }>('POST', '/api/v1/provider/heartbeat', body));
    // (an answer in an older term than one seen was refused by checkAnswer, and the newest primary looked for)
    const term = r.vault?.term;
    let urls: string[] = [];
    try {
      urls = Array.isArray(r.vault?.urls) ? checkVaultUrls(r.vault.urls.filter((u): u is string => typeof u === 'string'), 'the vault\'s URLs') : [];
    } catch {
      urls = [];
    }
    await this.learn({ urls, ...(isTerm(term) ? { term } : {}) });
    // with more than one vault process known, a newer primary elsewhere is looked for at each heartbeat
    if (this.urls.length > 1) await this.findPrimary();
    return r;
  }

  /** The CA's certificate revocation list (PEM), for this fabric's agents. */
  revocationList(): Promise<string> {
    return this.call((c) => c.request<string>('GET', '/api/v1/provider/crl', undefined, { text: true }));
  }

  putInventory(inventory: InventoryDocument, scope: 'all' | string[] = 'all'): Promise<{ changes: number }> {
    return this.call((c) => c.request('PUT', '/api/v1/provider/inventory', { scope, inventory }, { timeoutMs: 120_000 }));
  }

  async commands(waitSeconds: number, signal?: AbortSignal): Promise<WireCommand[]> {
    const r = await this.call((c) => c.request<{ commands: WireCommand[] }>('GET', `/api/v1/provider/commands?waitSeconds=${waitSeconds}`, undefined, { timeoutMs: (waitSeconds + 30) * 1000, signal }), signal);
    return r.commands;
  }

  async progress(id: string, progress: object): Promise<void> {
    await this.call((c) => c.request('POST', `/api/v1/provider/commands/${encodeURIComponent(id)}/progress`, { progress }));
  }

  async result(id: string, outcome: { result?: unknown; error?: { code: string; message: string; details?: Record<string, unknown> } }): Promise<void> {
    await this.call((c) => c.request('POST', `/api/v1/provider/commands/${encodeURIComponent(id)}/result`, outcome));
  }

  /** Enrol a host agent: the vault's CA certifies the public key the agent made (its private key never leaves the host). */
  enrolAgent(name: string, publicKey: string, names: { dnsNames?: string[]; ipAddresses?: string[] } = {}, proof?: EnrolmentProof): Promise<{ certificate: string; caCertificate: string; notAfter: string }> {
    return this.call((c) => c.request('POST', '/api/v1/provider/agent-certificates', { name, publicKey, ...names, ...(proof !== undefined ? { proof } : {}) }));
  }

  /** An item's status; a promotion reported is answered with what the vault made of it (recorded, known, ignored). */
  async itemStatus(itemId: string, status: ItemStatus): Promise<{ promotion?: string } | undefined> {
    const r = await this.call((c) => c.request<{ promotion?: unknown } | undefined>('POST', `/api/v1/provider/items/${encodeURIComponent(itemId)}/status`, status));
    return r && typeof r.promotion === 'string' ? { promotion: r.promotion } : undefined;
  }
}
