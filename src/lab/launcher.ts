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
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { AgentClient } from '../cli/agent-client.js';
import { OsrError, toOsrError } from '../domain/errors.js';
import type { ProtectedItem } from '../domain/resources.js';
import { writeFileAtomic } from '../pki/index.js';
import { fetchPinnedCa, VaultClient } from '../provider/vault-client.js';
import { OSR_BIN } from './agent-process.js';
import { stopStrayAgents, type LabAgentInfo } from './lab-driver.js';
import { loadTopology, slug, type SiteConfig, type TopologySpec } from './topology.js';

export const DEFAULT_LAB_DIR = '.osr/lab';

export interface LabFile {
  topology: string;
  dir: string;
  startedAt: string;
  detached: boolean;
  vault: { url: string; pid: number; caFingerprint: string };
  providers: { fabric: string; fabricId: string; pid: number; config: string }[];
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

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Spawn an osr process in its own process group, its output in a log file; resolves with its ready line. */
async function spawnReady(args: string[], logFile: string, ready: (o: Record<string, unknown>) => boolean, timeoutMs = 120_000): Promise<{ child: ChildProcess; line: Record<string, unknown> }> {
  fs.mkdirSync(path.dirname(logFile), { recursive: true });
  const start = fs.existsSync(logFile) ? fs.statSync(logFile).size : 0;
  const fd = fs.openSync(logFile, 'a', 0o600);
  const child = spawn(process.execPath, [OSR_BIN, ...args], { stdio: ['ignore', fd, fd], detached: true });
  fs.closeSync(fd);
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
      throw new OsrError('INTERNAL', `osr ${args[0]} ${exited !== undefined ? `exited (${exited})` : 'did not start in time'}; the end of ${logFile}:\n${tail}`, { log: logFile });
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Stop a process by pid: SIGTERM, then SIGKILL after the grace period. */
async function stopPid(pid: number, graceMs = 60_000): Promise<void> {
  if (!isAlive(pid)) return;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (isAlive(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  if (isAlive(pid)) process.kill(pid, 'SIGKILL');
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
  if (running && [running.vault.pid, ...running.providers.map((p) => p.pid)].some(isAlive)) {
    throw new OsrError('ALREADY_EXISTS', `a lab already runs in ${dir} (vault ${running.vault.url}); \`osr lab status\` shows it, \`osr lab down\` stops it`);
  }
  const { spec, name } = labTopology(dir, o.topology);
  out(`osr lab: topology ${name} in ${dir}`);
  const children: ChildProcess[] = [];
  const info: LabFile = { topology: name, dir, startedAt: new Date().toISOString(), detached: o.detach, vault: { url: '', pid: 0, caFingerprint: '' }, providers: [] };
  const kill = async () => {
    for (const p of info.providers) await stopPid(p.pid);
    for (const f of spec.fabrics) await stopStrayAgents(path.join(dir, 'sites', slug(f.name)));
    if (info.vault.pid) await stopPid(info.vault.pid);
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  try {
    // 1. the vault
    const tokenFile = path.join(dir, 'owner.token');
    const vault = await spawnReady(['vault', '--name', spec.vault?.name ?? 'osr-lab', '--data-dir', path.join(dir, 'vault'), '--listen', `127.0.0.1:${o.port}`, '--initial-token-file', tokenFile, '--heartbeat-interval', '5s', '--heartbeat-lost-after', '30s', '--job-lease', '10s', '--job-concurrency', '256', '--log-level', 'warn'], path.join(dir, 'vault', 'vault.log'), (l) => typeof l.url === 'string' && 'caFingerprint' in l);
    children.push(vault.child);
    info.vault = { url: String(vault.line.url), pid: vault.child.pid!, caFingerprint: String(vault.line.caFingerprint) };
    if (!fs.existsSync(tokenFile)) throw new OsrError('CONFIG_INVALID', `${tokenFile} is missing, so the lab cannot act as Owner; remove ${dir} to start over, or put an Owner token there`);
    const token = fs.readFileSync(tokenFile, 'utf8').trim();
    const ca = await fetchPinnedCa(info.vault.url, info.vault.caFingerprint);
    const caFile = path.join(dir, 'vault-ca.pem');
    await writeFileAtomic(caFile, ca, 0o644);
    await writeFileAtomic(path.join(dir, 'osr.yaml'), YAML.stringify({ vault: info.vault.url, token, ca: caFile }), 0o600);
    const api = new VaultClient(info.vault.url, { ca, token });
    out(`  vault      ${info.vault.url}  (CA ${info.vault.caFingerprint.slice(0, 23)}…)`);

    // 2. one provider per fabric; a new one registers with a fresh key
    const sitesDir = path.join(dir, 'sites');
    fs.mkdirSync(sitesDir, { recursive: true });
    info.providers = await Promise.all(
      spec.fabrics.map(async (f) => {
        const id = slug(f.name);
        const siteFile = path.join(sitesDir, `${id}.yaml`);
        const site: SiteConfig = { ...f, lab: { dir: `./${id}` } };
        await writeFileAtomic(siteFile, YAML.stringify(site), 0o644);
        const args = ['provider', '--fabric', 'lab', '--config', siteFile, '--vault', info.vault.url, '--status-interval', o.statusInterval ?? '5s', '--poll', '10s', '--log-level', 'warn'];
        const keyFile = path.join(sitesDir, id, 'registration.key');
        if (!fs.existsSync(path.join(sitesDir, id, 'provider', 'registration.json'))) {
          const key = (await api.request<{ key: string }>('POST', '/api/v1/registration-keys')).key;
          fs.mkdirSync(path.dirname(keyFile), { recursive: true });
          await writeFileAtomic(keyFile, key, 0o600);
          args.push('--registration-key-file', keyFile);
        }
        const p = await spawnReady(args, path.join(sitesDir, id, 'provider.log'), (l) => typeof l.fabricId === 'string');
        children.push(p.child);
        fs.rmSync(keyFile, { force: true });
        return { fabric: f.name, fabricId: String(p.line.fabricId), pid: p.child.pid!, config: siteFile };
      }),
    );
    await writeFileAtomic(labFile(dir), `${JSON.stringify(info, null, 2)}\n`, 0o644);
    for (const p of info.providers) {
      const f = spec.fabrics.find((x) => x.name === p.fabric)!;
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
          out(`a lab process (pid ${c.pid}) ended (${signal ?? code}); stopping the lab (logs in ${dir})`);
          void stop();
        });
      }
    }
    return { info, token, api, stopped, stop };
  } catch (e) {
    await kill();
    throw e;
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
  for (const p of info.providers) {
    out(`stopping provider ${p.fabric} (pid ${p.pid}) and its hosts…`);
    await stopPid(p.pid);
  }
  // hosts of a provider that was killed outlive it: stop them too
  for (const p of info.providers) await stopStrayAgents(path.join(path.dirname(p.config), slug(p.fabric)));
  out(`stopping the vault (pid ${info.vault.pid})…`);
  await stopPid(info.vault.pid);
  fs.rmSync(labFile(dir), { force: true });
  out(`stopped; the lab's state stays in ${dir} (\`osr lab up\` goes on from it)`);
  return true;
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
  processes: { role: string; name: string; pid: number; alive: boolean }[];
  fabrics: { id: string; name: string; lastHeartbeatAt: string | null; heartbeatLost: boolean; inventoryAt: string | null }[];
  items: ProtectedItem[];
  agents: LabAgentInfo[];
}

export async function labStatus(dirArg: string): Promise<LabStatus> {
  const dir = path.resolve(dirArg);
  const lab = readLabFile(dir) ?? null;
  const status: LabStatus = { dir, running: false, lab, processes: [], fabrics: [], items: [], agents: [] };
  if (!lab) return status;
  status.processes.push({ role: 'vault', name: lab.vault.url, pid: lab.vault.pid, alive: isAlive(lab.vault.pid) });
  for (const p of lab.providers) status.processes.push({ role: 'provider', name: p.fabric, pid: p.pid, alive: isAlive(p.pid) });
  status.agents = labAgents(dir);
  for (const a of status.agents) status.processes.push({ role: 'agent', name: a.host, pid: a.pid, alive: isAlive(a.pid) });
  status.running = status.processes.every((p) => p.alive);
  if (status.processes[0]!.alive) {
    const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { token: string; ca: string };
    const api = new VaultClient(lab.vault.url, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
    try {
      status.fabrics = (await api.request<{ items: LabStatus['fabrics'] }>('GET', '/api/v1/fabrics')).items;
      status.items = (await api.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=1000')).items;
    } catch (e) {
      throw new OsrError(toOsrError(e).code, `the lab's vault at ${lab.vault.url} did not answer: ${(e as Error).message}`);
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
  if (fs.existsSync(kept)) for (const f of loadTopology(kept).spec.fabrics) for (const v of f.vms) topologyNames.set(v.name, v.disks.map((d) => d.name));
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
