/**
 * The fabric contract (test/support/fabric-contract.ts) on libvirt: two `osr agent --host
 * libvirt` processes on this machine's libvirtd — a KVM host running a tiny domain, and a
 * recovery host — under one libvirt driver, both roles played by it. Libvirt-specific
 * checks are in libvirt-driver.test.ts.
 *
 * Each agent owns the domains of its name prefix (TAG-a-, TAG-b-), as two hosts' libvirtds
 * would keep them apart: the promoted replica's domain is TAG-b-app.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ensureIsolatedNetwork, removeNetwork } from '../../src/agent/libvirt/inventory.js';
import { AgentClient } from '../../src/cli/agent-client.js';
import { LibvirtFabricDriver } from '../../src/drivers/libvirt/libvirt-driver.js';
import { loadLibvirtSite } from '../../src/drivers/libvirt/site.js';
import { ensurePki, startAgentProcess, stopAgentProcess, type RunningAgent } from '../../src/lab/agent-process.js';
import { fabricContract } from '../support/fabric-contract.js';
import { tempDir } from '../support/lab.js';
import { guestCache, libvirtSkip, startTinyDomain, virsh } from '../support/libvirt.js';

const skip = libvirtSkip();

if (skip) {
  const { test } = await import('node:test');
  test('fabric contract: libvirt', { skip }, () => undefined);
} else {
  fabricContract(
    'libvirt',
    async () => {
      const dir = tempDir('osr-lvd-contract-');
      const tag = `lvd-c${process.pid}`;
      const nets = { prod: `${tag}-prod`, other: `${tag}-other` };
      const pool = `${tag}-pool`;
      for (const n of Object.values(nets)) await ensureIsolatedNetwork(virsh, n);
      const poolDir = path.join(dir, 'pool');
      fs.mkdirSync(poolDir, { recursive: true });
      await virsh.run(['pool-define-as', pool, 'dir', '--target', poolDir]);
      await virsh.run(['pool-start', pool]);
      const dom = await startTinyDomain(`${tag}-a-app`, poolDir, { network: nets.prod });
      const uuid = (await virsh.run(['domuuid', dom.name])).trim();
      const agents: RunningAgent[] = [];
      for (const [name, args] of [
        [`${tag}-p1`, ['--libvirt-prefix', `${tag}-a-`]],
        [`${tag}-r1`, ['--libvirt-prefix', `${tag}-b-`, '--libvirt-boot-dir', guestCache]],
      ] as const) {
        const pkiDir = path.join(dir, `pki-${name}`);
        await ensurePki(pkiDir, [name]);
        agents.push(await startAgentProcess({ name, dataDir: path.join(dir, name), pkiDir, listenPort: 0, extraArgs: ['--host', 'libvirt', '--tls-reload', '500ms', ...args], logFile: path.join(dir, `${name}.log`) }));
      }
      const siteFile = path.join(dir, 'site.yaml');
      fs.writeFileSync(
        siteFile,
        `name: ${tag}
dir: state
hosts:
${agents.map((a) => `  - { name: ${a.name}, agent: '${a.apiUrl}', addresses: [127.0.0.1], replicationPort: ${a.replicationPort} }`).join('\n')}
clouds:
  - { name: Primary, hostGroups: [{ name: P, hosts: [${agents[0]!.name}] }] }
  - { name: Recovery, hostGroups: [{ name: R, hosts: [${agents[1]!.name}] }] }
networks:
  - { libvirt: ${nets.prod}, vmNetwork: Net1, logicalNetwork: LN1, subnets: [{ name: S1, cidr: 10.9.0.0/24, pool: { start: 10.9.0.10, end: 10.9.0.20 } }] }
  - { libvirt: ${nets.other}, vmNetwork: Net2, logicalNetwork: LN1, subnets: [{ name: S1, cidr: 10.8.0.0/24, pool: { start: 10.8.0.10, end: 10.8.0.20 } }] }
storage:
  - { pool: ${pool}, classification: GOLD }
domains: { include: ['app'] }
`,
      );
      const site = loadLibvirtSite(siteFile);
      const location = `${agents[1]!.name}-${pool}`;
      return {
        driver: () => new LibvirtFabricDriver(site, { connect: (h) => new AgentClient(h.agent), shutdownTimeout: '3s' }),
        vmId: uuid,
        placement: { hostId: agents[1]!.name, storage: { vda: location, vdb: location }, networks: { nic0: 'Net1' } },
        otherNetwork: 'Net2',
        timeoutMs: 300_000,
        close: async () => {
          for (const a of agents) await stopAgentProcess(a, 'SIGKILL');
          await dom.destroy().catch(() => undefined);
          for (const d of (await virsh.run(['list', '--all', '--name'])).split('\n').map((x) => x.trim())) {
            // the agents' prefixes name their test domains too
            if (d.startsWith(`${tag}-`)) await virsh.run(['destroy', d]).catch(() => undefined).then(() => virsh.run(['undefine', d]).catch(() => undefined));
          }
          for (const n of (await virsh.run(['net-list', '--all', '--name'])).split('\n').map((x) => x.trim())) {
            if (Object.values(nets).includes(n) || n.startsWith(`${tag}-`)) await removeNetwork(virsh, n).catch(() => undefined);
          }
          await virsh.run(['pool-destroy', pool]).catch(() => undefined);
          await virsh.run(['pool-undefine', pool]).catch(() => undefined);
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
    },
  );
}
