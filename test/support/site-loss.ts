/**
 * The disaster drill of a whole site, vault included, with real processes (the lab): the
 * vault runs at the primary site with a standby at the recovery site; `osr lab site fail`
 * kills the primary site with kill -9 (its provider, its agents, its vault, its database);
 * `osr lab vault promote` brings the vault up at the recovery site in the next term; an
 * unplanned failover of a recovery plan runs from there; the primary site comes back with
 * its vault stale (refused), and reprotect and failback run from the new vault.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import YAML from 'yaml';
import type { ProtectedItem } from '../../src/domain/resources.js';
import type { VaultStatus } from '../../src/domain/vault-status.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { labDown, readLabFile } from '../../src/lab/launcher.js';
import type { TopologySpec, VaultPlacement } from '../../src/lab/topology.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import type { BackupManifest } from '../../src/vault/backup.js';
import { tempDir, waitFor } from './lab.js';
import { site } from './topology.js';

const run = promisify(execFile);

/** The osr command for the lab in `dir` (its osr.yaml), answering its standard output. */
export function labOsr(dir: string): (...args: string[]) => Promise<string> {
  return async (...args) => (await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 240_000 })).stdout;
}

/**
 * A lab of two sites: Primary (the VMs `vms`, 32 MiB each, on host p-host) and Recovery
 * (host r-host), the vault placed as `vault` says; a policy with a 30 s copy frequency pairs
 * their clouds, and the VMs in `enable` are protected.
 */
export async function startTwoSiteLab(dir: string, o: { name: string; vault: VaultPlacement; vms: string[]; enable: string[] }): Promise<(...args: string[]) => Promise<string>> {
  const osr = labOsr(dir);
  const topology: TopologySpec = {
    name: o.name,
    vault: o.vault,
    fabrics: [site('Primary', 'p-host', o.vms.map((name) => ({ name, host: 'p-host', disks: [{ name: 'system', size: '32M', storage: 'p-host-store' }], nics: [], workload: false }))), site('Recovery', 'r-host', [])],
  };
  const file = path.join(dir, 'topology.in.yaml');
  fs.writeFileSync(file, YAML.stringify(topology));
  await osr('lab', 'up', '--dir', dir, '--topology', file, '--port', '0', '--detach', '--status-interval', '1s');
  await osr('policy', 'create', 'fast', '--copy-frequency', '30s', '--retention-hours', '1');
  await osr('pairing', 'create', '--policy', 'fast', '--source-cloud', 'primary.primary-cloud', '--target-cloud', 'recovery.recovery-cloud');
  if (o.enable.length > 0) await osr('item', 'enable', ...o.enable, '--wait');
  return osr;
}

export function siteLossDrill(database: 'sqlite' | 'postgres'): { setUp(): Promise<void>; tearDown(): Promise<void>; drill(): Promise<void> } {
  const dir = tempDir(`osr-site-loss-${database}-`);
  const osr = labOsr(dir);
  const item = async (vm: string) => JSON.parse(await osr('--json', 'item', 'show', `primary.${vm}`)) as ProtectedItem;
  const vms = ['web', 'db'];
  const wait = ['--wait', '--interval', '200ms'];

  return {
    async setUp() {
      // PostgreSQL runs as its own user, which must reach its clusters under the lab's directory
      fs.chmodSync(dir, 0o711);
      await startTwoSiteLab(dir, { name: `site-loss-${database}`, vault: { name: 'drill-vault', site: 'Primary', standby: 'Recovery', database }, vms, enable: vms });
      fs.writeFileSync(path.join(dir, 'plan.yaml'), YAML.stringify({ name: 'site', groups: [{ name: 'all', items: vms.map((v) => `primary.${v}`) }] }));
      await osr('plan', 'apply', '-f', path.join(dir, 'plan.yaml'));
    },

    async tearDown() {
      await labDown(dir, () => undefined);
      assert.equal(readLabFile(dir), undefined);
    },

    async drill() {
      const lab = readLabFile(dir)!;
      const urlA = lab.vault.url;
      const urlB = lab.vault.standbyUrl!;
      const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { token: string; ca: string };
      const ca = fs.readFileSync(cfg.ca, 'utf8');
      const status = async (url: string) => new VaultClient(url, { ca }).request<VaultStatus>('GET', '/api/v1/vault');
      await waitFor('recovery points of both VMs', async () => (await Promise.all(vms.map(item))).every((i) => i.readiness.ready), 120_000, 500);

      // SQLite: a backup at the recovery site, then a change after it (the restore loses it)
      let backup: BackupManifest | undefined;
      if (database === 'sqlite') {
        backup = JSON.parse(await osr('--json', 'vault', 'backup', '--to', path.join(dir, 'sites', 'recovery', 'vault-backups'))) as BackupManifest;
        await new Promise((r) => setTimeout(r, 20));
        await osr('policy', 'create', 'made-after-the-backup', '--copy-frequency', '300s', '--retention-hours', '2');
      } else {
        assert.equal((await status(urlB)).role, 'standby');
      }

      // the primary site is lost: its provider, agents, vault and database, with kill -9
      const killed = await osr('lab', 'site', 'fail', 'Primary', '--dir', dir);
      assert.match(killed, /vault drill-vault/);
      assert.match(killed, /provider Primary/);
      if (database === 'postgres') assert.match(killed, /PostgreSQL primary/);
      await assert.rejects(status(urlA), 'the primary vault is gone');

      // the vault comes up at the recovery site, term 2
      assert.match(await osr('lab', 'vault', 'promote', '--dir', dir), /is the primary, term 2/);
      const b = await status(urlB);
      assert.deepEqual([b.role, b.term, b.origin], ['primary', 2, database === 'postgres' ? 'promoted' : 'restored']);
      if (backup) {
        const names = (JSON.parse(await osr('--json', 'policy', 'list')) as { items: { name: string }[] }).items.map((p) => p.name);
        assert.ok(names.includes('fast') && !names.includes('made-after-the-backup'), `the restored vault holds the configuration up to the backup only: ${names.join(', ')}`);
      }

      // an unplanned failover of the plan runs to its end from the recovery site's vault
      const failover = await osr('plan', 'unplanned-failover', 'site', '--shutdown-source', '--source-timeout', '3s', ...wait);
      assert.match(failover, /unplanned-failover \(primary-to-recovery\) succeeded/);
      for (const vm of vms) {
        const i = await item(vm);
        assert.equal(i.state, 'FailedOver', vm);
        assert.equal(i.replication.failover!.toFabricId, 'recovery');
      }

      // the primary site comes back: its vault is stale, the providers stay with term 2
      await osr('lab', 'site', 'restore', 'Primary', '--dir', dir);
      const a = await waitFor('the old vault fenced', async () => {
        const s = await status(urlA).catch(() => undefined);
        return s?.role === 'stale' ? s : undefined;
      }, 30_000, 200);
      assert.equal(a.staleBecause?.term, 2);
      const old = new VaultClient(urlA, { ca, token: cfg.token });
      await assert.rejects(old.request('POST', '/api/v1/policies', { name: 'at-the-old-vault' }), (e: { code?: string }) => e.code === 'VAULT_STALE');
      if (backup) {
        // what the restore lost, listed by the old vault's audit trail
        const lost = JSON.parse(await osr('--vault', urlA, '--json', 'audit', 'list', '--since', backup.takenAt)) as { items: { action: string; status: number }[] };
        assert.ok(lost.items.some((x) => x.action === 'POST /api/v1/policies' && x.status === 201), 'the policy made after the backup is listed');
      }
      old.close();
      await waitFor('the primary site\'s provider follows the new vault', async () => {
        const fabrics = JSON.parse(await osr('--json', 'fabric', 'list')) as { items: { id: string; lastHeartbeatAt: string | null }[] };
        const p = fabrics.items.find((f) => f.id === 'primary');
        return p?.lastHeartbeatAt !== null && p !== undefined && Date.parse(p.lastHeartbeatAt!) > Date.parse(b.since);
      }, 60_000, 500);

      // reprotect and failback, from the new vault
      await osr('plan', 'commit', 'site', ...wait);
      await osr('plan', 'reprotect', 'site', ...wait);
      for (const vm of vms) {
        const i = await item(vm);
        assert.equal(i.state, 'Protected', vm);
        assert.equal(i.replication.direction, 'recovery-to-primary');
      }
      await waitFor('recovery points at the primary site', async () => (await Promise.all(vms.map(item))).every((i) => i.readiness.ready), 120_000, 500);
      assert.match(await osr('plan', 'planned-failover', 'site', ...wait), /planned-failover \(recovery-to-primary\) succeeded/);
      await osr('plan', 'commit', 'site', ...wait);
      await osr('plan', 'reprotect', 'site', ...wait);
      for (const vm of vms) {
        const i = await item(vm);
        assert.equal(i.state, 'Protected', vm);
        assert.equal(i.replication.direction, 'primary-to-recovery');
        assert.equal(i.replication.sourceFabricId, 'primary');
      }
      assert.equal((await status(urlB)).term, 2, 'all of it ran at the vault of term 2');
    },
  };
}
