/**
 * The host agent: replicates its host's VMs to peer agents (primary role), receives
 * replicas and serves their recovery points (replica role), serves VM disks over NBD, and
 * answers a local HTTP API on a Unix socket only its user may open (or, when asked, on
 * loopback TCP with a token: api-access.ts). One process per host. The machine it runs on
 * is given to it as a Host (ports/host.ts): it lists, powers, makes and forgets VMs through
 * it, and replicates each VM as the ChangeSource the host gives.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import type tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { duplexPair, type Duplex } from 'node:stream';
import { pino, type Logger as PinoLogger } from 'pino';
import { systemClock, type Clock } from '../domain/clock.js';
import { OsrError, toOsrError } from '../domain/errors.js';
import { createBootstrapCertificate, fsyncDir, isGrantEnd, loadTlsMaterial, onTlsClientError, readCertificateInfo, readCrl, serverTlsOptions, verifyGrant, writeFileAtomic, type CertificateInfo, type ReplicationGrant, type TlsFiles, type TlsMaterial } from '../pki/index.js';
import { GrantLedger } from './sending/grant-ledger.js';
import { certificateNames, type ProviderApiState } from './provider-api.js';
import type { BlockDevice } from './io/block-device.js';
import { CyclePhases } from './sending/cycle-phases.js';
import { readJson, writeJsonDurable } from './io/durable-file.js';
import { changePromotedPoint, commitPromotion, demoteVm, promoteReplica, provisionalOverlay, type DemoteResult, type PromoteOptions, type PromoteResult } from './replica/failover.js';
import { HandoverDisk } from './replica/handover-disk.js';
import { diskRangesBytes } from './io/ranges.js';
import { buildAgentApi } from './local-api.js';
import { ensurePrivateDir, isLoopbackHost, listenOnUnixSocket, loadApiToken, type ApiAccess } from './api-access.js';
import { checkQuiesceHookDir, findQuiesceHook } from './sending/quiesce-hook.js';
import { NbdServer } from './nbd/nbd-server.js';
import type { Host, HostFactory, VmSpec } from './ports/host.js';
import { ReplicaRegistry, ReplicationServer, Session } from './replica/replication-server.js';
import { AzureReplicas } from './azure/azure-replicas.js';
import { VmImports, type ImportProgress, type ImportRequest } from './azure/vm-imports.js';
import { PrimaryReplication } from './sending/replication.js';
import { GroupCuts } from './sending/group-cuts.js';
import type { AzurePeer, ReplicationSpec } from './wire/replication-types.js';
import { DEFAULT_RETRY_POLICY, type RetryPolicy } from './io/retry.js';
import { Pacer, parseBandwidth } from './io/throttle.js';
import { API_SOCKET, DEFAULT_AGENT_API_PORT, DEFAULT_REPLICATION_PORT } from './addresses.js';

/** The provider channel's connections at once: a provider needs a few; more is someone else. */
const PROVIDER_MAX_CONNECTIONS = 64;

export interface AgentConfig {
  /** how often the certificate, key, CA and revocation list files are looked at for a change (default 10 s) */
  tlsReloadMs?: number | undefined;
  name: string;
  dataDir: string;
  /** replication listener (replica role); port 0 picks a free port */
  listen?: { host: string; port: number } | undefined;
  /**
   * local API: absent = the Unix socket DATA/run/api.sock (mode 0600); else loopback TCP
   * (port 0 picks a free port) where every request needs the token in `tokenFile`
   * (default DATA/api-token, created on first start)
   */
  api?: { host: string; port: number; tokenFile?: string | undefined } | undefined;
  /**
   * the provider channel (provider-api.ts): HTTPS with mutual TLS for the fabric's
   * provider, on any address (port 0 picks a free port). With it the agent may start
   * without a certificate of its CA: it then presents a bootstrap certificate
   * (DATA/pki/bootstrap.crt) and serves the enrolment calls only, until it is enrolled.
   */
  providerApi?: { host: string; port: number } | undefined;
  /**
   * the fabric (the vault's id) whose provider may enrol this agent over the channel while it
   * is not enrolled: without it, a provider of any fabric of the vault could
   */
  providerFabric?: string | undefined;
  /** DIR: the quiesce hook of VM X is DIR/X (quiesce-hook.ts) */
  quiesceHookDir?: string | undefined;
  /** also serve NBD on TCP (loopback) at this port */
  nbdTcpPort?: number | undefined;
  tls: TlsFiles;
  /** when to retry after a recoverable error (default 1, 2, 4, 8, 10 minutes, then every 30) */
  retry?: RetryPolicy | undefined;
  /** bandwidth schedule shared by all replications of this agent (throttle.ts) */
  bandwidth?: string | undefined;
  hookTimeoutMs?: number | undefined;
  logLevel?: string | undefined;
}

export { API_SOCKET, DEFAULT_AGENT_API_PORT, DEFAULT_REPLICATION_PORT };

export interface AgentEndpoints {
  /** the local API: `unix:PATH` of its socket, or `http://HOST:PORT` on loopback TCP */
  api: string;
  /** on TCP, the file holding the token every request must carry */
  apiTokenFile?: string | undefined;
  /** the provider channel, `https://HOST:PORT` */
  providerApi?: string | undefined;
  /** while the agent is not enrolled: the SHA-256 fingerprint of its bootstrap certificate, for the site file's agentFingerprint */
  bootstrapFingerprint?: string | undefined;
  /** the SHA-256 fingerprint of the CA the agent trusts (compare it with the vault's caFingerprint) */
  caFingerprint?: string | undefined;
  replicationPort: number | null;
  nbdSocket: string;
  nbdTcpPort: number | null;
}

export class Agent {
  readonly host: Host;
  readonly replicas: ReplicaRegistry;
  /** the newest replication grant taken for each VM this agent replicates */
  private readonly grantLedger: GrantLedger;
  readonly replications = new Map<string, PrimaryReplication>();
  /** the replicas this agent writes to Azure storage itself, and each replication's SAS (by replication id) */
  readonly azureReplicas: AzureReplicas;
  /** VMs brought in from Azure managed disks for a failback (an agent in the Azure region) */
  readonly imports: VmImports;
  private readonly azureSas = new Map<string, string>();
  private readonly phases = new CyclePhases();
  private readonly agentPacer: Pacer | undefined;
  readonly nbd: NbdServer;
  /** disks of uncommitted promoted VMs as their clients hold them, by "VM/disk" */
  private readonly handovers = new Map<string, HandoverDisk>();
  readonly log: PinoLogger;
  private replicationServer: ReplicationServer | undefined;
  private tls!: TlsMaterial;
  /** the agent's own certificate, when it is from its CA (not a bootstrap one) */
  private enrolled: CertificateInfo | undefined;
  private revocation: ProviderApiState['revocation'];
  private providerServer: tls.Server | undefined;
  private providerAddress: { host: string; port: number } | undefined;
  private closeApi: (() => Promise<void>) | undefined;
  private closeProviderApi: (() => Promise<void>) | undefined;
  endpoints!: AgentEndpoints;
  readonly nbdSocket: string;

  constructor(
    readonly config: AgentConfig,
    /** makes the host: the machine the agent runs on (`osr agent --host`) */
    makeHost: HostFactory,
    readonly clock: Clock = systemClock,
  ) {
    this.log = pino({ name: config.name, level: config.logLevel ?? 'info' }, pino.destination(2));
    fs.mkdirSync(config.dataDir, { recursive: true });
    // the API's and NBD's sockets: only the agent's user may enter
    ensurePrivateDir(path.join(config.dataDir, 'run'));
    fs.mkdirSync(path.join(config.dataDir, 'replications'), { recursive: true });
    this.host = makeHost({ dataDir: config.dataDir, now: () => clock.now(), log: this.log });
    this.cuts = new GroupCuts((vm) => {
      const replication = this.getReplication(vm);
      return { replication, gate: this.host.get(replication.spec.vm).writeGate };
    }, this.log);
    // an agent the vault enrolled into a fabric takes a replica's source only from the vault
    this.replicas = new ReplicaRegistry(path.join(config.dataDir, 'replicas'), () => clock.now(), () => this.enrolled?.fabricId !== undefined);
    ensurePrivateDir(path.join(config.dataDir, 'azure-access'));
    this.azureReplicas = new AzureReplicas(path.join(config.dataDir, 'azure-spool'), config.name, (vmId) => this.azureAccess(vmId), () => clock.now());
    this.imports = new VmImports(config.dataDir, this.host, () => clock.now());
    this.grantLedger = new GrantLedger(path.join(config.dataDir, 'grants'));
    this.nbdSocket = path.join(config.dataDir, 'run', 'nbd.sock');
    this.agentPacer = config.bandwidth ? new Pacer(parseBandwidth(config.bandwidth), clock) : undefined;
    this.nbd = new NbdServer({ get: (n) => this.resolveExport(n), list: () => this.listExports() }, { logger: this.log });
  }

  /** Start everything: recover disks before any guest I/O, then open listeners, then replications. */
  async start(): Promise<AgentEndpoints> {
    this.tlsStamp = tlsFilesStamp(this.config.tls);
    await this.useTlsMaterial(await this.loadTls());
    if (this.config.quiesceHookDir !== undefined) {
      const problem = checkQuiesceHookDir(this.config.quiesceHookDir);
      if (problem) throw new OsrError('CONFIG_INVALID', problem);
    }
    let access: ApiAccess = { kind: 'unix' };
    let apiTokenFile: string | undefined;
    if (this.config.api) {
      const { host, tokenFile } = this.config.api;
      if (!isLoopbackHost(host)) throw new OsrError('CONFIG_INVALID', `the local API listens on loopback only (127.0.0.1, ::1 or localhost), not on ${host}; remote callers reach agents through their provider`);
      apiTokenFile = tokenFile ?? path.join(this.config.dataDir, 'api-token');
      access = { kind: 'tcp', host, port: this.config.api.port, token: loadApiToken(apiTokenFile, tokenFile === undefined) };
    }
    // a demote cut short is finished or undone before the VMs load: the images are then
    // either a replica's or the VM's, never lost between the two
    for (const a of this.replicas.recoverAdoptions()) this.log.warn({ vmId: a.vmId }, a.outcome === 'finished' ? 'finished a demote cut short: the images are a replica now' : 'undid a demote cut short: the images are the VM\'s again');
    for (const r of await this.host.loadAll((id) => this.replicas.holdsReplica(id))) {
      if (r.recovered) this.log.warn({ vm: r.vm, tornBytes: r.tornBytes }, 'recovered change tracking after an unclean stop');
      if (r.removed) this.log.warn({ vm: r.vm }, 'finished demoting a VM whose images had become a replica');
      if (r.notReplicable) this.log.warn({ vm: r.vm, code: r.notReplicable.code }, `VM ${r.vm} is not loaded: ${r.notReplicable.message}`);
      if (r.missingImages) this.log.error({ vm: r.vm, missing: r.missingImages }, `VM ${r.vm} is not loaded: its disk images are missing (restore them, or remove the VM's directory), and no replica holds them`);
    }
    // a promoted replica's images are a host VM's disks now: not served as a replica
    for (const u of await this.replicas.openAll(new Set(this.host.list().map((vm) => vm.id)))) {
      this.log.error({ vmId: u.vmId, code: u.code }, `the replica of ${u.vmId} cannot be opened and is not served (${u.message}); the other replicas are`);
    }
    for (const r of this.replicas.list()) for (const note of r.recoveryNotes.splice(0)) this.log.warn({ vm: r.vmName }, note);
    // a promotion not committed runs from its overlay again; one whose commit had begun is finished
    for (const p of this.replicas.provisional()) {
      const vm = p.store.vmName;
      // one VM whose promotion cannot go on now does not keep the agent, and every other replica, down
      try {
        if (p.promotion.committing || p.store.isCommitted) {
          await commitPromotion(this.host, this.replicas, vm);
          this.log.warn({ vm }, `finished committing the promotion of ${vm}, cut short by a stop`);
        } else await promoteReplica(this.host, this.replicas, vm, { commit: false });
      } catch (e) {
        const err = toOsrError(e);
        this.log.error({ vm, code: err.code }, `the promotion of ${vm} could not be taken up after the restart (${err.message}); promote or commit it again`);
      }
    }
    await this.nbd.listenUnix(this.nbdSocket);
    let nbdTcpPort: number | null = null;
    if (this.config.nbdTcpPort !== undefined) nbdTcpPort = (await this.nbd.listenTcp(this.config.nbdTcpPort, '127.0.0.1')).port;
    let replicationPort: number | null = null;
    if (this.config.listen) {
      this.replicationServer = new ReplicationServer(this.replicas, this.tls, this.config.name, this.log);
      replicationPort = await this.replicationServer.listen(this.config.listen.port, this.config.listen.host);
    }
    const api = await buildAgentApi(this, () => access);
    let address: string;
    if (access.kind === 'unix') address = `unix:${await listenOnUnixSocket(api, path.join(this.config.dataDir, API_SOCKET))}`;
    else {
      await api.listen({ host: access.host, port: access.port });
      const bound = api.server.address() as AddressInfo;
      access = { ...access, host: bound.address, port: bound.port };
      address = `http://${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`;
    }
    this.closeApi = () => api.close();
    let providerApi: string | undefined;
    if (this.config.providerApi) {
      const channel = await buildAgentApi(this, () => access, {
        // a handshake gets 10 s, not Node's 120: a peer that never finishes one holds no more than that
        https: { ...serverTlsOptions({ ...this.tls, crl: undefined }), sessionTimeout: 300, handshakeTimeout: 10_000 },
        state: () => this.providerApiState(),
        refused: (peer, reason, request) => this.log.warn({ peer: peer.commonName ?? null, role: peer.role ?? null, fingerprint: peer.fingerprintSha256 ?? null, address: peer.address ?? null, request, reason }, `provider channel: refused ${request}: ${reason}`),
      });
      this.providerServer = channel.server as unknown as tls.Server;
      // a root process: bounded connections, whoever opens them
      this.providerServer.maxConnections = PROVIDER_MAX_CONNECTIONS;
      onTlsClientError(this.providerServer, (err) => this.log.warn({ code: err.code, ...err.details }, `provider channel: ${err.message}`));
      await channel.listen({ host: this.config.providerApi.host, port: this.config.providerApi.port });
      const bound = channel.server.address() as AddressInfo;
      this.providerAddress = { host: bound.address, port: bound.port };
      providerApi = `https://${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`;
      this.closeProviderApi = () => channel.close();
    }
    this.endpoints = {
      api: address,
      ...(apiTokenFile ? { apiTokenFile } : {}),
      ...(providerApi ? { providerApi, caFingerprint: new crypto.X509Certificate(this.tls.ca).fingerprint256, ...(this.enrolled ? {} : { bootstrapFingerprint: new crypto.X509Certificate(this.tls.cert).fingerprint256 }) } : {}),
      replicationPort,
      nbdSocket: this.nbdSocket,
      nbdTcpPort,
    };
    this.watchTls();
    for (const file of fs.readdirSync(path.join(this.config.dataDir, 'replications'))) {
      const specFile = path.join(this.config.dataDir, 'replications', file);
      const spec = readJson<ReplicationSpec & { quiesceHook?: unknown }>(specFile);
      if (!spec) continue;
      if (spec.quiesceHook !== undefined) {
        // a path once taken from a request is never run: hooks are the agent's configuration now
        this.log.warn({ replication: spec.id, quiesceHook: spec.quiesceHook }, `the quiesce hook kept with replication ${spec.id} is ignored and removed: hooks are configured on the agent now (osr agent --quiesce-hook-dir DIR, the hook of ${spec.vm} being DIR/${spec.vm})`);
        delete spec.quiesceHook;
        writeJsonDurable(specFile, spec);
      }
      if (spec.peer.kind === 'azure') {
        const sas = readJson<{ sas: string }>(this.azureAccessFile(spec.id))?.sas;
        if (sas !== undefined) this.azureSas.set(spec.id, sas);
      }
      this.startReplication(spec);
    }
    writeJsonDurable(path.join(this.config.dataDir, 'run', 'agent.json'), { pid: process.pid, ...this.endpoints });
    this.log.info(this.endpoints, `agent ${this.config.name} started`);
    return this.endpoints;
  }

  private resolveExport(name: string): BlockDevice | undefined {
    const parts = name.split('/');
    try {
      if (parts.length === 2) {
        if (!this.host.has(parts[0])) return this.provisionalDisk(parts[0], parts[1]);
        const vm = this.host.get(parts[0]);
        return vm.running ? vm.disk(parts[1]) : undefined;
      }
      if (parts.length === 4 && parts[0] === 'replica') return this.replicas.get(parts[1]).getOverlay(parts[2]).disk(parts[3]);
    } catch {
      return undefined;
    }
    return undefined;
  }

  private listExports(): string[] {
    const out: string[] = [];
    if (this.host.servesDisks) for (const vm of this.host.list()) if (vm.running) for (const d of vm.spec.disks) out.push(`${vm.name}/${d.name}`);
    for (const p of this.replicas.provisional()) if (p.promotion.running !== false && !p.promotion.committing) for (const d of p.store.pointDisks(p.promotion.point.seq)) out.push(`${p.store.vmName}/${d.name}`);
    for (const s of this.replicas.list()) for (const o of s.listOverlays()) for (const d of o.disks) out.push(`replica/${s.vmName}/${o.id}/${d.name}`);
    return out;
  }

  nbdUris(exportName: string): { unix: string; tcp: string | null } {
    return {
      unix: `nbd+unix:///${exportName}?socket=${this.nbdSocket}`,
      tcp: this.endpoints.nbdTcpPort !== null ? `nbd://127.0.0.1:${this.endpoints.nbdTcpPort}/${exportName}` : null,
    };
  }

  /**
   * `grant`, when given (the provider channel always gives one), is the vault's replication
   * grant: it must name this VM, this agent as the source and the peer as the target; the
   * replica agent's certificate must then name the target's host and fabric.
   */
  enableReplication(input: Omit<ReplicationSpec, 'id' | 'epoch' | 'grantIssuedAt'> & { epoch?: number; grant?: string | undefined; azureSas?: string | undefined }): ReplicationSpec {
    const { grant: token, azureSas, ...rest } = input;
    const vm = this.host.get(rest.vm);
    for (const r of this.replications.values()) {
      if (r.spec.vm === vm.name) throw new OsrError('ALREADY_EXISTS', `VM ${vm.name} is already replicated (${r.spec.id})`);
    }
    if (vm.spec.fenced) throw new OsrError('EPOCH_STALE', `VM ${vm.name} is fenced: ${vm.spec.fenced.reason}`);
    // continuous replication and consistency groups need a host that sees every guest write
    if ((rest.continuous || rest.group !== undefined) && !vm.writeGate) {
      throw new OsrError('NOT_SUPPORTED', `the host of ${vm.name} tracks writes by checkpoints, not one by one: it cannot replicate ${rest.continuous ? 'continuously (its shortest cycle is 30 s)' : 'in a consistency group'}`);
    }
    if (rest.continuous && rest.group !== undefined) throw new OsrError('INVALID_ARGUMENT', `${vm.name}: a consistency group's members make the group's points only; choose continuous replication or the group`);
    if (rest.continuous && rest.peer.kind === 'azure') throw new OsrError('INVALID_ARGUMENT', `${vm.name}: Azure storage does not take continuous replication (a snapshot a second); choose a copy frequency`);
    let peer = rest.peer;
    let grantIssuedAt: string | undefined;
    if (peer.kind === 'azure') {
      if (azureSas === undefined) throw new OsrError('INVALID_ARGUMENT', `a replica in Azure storage needs the SAS that grants access to its container (azureSas)`);
      if (rest.initialReplication === 'offline') throw new OsrError('INVALID_ARGUMENT', 'offline initial replication is not available to Azure: the initial copy goes to the storage account online');
      // the vault's grant names the container as the target: a grant for another place is refused
      if (token !== undefined) grantIssuedAt = this.takeGrant(token, 'source', { replicationId: vm.id, otherHost: peer.containerUrl }).issuedAt;
    } else if (token !== undefined) {
      const g = this.takeGrant(token, 'source', { replicationId: vm.id, otherHost: peer.name });
      peer = { ...peer, name: g.target.host, fabricId: g.target.fabricId };
      grantIssuedAt = g.issuedAt;
    } else if (azureSas !== undefined) throw new OsrError('INVALID_ARGUMENT', 'azureSas is for a replica in Azure storage; this peer is an agent');
    // a promoted VM replicates (back) in the epoch it was promoted with
    const spec: ReplicationSpec = { ...rest, peer, ...(grantIssuedAt !== undefined ? { grantIssuedAt } : {}), id: `rep-${vm.name}-${crypto.randomBytes(3).toString('hex')}`, epoch: rest.epoch ?? vm.spec.origin?.epoch ?? 1 };
    if (azureSas !== undefined) this.setAzureSasNow(spec.id, azureSas);
    writeJsonDurable(path.join(this.config.dataDir, 'replications', `${spec.id}.json`), spec);
    this.startReplication(spec);
    return spec;
  }

  private azureAccessFile(replicationId: string): string {
    return path.join(this.config.dataDir, 'azure-access', `${replicationId}.json`);
  }

  private setAzureSasNow(replicationId: string, sas: string): void {
    // a secret: kept in an owner-only file, never in the spec the API answers with
    writeJsonDurable(this.azureAccessFile(replicationId), { sas });
    this.azureSas.set(replicationId, sas);
  }

  /** A renewed SAS for a replication to Azure: the next connection to its container uses it. */
  setAzureSas(idOrVm: string, sas: string): void {
    const r = this.getReplication(idOrVm);
    if (r.spec.peer.kind !== 'azure') throw new OsrError('INVALID_ARGUMENT', `replication ${r.spec.id} replicates to an agent, not to Azure storage`);
    this.setAzureSasNow(r.spec.id, sas);
  }

  /** The container and SAS of a VM's replication to Azure, if this agent runs one. */
  private azureAccess(vmId: string): { containerUrl: string; sas: string } | undefined {
    for (const r of this.replications.values()) {
      const peer = r.spec.peer;
      const sas = this.azureSas.get(r.spec.id);
      if (peer.kind === 'azure' && sas !== undefined && this.host.has(r.spec.vm) && this.host.get(r.spec.vm).id === vmId) return { containerUrl: peer.containerUrl, sas };
    }
    return undefined;
  }

  /** A stream to a replication session in this agent, over a replica it writes itself. */
  private inProcess(peer: AzurePeer): Duplex {
    const [mine, theirs] = duplexPair();
    // the sending side's errors are its client's; a write after the end here is already reported there
    theirs.on('error', (e) => this.log.debug({ code: toOsrError(e).code }, `in-process replication stream: ${e.message}`));
    const fabricId = this.enrolled?.fabricId;
    new Session({ stream: theirs, remote: `in-process ${peer.containerUrl}`, identify: () => ({ commonName: this.config.name, role: 'agent', ...(fabricId !== undefined ? { fabricId } : {}), fingerprintSha256: '' }) }, this.azureReplicas, this.config.name, this.log);
    return mine;
  }

  private startReplication(spec: ReplicationSpec): void {
    const vm = this.host.get(spec.vm);
    const r = new PrimaryReplication(spec, vm, {
      tls: () => this.tls,
      agentName: this.config.name,
      clock: this.clock,
      log: this.log,
      retry: this.config.retry ?? DEFAULT_RETRY_POLICY,
      agentPacer: this.agentPacer,
      pacer: spec.bandwidth ? new Pacer(parseBandwidth(spec.bandwidth), this.clock) : undefined,
      hookTimeoutMs: this.config.hookTimeoutMs ?? 60_000,
      quiesceHook: (vm) => findQuiesceHook(this.config.quiesceHookDir, vm),
      phases: this.phases,
      inProcess: (peer) => this.inProcess(peer),
    });
    this.replications.set(spec.id, r);
    r.start();
  }

  /** a consistency group's cuts on this agent (group-cuts.ts) */
  readonly cuts: GroupCuts;

  getReplication(idOrVm: string): PrimaryReplication {
    const r = this.replications.get(idOrVm) ?? [...this.replications.values()].find((x) => x.spec.vm === idOrVm);
    if (!r) throw new OsrError('NOT_FOUND', `no replication ${idOrVm} on this agent`, { replications: [...this.replications.keys()] });
    return r;
  }

  /**
   * Planned failover, first step: shut the VM down (its guest's agent or ACPI asked first,
   * stopped once a fifth of the timeout has passed; its NBD clients are disconnected once
   * their requests finish), ship the final delta, and report zero pending bytes.
   */
  async prepareFailover(idOrVm: string, timeoutMs = 300_000): Promise<{ vm: string; point: unknown; pendingLogBytes: number }> {
    const r = this.getReplication(idOrVm);
    const vm = this.host.get(r.spec.vm);
    await this.host.shutdown(vm.name, Math.min(120_000, Math.floor(timeoutMs / 5)));
    await this.nbd.disconnect((name) => name.startsWith(`${vm.name}/`));
    await vm.flush();
    const done = await r.prepareFailover(timeoutMs);
    return { vm: vm.name, ...done };
  }

  private readonly vmLocks = new Map<string, Promise<unknown>>();

  /** Failover steps of one VM run one at a time (a commit is not raced by a power change or a change of point). */
  private async withVm<T>(vmName: string, step: () => Promise<T>): Promise<T> {
    const before = this.vmLocks.get(vmName) ?? Promise.resolve();
    const run = before.then(step, step);
    const done = run.catch(() => undefined);
    this.vmLocks.set(vmName, done);
    try {
      return await run;
    } finally {
      if (this.vmLocks.get(vmName) === done) this.vmLocks.delete(vmName);
    }
  }

  /** Promote a replica held here to a writable VM on this host (failover.ts). */
  async promote(vmName: string, opts: PromoteOptions): Promise<PromoteResult> {
    return this.withVm(vmName, () => this.promoteNow(vmName, opts));
  }

  private async promoteNow(vmName: string, opts: PromoteOptions): Promise<PromoteResult> {
    // promoted and committed already (the call again, after a restart that finished it): answered as it is
    const done = this.host.has(vmName) ? this.committedPromotion(vmName) : undefined;
    if (done && (opts.point === undefined || opts.point === done.point.seq)) return done;
    const result = await promoteReplica(this.host, this.replicas, vmName, opts);
    this.log.warn({ vm: result.vm, epoch: result.epoch, point: result.point.seq }, `replica of ${result.vm} promoted: it is the primary now (epoch ${result.epoch})${result.pending ? '; it runs from an overlay until the failover is committed' : ''}`);
    return result;
  }

  /** A host VM made by a committed promotion, as the promotion answered. */
  private committedPromotion(vmName: string): PromoteResult | undefined {
    const vm = this.host.get(vmName);
    const promotion = this.replicas.fenceRecord(vm.id)?.promotion;
    if (!vm.spec.origin || !promotion || promotion.pending) return undefined;
    return { vm: vmName, point: promotion.point, epoch: vm.spec.origin.epoch, rolledBackBytes: diskRangesBytes(promotion.rolledBack), pending: false };
  }

  /**
   * A disk of a VM whose promotion is not committed yet, while it is started: its overlay's,
   * behind a handover so that the commit moves its clients to the images without a restart.
   */
  private provisionalDisk(vmName: string, disk: string): BlockDevice | undefined {
    const p = this.replicas.provisional().find((x) => x.store.vmName === vmName);
    if (!p || p.promotion.running === false) return undefined;
    const key = `${vmName}/${disk}`;
    let h = this.handovers.get(key);
    if (!h) {
      const d = provisionalOverlay(this.replicas, vmName)?.disk(disk);
      if (!d) return undefined;
      h = new HandoverDisk(d);
      this.handovers.set(key, h);
    }
    return h;
  }

  /** The handovers of a VM's disks (forgotten here: the clients holding them keep them). */
  private takeHandovers(vmName: string): [string, HandoverDisk][] {
    const out = [...this.handovers].filter(([k]) => k.startsWith(`${vmName}/`));
    for (const [k] of out) this.handovers.delete(k);
    return out.map(([k, h]) => [k.slice(vmName.length + 1), h]);
  }

  /**
   * VMs whose promotion is not committed, as the VM list shows them: `origin.pending`, disks
   * served from an overlay (no image of their own yet).
   */
  provisionalVms(): (Omit<VmSpec, 'disks'> & { disks: { id: string; name: string; size: number; image: null }[] })[] {
    return this.replicas.provisional().map(({ store, epoch, promotion: p }) => ({
      id: store.vmId,
      name: store.vmName,
      disks: store.pointDisks(p.point.seq).map((d) => ({ id: d.id, name: d.name, size: d.size, image: null })),
      running: p.running !== false && !p.committing,
      createdAt: p.promotedAt ?? new Date(p.point.timeMs).toISOString(),
      origin: { epoch, point: { seq: p.point.seq, timeMs: p.point.timeMs }, promotedAt: p.promotedAt ?? '', pending: true },
    }));
  }

  /** Start or stop a VM whose promotion is not committed yet: whether its disks are served. */
  async setProvisionalRunning(vmName: string, running: boolean): Promise<void> {
    return this.withVm(vmName, () => this.setProvisionalRunningNow(vmName, running));
  }

  private async setProvisionalRunningNow(vmName: string, running: boolean): Promise<void> {
    const p = this.replicas.provisional().find((x) => x.store.vmName === vmName);
    if (!p) throw new OsrError('VM_NOT_FOUND', `VM ${vmName} does not exist on this host`, { vms: this.host.list().map((v) => v.name) });
    if (p.promotion.committing) throw new OsrError('INVALID_STATE', `the promotion of ${vmName} is being committed; start or stop it once the commit is done`);
    if (!running) await this.disconnectVm(vmName);
    this.replicas.setPromotion(p.store.vmId, { ...p.promotion, running });
    // a VM its host runs itself is powered there
    if (p.promotion.hosted) await this.host.promotions?.setRunning(p.store.vmId, running);
  }

  /** Disconnect a VM's NBD clients (once their requests finish) and make its writes durable. */
  private async disconnectVm(vmName: string): Promise<void> {
    await this.nbd.disconnect((name) => name.startsWith(`${vmName}/`));
    this.takeHandovers(vmName);
    const overlay = provisionalOverlay(this.replicas, vmName);
    for (const d of overlay?.disks ?? []) await d.flush();
  }

  /** Another point for a VM whose promotion is not committed: it restarts from that point, its writes discarded. */
  async changePromotedPoint(vmName: string, seq: number): Promise<PromoteResult> {
    return this.withVm(vmName, () => this.changePromotedPointNow(vmName, seq));
  }

  private async changePromotedPointNow(vmName: string, seq: number): Promise<PromoteResult> {
    await this.disconnectVm(vmName);
    const result = await changePromotedPoint(this.host, this.replicas, vmName, seq);
    this.log.warn({ vm: result.vm, point: result.point.seq }, `${result.vm} now runs from point #${result.point.seq}; what it wrote since its promotion was discarded`);
    return result;
  }

  /**
   * Commit a promotion: the VM's point and writes become its disks, the other points go.
   * A VM committed already answers as it is.
   */
  async commitPromotion(vmName: string): Promise<PromoteResult> {
    return this.withVm(vmName, () => this.commitPromotionNow(vmName));
  }

  private async commitPromotionNow(vmName: string): Promise<PromoteResult> {
    if (this.host.has(vmName)) {
      const done = this.committedPromotion(vmName);
      if (!done) throw new OsrError('INVALID_STATE', `${vmName} was not promoted from a replica; there is nothing to commit`);
      return done;
    }
    // the VM's clients stay connected: their requests wait while the disks move to the images
    const held = this.takeHandovers(vmName);
    for (const [, h] of held) await h.hold();
    let result: PromoteResult;
    try {
      result = await commitPromotion(this.host, this.replicas, vmName);
    } catch (e) {
      for (const [disk, h] of held) {
        this.handovers.set(`${vmName}/${disk}`, h);
        h.release();
      }
      throw e;
    }
    const vm = this.host.get(vmName);
    for (const [disk, h] of held) h.release(vm.disk(disk));
    this.log.warn({ vm: result.vm, point: result.point.seq }, `the promotion of ${result.vm} is committed: it runs from its own disks, the other points are gone`);
    return result;
  }

  /**
   * Reverse, at the old primary: the VM's disks become the replica of its promoted copy.
   * Its replication stops; its unshipped writes will be overwritten by the new primary's.
   * `source` is the promoted copy's agent (its certificate name), the only one that may
   * replicate into the new replica; without it the first agent to connect is recorded.
   */
  /**
   * After a failover elsewhere (epoch `epoch`): the VM is fenced — it refuses to start, and
   * on a hypervisor the fence is in its definition, where libvirt's hook refuses a start by
   * hand — and stopped. Fenced with that epoch or a newer one already: nothing to do.
   */
  async fence(vmName: string, epoch: number): Promise<VmSpec> {
    return this.withVm(vmName, () => this.fenceNow(vmName, epoch));
  }

  private async fenceNow(vmName: string, epoch: number): Promise<VmSpec> {
    const vm = this.host.get(vmName);
    if ((vm.spec.fenced?.epoch ?? 0) < epoch) vm.fence(`a newer copy of ${vm.name} was promoted elsewhere (epoch ${epoch}); reprotect this one to make it that copy's replica`, epoch);
    if (vm.running) await this.host.stop(vm.name);
    await this.nbd.disconnect((name) => name.startsWith(`${vm.name}/`));
    return vm.spec;
  }

  /** `grant` (with `source`): the vault's replication grant naming `source`, this agent as the target and the VM. */
  async demote(vmName: string, epoch?: number, source?: string, grant?: string): Promise<DemoteResult> {
    return this.withVm(vmName, () => this.demoteNow(vmName, epoch, source, grant));
  }

  private async demoteNow(vmName: string, epoch?: number, source?: string, token?: string): Promise<DemoteResult> {
    const vm = this.host.get(vmName);
    if (token !== undefined && source === undefined) throw new OsrError('INVALID_ARGUMENT', 'a replication grant goes with the source it names (source)');
    // checked, and taken as the newest, before anything of the VM is touched
    const grant = token !== undefined ? this.takeGrant(token, 'target', { replicationId: vm.id, otherHost: source }) : undefined;
    const r = [...this.replications.values()].find((x) => x.spec.vm === vm.name);
    const newEpoch = epoch ?? vm.spec.fenced?.epoch ?? (r ? r.spec.epoch + 1 : undefined);
    if (newEpoch === undefined) throw new OsrError('INVALID_ARGUMENT', `give the epoch ${vm.name} was promoted with elsewhere (--epoch)`);
    await this.host.stop(vm.name);
    await this.nbd.disconnect((name) => name.startsWith(`${vm.name}/`));
    if (r) await this.dropReplication(r);
    const result = await demoteVm(this.host, this.replicas, vm, newEpoch, source, grant);
    this.log.warn({ vm: vm.name, epoch: newEpoch, divergentBytes: result.divergentBytes }, `${vm.name} demoted: its disks are now the replica of the copy promoted with epoch ${newEpoch}`);
    return result;
  }

  /** Stop replicating a VM: change tracking stops and its logs are deleted; the replica stays. */
  async disableReplication(idOrVm: string): Promise<void> {
    const r = this.getReplication(idOrVm);
    await this.dropReplication(r);
    this.host.get(r.spec.vm).tracking.stop();
  }

  /** Stop a replication and forget it: its spec, and for an Azure replica its access and the replica opened in process (a later replication reads the container anew). */
  private async dropReplication(r: PrimaryReplication): Promise<void> {
    await r.stop();
    this.replications.delete(r.spec.id);
    fs.rmSync(path.join(this.config.dataDir, 'replications', `${r.spec.id}.json`), { force: true });
    if (r.spec.peer.kind === 'azure') {
      fs.rmSync(this.azureAccessFile(r.spec.id), { force: true });
      this.azureSas.delete(r.spec.id);
      this.azureReplicas.forget(this.host.get(r.spec.vm).id);
    }
  }

  /** Clean stop: replications, listeners, then disks (synced, marked clean). */
  private tlsStamp = '';
  private tlsTimer: NodeJS.Timeout | undefined;

  /**
   * Look at the TLS files now and then: a renewed certificate, a new CA bundle or a new
   * revocation list is loaded without a restart (checked against each other first; a bad
   * set is reported and the old one kept). New connections use it, both ways.
   */
  private watchTls(): void {
    this.tlsTimer = setInterval(() => {
      const stamp = tlsFilesStamp(this.config.tls);
      if (stamp === this.tlsStamp) return;
      this.tlsStamp = stamp;
      this.reloadTls().catch(() => undefined);
    }, this.config.tlsReloadMs ?? 10_000);
    this.tlsTimer.unref();
  }

  /**
   * Load the TLS files now (an enrolment just wrote them): new connections, both ways and
   * on the provider channel, use them at once. A bad set is reported and the old one kept.
   */
  async reloadTls(): Promise<void> {
    this.tlsStamp = tlsFilesStamp(this.config.tls);
    try {
      const loaded = await this.loadTls();
      await this.useTlsMaterial(loaded);
      const cert = new crypto.X509Certificate(loaded.m.cert);
      this.log.info({ serial: cert.serialNumber, notAfter: cert.validTo, crl: loaded.m.crl !== undefined, enrolled: loaded.enrolled }, 'reloaded the TLS certificate, CA and revocation list');
    } catch (e) {
      // looked at again at the next change of the files
      this.log.error({ code: toOsrError(e).code }, `the changed TLS files were not loaded, the old ones stay in use: ${(e as Error).message}`);
      throw e;
    }
  }

  /** The CA the agent trusts (PEM). */
  caPem(): string {
    return this.tls.ca;
  }

  /**
   * The vault's replication grant (src/pki/grant.ts), checked: signed by this agent's CA,
   * for this VM, naming this agent (its certificate's name and fabric) as `end` and, when
   * the caller names it, `otherHost` as the other end. AUTH_FAILED otherwise.
   */
  /**
   * checkGrant, and the grant must be the newest this agent took for the VM (in any role),
   * or that one again; it is recorded as the newest, durably, before the caller acts on it.
   */
  takeGrant(token: string, end: 'source' | 'target', expect: { replicationId: string; otherHost?: string | undefined }): ReplicationGrant {
    const g = this.checkGrant(token, end, expect);
    this.grantLedger.accept(g);
    return g;
  }

  private checkGrant(token: string, end: 'source' | 'target', expect: { replicationId: string; otherHost?: string | undefined }): ReplicationGrant {
    const g = verifyGrant(token, this.tls.ca);
    const me = this.enrolled;
    const mine = g[end];
    const other = end === 'source' ? g.target : g.source;
    const refuse = (why: string): never => {
      throw new OsrError('AUTH_FAILED', `the replication grant for ${g.replicationId} (item ${g.item}) was refused: ${why}`, { grant: { replicationId: g.replicationId, item: g.item, source: g.source, target: g.target, issuedAt: g.issuedAt } });
    };
    if (!me || !isGrantEnd(mine, me.commonName, me.fabricId)) {
      return refuse(`it names ${mine.host} of fabric ${mine.fabricId} as the ${end}; this agent is ${me?.commonName ?? this.config.name} of fabric ${me?.fabricId ?? '(none)'}`);
    }
    if (g.replicationId !== expect.replicationId) return refuse(`it is for VM ${g.replicationId}, not ${expect.replicationId}`);
    if (expect.otherHost !== undefined && other.host !== expect.otherHost) return refuse(`it names ${other.host} as the ${end === 'source' ? 'target' : 'source'}, not ${expect.otherHost}`);
    return g;
  }

  private bootstrapFiles() {
    const dir = path.join(this.config.dataDir, 'pki');
    return { dir, cert: path.join(dir, 'bootstrap.crt'), key: path.join(dir, 'bootstrap.key') };
  }

  /**
   * The TLS files, checked against each other; with the provider channel and no
   * certificate yet, the CA with the agent's bootstrap certificate (made on first start,
   * kept until the agent is enrolled so that its fingerprint stays the one the operator
   * copied).
   */
  private async loadTls(): Promise<{ m: TlsMaterial; enrolled: boolean }> {
    const f = this.config.tls;
    if (!this.config.providerApi || fs.existsSync(f.certFile)) return { m: await loadTlsMaterial(f), enrolled: true };
    const b = this.bootstrapFiles();
    if (!fs.existsSync(b.cert) || !fs.existsSync(b.key)) {
      const made = await createBootstrapCertificate(this.config.name);
      fs.mkdirSync(b.dir, { recursive: true, mode: 0o700 });
      await writeFileAtomic(b.key, made.keyPem, 0o600);
      await writeFileAtomic(b.cert, made.certPem, 0o644);
      await fsyncDir(b.dir);
    }
    let ca: string;
    try {
      ca = fs.readFileSync(f.caFile, 'utf8');
      new crypto.X509Certificate(ca);
    } catch (e) {
      throw new OsrError('CONFIG_INVALID', `the CA certificate ${f.caFile} cannot be read: ${(e as Error).message} (an agent that is not enrolled yet needs the vault's CA: --ca FILE)`, { file: f.caFile });
    }
    const crl = f.crlFile !== undefined && fs.existsSync(f.crlFile) ? fs.readFileSync(f.crlFile, 'utf8') : undefined;
    if (crl !== undefined) await readCrl(crl, ca);
    return { m: { cert: fs.readFileSync(b.cert, 'utf8'), key: fs.readFileSync(b.key, 'utf8'), ca, ...(crl !== undefined ? { crl } : {}) }, enrolled: false };
  }

  private async useTlsMaterial({ m, enrolled }: { m: TlsMaterial; enrolled: boolean }): Promise<void> {
    const list = m.crl !== undefined ? await readCrl(m.crl, m.ca) : undefined;
    const revoked = new Set(list?.serials ?? []);
    this.replicationServer?.setTlsMaterial(m, revoked);
    this.providerServer?.setSecureContext(serverTlsOptions({ ...m, crl: undefined }));
    this.tls = m;
    this.revocation = list ? { serials: revoked, nextUpdate: list.nextUpdate } : undefined;
    this.enrolled = enrolled ? readCertificateInfo(m.cert) : undefined;
    if (enrolled && this.config.providerApi) {
      // enrolled: the bootstrap certificate is never presented again
      const b = this.bootstrapFiles();
      fs.rmSync(b.key, { force: true });
      fs.rmSync(b.cert, { force: true });
    }
  }

  private providerApiState(): ProviderApiState {
    return {
      name: this.config.name,
      enrolled: this.enrolled,
      certificateNames: this.enrolled ? certificateNames(this.tls.cert) : [],
      revocation: this.revocation,
      hypervisor: this.host.drills !== undefined,
      bootstrapFabric: this.config.providerFabric,
      host: this.providerAddress?.host ?? '',
      port: this.providerAddress?.port ?? 0,
      now: () => this.clock.now(),
    };
  }

  /** Import VM `name` from Azure managed disks (vm-imports.ts): begun, or how it stands. */
  importVm(name: string, r: ImportRequest): ImportProgress {
    return this.imports.start(name, r);
  }

  /** Forget an imported VM: its replication stops (the replica at home stays), then the VM and its images go. */
  async removeImportedVm(name: string): Promise<void> {
    await this.withVm(name, async () => {
      // only a VM an import made: nothing of another VM is touched
      if (this.host.has(name) && !this.imports.isImported(this.host.get(name).spec)) throw new OsrError('INVALID_STATE', `VM ${name} was not imported: it is not removed this way`);
      const r = [...this.replications.values()].find((x) => x.spec.vm === name);
      if (r) await this.disableReplication(r.spec.id);
      await this.imports.remove(name);
    });
  }

  async stop(): Promise<void> {
    clearInterval(this.tlsTimer);
    await this.imports.stop();
    await Promise.all([...this.replications.values()].map((r) => r.stop()));
    await this.closeApi?.();
    await this.closeProviderApi?.();
    await this.replicationServer?.close();
    await this.nbd.close();
    await Promise.all(this.host.list().map((vm) => vm.tracking.closedSynced()));
    await this.host.closeAll();
    this.replicas.close();
    fs.rmSync(path.join(this.config.dataDir, 'run', 'agent.json'), { force: true });
    this.log.info('agent stopped cleanly');
    this.log.flush();
  }
}

/** What the TLS files look like now (size and modification time of each), to notice a change. */
function tlsFilesStamp(f: TlsFiles): string {
  return [f.certFile, f.keyFile, f.caFile, f.crlFile].map((file) => {
    if (file === undefined) return '-';
    try {
      const st = fs.statSync(file);
      return `${st.size}:${st.mtimeMs}:${st.ino}`;
    } catch {
      return 'missing';
    }
  }).join('|');
}
