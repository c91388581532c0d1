/**
 * A whole site of the lab lost and brought back on purpose (docs/getting-started.md, "A
 * disaster drill of a whole site"):
 *
 *   osr lab site fail NAME      kill -9 of every process of the site: its provider and its
 *                               hosts' agents, the vault if it runs there, and its
 *                               PostgreSQL cluster; nothing is stopped cleanly
 *   osr lab vault promote       the vault at the standby site takes over: its PostgreSQL
 *                               standby promoted, or (SQLite) the newest backup restored
 *                               there and a vault started on it
 *   osr lab site restore NAME   the site's processes started again from their state, as
 *                               after a power cut: its vault comes back stale if another
 *                               took over meanwhile
 */
import fs from 'node:fs';
import path from 'node:path';
import YAML from 'yaml';
import { OsrError } from '../domain/errors.js';
import { parseVaultStatus } from '../domain/vault-status.js';
import { VaultClient } from '../provider/vault-client.js';
import { restoreBackup } from '../vault/backup.js';
import { isKvmTopology } from './kvm-lab.js';
import { LAB_VAULT_TUNING, labProcesses, readLabFile, saveLabFile, spawnReady, type LabFile } from './launcher.js';
import { groupMembers, isRunning, recordProcess, type LabProcess } from './lab-processes.js';
import { PostgresPair } from './postgres-pair.js';
import { loadTopology, slug } from './topology.js';

type Out = (line: string) => void;

function runningLab(dirArg: string): { dir: string; info: LabFile } {
  const dir = path.resolve(dirArg);
  const info = readLabFile(dir);
  if (!info || info.state !== 'up') throw new OsrError('NOT_FOUND', `no lab runs in ${dir}: start it with \`osr lab up\``);
  return { dir, info };
}

/** A site of the lab's topology, by its fabric's name (or its slug). */
function siteName(dir: string, name: string): string {
  const spec = loadTopology(path.join(dir, 'topology.yaml')).spec;
  if (spec.azure && (name === spec.azure.name || slug(name) === slug(spec.azure.name))) throw new OsrError('NOT_SUPPORTED', `${spec.azure.name} is an Azure region: the lab fails and restores its own sites only`);
  if (isKvmTopology(spec)) throw new OsrError('NOT_SUPPORTED', 'a lab on libvirt cannot fail a site on purpose yet: its guests run in QEMU, outside the site\'s processes; use a lab topology');
  const f = spec.fabrics.find((x) => x.name === name || slug(x.name) === slug(name));
  if (!f) throw new OsrError('NOT_FOUND', `the lab has no site ${name}; its sites: ${spec.fabrics.map((x) => x.name).join(', ')}`);
  return f.name;
}

/** The vault's PostgreSQL cluster at a site, if the lab has them. */
function clusterAt(dir: string, info: LabFile, site: string): { pair: PostgresPair; cluster: PostgresPair['primary'] } | undefined {
  const pgDir = path.join(dir, 'postgres');
  if (info.vault.database !== 'postgres' || !PostgresPair.exists(pgDir)) return undefined;
  const pair = PostgresPair.load(pgDir);
  if (info.vault.site === site) return { pair, cluster: pair.primary };
  if (info.vault.standbySite === site) return { pair, cluster: pair.standby };
  return undefined;
}

function killGroup(p: LabProcess): void {
  const pids = isRunning(p) ? [p.pid, ...groupMembers(p.pgid)] : groupMembers(p.pgid);
  for (const pid of new Set(pids)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
}

/** kill -9 of every process of the site: provider, agents, the vault there, its database. */
export async function labSiteFail(dirArg: string, name: string, out: Out = (l) => console.log(l)): Promise<string[]> {
  const { dir, info } = runningLab(dirArg);
  const site = siteName(dir, name);
  if (info.failedSites?.includes(site)) throw new OsrError('INVALID_STATE', `site ${site} is failed already; \`osr lab site restore ${site}\` brings it back`);
  // recorded first: the lab's launcher must not take the ends of these processes for a crash
  info.failedSites = [...(info.failedSites ?? []), site];
  saveLabFile(dir, info);
  const killed: string[] = [];
  for (const p of labProcesses(info).filter((x) => x.site === site)) {
    if (!isRunning(p) && groupMembers(p.pgid).length === 0) continue;
    killGroup(p);
    killed.push(`${p.role} ${p.name} (pid ${p.pid})`);
  }
  const db = clusterAt(dir, info, site);
  if (db && db.pair.pid(db.cluster) !== undefined) {
    await db.pair.kill(db.cluster);
    killed.push(`PostgreSQL ${db.cluster.name} (port ${db.cluster.port})`);
  }
  for (let i = 0; i < 100 && labProcesses(info).some((p) => p.site === site && isRunning(p)); i++) await new Promise((r) => setTimeout(r, 50));
  out(`site ${site} failed: ${killed.length > 0 ? `killed with SIGKILL: ${killed.join(', ')}` : 'nothing of it was running'}`);
  return killed;
}

/** Start the site's processes again from their state: its database, its vault, its agents, its provider. */
export async function labSiteRestore(dirArg: string, name: string, out: Out = (l) => console.log(l)): Promise<void> {
  const { dir, info } = runningLab(dirArg);
  const site = siteName(dir, name);
  const db = clusterAt(dir, info, site);
  if (db && db.pair.pid(db.cluster) === undefined) {
    await db.pair.start(db.cluster);
    out(`  PostgreSQL ${db.cluster.name} started (port ${db.cluster.port}): it recovers from its log`);
  }
  // the vault first, then agents, then the provider (which finds its hosts' agents)
  const order: LabProcess['role'][] = ['vault', 'agent', 'provider'];
  const mine = labProcesses(info)
    .filter((p) => p.site === site && p.spawn && !isRunning(p))
    .sort((a, b) => order.indexOf(a.role) - order.indexOf(b.role));
  for (const p of mine) {
    const spec = p.spawn!;
    // a provider registered long ago: its key is spent and gone
    const args = spec.args.filter((a, i, all) => a !== '--registration-key-file' && all[i - 1] !== '--registration-key-file');
    const r = await spawnReady(args, spec.log, (l) => l[spec.ready] !== undefined, { onSpawn: () => undefined });
    r.child.unref();
    const fresh = recordProcess(p.role, p.name, r.child.pid!, { site, spawn: spec });
    info.processes = labProcesses(info).map((x) => (x === p ? fresh : x));
    if (p.role === 'vault' && info.vault.pid === p.pid) info.vault.pid = fresh.pid;
    const provider = info.providers.find((x) => x.pid === p.pid);
    if (provider) provider.pid = fresh.pid;
    saveLabFile(dir, info);
    out(`  ${p.role} ${p.name} started again (pid ${fresh.pid})`);
  }
  info.failedSites = (info.failedSites ?? []).filter((s) => s !== site);
  saveLabFile(dir, info);
  out(`site ${site} restored`);
}

/**
 * The vault at the standby site takes over (the primary vault's site is lost): on
 * PostgreSQL, its standby is promoted; on SQLite, the newest backup at that site is
 * restored and a vault started on it. Either begins the next term.
 */
export async function labVaultPromote(dirArg: string, out: Out = (l) => console.log(l)): Promise<{ url: string; term: number }> {
  const { dir, info } = runningLab(dirArg);
  const v = info.vault;
  if (!v.standbyUrl || !v.standbySite) throw new OsrError('NOT_SUPPORTED', 'this lab has no standby vault: give the topology\'s vault a standby site (`vault: {site: A, standby: B}`)');
  const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { token: string; ca: string };
  const ca = fs.readFileSync(cfg.ca, 'utf8');
  const standbyDir = path.join(dir, 'sites', slug(v.standbySite));
  if (v.database !== 'postgres') {
    const restored = await restoreBackup({ from: path.join(standbyDir, 'vault-backups'), dataDir: path.join(standbyDir, 'vault'), force: true });
    out(`  restored the backup taken ${restored.manifest.takenAt} into ${restored.database}: term ${restored.term.term}; changes after the backup are lost (\`osr audit list --since ${restored.manifest.takenAt}\` at the old vault lists them, once its site is back)`);
    const primary = labProcesses(info).find((p) => p.role === 'vault' && p.pid === v.pid);
    const name = primary?.name ?? 'osr-lab';
    const args = ['vault', '--name', name, '--data-dir', path.join(standbyDir, 'vault'), '--listen', new URL(v.standbyUrl).host, '--peer', v.url, '--ca-key-file', path.join(standbyDir, 'vault-ca.key'), ...LAB_VAULT_TUNING];
    const log = path.join(standbyDir, 'vault', 'vault.log');
    const r = await spawnReady(args, log, (l) => l.caFingerprint !== undefined, { onSpawn: () => undefined });
    r.child.unref();
    info.processes = [...labProcesses(info), recordProcess('vault', `${name}-standby`, r.child.pid!, { site: v.standbySite, spawn: { args, log, ready: 'caFingerprint' } })];
    saveLabFile(dir, info);
  }
  const c = new VaultClient(v.standbyUrl, { ca, token: cfg.token });
  try {
    let st = parseVaultStatus(await c.request('GET', '/api/v1/vault'), v.standbyUrl);
    if (st.role === 'standby') st = parseVaultStatus(await c.request('POST', '/api/v1/vault/promote', {}, { timeoutMs: 120_000 }), v.standbyUrl);
    if (st.role !== 'primary') throw new OsrError('INVALID_STATE', `the vault at ${v.standbyUrl} is ${st.role}, not the primary`);
    out(`the vault at ${v.standbyUrl} (${v.standbySite}) is the primary, term ${st.term}; providers and the osr command follow it`);
    return { url: v.standbyUrl, term: st.term };
  } finally {
    c.close();
  }
}
