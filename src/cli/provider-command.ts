/** `osr provider`: run a provider at a fabric — registration, inventory, commands, status. */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { pino } from 'pino';
import { parseDuration } from '../agent/io/time-window.js';
import { OsrError } from '../domain/errors.js';
import type { FabricDriver } from '../fabric/driver.js';
import type { ProviderChannel } from '../provider/channel.js';
import type { ProviderRegistration } from '../provider/registration.js';
import { checkVaultUrls } from '../domain/vault-status.js';
import { VERSION } from '../vault/version.js';
import { AgentClient, readAgentToken } from './agent-client.js';
import type { AgentTrust } from '../drivers/agent-enrolment.js';
import type { AgentHostConfig } from '../drivers/site-fields.js';
import { installLastResortHandler } from './last-resort.js';

export function addProviderCommand(program: Command): void {
  program
    .command('provider')
    .description('run a provider at a fabric: register with the vault (once, with a registration key), sync inventory, run the vault\'s commands against the fabric, report replication status')
    .requiredOption('--fabric <kind>', 'the fabric driver: lab (hosts are osr agents on this machine), libvirt (KVM hosts, each running osr agent --host libvirt) or azure (Azure as a recovery site: a subscription\'s resource group and storage account; docs/design/azure.md)')
    // --config and --vault are also the osr command's own options, which take their values; the action reads them there
    .option('--config <file>', 'the site file: the fabric\'s name and inventory, and lab.dir for the lab driver (libvirt: hosts and their agents, clouds, network and storage mappings; docs/getting-started-libvirt.md)')
    .option('--vault <urls>', 'the vault\'s URL, or its processes\' URLs separated by commas (a standby at the other site): needed to register; later taken from the registration, and the provider follows whichever answers as the primary')
    .option('--registration-key <key>', 'a registration key from the vault (needed once; valid 5 days)')
    .option('--registration-key-file <file>', 'read the registration key from this file')
    .option('--data-dir <dir>', 'where the provider keeps its registration and state (default LAB_DIR/provider; libvirt: the site file\'s dir)')
    .option('--scripts-dir <dir>', 'where recovery plans\' script actions are (default DATA_DIR/scripts)')
    .option('--server-name <name>', 'this management server\'s friendly name (default: the site file\'s server)')
    .option('--scope <clouds>', 'sync only these clouds (comma-separated names; default all)')
    .option('--status-interval <duration>', 'how often replication status of protected items goes to the vault', '15s')
    .option('--inventory-interval <duration>', 'how often the whole inventory is sent again (changes osr makes are sent at once)', '60s')
    .option('--poll <duration>', 'long-poll wait for commands', '20s')
    .option('--log-level <level>', 'trace, debug, info, warn or error', 'info')
    .action(async (o: Record<string, string | undefined>) => {
      installLastResortHandler('provider');
      // the provider's machinery loads with the command that runs it (another command of osr does not carry it)
      const [{ ProviderChannel }, { FabricProvider }, { loadRegistration, registerWithVault }] = await Promise.all([import('../provider/channel.js'), import('../provider/fabric-provider.js'), import('../provider/registration.js')]);
      const shared = program.opts<{ config?: string; vault?: string }>();
      o.config ??= shared.config;
      o.vault ??= shared.vault;
      if (!o.config) throw new OsrError('CONFIG_INVALID', 'give the site file with --config SITE.yaml');
      const kinds = ['lab', 'libvirt', 'azure'];
      if (!kinds.includes(o.fabric ?? '')) throw new OsrError('NOT_SUPPORTED', `fabric driver "${o.fabric}" is not available; this build has: ${kinds.join(', ')}`);
      let driver: FabricDriver;
      // hosts are connected once the provider has started, after its registration
      const made: { channel?: ProviderChannel } = {};
      const providerChannel = (): ProviderChannel => {
        if (!made.channel) throw new OsrError('INVALID_STATE', 'the provider is not registered yet');
        return made.channel;
      };
      let site: { name: string; server?: string | undefined };
      let dir: string;
      /** a host's agent: over its provider channel (the provider's own certificate, read when each connection is made: renewals included), or its local API beside the provider */
      const connectAgent = (h: AgentHostConfig, trust: AgentTrust): AgentClient =>
        h.agent.startsWith('https:')
          ? new AgentClient(h.agent, { channel: { tls: () => providerChannel().registration.tls, fabricId: () => providerChannel().registration.fabricId, hostName: h.name, agentFingerprint: h.agentFingerprint, revoked: trust.revoked, bootstrapSpent: trust.bootstrapSpent, onEnrolled: trust.enrolledSeen } })
          : new AgentClient(h.agent, { token: h.agentTokenFile !== undefined ? readAgentToken(h.agentTokenFile) : undefined });
      if (o.fabric === 'azure') {
        const [{ AzureFabricDriver }, { azureClients }, { parseAzureSite }] = await Promise.all([import('../drivers/azure/azure-driver.js'), import('../drivers/azure/clients.js'), import('../drivers/azure/site.js')]);
        const file = path.resolve(o.config);
        const s = parseAzureSite(fs.readFileSync(file, 'utf8'), path.dirname(file));
        site = s;
        dir = path.resolve(o.dataDir ?? s.dir);
        driver = new AzureFabricDriver({ ...s, dir }, azureClients(s), { connectRegionAgent: connectAgent });
      } else if (o.fabric === 'libvirt') {
        const [{ LibvirtFabricDriver }, { loadLibvirtSite }] = await Promise.all([import('../drivers/libvirt/libvirt-driver.js'), import('../drivers/libvirt/site.js')]);
        const s = loadLibvirtSite(path.resolve(o.config));
        site = s;
        dir = path.resolve(o.dataDir ?? s.dir);
        driver = new LibvirtFabricDriver(s, { connect: connectAgent });
      } else {
        const [{ LabFabricDriver }, { loadSiteConfig }] = await Promise.all([import('../lab/lab-driver.js'), import('../lab/topology.js')]);
        const s = loadSiteConfig(path.resolve(o.config));
        site = s;
        dir = path.resolve(o.dataDir ?? path.join(s.lab.dir, 'provider'));
        driver = new LabFabricDriver(s);
      }
      const log = pino({ name: `provider ${site.name}`, level: o.logLevel ?? 'info' }, pino.destination(2));
      const vaults = o.vault ? checkVaultUrls(o.vault.split(',').map((u) => u.trim()).filter(Boolean), '--vault') : [];
      const scope = o.scope ? o.scope.split(',').map((s) => s.trim()).filter(Boolean) : 'all';
      let registration = await loadRegistration(dir);
      if (!registration) {
        const key = o.registrationKey ?? (o.registrationKeyFile ? fs.readFileSync(o.registrationKeyFile, 'utf8').trim() : undefined);
        if (!key || vaults.length === 0) throw new OsrError('CONFIG_INVALID', `the provider in ${dir} is not registered yet: give --vault and --registration-key (an Owner creates one with \`osr registration-key create\`)`);
        registration = await registerWithFirst(vaults, (vaultUrl) => registerWithVault({ vaultUrl, key, fabric: { name: site.name, kind: driver.kind }, serverName: o.serverName ?? site.server ?? site.name, version: VERSION, inventoryScope: scope, dir }));
        log.info({ fabricId: registration.fabricId, provider: registration.providerId }, `registered with vault ${registration.vault.name}`);
      }
      // a vault that moved (other addresses) is reached where --vault says; its CA still has to match
      if (vaults.length > 0) {
        const v = registration.vault;
        registration = { ...registration, vault: { ...v, url: vaults.includes(v.url) ? v.url : vaults[0]!, urls: [...new Set([...vaults, ...(v.urls ?? [])])].slice(0, 16) } };
      }
      const channel = new ProviderChannel(registration, { dir, log });
      made.channel = channel;
      const provider = new FabricProvider({
        driver,
        channel,
        dir,
        scriptsDir: path.resolve(o.scriptsDir ?? path.join(dir, 'scripts')),
        statusIntervalMs: parseDuration(o.statusInterval!),
        inventoryIntervalMs: parseDuration(o.inventoryInterval!),
        pollSeconds: Math.max(1, Math.round(parseDuration(o.poll!) / 1000)),
        inventoryScope: scope,
        log,
      });
      let stopping = false;
      const stop = () => {
        if (stopping) return;
        stopping = true;
        log.info({}, 'stopping: hosts, then the channel');
        void provider.stop().then(
          () => process.exit(0),
          (e: unknown) => {
            log.error({ err: (e as Error).message }, 'stopping failed');
            process.exit(1);
          },
        );
      };
      process.on('SIGINT', stop);
      process.on('SIGTERM', stop);
      await provider.start();
      console.log(JSON.stringify({ provider: registration.providerId, fabric: site.name, fabricId: registration.fabricId, vault: registration.vault.url, dir }));
    });
}

/** Register at the first of the vault's URLs that takes it (a standby refuses with VAULT_STANDBY; one may be down). */
async function registerWithFirst(vaults: string[], register: (url: string) => Promise<ProviderRegistration>): Promise<ProviderRegistration> {
  let last: unknown;
  for (const url of vaults) {
    try {
      const r = await register(url);
      return { ...r, vault: { ...r.vault, urls: vaults } };
    } catch (e) {
      last = e;
      const code = (e as { code?: unknown }).code;
      if (code !== 'VAULT_STANDBY' && code !== 'VAULT_STALE' && code !== 'NETWORK_ERROR') throw e;
    }
  }
  throw last;
}
