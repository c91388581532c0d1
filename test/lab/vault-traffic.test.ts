/**
 * The vault holds metadata only: disk data goes host to host and never through it. A lab
 * of real processes replicates a 256 MiB disk full of random data for the first time,
 * and the bytes the vault's server received on all its connections over that time (its
 * own count, osr_vault_received_bytes_total in /metrics, TLS included) stay under 1 MiB.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import YAML from 'yaml';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { labDown, readLabFile } from '../../src/lab/launcher.js';
import type { TopologySpec } from '../../src/lab/topology.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import { tempDir } from '../support/lab.js';
import { site } from '../support/topology.js';

const run = promisify(execFile);
const dir = tempDir('osr-vault-traffic-');
const DISK = 256 << 20;
let api: VaultClient;
let cfg: { vault: string; token: string; ca: string };

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 600_000 });
  return r.stdout;
}

/** What the vault's server has received so far, by its own count. */
function receivedBytes(): Promise<number> {
  return new Promise((resolve, reject) => {
    https
      .get(new URL('/metrics', cfg.vault), { ca: fs.readFileSync(cfg.ca, 'utf8'), agent: false }, (res) => {
        let t = '';
        res.on('data', (c: Buffer) => (t += c));
        res.on('end', () => {
          const m = /^osr_vault_received_bytes_total (\d+(?:\.\d+)?(?:e\+\d+)?)$/m.exec(t);
          if (!m) reject(new Error('no osr_vault_received_bytes_total in /metrics'));
          else resolve(Number(m[1]));
        });
      })
      .on('error', reject);
  });
}

before(async () => {
  const topology: TopologySpec = { name: 'traffic', fabrics: [site('Primary', 'p-host', [{ name: 'big', host: 'p-host', disks: [{ name: 'system', size: '256M', storage: 'p-host-store' }], nics: [], workload: false }]), site('Recovery', 'r-host', [])] };
  const file = path.join(dir, 'topology.in.yaml');
  fs.writeFileSync(file, YAML.stringify(topology));
  await osr('lab', 'up', '--dir', dir, '--topology', file, '--port', '0', '--detach', '--status-interval', '1s');
  cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as typeof cfg;
  api = new VaultClient(cfg.vault, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
  await osr('policy', 'create', 'gold', '--copy-frequency', '300s', '--retention-hours', '1');
  await osr('pairing', 'create', '--policy', 'gold', '--source-cloud', 'primary.primary-cloud', '--target-cloud', 'recovery.recovery-cloud');
});

after(async () => {
  api?.close();
  await labDown(dir, () => undefined);
  assert.equal(readLabFile(dir), undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('the vault and disk data', () => {
  test('an initial replication of a 256 MiB disk of random data sends the vault less than 1 MiB', { timeout: 900_000 }, async (t) => {
    // every byte of the disk is data: nothing for the copy to skip
    const nbd = await NbdClient.connect((await osr('lab', 'nbd-uri', 'big', '--dir', dir)).trim());
    const chunk = 4 << 20;
    for (let off = 0; off < DISK; off += chunk) await nbd.write(off, crypto.randomBytes(chunk));
    await nbd.close();

    const before = await receivedBytes();
    await osr('item', 'enable', 'big', '--wait');
    const after = await receivedBytes();
    const item = await api.request<ProtectedItem & { replication: Record<string, unknown> }>('GET', '/api/v1/protected-items/primary.big');
    assert.equal(item.state, 'Protected', JSON.stringify(item.healthReasons));
    // the whole disk is at the recovery site: its replica files hold 256 MiB of data
    const allocated = (d: string): number =>
      fs.readdirSync(d, { withFileTypes: true }).reduce((n, e) => n + (e.isDirectory() ? allocated(path.join(d, e.name)) : e.isFile() ? fs.statSync(path.join(d, e.name)).blocks * 512 : 0), 0);
    const recovery = path.join(dir, 'sites', 'recovery');
    assert.ok(allocated(recovery) >= DISK, `the recovery site holds ${allocated(recovery)} bytes`);
    const received = after - before;
    t.diagnostic(`the vault received ${received} bytes during the initial replication`);
    assert.ok(received > 0, 'the vault counts what it receives');
    assert.ok(received < 1 << 20, `the vault received ${received} bytes while 256 MiB were replicated`);
  });
});
