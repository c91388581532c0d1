/**
 * Test support for the vault: a vault in this process or in a process of its own (real
 * HTTPS either way), an API client with its token, an inventory of a made-up site, and a
 * test provider that registers with a key and answers protection commands as a fabric
 * would (the real provider drives lab hosts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { FabricCapabilities } from '../../src/domain/capabilities.js';
import type { InitialReplicationProgress } from '../../src/domain/commands.js';
import type { InventoryDocument } from '../../src/domain/resources.js';
import { ProviderChannel, type WireCommand } from '../../src/provider/channel.js';
import { registerWithVault, type ProviderRegistration } from '../../src/provider/registration.js';
import { ProviderRuntime, type CommandHandlers } from '../../src/provider/runtime.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import { Vault, type VaultOptions } from '../../src/vault/server.js';
import { tempDir } from './lab.js';

export interface TestVault {
  vault: Vault;
  url: string;
  token: string;
  api: VaultClient;
  /** a client with another token */
  as(token: string): VaultClient;
  close(): Promise<void>;
}

export async function startVault(o: Partial<VaultOptions> = {}): Promise<TestVault> {
  let token = '';
  const vault = await Vault.create({ dataDir: o.dataDir ?? tempDir('osr-vault-'), port: 0, logLevel: 'warn', jobPollMs: 50, onInitialToken: (t) => (token = t), ...o });
  const url = await vault.listen();
  const ca = vault.ctx.identity.ca.certPem;
  const clients: VaultClient[] = [];
  const as = (t: string) => {
    const c = new VaultClient(url, { ca, token: t });
    clients.push(c);
    return c;
  };
  return {
    vault,
    url,
    token,
    api: as(token),
    as,
    async close() {
      for (const c of clients) c.close();
      await vault.close();
    },
  };
}

const OSR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../src/cli/osr.js');

export interface VaultProcess {
  proc: ChildProcess;
  url: string;
  /** the fingerprint of the vault's CA, as it printed it */
  caFingerprint: string;
  /** the first Owner token, when this process created it */
  token: string | undefined;
  kill(signal?: NodeJS.Signals): Promise<void>;
}

/** `osr vault` in a process of its own; resolves once it listens. */
export function spawnVault(args: string[]): Promise<VaultProcess> {
  const proc = spawn(process.execPath, [OSR, 'vault', '--listen', '127.0.0.1:0', '--log-level', 'warn', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const errLines: string[] = [];
  proc.stderr!.on('data', (b: Buffer) => errLines.push(b.toString()));
  return new Promise<VaultProcess>((resolve, reject) => {
    let token: string | undefined;
    const rl = readline.createInterface({ input: proc.stdout! });
    rl.on('line', (line) => {
      const t = /Owner token[^:]*: (\S+)/.exec(line);
      if (t) token = t[1];
      if (line.startsWith('{')) {
        const info = JSON.parse(line) as { url: string; caFingerprint: string };
        resolve({
          proc,
          url: info.url,
          caFingerprint: info.caFingerprint,
          token,
          kill: (signal = 'SIGTERM') =>
            new Promise<void>((res) => {
              if (proc.exitCode !== null || proc.signalCode !== null) return res();
              proc.once('exit', () => res());
              proc.kill(signal);
            }),
        });
      }
    });
    proc.once('exit', (code) => reject(new Error(`osr vault exited with ${code}: ${errLines.join('').slice(-2000)}`)));
  });
}

/**
 * A made-up site: one cloud per name in `clouds`, each with a host group of two hosts,
 * VM network "VMNetwork1" on logical network "LN1", storage GOLD and SILVER, and `vms`
 * VMs per cloud on the first host.
 */
export function siteInventory(site: string, clouds: string[], vms: number, o: { osVersion?: string } = {}): InventoryDocument {
  const doc: InventoryDocument = {
    clouds: [],
    hostGroups: [],
    hosts: [],
    logicalNetworks: [{ id: 'ln1', name: 'LN1' }],
    vmNetworks: [{ id: 'vmnet1', name: 'VMNetwork1', logicalNetwork: 'ln1', subnets: [{ name: 'Subnet1', cidr: '10.0.1.0/24' }] }],
    ipPools: [{ id: 'pool1', name: 'Pool1', vmNetwork: 'vmnet1', subnet: 'Subnet1', start: '10.0.1.10', end: '10.0.1.250' }],
    storageClassifications: [
      { id: 'gold', name: 'GOLD' },
      { id: 'silver', name: 'SILVER' },
    ],
    storageLocations: [
      { id: 'gold-share', name: `\\\\${site}\\gold`, classification: 'gold', kind: 'share', path: `/srv/${site}/gold`, freeBytes: 2e12 },
      { id: 'silver-csv', name: 'Volume1', classification: 'silver', kind: 'volume', path: `/srv/${site}/silver`, freeBytes: 1e12 },
    ],
    vms: [],
  };
  for (const c of clouds) {
    const cid = c.toLowerCase();
    doc.clouds.push({ id: cid, name: c, hostGroups: [`${cid}-hg`] });
    doc.hostGroups.push({ id: `${cid}-hg`, name: `${c} hosts`, hosts: [`${cid}-h1`, `${cid}-h2`] });
    for (const h of ['h1', 'h2']) doc.hosts.push({ id: `${cid}-${h}`, name: `${site}-${c}-${h}`, osVersion: o.osVersion ?? 'lab-1', logicalNetworks: ['ln1'], storageLocations: ['gold-share', 'silver-csv'], agent: { address: '127.0.0.1', replicationPort: 8084 } });
    for (let i = 0; i < vms; i++) {
      doc.vms.push({
        id: `${cid}-vm${i}`,
        name: `${c}-VM${i}`,
        cloud: cid,
        host: `${cid}-h1`,
        powerState: 'Running',
        // the id the host's agent replicates it under: the vault's replication grants name it
        replicationId: `${cid}-vm${i}-rid`,
        disks: [{ id: 'd0', name: 'system', sizeBytes: 1 << 30, storageLocation: 'gold-share' }],
        nics: [{ id: 'nic0', vmNetwork: 'vmnet1' }],
      });
    }
  }
  return doc;
}

export interface TestProviderOptions {
  fabric: string;
  serverName?: string;
  version?: string;
  inventory: InventoryDocument;
  /** replace or add command handlers */
  handlers?: CommandHandlers;
  /** initial replication: progress steps reported before the result (default 3) */
  steps?: number;
  /** sync only these clouds (by name) */
  scope?: string[];
  /** what the fabric can do, reported with every heartbeat (default: none reported) */
  capabilities?: FabricCapabilities;
}

/** A provider registered with a key, answering the protection commands as a fabric would. */
export class TestProvider {
  /** every command delivered, as it came (before its body was checked) */
  readonly received: WireCommand[] = [];
  private constructor(
    readonly registration: ProviderRegistration,
    readonly runtime: ProviderRuntime,
  ) {}

  get fabricId(): string {
    return this.registration.fabricId;
  }

  static async start(vaultUrl: string, key: string, o: TestProviderOptions): Promise<TestProvider> {
    const registration = await registerWithVault({ vaultUrl, key, fabric: { name: o.fabric, kind: 'test' }, serverName: o.serverName ?? `${o.fabric}-server`, version: o.version ?? '0.1.0', inventoryScope: o.scope ?? 'all' });
    const steps = o.steps ?? 3;
    const handlers: CommandHandlers = {
      'replica.prepare': async ({ body }) => ({
        replicaVmId: `replica-${body.vm.name}`,
        hostId: body.placement.hostId,
        agent: { address: '127.0.0.1', port: 8084 },
        nics: Object.entries(body.placement.networks).map(([id, vmNetwork]) => ({ id, vmNetwork, ip: null })),
        reused: false,
      }),
      'replication.enable': async () => ({}),
      'replication.initial': async (_cmd, progress) => {
        for (let i = 1; i <= steps; i++) await progress(initialProgress(i / steps, steps * 1000));
        return { recoveryPoint: { id: 'p1', at: new Date().toISOString(), consistency: 'crash' } };
      },
      'replication.disable': async () => ({}),
      'replica.remove': async ({ body }) => ({ replicaVmId: body.replicaVmId, deleted: body.delete !== false }),
      ...o.handlers,
    };
    const channel = new ProviderChannel(registration);
    const runtime = new ProviderRuntime(channel, { handlers, inventory: () => o.inventory, inventoryScope: o.scope ?? 'all', pollSeconds: 2, ...(o.capabilities ? { capabilities: o.capabilities } : {}) });
    const p = new TestProvider(registration, runtime);
    runtime.on('command', (c: WireCommand) => p.received.push(c));
    await runtime.start();
    return p;
  }

  stop(): Promise<void> {
    return this.runtime.stop();
  }
}

/** An initial replication's progress report at `fraction` of `bytesTotal`, as a host would give it. */
export function initialProgress(fraction: number, bytesTotal: number, o: Partial<InitialReplicationProgress> = {}): InitialReplicationProgress {
  return { fraction, bytesDone: Math.round(fraction * bytesTotal), bytesTotal, rateBytesPerSec: 0, etaSeconds: null, currentDisk: null, state: fraction < 1 ? 'InitialReplication' : 'Replicating', ...o };
}

/** A gate a handler can wait on until the test opens it. */
export function gate(): { wait: Promise<void>; open(): void } {
  let open!: () => void;
  const wait = new Promise<void>((r) => (open = r));
  return { wait, open };
}
