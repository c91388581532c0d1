/**
 * A standby vault at the recovery site, on a real PostgreSQL primary/standby pair made by
 * the test (two clusters on this machine, streaming replication between them), with real
 * vault processes. The standby serves reads and refuses changes; the primary's site is
 * killed with kill -9 (its vault and its database); `osr vault promote` promotes the
 * standby; a provider that knows both URLs follows it; and when the old site comes back,
 * its vault is stale: it refuses every change, the provider does not go back to it, and it
 * stays fenced across a restart with its peer unreachable.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import pg from 'pg';
import type { VaultStatus } from '../../src/domain/vault-status.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { PostgresPair } from '../../src/lab/postgres-pair.js';
import { ProviderChannel } from '../../src/provider/channel.js';
import { loadRegistration, registerWithVault } from '../../src/provider/registration.js';
import { fetchPinnedCa, VaultClient } from '../../src/provider/vault-client.js';
import { freePort, tempDir, waitFor } from '../support/lab.js';
import { assertRejectsCode } from '../support/unit.js';
import { spawnVault, type VaultProcess } from '../support/vault.js';

const run = promisify(execFile);
const dir = tempDir('osr-vault-standby-');
let pair: PostgresPair;
let a: VaultProcess | undefined;
let b: VaultProcess | undefined;
let portA: number;
let portB: number;
let urlA: string;
let urlB: string;
let token: string;
let ca: string;

const vaultArgs = (site: 'a' | 'b') => [
  '--name',
  'dr-vault',
  '--data-dir',
  path.join(dir, site),
  '--database',
  site === 'a' ? pair.primary.url() : pair.standby.url(),
  '--listen',
  `127.0.0.1:${site === 'a' ? portA : portB}`,
  '--peer',
  site === 'a' ? urlB : urlA,
  '--role-check',
  '500ms',
  ...(site === 'b' ? ['--ca-key-file', path.join(dir, 'b-ca.key')] : ['--initial-token-file', path.join(dir, 'owner.token')]),
];

async function status(url: string): Promise<VaultStatus> {
  const c = new VaultClient(url, { ca });
  try {
    return await c.request<VaultStatus>('GET', '/api/v1/vault');
  } finally {
    c.close();
  }
}


function api(url: string): VaultClient {
  return new VaultClient(url, { ca, token });
}

const policy = (name: string) => ({ name });

before(async () => {
  // PostgreSQL runs as its own user, which must reach its clusters' directory
  fs.chmodSync(dir, 0o711);
  pair = await PostgresPair.create(path.join(dir, 'pg'));
  portA = await freePort();
  portB = await freePort();
  urlA = `https://127.0.0.1:${portA}`;
  urlB = `https://127.0.0.1:${portB}`;
  a = await spawnVault(vaultArgs('a'));
  token = fs.readFileSync(path.join(dir, 'owner.token'), 'utf8').trim();
  // the CA's key goes to the other site out of band, once (it is not in the database)
  fs.copyFileSync(path.join(dir, 'a', 'ca.key'), path.join(dir, 'b-ca.key'));
  fs.chmodSync(path.join(dir, 'b-ca.key'), 0o600);
  // the standby vault starts once the standby database holds the vault the primary made
  const standbyDb = new pg.Client({ connectionString: pair.standby.url() });
  await standbyDb.connect();
  await waitFor('the vault replicated to the standby database', async () => (await standbyDb.query("select 1 from settings where key = 'vault.term'")).rowCount === 1, 30_000, 100);
  ca = (JSON.parse((await standbyDb.query<{ value: string }>("select value from settings where key = 'ca'")).rows[0]!.value) as { certPem: string }).certPem;
  fs.writeFileSync(path.join(dir, 'ca.crt'), ca);
  await standbyDb.end();
  b = await spawnVault(vaultArgs('b'));
});

after(async () => {
  await a?.kill('SIGKILL');
  await b?.kill('SIGKILL');
  await pair?.stop();
});

describe('a standby vault on a PostgreSQL standby', () => {
  let channel: ProviderChannel;

  test('the standby serves reads and refuses changes with VAULT_STANDBY; the primary takes them', async () => {
    assert.deepEqual([(await status(urlA)).role, (await status(urlA)).term], ['primary', 1]);
    const sb = await status(urlB);
    assert.equal(sb.role, 'standby');
    assert.equal(sb.term, 1);
    assert.equal(sb.id, (await status(urlA)).id, 'one vault: the same identity at both sites');
    await api(urlA).request('POST', '/api/v1/policies', policy('before-disaster'));
    await waitFor('the policy replicated to the standby', async () => (await api(urlB).request<{ items: { name: string }[] }>('GET', '/api/v1/policies')).items.some((p) => p.name === 'before-disaster'), 10_000, 100);
    await assertRejectsCode(api(urlB).request('POST', '/api/v1/policies', policy('at-standby')), 'VAULT_STANDBY');
    await assertRejectsCode(api(urlB).request('POST', '/api/v1/registration-keys'), 'VAULT_STANDBY');
    // promoting the standby while the primary answers would make two primaries: refused
    await assertRejectsCode(api(urlB).request('POST', '/api/v1/vault/promote', {}), 'INVALID_STATE');
    assert.equal((await status(urlB)).role, 'standby');

    // a provider registers with the primary, given both URLs
    const key = (await api(urlA).request<{ key: string }>('POST', '/api/v1/registration-keys')).key;
    const reg = await registerWithVault({ vaultUrl: urlA, key, fabric: { name: 'Chicago', kind: 'lab' }, serverName: 'chi', version: '0.1.0', dir: path.join(dir, 'provider') });
    channel = new ProviderChannel({ ...reg, vault: { ...reg.vault, urls: [urlA, urlB] } }, { dir: path.join(dir, 'provider') });
    await channel.heartbeat();
    assert.equal(channel.registration.vault.url, urlA);
    assert.equal(channel.term, 1);
    assert.deepEqual(channel.registration.vault.urls?.sort(), [urlA, urlB].sort());
    // the standby refuses the provider channel: providers never work with it
    const onStandby = new ProviderChannel({ ...channel.registration, vault: { ...channel.registration.vault, url: urlB, urls: [urlB] } });
    await assertRejectsCode(onStandby.heartbeat(), 'VAULT_STANDBY');
    onStandby.close();
  });

  test('kill -9 of the primary site; `osr vault promote` makes the standby the primary of term 2, and the provider follows it', async () => {
    await a!.kill('SIGKILL');
    await pair.kill(pair.primary);
    a = undefined;
    const t0 = Date.now();
    const r = await run(process.execPath, [OSR_BIN, '--vault', urlB, '--token', token, '--vault-ca', path.join(dir, 'ca.crt'), '--json', 'vault', 'promote'], { timeout: 120_000 });
    const promoted = JSON.parse(r.stdout) as VaultStatus;
    assert.equal(promoted.role, 'primary');
    assert.equal(promoted.term, 2);
    assert.equal(promoted.origin, 'promoted');
    assert.equal(await pair.inRecovery(pair.standby), false, 'PostgreSQL promoted the standby');
    // changes are taken at the recovery site now
    await api(urlB).request('POST', '/api/v1/policies', policy('after-promotion'));
    const events = await api(urlB).request<{ items: { kind: string }[] }>('GET', '/api/v1/events?limit=100');
    assert.ok(events.items.some((e) => e.kind === 'vault.promoted'));
    // the provider's vault is gone: its next heartbeat finds the promoted one
    await channel.heartbeat();
    assert.equal(channel.registration.vault.url, urlB);
    assert.equal(channel.term, 2);
    const saved = await loadRegistration(path.join(dir, 'provider'));
    assert.equal(saved!.vault.url, urlB, 'the provider keeps where its vault is now');
    assert.equal(saved!.vault.term, 2);
    // promoting twice is refused: it is the primary already
    await assertRejectsCode(api(urlB).request('POST', '/api/v1/vault/promote', {}), 'INVALID_STATE');
    assert.ok(Date.now() - t0 < 60_000);
  });

  test('the old site comes back: its vault is stale, refuses every change with VAULT_STALE, and the provider stays with term 2', async () => {
    await pair.start(pair.primary);
    assert.equal(await pair.inRecovery(pair.primary), false, 'the old primary database came back writable: only the term tells the vaults apart');
    a = await spawnVault(vaultArgs('a'));
    const st = await status(urlA);
    assert.equal(st.role, 'stale');
    assert.equal(st.term, 1);
    assert.equal(st.staleBecause?.term, 2);
    assert.equal(st.staleBecause?.url, urlB);
    await assertRejectsCode(api(urlA).request('POST', '/api/v1/policies', policy('at-stale')), 'VAULT_STALE');
    await assertRejectsCode(api(urlA).request('POST', '/api/v1/vault/promote', {}), 'VAULT_STALE');
    // reads still work, for what the old vault knew
    assert.ok((await api(urlA).request<{ items: { name: string }[] }>('GET', '/api/v1/policies')).items.some((p) => p.name === 'before-disaster'));

    // a provider that tries the old vault first is refused there and goes to the newest primary
    const back = new ProviderChannel({ ...channel.registration, vault: { ...channel.registration.vault, url: urlA } });
    await back.heartbeat();
    assert.equal(back.registration.vault.url, urlB);
    back.close();
    // a provider that knows only the old URL is refused, not misled
    const only = new ProviderChannel({ ...channel.registration, vault: { ...channel.registration.vault, url: urlA, urls: [urlA] } });
    await assertRejectsCode(only.heartbeat(), 'VAULT_STALE');
    only.close();
    channel.close();

    // the fence is kept in the old database: restarted with its peer unreachable, it is still stale
    await a.kill('SIGKILL');
    await b!.kill('SIGTERM');
    b = undefined;
    a = await spawnVault(vaultArgs('a'));
    assert.equal((await status(urlA)).role, 'stale');
    await assertRejectsCode(api(urlA).request('POST', '/api/v1/policies', policy('still-stale')), 'VAULT_STALE');
  });
});

describe('a standby promoted by hand while no vault watches it', () => {
  test('its vault begins the next term when it starts, from PostgreSQL\'s timeline', async () => {
    const other = await PostgresPair.create(path.join(dir, 'pg2'));
    try {
      const args = (url: string, data: string, more: string[] = []) => ['--name', 'hand-vault', '--data-dir', path.join(dir, data), '--database', url, '--role-check', '500ms', ...more];
      const first = await spawnVault(args(other.primary.url(), 'hand-a', ['--initial-token-file', path.join(dir, 'hand.token')]));
      const standbyDb = new pg.Client({ connectionString: other.standby.url() });
      await standbyDb.connect();
      await waitFor('the vault replicated', async () => (await standbyDb.query("select 1 from settings where key = 'vault.term'")).rowCount === 1, 30_000, 100);
      await standbyDb.end();
      await first.kill('SIGKILL');
      await other.kill(other.primary);
      await other.promote(other.standby);
      fs.copyFileSync(path.join(dir, 'hand-a', 'ca.key'), path.join(dir, 'hand-b.key'));
      fs.chmodSync(path.join(dir, 'hand-b.key'), 0o600);
      const second = await spawnVault(args(other.standby.url(), 'hand-b', ['--ca-key-file', path.join(dir, 'hand-b.key')]));
      try {
        const c = new VaultClient(second.url, { ca: await fetchPinnedCa(second.url, second.caFingerprint) });
        const st = await c.request<VaultStatus>('GET', '/api/v1/vault');
        c.close();
        assert.deepEqual([st.role, st.term, st.origin], ['primary', 2, 'promoted'], 'the promotion nobody recorded begins term 2');
      } finally {
        await second.kill('SIGKILL');
      }
    } finally {
      await other.stop();
    }
  });
});
