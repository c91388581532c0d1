/**
 * Unplanned failover with real processes: a guest writes numbered blocks in order, each
 * recorded once acknowledged; the primary site's provider and agents are killed with
 * kill -9 mid-write; the item is failed over to the latest point at the recovery site.
 * The failed-over disk must hold a crash-consistent state of the source — every write up
 * to some instant and none after — and lose no more than the policy's RPO allows. The
 * scenario runs under a policy of cycles (test/lab/unplanned.test.ts) and a continuous one
 * (test/lab/continuous.test.ts).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { isAlive, labAgents, labDown, readLabFile } from '../../src/lab/launcher.js';
import type { TopologySpec } from '../../src/lab/topology.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import { tempDir, waitFor } from './lab.js';
import { labWithPairing, site } from './topology.js';

export interface UnplannedScenario {
  /** the lab's name and the describe's */
  name: string;
  /** `osr policy create` flags after the policy's name */
  policyFlags: string[];
  /** seconds of acknowledged writes the failover may lose */
  maxLossSeconds: number;
  /** runs once the item is protected, before the guest writes (the vault's API and the osr command at hand) */
  beforeWrites?: (api: VaultClient, osr: (...args: string[]) => Promise<string>) => Promise<void>;
}

export function unplannedScenario(o: UnplannedScenario): void {
  const run = promisify(execFile);
  const dir = tempDir(`osr-${o.name}-`);
  let api: VaultClient;
  const BLOCK = 4096;
  const DISK = 64 << 20;

  async function osr(...args: string[]): Promise<string> {
    const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 180_000 });
    return r.stdout;
  }

  before(async () => {
    const topology: TopologySpec = { name: o.name, fabrics: [site('Primary', 'p-host', [{ name: 'db', host: 'p-host', disks: [{ name: 'system', size: '64M', storage: 'p-host-store' }], nics: [], workload: false }]), site('Recovery', 'r-host', [])] };
    api = await labWithPairing(dir, topology, osr, 'fast', o.policyFlags);
    await osr('item', 'enable', 'db', '--wait');
    await o.beforeWrites?.(api, osr);
  });

  after(async () => {
    api?.close();
    await labDown(dir, () => undefined);
    assert.equal(readLabFile(dir), undefined);
  });

  describe(o.name, () => {
    test('after kill -9 of the primary site, the latest point is a crash-consistent prefix of the writes, within the RPO', async () => {
      const uri = (await osr('lab', 'nbd-uri', 'db', '--dir', dir)).trim();
      const w = await NbdClient.connect(uri);
      const ackedAt: number[] = [];
      const payload = (i: number) => {
        const b = crypto.createHash('sha256').update(`block ${i}`).digest();
        return Buffer.concat(Array.from({ length: BLOCK / b.length }, () => b));
      };
      let stop = false;
      const writer = (async () => {
        for (let i = 0; i < DISK / BLOCK && !stop; i++) {
          try {
            await w.write(i * BLOCK, payload(i));
          } catch {
            return; // the host is gone
          }
          ackedAt.push(Date.now());
          await new Promise((r) => setTimeout(r, 4));
        }
      })();
      const writingSince = Date.now();
      // let a recovery point land while the guest writes, then take the primary site down hard
      await waitFor('a recovery point taken while the guest writes', async () => {
        const i = await api.request<ProtectedItem>('GET', '/api/v1/protected-items/primary.db');
        return i.lastRecoveryPointAt !== null && Date.parse(i.lastRecoveryPointAt) > writingSince + 1000;
      }, 90_000, 250);
      await new Promise((r) => setTimeout(r, 2000));
      const lab = readLabFile(dir)!;
      const primary = lab.providers.find((p) => p.fabric === 'Primary')!;
      const agents = labAgents(dir).filter((a) => a.fabric === 'Primary');
      process.kill(primary.pid, 'SIGKILL');
      for (const a of agents) process.kill(a.pid, 'SIGKILL');
      const killedAt = Date.now();
      stop = true;
      await writer;
      await w.close().catch(() => undefined);
      await waitFor('the primary site gone', () => !isAlive(primary.pid) && agents.every((a) => !isAlive(a.pid)), 10_000, 50);
      const acked = ackedAt.length;
      assert.ok(acked > 100, `${acked} writes acknowledged`);

      await osr('item', 'unplanned-failover', 'primary.db', '--shutdown-source', '--source-timeout', '3s', '--wait');
      const item = await api.request<ProtectedItem>('GET', '/api/v1/protected-items/primary.db');
      assert.equal(item.state, 'FailedOver');
      assert.equal(item.replication.failover!.kind, 'unplanned');
      assert.equal(item.replication.failover!.sourceShutDown, false, 'the dead source could not be shut down');
      assert.equal(item.replication.failover!.fencePending, true);

      // the failed-over disk: blocks 0..k-1 exactly as written, nothing after
      const c = await NbdClient.connect((await osr('lab', 'nbd-uri', 'db', '--dir', dir)).trim());
      let k = -1;
      const zero = Buffer.alloc(BLOCK);
      for (let off = 0; off < DISK; off += 1 << 20) {
        const chunk = await c.read(off, 1 << 20);
        for (let j = 0; j < chunk.length; j += BLOCK) {
          const i = (off + j) / BLOCK;
          const got = chunk.subarray(j, j + BLOCK);
          if (k < 0) {
            if (got.equals(payload(i))) continue;
            k = i;
          }
          assert.ok(got.equals(zero), `block ${i} is past the point's instant (block ${k} is not there) but holds data: the state is not crash-consistent`);
        }
      }
      await c.close();
      if (k < 0) k = DISK / BLOCK;
      assert.ok(k > 0, 'the point holds the writes before it');
      assert.ok(k <= acked, `the point holds ${k} blocks, more than the ${acked} acknowledged`);
      // data lost: the writes acknowledged after block k's, within the policy's RPO and some slack
      const lostSeconds = (ackedAt[acked - 1]! - ackedAt[k - 1]!) / 1000;
      assert.ok(lostSeconds <= o.maxLossSeconds, `${lostSeconds} s of writes lost (at most ${o.maxLossSeconds} s allowed)`);
      assert.ok(Date.parse(item.replication.failover!.point.at) <= killedAt);
    });
  });
}
