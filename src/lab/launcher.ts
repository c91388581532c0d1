/**
 * `osr lab`: a whole lab on one machine — the vault (SQLite), one provider per fabric of
 * the topology (each runs its hosts' agents and the demo VMs' guests) — started, watched
 * and stopped together.
 *
 * Layout of the lab directory (default .osr/lab):
 *   lab.json          what runs now (pids, URLs); removed by a clean stop
 *   topology.yaml     the topology the lab was made from (kept: the lab's own copy)
 *   osr.yaml          vault URL, Owner token and CA for the osr CLI (mode 0600)
 *   owner.token       the first Owner token (mode 0600)
 *   vault-ca.pem      the vault's CA, checked against the fingerprint the vault printed
 *   vault/            the vault's database and log
 *   sites/NAME.yaml   each fabric's site file; sites/NAME/ its provider, hosts and state
 *
 * Every process runs in a process group of its own, so Ctrl-C reaches the launcher only,
 * which stops the providers (and through them agents and guests) first and the vault last.
 * lab.json is written before the first process starts and again as each one is spawned
 * (pid, process group, start time: lab-processes.ts), so that an interrupted start-up stops
 * what it started, and `osr lab down` finds the processes of a start-up that was killed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import YAML from 'yaml';
import { AgentClient } from '../cli/agent-client.js';
import { ERROR_CODES, OsrError, toOsrError, type ErrorCode } from '../domain/errors.js';
import type { ProtectedItem } from '../domain/resources.js';
import { writeFileAtomic } from '../pki/index.js';
import { fetchPinnedCa, newestPrimary, probeVaults, VaultClient } from '../provider/vault-client.js';
import { OSR_BIN } from './agent-process.js';
import { Virsh } from '../agent/libvirt/virsh.js';
import { checkKvmHost, isKvmTopology, prepareKvmLab, removeKvmObjects, kvmLabGuest, startKvmSite, stopKvmDomains } from './kvm-lab.js';
import { stopStrayAgents, type LabAgentInfo } from './lab-driver.js';
import { findLabProcesses, isRunning, recordProcess, stopLabProcess, type LabProcess } from './lab-processes.js';
import { emulatorSiteFile } from './azure-emulator.js';
import { loadTopology, slug, type SiteConfig, type TopologySpec, DEFAULT_LAB_DIR } from './topology.js';
import { freePort, PostgresPair } from './postgres-pair.js';
import pg from 'pg';

export { DEFAULT_LAB_DIR };

/** A lab vault's settings: heartbeats and leases short enough for a lab's pace. */
export const LAB_VAULT_TUNING = ['--heartbeat-interval', '5s', '--heartbeat-lost-after', '30s', '--job-lease', '10s', '--job-concurrency', '256', '--role-check', '1s', '--log-level', 'warn'];

export interface LabFile {
  topology: string;
  dir: string;
  startedAt: string;
  detached: boolean;
  /** starting: `lab up` has not finished (or was cut short); up: every process is ready */
  state?: 'starting' | 'up';
  vault: {
    url: string;
    pid: number;
    caFingerprint: string;
    /** the fabric whose site the vault is at (none: a third site) */
    site?: string;
    /** a vault at another site: its URL (a standby on PostgreSQL, or where a backup is restored on SQLite) and its site */
    standbyUrl?: string;
    standbySite?: string;
    database?: 'sqlite' | 'postgres';
  };
  providers: { fabric: string; fabricId: string; pid: number; config: string }[];
  /** every process the lab spawned, recorded as it was spawned */
  processes?: LabProcess[];
  /** sites failed on purpose (`osr lab site fail`), not restored yet */
  failedSites?: string[];
}

export interface LabUpOptions {
  topology?: string | undefined;
  dir: string;
  detach: boolean;
  /** the vault's port on 127.0.0.1 (0: any free port) */
  port: number;
  /** how often providers report item status (default 5 s in a lab) */
  statusInterval?: string;
  out?: (line: string) => void;
  /** aborted (a signal): start-up stops what it started and fails with INTERRUPTED */
  signal?: AbortSignal | undefined;
}

export interface RunningLab {
  info: LabFile;
  token: string;
  api: VaultClient;
  /** resolves when the lab stopped (foreground) */
  stopped: Promise<void>;
  stop(): Promise<void>;
}

const labFile = (dir: string) => path.join(dir, 'lab.json');

export function readLabFile(dir: string): LabFile | undefined {
  try {
    return JSON.parse(fs.readFileSync(labFile(dir), 'utf8')) as LabFile;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new OsrError('CONFIG_INVALID', `${labFile(dir)} cannot be read: ${(e as Error).message}; if no lab runs, remove it`);
  }
}

/** Write lab.json now, durably: a process is recorded before anything waits for it. */
export function saveLabFile(dir: string, info: LabFile): void {
  const file = labFile(dir);
  const tmp = `${file}.${process.pid}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o644);
  try {
    fs.writeSync(fd, `${JSON.stringify(info, null, 2)}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  const d = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(d);
  } finally {
    fs.closeSync(d);
  }
}

/** The lab's processes: as recorded, or (a lab.json of an older osr) from its pids. */
export function labProcesses(info: LabFile): LabProcess[] {
  if (info.processes) return info.processes;
  const old = (role: LabProcess['role'], name: string, pid: number): LabProcess => ({ role, name, pid, pgid: pid, startTime: null });
  return [...info.providers.map((p) => old('provider', p.fabric, p.pid)), ...(info.vault.pid ? [old('vault', info.vault.url, info.vault.pid)] : [])];
}

/** Stop every process of a lab: providers (their hosts and guests) first, then the vault. */
async function stopLab(dir: string, info: LabFile, sites: string[], out: (l: string) => void, graceMs?: number): Promise<void> {
  const recorded = labProcesses(info);
  // and any the launcher spawned but was killed before recording
  const all = [...recorded, ...findLabProcesses(dir).filter((f) => !recorded.some((r) => r.pid === f.pid && isRunning(r)))];
  await Promise.all(
    all
      .filter((p) => p.role === 'provider')
      .map(async (p) => {
        if (isRunning(p)) out(`stopping provider ${p.name} (pid ${p.pid}) and its hosts…`);
        await stopLabProcess(p, graceMs);
      }),
  );
  // a kvm lab's agents (the launcher's own)
  await Promise.all(
    all
      .filter((p) => p.role === 'agent')
      .map(async (p) => {
        if (isRunning(p)) out(`stopping agent ${p.name} (pid ${p.pid})…`);
        await stopLabProcess(p, graceMs);
      }),
  );
  // the emulated Azure site, once no provider uses it
  for (const p of all.filter((x) => x.role === 'emulator')) {
    if (isRunning(p)) out(`stopping the Azure site's emulator (pid ${p.pid})…`);
    await stopLabProcess(p, graceMs);
  }
  // hosts of a provider that was killed outlive it: stop them too
  for (const site of sites) await stopStrayAgents(site);
  // then a kvm lab's domains, once nothing of osr uses them
  await stopKvmDomains(dir, out);
  for (const p of all.filter((x) => x.role === 'vault')) {
    if (isRunning(p)) out(`stopping the vault (pid ${p.pid})…`);
    await stopLabProcess(p, graceMs);
  }
  // the vault's PostgreSQL clusters, last
  if (PostgresPair.exists(path.join(dir, 'postgres'))) {
    out('stopping the vault\'s PostgreSQL clusters…');
    await PostgresPair.load(path.join(dir, 'postgres')).stop();
  }
}

/** Wait until the standby database holds the vault its primary made (streaming replication has caught up with it). */
async function waitForStandbyVault(url: string, signal: AbortSignal | undefined): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    for (let i = 0; ; i++) {
      interrupted(signal);
      if ((await client.query("select 1 from settings where key = 'vault.term'")).rowCount === 1) return;
      if (i > 600) throw new OsrError('STORE_UNAVAILABLE', `the standby database at ${url} did not receive the vault from its primary within a minute; look at PostgreSQL's log`);
      await new Promise((r) => setTimeout(r, 100));
    }
  } finally {
    await client.end();
  }
}

/** Refuse a port another process listens on, before anything starts. */
async function ensurePortFree(port: number): Promise<void> {
  if (port === 0) return;
  const server = net.createServer();
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EADDRINUSE') {
      throw new OsrError('PORT_IN_USE', `port ${port} on 127.0.0.1 is in use: if a lab was left running, \`osr lab down\` (with its --dir) stops it; or start this lab on another port with \`osr lab up --port PORT\` (0: any free port)`, { port });
    }
    throw e;
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Spawn an osr process in its own process group, its output in a log file; resolves with its ready line. */
export async function spawnReady(
  args: string[],
  logFile: string,
  ready: (o: Record<string, unknown>) => boolean,
  o: { onSpawn: (child: ChildProcess) => void; signal?: AbortSignal | undefined; timeoutMs?: number },
): Promise<{ child: ChildProcess; line: Record<string, unknown> }> {
  interrupted(o.signal);
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  const start = fs.existsSync(logFile) ? fs.statSync(logFile).size : 0;
  const fd = fs.openSync(logFile, 'a', 0o600);
  const child = spawn(process.execPath, [OSR_BIN, ...args], { stdio: ['ignore', fd, fd], detached: true });
  fs.closeSync(fd);
  o.onSpawn(child);
  const timeoutMs = o.timeoutMs ?? 120_000;
  let exited: string | undefined;
  child.once('exit', (code, signal) => (exited = signal ?? String(code)));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = fs.readFileSync(logFile, 'utf8').slice(start);
    for (const l of text.split('\n')) {
      if (!l.startsWith('{')) continue;
      try {
        const o = JSON.parse(l) as Record<string, unknown>;
        if (!('level' in o) && ready(o)) return { child, line: o };
      } catch {
        // a line still being written
      }
    }
    if (exited !== undefined || Date.now() > deadline) {
      if (exited === undefined) child.kill('SIGKILL');
      const tail = text.split('\n').slice(-15).join('\n');
      // a refusal the process explained (`error CODE: message`) keeps its code and its advice
      const said = /^error ([A-Z_]+): (.*)$/m.exec(text);
      const code = said && said[1]! in ERROR_CODES ? (said[1] as ErrorCode) : 'INTERNAL';
      throw new OsrError(code, `osr ${args[0]} ${exited !== undefined ? `exited (${exited})` : 'did not start in time'}${said ? `: ${said[2]}` : ''}; the end of ${logFile}:\n${tail}`, { log: logFile });
    }
    interrupted(o.signal);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function interrupted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new OsrError('INTERRUPTED', 'lab start-up interrupted');
}

/** The lab's own copy of its topology: the one given the first time, the same one after. */
function labTopology(dir: string, given: string | undefined): { spec: TopologySpec; name: string } {
  const kept = path.join(dir, 'topology.yaml');
  if (fs.existsSync(kept)) {
    const spec = loadTopology(kept).spec;
    if (given !== undefined) {
      const wanted = loadTopology(given).spec;
      if (wanted.name !== spec.name) throw new OsrError('CONFIG_INVALID', `the lab in ${dir} was made from topology ${spec.name}, not ${wanted.name}; give another --dir, or remove ${dir} to start over`);
    }
    return { spec, name: spec.name };
  }
  const { file, spec } = loadTopology(given ?? 'two-sites');
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(file, kept);
  return { spec, name: spec.name };
}

export async function labUp(o: LabUpOptions): Promise<RunningLab> {
  const out = o.out ?? ((l: string) => console.log(l));
  const dir = path.resolve(o.dir);
  const running = readLabFile(dir);
  if (running && (labProcesses(running).some(isRunning) || (running.state === 'starting' && findLabProcesses(dir).length > 0))) {
    if (running.state === 'starting') throw new OsrError('ALREADY_EXISTS', `the start-up of the lab in ${dir} was cut short and left processes running; \`osr lab down\` stops them`);
    throw new OsrError('ALREADY_EXISTS', `a lab already runs in ${dir} (vault ${running.vault.url}); \`osr lab status\` shows it, \`osr lab down\` stops it`);
  }
  const { spec, name } = labTopology(dir, o.topology);
  out(`osr lab: topology ${name} in ${dir}${isKvmTopology(spec) ? ' (libvirt: tiny Linux guests under QEMU)' : ''}`);
  const children: ChildProcess[] = [];
  const info: LabFile = { topology: name, dir, startedAt: new Date().toISOString(), detached: o.detach, state: 'starting', vault: { url: '', pid: 0, caFingerprint: '' }, providers: [], processes: [] };
  const sites = spec.fabrics.map((f) => path.join(dir, 'sites', slug(f.name)));
  const spawned = (role: LabProcess['role'], processName: string, more: Pick<LabProcess, 'site' | 'spawn'> = {}) => (child: ChildProcess) => {
    children.push(child);
    if (child.pid === undefined) return;
    info.processes!.push(recordProcess(role, processName, child.pid, more));
    saveLabFile(dir, info);
  };
  /** spawn an osr process of a site (or of none), recorded with how to start it again */
  const startProcess = (role: LabProcess['role'], processName: string, site: string | undefined, args: string[], log: string, ready: string) =>
    spawnReady(args, log, (l) => l[ready] !== undefined, { onSpawn: spawned(role, processName, { ...(site !== undefined ? { site } : {}), spawn: { args, log, ready } }), signal: o.signal });
  const kill = async () => {
    await stopLab(dir, info, sites, () => undefined, o.signal?.aborted ? 20_000 : undefined);
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  try {
    interrupted(o.signal);
    await ensurePortFree(o.port);
    // a kvm lab needs libvirtd and its guest before anything starts
    const virsh = isKvmTopology(spec) ? new Virsh() : undefined;
    if (virsh) {
      await checkKvmHost(virsh);
      await prepareKvmLab(dir, virsh, out);
    }
    const guest = virsh ? await kvmLabGuest(out) : undefined;
    saveLabFile(dir, info);
    // 1. the vault: at a site or a third one; with a standby at another site (docs/deployment.md)
    const tokenFile = path.join(dir, 'owner.token');
    const vaultName = spec.vault?.name ?? 'osr-lab';
    const placement = spec.vault ?? {};
    const postgres = placement.database === 'postgres';
    // a port of its own, kept in its arguments: `osr lab site restore` starts it where providers know it
    const portA = o.port === 0 ? await freePort() : o.port;
    const standby = placement.standby !== undefined ? { site: placement.standby, url: `https://127.0.0.1:${await freePort()}`, dir: path.join(dir, 'sites', slug(placement.standby)) } : undefined;
    const pair = postgres ? await (PostgresPair.exists(path.join(dir, 'postgres')) ? PostgresPair.open(path.join(dir, 'postgres')) : PostgresPair.create(path.join(dir, 'postgres'))) : undefined;
    const tuning = LAB_VAULT_TUNING;
    const vaultArgs = ['vault', '--name', vaultName, '--data-dir', path.join(dir, 'vault'), '--listen', `127.0.0.1:${portA}`, '--initial-token-file', tokenFile, ...tuning];
    if (pair) vaultArgs.push('--database', pair.primary.url());
    if (standby) {
      vaultArgs.push('--peer', standby.url);
      // a SQLite vault's backups go to the standby's site, where `osr lab vault promote` restores the newest
      if (!pair) vaultArgs.push('--backup-dir', path.join(standby.dir, 'vault-backups'), '--backup-every', '5m', '--backup-keep', '12');
    }
    const vault = await startProcess('vault', vaultName, placement.site, vaultArgs, path.join(dir, 'vault', 'vault.log'), 'caFingerprint');
    const urlA = String(vault.line.url);
    info.vault = {
      url: urlA,
      pid: vault.child.pid!,
      caFingerprint: String(vault.line.caFingerprint),
      ...(placement.site !== undefined ? { site: placement.site } : {}),
      ...(standby ? { standbyUrl: standby.url, standbySite: standby.site, database: postgres ? 'postgres' : 'sqlite' } : {}),
    };
    saveLabFile(dir, info);
    if (!fs.existsSync(tokenFile)) throw new OsrError('CONFIG_INVALID', `${tokenFile} is missing, so the lab cannot act as Owner; remove ${dir} to start over, or put an Owner token there`);
    const token = fs.readFileSync(tokenFile, 'utf8').trim();
    const ca = await fetchPinnedCa(info.vault.url, info.vault.caFingerprint);
    const caFile = path.join(dir, 'vault-ca.pem');
    await writeFileAtomic(caFile, ca, 0o644);
    // the CLI, like the providers, knows both vaults and follows the primary
    const vaultUrls = standby ? `${urlA},${standby.url}` : urlA;
    await writeFileAtomic(path.join(dir, 'osr.yaml'), YAML.stringify({ vault: vaultUrls, token, ca: caFile }), 0o600);
    const api = new VaultClient(info.vault.url, { ca, token });
    out(`  vault      ${info.vault.url}  (CA ${info.vault.caFingerprint.slice(0, 23)}…)${placement.site !== undefined ? ` at ${placement.site}` : ' at a third site'}`);
    if (standby) {
      // the CA's key goes to the other site once (it is not in the database or the backups)
      const caKey = path.join(standby.dir, 'vault-ca.key');
      fs.mkdirSync(standby.dir, { recursive: true });
      fs.copyFileSync(path.join(dir, 'vault', 'ca.key'), caKey);
      fs.chmodSync(caKey, 0o600);
      if (pair) {
        await waitForStandbyVault(pair.standby.url(), o.signal);
        const args = ['vault', '--name', vaultName, '--data-dir', path.join(standby.dir, 'vault'), '--database', pair.standby.url(), '--listen', new URL(standby.url).host, '--peer', urlA, '--ca-key-file', caKey, ...tuning];
        await startProcess('vault', `${vaultName}-standby`, standby.site, args, path.join(standby.dir, 'vault', 'vault.log'), 'caFingerprint');
        out(`  standby    ${standby.url}  at ${standby.site}, on a streaming PostgreSQL standby (\`osr lab vault promote\` promotes it)`);
      } else {
        out(`  standby    ${standby.url}  at ${standby.site}: backups every 5 minutes into ${path.join(standby.dir, 'vault-backups')} (\`osr lab vault promote\` restores the newest there)`);
      }
    }

    // 2. one provider per fabric; a new one registers with a fresh key
    const sitesDir = path.join(dir, 'sites');
    fs.mkdirSync(sitesDir, { recursive: true });
    interrupted(o.signal);
    /** a fabric's provider: registered with a fresh key the first time, started from its state after */
    const startProvider = async (fabric: string, id: string, kind: 'lab' | 'libvirt' | 'azure', siteFile: string, extra: string[] = []) => {
      const args = ['provider', '--fabric', kind, '--config', siteFile, '--vault', vaultUrls, '--status-interval', o.statusInterval ?? '5s', '--poll', '10s', '--log-level', 'warn', ...extra];
      const keyFile = path.join(sitesDir, id, 'registration.key');
      const registered = path.join(sitesDir, id, 'provider', 'registration.json');
      if (!fs.existsSync(registered)) {
        const key = (await api.request<{ key: string }>('POST', '/api/v1/registration-keys')).key;
        fs.mkdirSync(path.dirname(keyFile), { recursive: true });
        await writeFileAtomic(keyFile, key, 0o600);
        args.push('--registration-key-file', keyFile);
      }
      interrupted(o.signal);
      const p = await startProcess('provider', fabric, kind === 'azure' ? undefined : fabric, args, path.join(sitesDir, id, 'provider.log'), 'fabricId');
      fs.rmSync(keyFile, { force: true });
      return { fabric, fabricId: String(p.line.fabricId), pid: p.child.pid!, config: siteFile };
    };
    const starts: Promise<LabFile['providers'][number]>[] = spec.fabrics.map(async (f) => {
      const id = slug(f.name);
      let siteFile = path.join(sitesDir, `${id}.yaml`);
      if (virsh && guest) {
        // the launcher starts a kvm site's agents (and its domains); its provider finds them in the site file
        const spawnAgent = (args: string[], logFile: string, ready: (l: Record<string, unknown>) => boolean, host: string) =>
          spawnReady(args, logFile, ready, { onSpawn: spawned('agent', host, { site: f.name }), signal: o.signal }).then((r) => ({ pid: r.child.pid!, line: r.line }));
        siteFile = (await startKvmSite({ dir, f, siteDir: path.join(sitesDir, id), guest, virsh, spawn: spawnAgent, out, caFile })).siteFile;
      } else {
        const site: SiteConfig = { ...f, lab: { dir: `./${id}` } };
        await writeFileAtomic(siteFile, YAML.stringify(site), 0o644);
      }
      return startProvider(f.name, id, virsh ? 'libvirt' : 'lab', siteFile);
    });
    const azure = spec.azure;
    if (azure) {
      starts.push(
        (async () => {
          // the Azure site: its emulator first (Azurite and the Resource Manager), then its provider
          const id = slug(azure.name);
          const azureDir = path.join(dir, 'azure');
          const e = await spawnReady(['lab', 'azure-emulator', '--data-dir', azureDir, '--topology', path.join(dir, 'topology.yaml')], path.join(azureDir, 'emulator.log'), (l) => typeof l.azureEmulator === 'string', { onSpawn: spawned('emulator', 'azure'), signal: o.signal });
          // the osr agent in the region (failback reads the Azure disks there): a lab host's agent on its ports of the last start, enrolled by the Azure provider over its provider channel
          const regionName = `azure-${azure.location}`;
          const regionFile = path.join(azureDir, 'region-agent.json');
          const known = fs.existsSync(regionFile) ? (JSON.parse(fs.readFileSync(regionFile, 'utf8')) as { replicationPort: number; providerApiPort: number; agentFingerprint?: string }) : undefined;
          const args = ['agent', '--name', regionName, '--data-dir', path.join(azureDir, 'region-agent'), '--ca', caFile, '--provider-api', `127.0.0.1:${known?.providerApiPort ?? 0}`, '--host', 'lab', '--listen', `127.0.0.1:${known?.replicationPort ?? 0}`, '--retry-backoff', '5s,10s,20s', '--retry-every', '30s', '--log-level', 'warn'];
          const a = await spawnReady(args, path.join(azureDir, 'region-agent.log'), (l) => typeof l.api === 'string', { onSpawn: spawned('agent', regionName), signal: o.signal });
          const replicationPort = Number(a.line.replicationPort);
          const providerApi = String(a.line.providerApi);
          // printed until the agent is enrolled; the first one stays in the site file
          const agentFingerprint = typeof a.line.bootstrapFingerprint === 'string' ? a.line.bootstrapFingerprint : known?.agentFingerprint;
          await writeFileAtomic(regionFile, JSON.stringify({ replicationPort, providerApiPort: Number(new URL(providerApi).port), ...(agentFingerprint !== undefined ? { agentFingerprint } : {}) }), 0o600);
          const agentInfo: LabAgentInfo = { host: regionName, hostId: regionName, fabric: azure.name, api: String(a.line.api), pid: a.child.pid!, replicationPort, nbdSocket: String(a.line.nbdSocket ?? '') };
          fs.mkdirSync(path.join(sitesDir, id), { recursive: true });
          await writeFileAtomic(path.join(sitesDir, id, 'agents.json'), `${JSON.stringify([agentInfo], null, 2)}\n`, 0o644);
          const siteFile = path.join(sitesDir, `${id}.yaml`);
          const site = { ...emulatorSiteFile(azureDir, azure, { blobEndpoint: String(e.line.blobEndpoint), armEndpoint: String(e.line.armEndpoint) }), regionAgent: { agent: providerApi, ...(agentFingerprint !== undefined ? { agentFingerprint } : {}), addresses: ['127.0.0.1'], replicationPort } };
          await writeFileAtomic(siteFile, YAML.stringify(site), 0o600);
          return startProvider(azure.name, id, 'azure', siteFile, ['--data-dir', path.join(sitesDir, id, 'provider')]);
        })(),
      );
    }
    // every start is let finish (or fail) before a failure stops the lab: none spawns after that
    const started = await Promise.allSettled(starts);
    const failed = started.filter((r) => r.status === 'rejected').map((r) => toOsrError(r.reason));
    if (failed.length > 0) throw failed.find((e) => e.code !== 'INTERRUPTED') ?? failed[0]!;
    info.providers = started.map((r) => (r as PromiseFulfilledResult<LabFile['providers'][number]>).value);
    interrupted(o.signal);
    info.state = 'up';
    saveLabFile(dir, info);
    for (const p of info.providers) {
      const f = spec.fabrics.find((x) => x.name === p.fabric);
      if (!f) {
        out(`  fabric     ${p.fabric} (${p.fabricId}): Azure, emulated on this machine (region ${azure?.location}, resource group ${azure?.resourceGroup}; virtual networks ${azure?.virtualNetworks.map((v) => v.name).join(', ')})`);
        continue;
      }
      out(`  fabric     ${p.fabric} (${p.fabricId}): ${f.clouds.map((c) => c.name).join(', ')}; hosts ${f.clouds.flatMap((c) => c.hostGroups.flatMap((hg) => hg.hosts.map((h) => h.name))).join(', ')}; VMs ${f.vms.map((v) => v.name).join(', ') || '-'}`);
    }
    out('');
    out(`Portal     ${info.vault.url}/   (sign in with the Owner token; the browser does not know the lab's CA: trust ${caFile}, or accept its warning)`);
    out(`API        ${info.vault.url}/api/v1   (OpenAPI at ${info.vault.url}/api/v1/openapi.json)`);
    out(`Owner token ${token}`);
    out(`CLI        the osr command reads ${path.join(dir, 'osr.yaml')} (vault, token, CA)${path.resolve(DEFAULT_LAB_DIR) === dir ? '' : `: export OSR_CONFIG=${path.join(dir, 'osr.yaml')}`}`);
    out('next       osr policy create …, osr pairing create …, osr mapping create …, osr item enable VM (docs/getting-started.md)');

    let resolveStopped!: () => void;
    const stopped = new Promise<void>((r) => (resolveStopped = r));
    let stopping: Promise<void> | undefined;
    const stop = () => {
      stopping ??= (async () => {
        await kill();
        fs.rmSync(labFile(dir), { force: true });
        api.close();
        resolveStopped();
      })();
      return stopping;
    };
    if (o.detach) {
      for (const c of children) c.unref();
      out(`\nthe lab runs in the background; \`osr lab status\` shows it, \`osr lab down\` stops it`);
    } else {
      for (const c of children) {
        c.once('exit', (code, signal) => {
          if (stopping) return;
          // a site failed on purpose (`osr lab site fail`): its processes end, the lab goes on
          const failed = readLabFile(dir)?.failedSites ?? [];
          const rec = info.processes?.find((p) => p.pid === c.pid);
          if (rec?.site !== undefined && failed.includes(rec.site)) return;
          out(`a lab process (pid ${c.pid}) ended (${signal ?? code}); stopping the lab (logs in ${dir})`);
          stop().catch((e: unknown) => out(`stopping the lab failed: ${toOsrError(e).message}; \`osr lab down\` stops what is left`));
        });
      }
    }
    return { info, token, api, stopped, stop };
  } catch (e) {
    if (o.signal?.aborted) out('interrupted: stopping what had started…');
    await kill();
    fs.rmSync(labFile(dir), { force: true });
    throw o.signal?.aborted ? new OsrError('INTERRUPTED', `lab start-up interrupted; every process it had started is stopped, and the lab's state stays in ${dir}`) : e;
  }
}

/** Stop a lab from its lab.json: providers (their hosts and guests) first, then the vault. */
export async function labDown(dirArg: string, out: (l: string) => void = (l) => console.log(l)): Promise<boolean> {
  const dir = path.resolve(dirArg);
  const info = readLabFile(dir);
  if (!info) {
    out(`no lab runs in ${dir}`);
    return false;
  }
  if (info.state === 'starting') out(`the lab's start-up was cut short; stopping what it started…`);
  // the sites of the lab's topology (a start-up cut short knows no providers yet)
  const sitesDir = path.join(dir, 'sites');
  const sites = fs.existsSync(sitesDir) ? fs.readdirSync(sitesDir, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => path.join(sitesDir, e.name)) : [];
  await stopLab(dir, info, sites, out);
  fs.rmSync(labFile(dir), { force: true });
  out(`stopped; the lab's state stays in ${dir} (\`osr lab up\` goes on from it)`);
  return true;
}

/**
 * Remove a lab: stop it if it runs, remove what it made in libvirt (a kvm lab's domains,
 * networks and pools), then its directory. Refused for a directory that is not a lab's.
 */
export async function labRemove(dirArg: string, out: (l: string) => void = (l) => console.log(l)): Promise<void> {
  const dir = path.resolve(dirArg);
  if (!fs.existsSync(dir)) {
    out(`no lab in ${dir}: nothing to remove`);
    return;
  }
  if (!fs.existsSync(path.join(dir, 'topology.yaml'))) throw new OsrError('INVALID_ARGUMENT', `${dir} is not a lab's directory (it has no topology.yaml): nothing was removed`);
  if (readLabFile(dir)) await labDown(dir, out);
  if (fs.existsSync(path.join(dir, 'kvm.json')) || isKvmTopology(loadTopology(path.join(dir, 'topology.yaml')).spec)) {
    await removeKvmObjects(dir, new Virsh(), (names) => `removing the lab's libvirt domains, networks and pools: ${names.join(', ')}`, out);
  }
  fs.rmSync(dir, { recursive: true, force: true });
  out(`removed the lab in ${dir}`);
}

/** The lab's agents, from each running provider's agents.json. */
export function labAgents(dir: string): LabAgentInfo[] {
  const sites = path.join(path.resolve(dir), 'sites');
  if (!fs.existsSync(sites)) return [];
  const out: LabAgentInfo[] = [];
  for (const e of fs.readdirSync(sites, { withFileTypes: true })) {
    const f = path.join(sites, e.name, 'agents.json');
    if (e.isDirectory() && fs.existsSync(f)) out.push(...(JSON.parse(fs.readFileSync(f, 'utf8')) as LabAgentInfo[]));
  }
  return out;
}

export interface LabStatus {
  dir: string;
  running: boolean;
  lab: LabFile | null;
  processes: { role: string; name: string; pid: number; alive: boolean; site?: string; address?: string }[];
  /** the vault the status was read from: the primary of the newest term among the lab's vaults */
  vaultUrl?: string;
  fabrics: { id: string; name: string; lastHeartbeatAt: string | null; heartbeatLost: boolean; inventoryAt: string | null }[];
  items: ProtectedItem[];
  agents: LabAgentInfo[];
}

export async function labStatus(dirArg: string): Promise<LabStatus> {
  const dir = path.resolve(dirArg);
  const lab = readLabFile(dir) ?? null;
  const status: LabStatus = { dir, running: false, lab, processes: [], fabrics: [], items: [], agents: [] };
  if (!lab) return status;
  const recorded = labProcesses(lab);
  const failed = new Set(lab.failedSites ?? []);
  for (const p of [...recorded.filter((x) => x.role === 'vault'), ...recorded.filter((x) => x.role === 'provider'), ...recorded.filter((x) => x.role === 'emulator')]) {
    const url = p.role === 'vault' ? (p.site !== undefined && p.site === lab.vault.standbySite ? lab.vault.standbyUrl : lab.vault.url) : undefined;
    status.processes.push({ role: p.role, name: p.name, pid: p.pid, alive: isRunning(p), ...(p.site !== undefined ? { site: p.site } : {}), ...(url ? { address: url } : {}) });
  }
  status.agents = labAgents(dir);
  for (const a of status.agents) status.processes.push({ role: 'agent', name: a.host, pid: a.pid, alive: isAlive(a.pid), site: a.fabric, address: a.api });
  // a site failed on purpose is down by design
  status.running = lab.state !== 'starting' && status.processes.length > 0 && status.processes.every((p) => p.alive || (p.site !== undefined && failed.has(p.site)));
  const cfg = lab.vault.url ? (YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { token: string; ca: string }) : undefined;
  const vaultUrl = cfg ? newestPrimary(await probeVaults([lab.vault.url, ...(lab.vault.standbyUrl ? [lab.vault.standbyUrl] : [])], fs.readFileSync(cfg.ca, 'utf8')))?.url : undefined;
  if (cfg && vaultUrl) {
    status.vaultUrl = vaultUrl;
    const api = new VaultClient(vaultUrl, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
    try {
      status.fabrics = (await api.request<{ items: LabStatus['fabrics'] }>('GET', '/api/v1/fabrics')).items;
      status.items = (await api.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=1000')).items;
    } catch (e) {
      throw new OsrError(toOsrError(e).code, `the lab's vault at ${vaultUrl} did not answer: ${(e as Error).message}`);
    } finally {
      api.close();
    }
  }
  return status;
}

/**
 * The NBD URI of a running lab VM's disk, on whichever host runs it now. DISK is the
 * disk's name in the topology (system) or on the host (disk0); default the first disk.
 */
export async function labNbdUri(dirArg: string, vm: string, disk?: string): Promise<{ vm: string; host: string; disk: string; uri: string; tcp: string | null }[]> {
  const dir = path.resolve(dirArg);
  const agents = labAgents(dir);
  if (agents.length === 0) throw new OsrError('NOT_FOUND', `no lab runs in ${dir}: start it with \`osr lab up\``);
  const topologyNames = new Map<string, string[]>();
  const kept = path.join(dir, 'topology.yaml');
  const spec = fs.existsSync(kept) ? loadTopology(kept).spec : undefined;
  if (spec && isKvmTopology(spec)) throw new OsrError('NOT_SUPPORTED', `the lab in ${dir} runs on libvirt: its VMs' disks are QEMU's, not served by osr; \`virsh domblklist DOMAIN\` lists them (the domains are in \`virsh list\`)`);
  for (const f of spec?.fabrics ?? []) for (const v of f.vms) topologyNames.set(v.name, v.disks.map((d) => d.name));
  let stoppedOn: string | undefined;
  for (const a of agents) {
    if (!isAlive(a.pid)) continue;
    const client = new AgentClient(a.api);
    const vms = await client.get<{ name: string; running: boolean }[]>('/v1/vms').catch(() => []);
    const found = vms.find((v) => v.name === vm);
    if (!found) continue;
    if (!found.running) {
      stoppedOn = a.host;
      continue;
    }
    const disks = await client.get<{ name: string; nbd: { unix: string; tcp: string | null } }[]>(`/v1/vms/${encodeURIComponent(vm)}/disks`);
    const names = topologyNames.get(vm) ?? [];
    const rows = disks.map((d, i) => ({ vm, host: a.host, disk: names[i] ?? d.name, hostDisk: d.name, uri: d.nbd.unix, tcp: d.nbd.tcp }));
    const chosen = disk === undefined ? rows.slice(0, 1) : rows.filter((r) => r.disk === disk || r.hostDisk === disk);
    if (chosen.length === 0) throw new OsrError('NOT_FOUND', `VM ${vm} has no disk ${disk}; its disks: ${rows.map((r) => `${r.disk} (${r.hostDisk})`).join(', ')}`);
    return chosen.map(({ hostDisk: _h, ...r }) => r);
  }
  if (stoppedOn) throw new OsrError('INVALID_STATE', `VM ${vm} is off (on ${stoppedOn}); its disks are served only while it runs`);
  throw new OsrError('VM_NOT_FOUND', `no host of the lab in ${dir} runs VM ${vm}`);
}
