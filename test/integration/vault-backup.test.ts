/**
 * Backups of a SQLite vault, with real vault processes: the vault's own schedule, and a
 * backup pulled over the API into a directory of "another host"; the vault's site is
 * killed with kill -9; `osr vault restore` brings it up at the recovery site in the next
 * term, holding everything up to the backup and nothing after; a damaged or foreign
 * backup is refused; and when the old vault comes back it is stale, and its audit trail
 * lists the changes the restore lost.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import type { VaultStatus } from '../../src/domain/vault-status.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { fetchPinnedCa, VaultClient } from '../../src/provider/vault-client.js';
import { listBackups, readManifest, type BackupManifest } from '../../src/vault/backup.js';
import { freePort, tempDir, waitFor } from '../support/lab.js';
import { assertRejectsCode } from '../support/unit.js';
import { spawnVault, type VaultProcess } from '../support/vault.js';

const run = promisify(execFile);
const dir = tempDir('osr-vault-backup-');
const siteA = path.join(dir, 'site-a');
const siteB = path.join(dir, 'site-b');
const scheduled = path.join(siteA, 'backups');
const remote = path.join(siteB, 'backups');
let a: VaultProcess | undefined;
let b: VaultProcess | undefined;
let urlA: string;
let urlB: string;
let token: string;
let caFile: string;

const argsA = () => ['--name', 'dr-vault', '--data-dir', path.join(siteA, 'vault'), '--listen', new URL(urlA).host, '--peer', urlB, '--role-check', '500ms', '--backup-dir', scheduled, '--backup-every', '1h', '--backup-keep', '3', '--initial-token-file', path.join(dir, 'owner.token')];
const argsB = () => ['--data-dir', path.join(siteB, 'vault'), '--listen', new URL(urlB).host, '--peer', urlA, '--role-check', '500ms', '--ca-key-file', path.join(siteB, 'ca.key')];

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, '--token', token, '--vault-ca', caFile, '--json', ...args], { timeout: 120_000 });
  return r.stdout;
}


const api = (url: string) => new VaultClient(url, { ca: fs.readFileSync(caFile, 'utf8'), token });
const policies = async (url: string) => (await api(url).request<{ items: { name: string }[] }>('GET', '/api/v1/policies')).items.map((p) => p.name).sort();

before(async () => {
  urlA = `https://127.0.0.1:${await freePort()}`;
  urlB = `https://127.0.0.1:${await freePort()}`;
  a = await spawnVault(argsA());
  token = fs.readFileSync(path.join(dir, 'owner.token'), 'utf8').trim();
  // the CA's certificate, as the vault's TLS presents it, checked against the fingerprint it printed
  caFile = path.join(dir, 'ca.crt');
  fs.writeFileSync(caFile, await fetchPinnedCa(urlA, a.caFingerprint));
  // the CA's key is copied to the recovery site once, out of band
  fs.mkdirSync(siteB, { recursive: true });
  fs.copyFileSync(path.join(siteA, 'vault', 'ca.key'), path.join(siteB, 'ca.key'));
});

after(async () => {
  await a?.kill('SIGKILL');
  await b?.kill('SIGKILL');
});

describe('backups of a SQLite vault, and a restore at the other site', () => {
  let pulled: BackupManifest;

  test('the vault backs itself up at start; a backup pulled over the API lands whole at the other host', async () => {
    const first = await waitFor('the scheduled backup at start', () => listBackups(scheduled)[0], 20_000, 100);
    assert.equal(first.manifest.vault.name, 'dr-vault');
    assert.equal(first.manifest.term, 1);
    assert.equal(fs.statSync(path.join(scheduled, first.manifest.file)).mode & 0o777, 0o600, 'a backup holds the configuration and the tokens\' hashes: owner only');
    assert.equal(fs.statSync(scheduled).mode & 0o777, 0o700);

    await api(urlA).request('POST', '/api/v1/policies', { name: 'gold' });
    // a key handed out before the backup, not used yet
    await api(urlA).request('POST', '/api/v1/registration-keys');
    pulled = JSON.parse(await osr('--vault', urlA, 'vault', 'backup', '--to', remote, '--keep', '5')) as BackupManifest;
    assert.equal(pulled.term, 1);
    assert.deepEqual(listBackups(remote).map((x) => x.manifest.sha256), [pulled.sha256]);
    assert.deepEqual(fs.readdirSync(remote).sort(), [pulled.file, pulled.file.replace(/\.db$/, '.json')].sort(), 'no part files left behind');
    // a change after the last backup: the restore will not have it
    await new Promise((r) => setTimeout(r, 20));
    await api(urlA).request('POST', '/api/v1/policies', { name: 'after-backup' });
    // the API refuses a backup to a caller that is not an Owner
    const reader = (await api(urlA).request<{ secret: string }>('POST', '/api/v1/tokens', { name: 'ro', role: 'Reader' })).secret;
    await assertRejectsCode(new VaultClient(urlA, { ca: fs.readFileSync(caFile, 'utf8'), token: reader }).request('GET', '/api/v1/vault/backup', undefined, { text: true }), 'FORBIDDEN');
  });

  test('a damaged backup, or one restored over a database, is refused with a code', async () => {
    const copy = path.join(dir, 'damaged');
    fs.cpSync(remote, copy, { recursive: true });
    const db = path.join(copy, pulled.file);
    const fd = fs.openSync(db, 'r+');
    fs.writeSync(fd, Buffer.from('x'), 0, 1, 5000);
    fs.closeSync(fd);
    const r = await run(process.execPath, [OSR_BIN, 'vault', 'restore', '--from', copy, '--into', path.join(dir, 'nowhere')]).catch((e: { stderr: string }) => e);
    assert.match((r as { stderr: string }).stderr, /BACKUP_INVALID/);
    assert.equal(fs.existsSync(path.join(dir, 'nowhere', 'vault.db')), false, 'nothing was put in place');
    const over = await run(process.execPath, [OSR_BIN, 'vault', 'restore', '--from', remote, '--into', path.join(siteA, 'vault')]).catch((e: { stderr: string }) => e);
    assert.match((over as { stderr: string }).stderr, /ALREADY_EXISTS/);
    assert.throws(() => readManifest(path.join(copy, pulled.file)), /BACKUP_INVALID|not a backup/);
  });

  test('a vault started on the wrong data directory refuses to write over the CA key it was given', async () => {
    const key = fs.readFileSync(path.join(siteB, 'ca.key'), 'utf8');
    await assert.rejects(spawnVault(['--data-dir', path.join(dir, 'not-the-restored-one'), '--ca-key-file', path.join(siteB, 'ca.key')]), /CA_KEY_UNAVAILABLE/);
    assert.equal(fs.readFileSync(path.join(siteB, 'ca.key'), 'utf8'), key, 'the only copy of the CA key is untouched');
  });

  test('kill -9 of the vault\'s site; restored at the other site it begins term 2 with everything up to the backup', async () => {
    await a!.kill('SIGKILL');
    a = undefined;
    const restored = JSON.parse((await run(process.execPath, [OSR_BIN, '--json', 'vault', 'restore', '--from', remote, '--into', path.join(siteB, 'vault')])).stdout) as { term: { term: number; origin: string; backupTakenAt: string } };
    assert.equal(restored.term.term, 2);
    assert.equal(restored.term.origin, 'restored');
    assert.equal(restored.term.backupTakenAt, pulled.takenAt);
    assert.equal(fs.statSync(path.join(siteB, 'vault', 'vault.db')).mode & 0o777, 0o600);
    b = await spawnVault(argsB());
    const st = await api(urlB).request<VaultStatus>('GET', '/api/v1/vault');
    assert.deepEqual([st.role, st.term, st.origin], ['primary', 2, 'restored']);
    assert.deepEqual(await policies(urlB), ['gold'], 'what was made before the backup is there, what came after is not');
    // what the backup cannot know is said at once, and keys handed out before it no longer register anyone
    const alerts = await api(urlB).request<{ items: { kind: string; severity: string; message: string }[] }>('GET', '/api/v1/alerts');
    assert.ok(alerts.items.some((x) => x.kind === 'vault.restored' && x.severity === 'Critical' && x.message.includes(pulled.takenAt)));
    const keys = await api(urlB).request<{ items: { id: string; revokedAt: string | null }[] }>('GET', '/api/v1/registration-keys');
    assert.ok(keys.items.length > 0 && keys.items.every((k) => k.revokedAt !== null), 'every unused registration key is revoked');
    await api(urlB).request('POST', '/api/v1/policies', { name: 'at-recovery-site' });
  });

  test('the old vault comes back stale; its audit trail since the backup lists what the restore lost', async () => {
    a = await spawnVault(argsA());
    const st = await api(urlA).request<VaultStatus>('GET', '/api/v1/vault');
    assert.equal(st.role, 'stale');
    assert.equal(st.staleBecause?.term, 2);
    await assertRejectsCode(api(urlA).request('POST', '/api/v1/policies', { name: 'x' }), 'VAULT_STALE');
    // a stale vault takes no more backups of itself: the schedule's newest is still from before
    const lost = JSON.parse(await osr('--vault', urlA, 'audit', 'list', '--since', pulled.takenAt)) as { items: { action: string; status: number }[] };
    assert.ok(lost.items.some((x) => x.action === 'POST /api/v1/policies' && x.status === 201), 'the policy made after the backup is listed');
    assert.ok(!lost.items.some((x) => x.action === 'GET /api/v1/vault/backup'), 'reads are not audited');
  });
});
