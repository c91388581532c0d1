/**
 * `osr lab up --topology to-azure` with real processes: the vault, the on-premises
 * provider and its agent, the Azure site's emulator (Azurite and the lab's Resource
 * Manager) and the Azure provider, which signs in as the emulated service principal
 * through @azure/identity. The CLI protects a VM to Azure as the topology's comment says;
 * a drill runs and is cleaned up; the lab stops and starts again from its state, the
 * emulator on the same ports, and replication goes on; a planned failover makes the VM in
 * Azure; it fails back through the osr agent in the region and is protected to Azure again.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, test } from 'node:test';
import { promisify } from 'node:util';
import YAML from 'yaml';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import { AgentClient } from '../../src/cli/agent-client.js';
import { labAgents, labDown, labStatus, readLabFile } from '../../src/lab/launcher.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import { tempDir, waitFor } from '../support/lab.js';

const run = promisify(execFile);
const dir = tempDir('osr-lab-azure-');

async function osr(...args: string[]): Promise<string> {
  const r = await run(process.execPath, [OSR_BIN, ...args], { env: { ...process.env, OSR_CONFIG: path.join(dir, 'osr.yaml') }, timeout: 300_000 });
  return r.stdout;
}

function api(): VaultClient {
  const cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as { vault: string; token: string; ca: string };
  return new VaultClient(cfg.vault, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
}

after(async () => {
  await labDown(dir, () => undefined);
  assert.equal(readLabFile(dir), undefined);
});

test('the to-azure lab: protection to the emulated Azure site, a drill, a restart that goes on, a planned failover', { timeout: 900_000 }, async () => {
  const up = await osr('lab', 'up', '--dir', dir, '--topology', 'to-azure', '--port', '0', '--detach', '--status-interval', '1s');
  assert.match(up, /Azure-WestEurope \(azure-westeurope\): Azure, emulated/);
  const s = await labStatus(dir);
  assert.equal(s.running, true, JSON.stringify(s.processes));
  // the on-premises host's agent, and the osr agent in the Azure region (failback)
  assert.deepEqual(s.processes.map((p) => p.role).sort(), ['agent', 'agent', 'emulator', 'provider', 'provider', 'vault']);
  // the emulated principal's secret and the account's key are owner-only
  for (const f of ['principal.secret', 'account.key']) assert.equal(fs.statSync(path.join(dir, 'azure', f)).mode & 0o077, 0, f);

  // the topology's own instructions
  const header = fs.readFileSync(path.join(dir, 'topology.yaml'), 'utf8').split('\n').filter((l) => /^#\s+osr /.test(l)).map((l) => l.replace(/^#\s+osr /, ''));
  assert.ok(header.length >= 5);
  for (const line of header.slice(1)) await osr(...line.split(/\s+/));
  const vault = api();
  const item = async () => (await vault.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=10')).items.find((i) => i.name === 'web01')!;
  try {
    assert.equal((await item()).state, 'Protected');
    const pointsNow = async () => (await vault.request<{ items: { id: string }[] }>('GET', `/api/v1/protected-items/vmm-onprem.web01/recovery-points`)).items.map((p) => Number(p.id));
    await waitFor('a recovery point', async () => (await pointsNow()).length > 0, 120_000, 500);

    await osr('item', 'test-failover', 'vmm-onprem.web01', '--network', 'temporary', '--wait');
    assert.equal((await item()).state, 'TestFailoverComplete');
    await osr('item', 'test-failover-cleanup', 'vmm-onprem.web01', '--wait');
    assert.equal((await item()).state, 'Protected');

    // down and up again: the same ports, the same containers, replication goes on
    vault.close();
    await osr('lab', 'down', '--dir', dir);
    await osr('lab', 'up', '--dir', dir, '--port', '0', '--detach', '--status-interval', '1s');
  } finally {
    vault.close();
  }
  const again = api();
  try {
    const points = async () => (await again.request<{ items: { id: string }[] }>('GET', `/api/v1/protected-items/vmm-onprem.web01/recovery-points`)).items.map((p) => Number(p.id));
    const last = Math.max(...(await points()));
    await waitFor('a new point after the restart', async () => Math.max(...(await points())) > last, 180_000, 1000);

    await osr('item', 'planned-failover', 'vmm-onprem.web01', '--wait');
    const it = (await again.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=10')).items.find((i) => i.name === 'web01')!;
    assert.equal(it.state, 'FailedOver');
    // the Azure provider sends its inventory just after the job's last task
    await waitFor('the failed-over VM in the Azure fabric\'s inventory', async () => {
      const vms = (await again.request<{ items: { name: string; fabricId: string }[] }>('GET', '/api/v1/vms?limit=100')).items;
      return vms.some((v) => v.name === 'web01' && v.fabricId === 'azure-westeurope');
    }, 60_000, 500);

    // failback: committed, reprotected home through the region's agent (enrolled over its provider channel), a planned failover home, and protected to Azure again
    await osr('item', 'commit', 'vmm-onprem.web01', '--wait');
    await osr('item', 'reprotect', 'vmm-onprem.web01', '--wait');
    const region = labAgents(dir).find((a) => a.host === 'azure-westeurope')!;
    const home = (await new AgentClient(region.api).get<{ vm: string; resync: { differingBytes: number; totalBytes: number; completedAt: string | null } | null }[]>('/v1/replications')).find((r) => r.vm === 'web01')!;
    assert.ok(home.resync?.completedAt, 'the region\'s agent compared the disks with the old primary\'s');
    assert.equal(home.resync.differingBytes, 0, 'nothing changed in Azure: nothing was sent home');
    await osr('item', 'planned-failover', 'vmm-onprem.web01', '--wait');
    await osr('item', 'commit', 'vmm-onprem.web01', '--wait');
    await osr('item', 'reprotect', 'vmm-onprem.web01', '--wait');
    const back = (await again.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=10')).items.find((i) => i.name === 'web01')!;
    assert.equal(back.state, 'Protected');
    assert.equal(back.replication.replica?.agent.kind, 'azure', 'protected to Azure again');
  } finally {
    again.close();
  }
});
