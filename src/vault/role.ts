/**
 * Whether this vault process may change anything: it is the primary (its database takes
 * writes, and no peer of the same vault answers with a newer term), a standby (its
 * database is a read-only PostgreSQL standby) or stale (a peer was promoted or restored
 * with a newer term). Only a primary runs jobs, takes providers' reports or accepts a
 * change; the others serve reads and refuse the rest with VAULT_STANDBY or VAULT_STALE.
 *
 * The role is checked every few seconds: a standby whose database was promoted (by `osr
 * vault promote`, or by hand) begins the next term at once and starts its work. The
 * vault's peers (`osr vault --peer URL`) are asked for their term at start and at each
 * check, and whenever a provider says it has seen a newer term than this vault's: a peer
 * of the same vault, behind the vault's CA, that answers as primary with a newer term
 * fences this one. A provider's word alone fences nothing (a provider cannot stop a vault);
 * it only makes the vault ask its peers.
 */
import { EventEmitter } from 'node:events';
import https from 'node:https';
import type { Clock } from '../domain/clock.js';
import { OsrError } from '../domain/errors.js';
import { newerTerm, parseVaultStatus, VaultRole, type VaultStatus } from '../domain/vault-status.js';
import { checkVaultIdentity } from '../pki/index.js';
import type { VaultStore } from '../store/index.js';
import type { StaleMark, VaultTerm } from '../store/vault-role.js';

export interface RoleWatcherOptions {
  /** the vault's identity: a peer must answer with the same */
  vaultId: string;
  vaultName: string;
  /** the vault's CA (PEM): a peer's server certificate must be issued by it, for role vault */
  ca: string;
  /** the other processes of this vault, as providers reach them */
  peers: string[];
  clock: Clock;
  /** how often the database's role and the peers are checked (default 2 s) */
  checkMs?: number;
  log: { info(o: object, msg: string): void; warn(o: object, msg: string): void };
}

export interface RoleWatcherEvents {
  /** this process became the primary (at start, or a standby promoted) */
  primary: [VaultTerm];
  /** it may no longer write: its database went into recovery, or a newer term fenced it */
  demoted: [VaultRole];
}

export class RoleWatcher extends EventEmitter<RoleWatcherEvents> {
  role: VaultRole = VaultRole.Standby;
  term: VaultTerm = { term: 1, since: new Date(0).toISOString(), origin: 'created' };
  staleBecause: StaleMark | undefined;
  /** the newest term a peer of this vault answered with */
  private newestPeerTerm = 0;
  /** the peers that answered as primary at the last look */
  livePrimaries: { url: string; term: number }[] = [];
  private stopper: AbortController | undefined;
  private loop: Promise<void> | undefined;
  private probing: Promise<void> | undefined;
  private readonly agent: https.Agent;

  constructor(
    private readonly store: VaultStore,
    private readonly o: RoleWatcherOptions,
  ) {
    super();
    this.agent = new https.Agent({ keepAlive: false, ca: o.ca, rejectUnauthorized: true, minVersion: 'TLSv1.2', checkServerIdentity: checkVaultIdentity });
  }

  get writable(): boolean {
    return this.role === VaultRole.Primary;
  }

  get peers(): readonly string[] {
    return this.o.peers;
  }

  /** The role at start: the database's, then a stale mark it keeps, then the peers'. */
  async init(): Promise<void> {
    if (await this.store.role.inRecovery()) {
      this.role = VaultRole.Standby;
      this.term = await this.store.role.term();
      return;
    }
    this.term = await this.store.role.initTerm();
    this.staleBecause = await this.store.role.staleMark();
    this.role = this.staleBecause && this.staleBecause.term > this.term.term ? VaultRole.Stale : VaultRole.Primary;
    await this.probePeers();
    // a standby promoted by hand while no vault watched it: its promotion begins the next term now
    if (this.role === VaultRole.Primary && (await this.store.role.promotedSinceTerm(this.term))) await this.beginTerm('promoted');
  }

  status(): VaultStatus {
    return {
      id: this.o.vaultId,
      name: this.o.vaultName,
      role: this.role,
      term: this.term.term,
      since: this.term.since,
      origin: this.term.origin,
      ...(this.staleBecause && this.role === VaultRole.Stale ? { staleBecause: this.staleBecause } : {}),
    };
  }

  /** Refuse a change unless this process is the primary. */
  assertWritable(): void {
    if (this.role === VaultRole.Primary) return;
    if (this.role === VaultRole.Stale) {
      const s = this.staleBecause;
      throw new OsrError('VAULT_STALE', `this vault (term ${this.term.term}) is stale: ${s ? `the vault at ${s.url} has term ${s.term}` : 'a newer term was seen'}; use that one`, s ? { term: s.term, url: s.url, ownTerm: this.term.term } : { ownTerm: this.term.term });
    }
    throw new OsrError('VAULT_STANDBY', `this vault runs on a standby database (term ${this.term.term}): it serves reads only; use the primary vault, or promote this one (\`osr vault promote\`) if the primary's site is lost`, { term: this.term.term });
  }

  start(): void {
    if (this.loop) return;
    const stopper = (this.stopper = new AbortController());
    this.loop = (async () => {
      while (!stopper.signal.aborted) {
        await this.o.clock.sleep(this.o.checkMs ?? 2000, stopper.signal);
        if (stopper.signal.aborted) break;
        try {
          await this.check();
        } catch (e) {
          this.o.log.warn({ err: String(e) }, 'checking the vault\'s role failed; trying again at the next check');
        }
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopper?.abort();
    await this.loop;
    await this.probing;
    this.loop = undefined;
    this.agent.destroy();
  }

  /** One check: the database's role (a standby promoted begins the next term), then the peers'. */
  async check(): Promise<void> {
    const inRecovery = await this.store.role.inRecovery();
    // a standby's term is its primary's, replicated: read again at each check
    if (this.role === VaultRole.Standby && inRecovery) this.term = await this.store.role.term();
    if (this.role === VaultRole.Standby && !inRecovery) await this.beginTerm('promoted');
    else if (this.role === VaultRole.Primary && inRecovery) {
      this.role = VaultRole.Standby;
      this.o.log.warn({ term: this.term.term }, 'the vault\'s database is a standby now: serving reads only');
      this.emit('demoted', this.role);
    }
    await this.probePeers();
  }

  /** A promotion: the next term (once per promotion, however many processes race), and this process is the primary. */
  async beginTerm(origin: 'promoted'): Promise<VaultTerm> {
    this.term = await this.store.role.nextTerm(origin, { after: this.newestPeerTerm });
    this.staleBecause = undefined;
    this.role = VaultRole.Primary;
    this.o.log.info({ term: this.term.term }, `the vault's database takes writes: this vault is the primary, term ${this.term.term}`);
    this.emit('primary', this.term);
    return this.term;
  }

  /** A provider said it has seen `term`: if that is newer than ours, ask the peers now. */
  heard(term: number): void {
    if (term > this.term.term && this.role !== VaultRole.Stale) void this.probePeers();
  }

  /** Ask every peer for its status; one of this vault, primary with a newer term, fences this process. */
  probePeers(): Promise<void> {
    this.probing ??= (async () => {
      const answers = await Promise.all(this.o.peers.map((url) => this.peerStatus(url).then((s) => ({ url, s }), () => undefined)));
      this.livePrimaries = [];
      for (const a of answers) {
        if (!a || a.s.id !== this.o.vaultId) continue;
        this.newestPeerTerm = Math.max(this.newestPeerTerm, a.s.term);
        if (a.s.role === VaultRole.Primary) this.livePrimaries.push({ url: a.url, term: a.s.term });
        // a standby cannot write anyway; promoted, it begins a term after every one seen
        if (a.s.role !== VaultRole.Primary || !newerTerm(a.s, this.term) || this.role !== VaultRole.Primary) continue;
        await this.fence({ term: a.s.term, url: a.url, at: new Date(this.o.clock.now()).toISOString() });
        return;
      }
    })().finally(() => (this.probing = undefined));
    return this.probing;
  }

  private async fence(mark: StaleMark): Promise<void> {
    const was = this.role;
    this.staleBecause = mark;
    this.role = VaultRole.Stale;
    // kept in the database, so that a restart with no peer reachable stays fenced
    if (was === VaultRole.Primary) await this.store.role.markStale(mark).catch((e: unknown) => this.o.log.warn({ err: String(e) }, 'keeping the stale mark in the database failed'));
    if (was !== VaultRole.Stale) {
      this.o.log.warn({ term: this.term.term, newer: mark }, `the vault at ${mark.url} has term ${mark.term}, newer than this one's ${this.term.term}: this vault is stale and refuses every change`);
      this.emit('demoted', this.role);
    }
  }

  /** A peer's GET /api/v1/vault, over TLS behind the vault's CA (the peer's certificate must be a vault's). */
  private peerStatus(url: string): Promise<VaultStatus> {
    return new Promise((resolve, reject) => {
      const req = https.get(new URL('/api/v1/vault', url), { agent: this.agent, timeout: 5000, headers: { accept: 'application/json' } }, (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > 64 * 1024) req.destroy(new OsrError('PROTOCOL_ERROR', `${url} answered with more than 64 KiB`));
          else chunks.push(c);
        });
        res.on('end', () => {
          try {
            if (res.statusCode !== 200) throw new OsrError('PROTOCOL_ERROR', `${url} answered ${res.statusCode}`);
            resolve(parseVaultStatus(JSON.parse(Buffer.concat(chunks).toString('utf8')), url));
          } catch (e) {
            reject(e);
          }
        });
        res.on('error', reject);
      });
      req.on('timeout', () => req.destroy(new OsrError('NETWORK_ERROR', `${url} did not answer in time`)));
      req.on('error', reject);
    });
  }
}
