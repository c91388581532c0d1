/**
 * A SQLite vault restored from a backup learns, from what the providers report when they
 * reach it, what happened after the backup, with real processes: a failover the old vault
 * ran after the backup is recorded (not run again, not undone), and a VM protected after
 * the backup, which the restored vault does not know, is listed for the user in an alert.
 * Commit and reprotect then go on from the restored vault.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { labDown } from '../../src/lab/launcher.js';
import { tempDir, waitFor } from '../support/lab.js';
import { labOsr, startTwoSiteLab } from '../support/site-loss.js';

const dir = tempDir('osr-site-loss-reconcile-');
const osr = labOsr(dir);
const item = async (vm: string) => JSON.parse(await osr('--json', 'item', 'show', `primary.${vm}`)) as ProtectedItem;

before(async () => {
  await startTwoSiteLab(dir, { name: 'reconcile', vault: { name: 'reconcile-vault', site: 'Primary', standby: 'Recovery' }, vms: ['app', 'late'], enable: ['app'] });
});

after(async () => {
  await labDown(dir, () => undefined);
});

test('a restored vault records the failover made after its backup and lists the VM protected after it', async () => {
  await waitFor('a recovery point of app', async () => (await item('app')).readiness.ready, 120_000, 500);
  await osr('vault', 'backup', '--to', path.join(dir, 'sites', 'recovery', 'vault-backups'));
  // after the backup: a failover of app, and protection of another VM
  await osr('item', 'planned-failover', 'primary.app', '--wait');
  const before = (await item('app')).replication.failover!;
  await osr('item', 'enable', 'late', '--wait');
  await waitFor('a recovery point of late', async () => (await item('late')).readiness.ready, 120_000, 500);

  await osr('lab', 'site', 'fail', 'Primary', '--dir', dir);
  assert.match(await osr('lab', 'vault', 'promote', '--dir', dir), /term 2/);
  // the restored vault knew app as protected; the recovery site's provider says otherwise
  const learnt = await waitFor('the restored vault learning the failover', async () => {
    const i = await item('app').catch(() => undefined);
    return i?.state === 'FailedOver' ? i : undefined;
  }, 60_000, 500);
  const f = learnt.replication.failover!;
  assert.equal(f.epoch, before.epoch, 'the failover the old vault ran, at its epoch');
  assert.equal(f.point.id, before.point.id);
  assert.equal(f.outsideVault, true);
  // late was protected after the backup: listed, not guessed at
  await assert.rejects(osr('item', 'show', 'primary.late'), /NOT_FOUND/);
  const alerts = await waitFor('an alert naming the unknown item', async () => {
    const a = JSON.parse(await osr('--json', 'alert', 'list')) as { items: { kind: string; message: string }[] } | { kind: string; message: string }[];
    const list = Array.isArray(a) ? a : a.items;
    return list.find((x) => x.kind === 'UnknownItemReported' && x.message.includes('primary.late')) ? list : undefined;
  }, 60_000, 500);
  assert.ok(alerts.length > 0);

  // the failover goes on from the restored vault
  await osr('lab', 'site', 'restore', 'Primary', '--dir', dir);
  await osr('item', 'commit', 'primary.app', '--wait');
  await osr('item', 'reprotect', 'primary.app', '--wait');
  const back = await item('app');
  assert.equal(back.state, 'Protected');
  assert.equal(back.replication.direction, 'recovery-to-primary');
});
