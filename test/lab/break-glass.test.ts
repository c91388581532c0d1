/**
 * Break-glass, with real processes: the primary site is lost with the only vault on it, so
 * no vault can be had. An operator at the recovery site brings the VM up from its latest
 * point with one command at its host (`osr replica promote`, which fences the old primary
 * by its epoch). When the site and its vault come back, the vault learns what was done
 * from the recovery site's provider and records it as an unplanned failover; it does not
 * undo it: the VM keeps running at the recovery site with its data, the old primary stays
 * fenced, and commit and reprotect go on from there.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import crypto from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { NbdClient } from '../../src/agent/nbd/nbd-client.js';
import { AgentClient } from '../../src/cli/agent-client.js';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { labAgents, labDown } from '../../src/lab/launcher.js';
import { tempDir, waitFor } from '../support/lab.js';
import { labOsr, startTwoSiteLab } from '../support/site-loss.js';

const run = promisify(execFile);
const dir = tempDir('osr-break-glass-');
const osr = labOsr(dir);
const item = async () => JSON.parse(await osr('--json', 'item', 'show', 'primary.db')) as ProtectedItem;
const block = crypto.createHash('sha256').update('written before the disaster').digest();
const payload = Buffer.concat(Array.from({ length: 4096 / block.length }, () => block));

before(async () => {
  await startTwoSiteLab(dir, { name: 'break-glass', vault: { name: 'only-vault', site: 'Primary' }, vms: ['db'], enable: ['db'] });
});

after(async () => {
  await labDown(dir, () => undefined);
});

describe('break-glass: a failover at the host when no vault can be had', () => {
  test('the VM comes up at the recovery site from its latest point with one command; the vault, back, records it and does not undo it', async () => {
    // data the recovery point must hold
    const w = await NbdClient.connect((await osr('lab', 'nbd-uri', 'db', '--dir', dir)).trim());
    await w.write(1 << 20, payload);
    await w.flush();
    await w.close();
    const writtenAt = Date.now();
    await waitFor('a recovery point after the write', async () => {
      const i = await item();
      return i.lastRecoveryPointAt !== null && Date.parse(i.lastRecoveryPointAt) > writtenAt;
    }, 120_000, 500);

    // the primary site goes, and the only vault with it
    assert.match(await osr('lab', 'site', 'fail', 'Primary', '--dir', dir), /vault only-vault/);
    await assert.rejects(osr('item', 'show', 'primary.db'), /NETWORK_ERROR/);

    // break-glass at the recovery host: its agent promotes the replica from the latest point
    const host = labAgents(dir).find((a) => a.host === 'r-host')!;
    const promoted = JSON.parse((await run(process.execPath, [OSR_BIN, '--agent', host.api, '--json', 'replica', 'promote', 'db'], { timeout: 120_000 })).stdout) as { vm: string; epoch: number; point: { seq: number } };
    assert.equal(promoted.vm, 'db');
    assert.ok(promoted.epoch >= 2, `a new epoch fences the old primary (${promoted.epoch})`);
    const agent = new AgentClient(host.api);
    const vms = await agent.get<{ name: string; running: boolean; origin?: { epoch: number } }[]>('/v1/vms');
    assert.deepEqual(vms.filter((v) => v.name === 'db').map((v) => [v.running, v.origin?.epoch]), [[true, promoted.epoch]]);
    const r = await NbdClient.connect((await osr('lab', 'nbd-uri', 'db', '--dir', dir)).trim());
    assert.ok((await r.read(1 << 20, 4096)).equals(payload), 'the VM at the recovery site holds what was written before the point');
    await r.close();

    // the site and its vault come back: the vault learns of the failover from the recovery site's provider
    await osr('lab', 'site', 'restore', 'Primary', '--dir', dir);
    const adopted = await waitFor('the vault recording the failover made at the host', async () => {
      const i = await item().catch(() => undefined);
      return i?.state === 'FailedOver' ? i : undefined;
    }, 150_000, 500);
    const f = adopted.replication.failover!;
    assert.equal(f.outsideVault, true);
    assert.equal(f.kind, 'unplanned');
    assert.equal(f.epoch, promoted.epoch);
    assert.equal(f.point.id, String(promoted.point.seq));
    assert.equal(f.toFabricId, 'recovery');
    assert.equal(f.fencePending, true);
    const events = JSON.parse(await osr('--json', 'event', 'list', '--limit', '200')) as { items: { kind: string; target: string | null }[] } | { kind: string }[];
    const list = Array.isArray(events) ? events : events.items;
    assert.ok(list.some((e) => e.kind === 'failover.outside-vault'), 'an event says what was learnt');

    // nothing undone: the VM still runs at the recovery site, and the old primary cannot push over it
    await new Promise((res) => setTimeout(res, 3000));
    assert.equal((await agent.get<{ name: string; running: boolean }[]>('/v1/vms')).find((v) => v.name === 'db')?.running, true);
    assert.equal((await item()).state, 'FailedOver');

    // and the failover goes on from what was done: commit, reprotect to the old primary
    await osr('item', 'commit', 'primary.db', '--wait');
    await osr('item', 'reprotect', 'primary.db', '--wait');
    const back = await item();
    assert.equal(back.state, 'Protected');
    assert.equal(back.replication.direction, 'recovery-to-primary');
    await waitFor('recovery points at the old primary', async () => (await item()).readiness.ready, 120_000, 500);
  });
});
