#!/usr/bin/env node
/**
 * osr — Open Site Recovery command line. `osr agent` runs a host agent; the other commands
 * talk to an agent's local API (--agent, or OSR_AGENT: its Unix socket, or a TCP address
 * with --agent-token-file).
 */
import { readOwnerOnlyFile } from '../drivers/site-fields.js';
import './runtime-check.js';
import './threadpool.js';
import { Command, Option } from 'commander';
import fs from 'node:fs';
import path from 'node:path';
import { API_SOCKET, DEFAULT_AGENT_API_PORT, DEFAULT_REPLICATION_PORT } from '../agent/addresses.js';
import { parseBackoff } from '../agent/io/retry.js';
import { parseBandwidth } from '../agent/io/throttle.js';
import { parseDuration } from '../agent/io/time-window.js';
import type { ReplicationHealth } from '../agent/wire/replication-types.js';
import { ERROR_CODES, OsrError, toOsrError } from '../domain/errors.js';
import { safeName } from '../domain/names.js';
import { createCa, issueCertificate, writeFileAtomic, type CaMaterial, type PkiRole } from '../pki/index.js';
import { AgentClient, readAgentToken } from './agent-client.js';
import { checkHostKind, DEFAULT_HOST_KIND, HOST_KINDS } from './host-kinds.js';
import { addVaultCommand } from './vault-command.js';
import { addLabCommand } from './lab-command.js';
import { addProviderCommand } from './provider-command.js';
import { addApiCommands } from './api-commands.js';
import { installLastResortHandler } from './last-resort.js';
import { collect, formatBytes, formatSeconds, progressBar, table } from './format.js';

const DEFAULT_AGENT_DATA_DIR = path.join('.osr', 'agent');

const program = new Command();
program
  .name('osr')
  .description('Open Site Recovery: replicate VM disks between hosts, keep recovery points, open any point instantly.')
  .version('0.1.0')
  .option('--agent <address>', "the agent's local API: its socket (unix:PATH), or http://HOST:PORT for one started with --api", process.env.OSR_AGENT || `unix:${path.join(DEFAULT_AGENT_DATA_DIR, API_SOCKET)}`)
  .option('--agent-token-file <file>', "file with the agent's API token, for --agent http://HOST:PORT (default: $OSR_AGENT_TOKEN_FILE)")
  .option('--json', 'print machine-readable JSON instead of tables', false)
  .option('--vault <url>', 'the vault to talk to (default: $OSR_VAULT, the config file, else https://127.0.0.1:8443)')
  .option('--token <token>', 'API token for the vault (default: $OSR_TOKEN, else the config file)')
  .option('--vault-ca <file>', "PEM file of the vault's CA to trust (default: $OSR_VAULT_CA, else the config file's ca)")
  .option('--config <file>', 'vault connection file, YAML {vault, token, ca} (default: $OSR_CONFIG, else the first of ~/.config/osr/config.yaml and .osr/lab/osr.yaml)')
  .showHelpAfterError();

const client = () => {
  const o = program.opts<{ agent: string; agentTokenFile?: string }>();
  const tokenFile = o.agentTokenFile ?? process.env.OSR_AGENT_TOKEN_FILE;
  return new AgentClient(o.agent, { token: tokenFile ? readAgentToken(tokenFile) : undefined });
};
const asJson = () => program.opts<{ json: boolean }>().json;
const print = (data: unknown, human: () => string) => console.log(asJson() ? JSON.stringify(data, null, 2) : human());

function hostPort(text: string, defaultPort: number): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(text);
  if (!m) throw new OsrError('INVALID_ARGUMENT', `"${text}" is not HOST[:PORT]`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port: m[2] !== undefined ? Number(m[2]) : defaultPort };
}

// ---- agent ------------------------------------------------------------------------------
program
  .command('agent')
  .description('run a host agent (lab disks over NBD, change tracking, replication, replica store)')
  .option('--name <name>', 'agent name (also the certificate name in --pki-dir)', 'agent')
  .option('--data-dir <dir>', 'where the agent keeps its state; its local API is the socket DIR/run/api.sock', DEFAULT_AGENT_DATA_DIR)
  .option('--host <kind>', `the machine the agent runs on and how it reaches its VMs (${HOST_KINDS.join(', ')}): lab = VMs whose raw disk images the agent serves itself over NBD, tracking changes on their write path; libvirt = the domains of a KVM host's libvirtd, tracked with QEMU dirty bitmaps (qcow2 v3 disks)`, DEFAULT_HOST_KIND)
  .option('--libvirt-uri <uri>', 'with --host libvirt: the libvirt connection', 'qemu:///system')
  .option('--libvirt-domains <regex>', 'with --host libvirt: only the domains whose names match (default all)')
  .option('--libvirt-prefix <prefix>', 'with --host libvirt: only the domains whose names begin with it; a VM\'s name is the rest, and a promoted replica\'s domain gets it (default none)')
  .option('--libvirt-boot-dir <dir>', 'with --host libvirt: the directory a promoted VM\'s or a test domain\'s direct kernel boot files may be in (default none: such a VM is refused)')
  .option('--storage-dir <dir>', 'storage location for lab disk images (default DATA/storage)')
  .option('--listen <host:port>', `accept replication from primary agents (default port ${DEFAULT_REPLICATION_PORT})`)
  .option('--api <host:port>', `serve the local API on loopback TCP instead of the socket (default port ${DEFAULT_AGENT_API_PORT}); every request then needs the token`)
  .option('--provider-api <host:port>', `serve the provider channel: HTTPS with mutual TLS for the fabric's provider, on any address (default port ${DEFAULT_AGENT_API_PORT}; off unless given). Without a certificate yet the agent needs only --ca (the vault's CA): it prints its bootstrap certificate's fingerprint for the site file and is enrolled over the channel`)
  .option('--provider-fabric <id>', 'with --provider-api: the fabric (the vault\'s id, as `osr fabric list` shows it) whose provider may enrol this agent; without it, until enrolment, a provider of any fabric of the vault could')
  .option('--api-token-file <file>', 'the token for --api, in a file only the agent\'s user can read (default DIR/api-token, created on first start)')
  .option('--quiesce-hook-dir <dir>', 'the quiesce hook of VM X is DIR/X, run with freeze|thaw X around app-consistent points (owned by root or the agent\'s user, not writable by group or others)')
  .option('--nbd-tcp <port>', 'also serve NBD on 127.0.0.1:PORT (the Unix socket is always served)')
  .option('--pki-dir <dir>', 'directory with ca.crt, NAME.crt and NAME.key (from `osr pki`)')
  .option('--cert <file>', 'certificate file (overrides --pki-dir)')
  .option('--key <file>', 'private key file (overrides --pki-dir)')
  .option('--ca <file>', 'CA certificate file (overrides --pki-dir)')
  .option('--crl <file>', 'the CA\'s revocation list: peers whose certificate it lists are refused (default: crl.pem in --pki-dir, when there is one); it and the certificate files are reloaded when they change, without a restart')
  .option('--tls-reload <duration>', 'how often the certificate, key, CA and revocation list files are looked at for a change', '10s')
  .option('--retry-backoff <durations>', 'waits before the first retries after a recoverable error, in order', '1m,2m,4m,8m,10m')
  .option('--retry-every <duration>', 'wait before each retry after those', '30m')
  .option('--bandwidth <schedule>', 'bandwidth limit shared by all replications, e.g. 10MB/s@08:00-18:00 (default unlimited)')
  .option('--log-level <level>', 'trace, debug, info, warn or error', 'info')
  .action(async (o: Record<string, string | undefined>) => {
    const name = o.name!;
    installLastResortHandler('agent');
    const hostKind = checkHostKind(o.host!);
    const pki = o.pkiDir;
    let certFile = o.cert ?? (pki ? path.join(pki, `${name}.crt`) : undefined);
    let keyFile = o.key ?? (pki ? path.join(pki, `${name}.key`) : undefined);
    const caFile = o.ca ?? (pki ? path.join(pki, 'ca.crt') : undefined);
    const dataDir = path.resolve(o.dataDir!);
    // an agent enrolled over the provider channel keeps its certificate in DATA/pki
    const own = o.providerApi !== undefined && !pki ? path.join(dataDir, 'pki') : undefined;
    certFile ??= own && path.join(own, `${name}.crt`);
    keyFile ??= own && path.join(own, `${name}.key`);
    if (!certFile || !keyFile || !caFile) throw new OsrError('CONFIG_INVALID', 'the agent needs a certificate: give --pki-dir or --cert, --key and --ca (create them with `osr pki init` and `osr pki issue`), or --provider-api with --ca (the vault\'s CA) to be enrolled over the network');
    if (o.apiTokenFile !== undefined && o.api === undefined) throw new OsrError('CONFIG_INVALID', '--api-token-file is for the TCP API: give --api HOST:PORT too (the socket needs no token)');
    const api = o.api !== undefined ? { ...hostPort(o.api, DEFAULT_AGENT_API_PORT), tokenFile: o.apiTokenFile !== undefined ? path.resolve(o.apiTokenFile) : undefined } : undefined;
    // the agent loads with the command that runs it: a vault or a provider started by osr does not carry it
    const [{ Agent }, { hostFactory }] = await Promise.all([import('../agent/agent.js'), import('./agent-host.js')]);
    const makeHost = hostFactory(hostKind, { storageDir: o.storageDir ? path.resolve(o.storageDir) : undefined, libvirtUri: o.libvirtUri, libvirtDomains: o.libvirtDomains, libvirtPrefix: o.libvirtPrefix, libvirtBootDirs: o.libvirtBootDir !== undefined ? [path.resolve(o.libvirtBootDir)] : undefined });
    const agent = new Agent({
      name,
      dataDir,
      listen: o.listen ? hostPort(o.listen, DEFAULT_REPLICATION_PORT) : undefined,
      api,
      providerApi: o.providerApi !== undefined ? hostPort(o.providerApi, DEFAULT_AGENT_API_PORT) : undefined,
      providerFabric: o.providerFabric !== undefined ? safeName(o.providerFabric, '--provider-fabric', 'CONFIG_INVALID') : undefined,
      nbdTcpPort: o.nbdTcp !== undefined ? Number(o.nbdTcp) : undefined,
      quiesceHookDir: o.quiesceHookDir !== undefined ? path.resolve(o.quiesceHookDir) : undefined,
      tls: { certFile, keyFile, caFile, crlFile: o.crl ?? (pki ? path.join(pki, 'crl.pem') : own ? path.join(own, 'crl.pem') : undefined) },
      tlsReloadMs: parseDuration(o.tlsReload!),
      retry: { backoffMs: parseBackoff(o.retryBackoff!), thenEveryMs: parseDuration(o.retryEvery!) },
      bandwidth: o.bandwidth !== undefined ? (parseBandwidth(o.bandwidth), o.bandwidth) : undefined,
      logLevel: o.logLevel,
    }, makeHost);
    const ep = await agent.start();
    console.log(JSON.stringify({ agent: name, ...ep }));
    let stopping = false;
    const stop = async () => {
      if (stopping) return;
      stopping = true;
      try {
        await agent.stop();
      } catch (e) {
        console.error(`error ${toOsrError(e).code}: stopping the agent failed: ${(e as Error).message}`);
        process.exit(1);
      }
      process.exit(0);
    };
    process.on('SIGINT', () => void stop());
    process.on('SIGTERM', () => void stop());
  });

// ---- pki --------------------------------------------------------------------------------
const pki = program.command('pki').description('a certificate authority for agents run without a vault (a vault\'s providers enrol their hosts with the vault\'s CA)');
pki
  .command('init')
  .description('create a CA in DIR (ca.crt, ca.key)')
  .requiredOption('--dir <dir>', 'directory for the CA files')
  .option('--name <cn>', 'CA common name', 'osr CA')
  .action(async (o: { dir: string; name: string }) => {
    fs.mkdirSync(o.dir, { recursive: true, mode: 0o700 });
    if (fs.existsSync(path.join(o.dir, 'ca.key'))) throw new OsrError('ALREADY_EXISTS', `${o.dir} already holds a CA`);
    const ca = await createCa({ commonName: o.name });
    fs.writeFileSync(path.join(o.dir, 'ca.crt'), ca.certPem);
    await writeFileAtomic(path.join(o.dir, 'ca.key'), ca.keyPem, 0o600);
    print({ dir: o.dir }, () => `CA created in ${o.dir}`);
  });
pki
  .command('issue')
  .description('issue a certificate signed by the CA in DIR: DIR/NAME.crt and DIR/NAME.key')
  .requiredOption('--dir <dir>', 'directory holding the CA')
  .requiredOption('--name <name>', 'certificate common name (the agent name)')
  .addOption(new Option('--role <role>', 'what the holder is').choices(['agent', 'provider', 'vault', 'client']).default('agent'))
  .option('--dns <name>', 'DNS name the holder answers to (repeatable; default localhost)', collect, [])
  .option('--ip <address>', 'IP address the holder answers on (repeatable; default 127.0.0.1, ::1)', collect, [])
  .option('--days <n>', 'validity in days', '365')
  .action(async (o: { dir: string; name: string; role: PkiRole; dns: string[]; ip: string[]; days: string }) => {
    const ca: CaMaterial = { certPem: fs.readFileSync(path.join(o.dir, 'ca.crt'), 'utf8'), keyPem: fs.readFileSync(path.join(o.dir, 'ca.key'), 'utf8') };
    const issued = await issueCertificate(ca, {
      commonName: o.name,
      role: o.role,
      dnsNames: o.dns.length ? o.dns : undefined,
      ipAddresses: o.ip.length ? o.ip : undefined,
      validDays: Number(o.days),
    });
    fs.writeFileSync(path.join(o.dir, `${o.name}.crt`), issued.certPem);
    await writeFileAtomic(path.join(o.dir, `${o.name}.key`), issued.keyPem, 0o600);
    print({ name: o.name, notAfter: issued.notAfter }, () => `issued ${o.name} (${o.role}), valid until ${issued.notAfter.toISOString()}`);
  });

// ---- vm ---------------------------------------------------------------------------------
const vm = program.command('vm').description('lab VMs on the agent (disks are raw sparse images served over NBD)');
vm.command('create <name>')
  .description('create a lab VM with 1-16 disks')
  .requiredOption('--disk <size>', 'a disk of this virtual size, e.g. 10G (repeat for more disks)', collect, [])
  .option('--start', 'start the VM (serve its disks) right away', false)
  .action(async (name: string, o: { disk: string[]; start: boolean }) => {
    const spec = await client().post<{ name: string; disks: { name: string; size: number }[] }>('/v1/vms', { name, disks: o.disk });
    if (o.start) await client().post(`/v1/vms/${name}/start`);
    print(spec, () => `created ${spec.name}: ${spec.disks.map((d) => `${d.name} ${formatBytes(d.size)}`).join(', ')}`);
  });
vm.command('list')
  .description('list lab VMs')
  .action(async () => {
    const s = await client().get<{ vms: Record<string, unknown>[] }>('/v1/status');
    print(s.vms, () => table(s.vms, ['name', 'running', 'disks', 'tracking', 'resyncRequired']));
  });
vm.command('start <name>')
  .description('start a VM: its disks are served over NBD')
  .action(async (name: string) => print(await client().post(`/v1/vms/${name}/start`), () => `${name} running`));
vm.command('stop <name>')
  .description('stop a VM: its disks are flushed and no longer served')
  .action(async (name: string) => print(await client().post(`/v1/vms/${name}/stop`), () => `${name} stopped`));
vm.command('demote <name>')
  .description('reverse replication, at the old primary after a failover: the VM stops and its disks become the replica of its promoted copy (writes it made after its last shipped point are discarded)')
  .option('--epoch <n>', 'the epoch the copy was promoted with (default: known from a refused replication, else this one\'s + 1)')
  .action(async (name: string, o: { epoch?: string }) => {
    const r = await client().post<{ vm: string; epoch: number; divergentBytes: number | null }>(`/v1/vms/${name}/demote`, { epoch: o.epoch !== undefined ? Number(o.epoch) : undefined });
    print(r, () => `${r.vm} demoted: its disks are the replica of the copy promoted with epoch ${r.epoch}; ${r.divergentBytes === null ? 'every block will be compared' : `${formatBytes(r.divergentBytes)} written here since the last shipped point will be resent`}`);
  });
vm.command('recovery-point <name>')
  .description('before the commit of a failover: the VM starts again from another point of its replica; what it wrote is discarded')
  .requiredOption('--point <seq>', 'the recovery point number')
  .action(async (name: string, o: { point: string }) => {
    const r = await client().post<{ vm: string; point: { seq: number; timeMs: number } }>(`/v1/vms/${name}/recovery-point`, { point: Number(o.point) });
    print(r, () => `${r.vm} runs from point #${r.point.seq} (${new Date(r.point.timeMs).toISOString()}) now`);
  });
vm.command('commit <name>')
  .description('commit a failover: the VM keeps its point and writes, the other points of its replica go')
  .action(async (name: string) => {
    const r = await client().post<{ vm: string; point: { seq: number } }>(`/v1/vms/${name}/commit`);
    print(r, () => `the failover of ${r.vm} is committed (point #${r.point.seq}): it runs from its own disks`);
  });
const vmDisk = vm.command('disk').description("change a lab VM's disks as its admin would on a hypervisor; a replication of the VM follows (a shrink or a removal once confirmed: osr replication confirm-disks)");
vmDisk
  .command('add <name>')
  .description('add an empty disk (the VM may run)')
  .requiredOption('--size <size>', 'its virtual size, e.g. 16G')
  .action(async (name: string, o: { size: string }) => {
    const d = await client().post<{ name: string; size: number }>(`/v1/vms/${name}/disks`, { size: o.size });
    print(d, () => `${name}: added ${d.name} (${formatBytes(d.size)})`);
  });
vmDisk
  .command('resize <name> <disk>')
  .description('grow a disk in place (the VM may run), or shrink it (the VM stopped: the bytes past the new end are lost)')
  .requiredOption('--size <size>', 'the new virtual size, e.g. 32G')
  .action(async (name: string, disk: string, o: { size: string }) => {
    const d = await client().put<{ name: string; size: number }>(`/v1/vms/${name}/disks/${encodeURIComponent(disk)}`, { size: o.size });
    print(d, () => `${name}: ${d.name} is ${formatBytes(d.size)} now`);
  });
vmDisk
  .command('remove <name> <disk>')
  .description('remove a disk and its image (the VM stopped)')
  .action(async (name: string, disk: string) => print(await client().delete(`/v1/vms/${name}/disks/${encodeURIComponent(disk)}`), () => `${name}: ${disk} removed`));
vm.command('nbd-uri <name> [disk]')
  .description("print the NBD URI of a VM's disk (every disk when none is named)")
  .option('--tcp', 'the TCP URI instead of the Unix socket one', false)
  .action(async (name: string, disk: string | undefined, o: { tcp: boolean }) => {
    const disks = await client().get<{ name: string; nbd: { unix: string; tcp: string | null } }[]>(`/v1/vms/${name}/disks`);
    const chosen = disk ? disks.filter((d) => d.name === disk) : disks;
    if (chosen.length === 0) throw new OsrError('NOT_FOUND', `VM ${name} has no disk ${disk}`);
    for (const d of chosen) {
      const uri = o.tcp ? d.nbd.tcp : d.nbd.unix;
      if (!uri) throw new OsrError('INVALID_STATE', 'the agent serves no NBD over TCP (start it with --nbd-tcp PORT)');
      console.log(uri);
    }
  });

// ---- replication -----------------------------------------------------------------------
const rep = program.command('replication').description('replicate VMs from this agent (the primary) to a replica agent or an Azure storage container');

/** A SAS from a file only its owner may read: never from the command line, where other users see it. */
function readSasFile(file: string): string {
  return readOwnerOnlyFile(path.resolve(file), 'the SAS file', { code: 'INVALID_ARGUMENT' }).replace(/^\?/, '');
}

rep
  .command('enable <vm>')
  .description('start replicating a VM: initial replication, then a delta every copy cycle')
  .requiredOption('--to <host:port|container URL>', `replica agent address (default port ${DEFAULT_REPLICATION_PORT}), or an Azure storage container's URL (https://ACCOUNT.blob.core.windows.net/CONTAINER) with --azure-sas-file`)
  .option('--azure-sas-file <file>', 'a file (mode 600) holding the SAS that grants this agent access to the container of --to')
  .option('--servername <name>', 'name the replica agent\'s certificate must carry (default: the host of --to)')
  .option('--peer-name <agent>', 'the replica agent\'s name: its certificate\'s common name must be this')
  .option('--frequency <duration>', 'copy frequency: 30s, 5m or 15m (any value for tests), or continuous (a cut every second)', '5m')
  .option('--point-interval <duration>', 'continuous: keep a recovery point this often, 1s to 60s (default 5s)')
  .option('--group <name>', "a consistency group's member: no points of its own, only the group's cuts (POST /v1/cuts; a lab VM only)")
  .option('--retention-hours <n>', 'keep recovery points this many hours (0-24)', '24')
  .option('--max-points <n>', 'and at most this many points', '24')
  .option('--compress', 'compress replication traffic (zstd)', false)
  .option('--start-at <iso>', 'start the initial replication at this time instead of now')
  .option('--app-consistent-every <duration>', "take an app-consistent point this often, e.g. 1h (the VM's quiesce hook is the agent's: osr agent --quiesce-hook-dir)")
  .option('--resync-block-size <bytes>', 'block size a resynchronization compares (power of two, 512 B-16 MiB)', '4096')
  .option('--resync-window <HH:MM-HH:MM>', 'local hours in which a resync that became necessary starts on its own; "always", or "never" (only when asked)', '18:00-06:00')
  .option('--bandwidth <schedule>', 'bandwidth limit of this replication, e.g. 10MB/s@08:00-18:00 (default unlimited)')
  .addOption(new Option('--initial <method>', 'initial replication over the network, or offline: written to --export-dir and imported at the replica').choices(['online', 'offline']).default('online'))
  .option('--export-dir <dir>', 'where an offline initial replication writes its export')
  .action(async (vmName: string, o: Record<string, string | boolean | undefined>) => {
    const azure = /^https?:\/\//i.test(String(o.to));
    if (azure !== (typeof o.azureSasFile === 'string')) throw new OsrError('INVALID_ARGUMENT', azure ? 'a container URL needs --azure-sas-file' : '--azure-sas-file goes with a container URL in --to');
    const to = azure ? undefined : hostPort(String(o.to), DEFAULT_REPLICATION_PORT);
    const spec = await client().post<{ id: string }>('/v1/replications', {
      vm: vmName,
      peer: to ? `${to.host}:${to.port}` : String(o.to),
      azureSas: typeof o.azureSasFile === 'string' ? readSasFile(o.azureSasFile) : undefined,
      servername: o.servername,
      peerName: o.peerName,
      copyFrequency: o.frequency,
      pointInterval: o.pointInterval,
      group: o.group,
      retentionHours: Number(o.retentionHours),
      maxPoints: Number(o.maxPoints),
      compression: o.compress === true,
      startAt: o.startAt,
      appConsistentFrequency: o.appConsistentEvery,
      resyncBlockSize: Number(o.resyncBlockSize),
      resyncWindow: o.resyncWindow,
      bandwidth: o.bandwidth,
      initialReplication: o.initial,
      exportDir: typeof o.exportDir === 'string' ? path.resolve(o.exportDir) : undefined,
    });
    print(spec, () => `replication ${spec.id} enabled`);
  });
const repRow = (h: ReplicationHealth) => ({
  id: h.id,
  vm: h.vm,
  state: h.state,
  health: h.health,
  rpo: formatSeconds(h.rpoSeconds),
  latestPoint: h.latestPoint ? `#${h.latestPoint.seq} ${h.latestPoint.time}` : null,
  pending: formatBytes(h.pendingLogBytes),
  missed: `${h.missedCyclesLastHour}/${h.cyclesLastHour}`,
  lastError: h.lastError ? h.lastError.code : null,
  progress: h.initial && !h.initial.completedAt ? `${((h.initial.doneBytes / h.initial.totalBytes) * 100).toFixed(1)}%` : h.resync && !h.resync.completedAt ? `resync ${h.resync.percent.toFixed(1)}%` : null,
});
rep
  .command('azure-sas <id>')
  .description('give a replication to Azure storage a renewed SAS for its container (id or VM name)')
  .requiredOption('--sas-file <file>', 'a file (mode 600) holding the new SAS')
  .action(async (id: string, o: { sasFile: string }) => {
    await client().put(`/v1/replications/${encodeURIComponent(id)}/azure-sas`, { sas: readSasFile(o.sasFile) });
    print({ id, renewed: true }, () => `replication ${id} takes the new SAS at its next connection`);
  });
rep
  .command('list')
  .description('replications of this agent with state, health and RPO')
  .action(async () => {
    const list = await client().get<ReplicationHealth[]>('/v1/replications');
    print(list, () => table(list.map(repRow)));
  });
rep
  .command('show <id>')
  .description('health facts of one replication (id or VM name)')
  .action(async (id: string) => {
    const h = await client().get<ReplicationHealth>(`/v1/replications/${id}`);
    print(h, () => JSON.stringify(h, null, 2));
  });
rep
  .command('watch <id>')
  .description('follow a replication: initial replication progress, then cycles; Ctrl-C to stop')
  .option('--interval <duration>', 'refresh interval', '1s')
  .action(async (id: string, o: { interval: string }) => {
    for (;;) {
      const h = await client().get<ReplicationHealth>(`/v1/replications/${id}`);
      const p = h.initial && !h.initial.completedAt ? h.initial : null;
      const r = h.resync && !h.resync.completedAt && h.state === 'Resynchronizing' ? h.resync : null;
      const line = r
        ? `${h.state} ${progressBar(r.doneBytes / Math.max(1, r.totalBytes))} ${formatBytes(r.doneBytes)}/${formatBytes(r.totalBytes)} differing ${formatBytes(r.differingBytes)} ${formatBytes(r.rateBytesPerSec)}/s ETA ${formatSeconds(r.etaSeconds)} disk ${r.currentDisk ?? '-'}`
        : p
        ? `${h.state} ${progressBar(p.doneBytes / Math.max(1, p.totalBytes))} ${formatBytes(p.doneBytes)}/${formatBytes(p.totalBytes)} ${formatBytes(p.rateBytesPerSec)}/s ETA ${formatSeconds(p.etaSeconds)} disk ${p.currentDisk ?? '-'}`
        : `${h.state} ${h.health} RPO ${formatSeconds(h.rpoSeconds)} latest #${h.latestPoint?.seq ?? '-'} pending ${formatBytes(h.pendingLogBytes)}${h.lastError ? ` last error ${h.lastError.code}` : ''}${h.retry?.nextAt ? ` retry at ${h.retry.nextAt}` : h.retry?.waitingForAction ? ' waiting for action (osr replication retry)' : ''}`;
      if (asJson()) console.log(JSON.stringify(h));
      else if (process.stdout.isTTY) process.stdout.write(`\r${line.padEnd(110)}`);
      else console.log(line);
      await new Promise((r) => setTimeout(r, parseDuration(o.interval)));
    }
  });
rep
  .command('cycle <id>')
  .description('run a copy cycle now')
  .action(async (id: string) => print(await client().post(`/v1/replications/${id}/cycle`), () => 'cycle requested'));
rep
  .command('prepare-failover <id>')
  .description('planned failover, first step: stop the VM, ship its final delta, wait until nothing is pending')
  .option('--timeout <duration>', 'give up after this long', '5m')
  .action(async (id: string, o: { timeout: string }) => {
    const r = await client().post<{ vm: string; point: { seq: number; time: string } | null; pendingLogBytes: number }>(`/v1/replications/${id}/prepare-failover`, { timeout: o.timeout });
    print(r, () => `${r.vm} stopped; its last state is point #${r.point?.seq} (${r.point?.time}) at the replica; ${r.pendingLogBytes} bytes pending`);
  });
rep
  .command('retry <id>')
  .description('retry now after an error, instead of waiting for the back-off (or, after a non-recoverable error, for someone to act)')
  .action(async (id: string) => print(await client().post(`/v1/replications/${id}/retry`), () => 'retry requested'));
rep
  .command('resync <id>')
  .description('resynchronize now: compare every block with the replica and send those that differ')
  .action(async (id: string) => print(await client().post(`/v1/replications/${id}/resync`), () => 'resync requested (osr replication watch shows its progress)'));
rep
  .command('confirm-disks <id>')
  .description("the VM's disks shrank or one was removed, and replication waits: go on; the replica's next points have the disks as they are now (older points keep theirs)")
  .action(async (id: string) => {
    const r = await client().post<{ summary: string }>(`/v1/replications/${id}/confirm-disks`);
    print(r, () => `confirmed: ${r.summary}`);
  });
rep
  .command('disable <id>')
  .description('stop replicating (change tracking stops; the replica and its points stay)')
  .action(async (id: string) => print(await client().delete(`/v1/replications/${id}`), () => `replication ${id} disabled`));

// ---- replica ----------------------------------------------------------------------------
const replica = program.command('replica').description('replicas held by this agent: recovery points and overlays');
replica
  .command('list')
  .description('replicas with their latest recovery point')
  .action(async () => {
    const list = await client().get<{ vm: string; points: number; initialDone: boolean; latestPoint: { seq: number; timeMs: number } | null; overlays: unknown[] }[]>('/v1/replicas');
    print(list, () =>
      table(list.map((r) => ({ vm: r.vm, initialDone: r.initialDone, points: r.points, latest: r.latestPoint ? `#${r.latestPoint.seq} ${new Date(r.latestPoint.timeMs).toISOString()}` : null, overlays: r.overlays.length }))),
    );
  });
replica
  .command('points <vm>')
  .description('recovery points of a replica (time, consistency, size)')
  .action(async (vmName: string) => {
    const pts = await client().get<{ seq: number; time: string; consistency: string; deltaBytes: number }[]>(`/v1/replicas/${vmName}/points`);
    print(pts, () => table(pts.map((p) => ({ point: p.seq, time: p.time, consistency: p.consistency, size: formatBytes(p.deltaBytes) }))));
  });
replica
  .command('open <vm>')
  .description('open a recovery point as a copy-on-write overlay served over NBD (writes never change the point)')
  .option('--point <seq>', 'recovery point number (default: the latest)')
  .action(async (vmName: string, o: { point?: string }) => {
    const r = await client().post<{ id: string; point: number; openMs: number; disks: { name: string; nbd: { unix: string } }[] }>(`/v1/replicas/${vmName}/overlays`, {
      point: o.point !== undefined ? Number(o.point) : undefined,
    });
    print(r, () => [`overlay ${r.id} on point #${r.point} (opened in ${r.openMs} ms)`, ...r.disks.map((d) => `  ${d.name}  ${d.nbd.unix}`)].join('\n'));
  });
replica
  .command('commit <vm> <overlay>')
  .description('commit an overlay: its point and writes become the disks; the other points go')
  .action(async (vmName: string, id: string) => print(await client().post(`/v1/replicas/${vmName}/overlays/${id}/commit`), () => `committed ${id}`));
replica
  .command('import')
  .description('seed a replica from an offline export (every chunk is checked); the primary then goes on with deltas')
  .requiredOption('--dir <dir>', 'the export directory, as copied from the primary site')
  .option('--vm <name>', 'refuse an export of any other VM')
  .action(async (o: { dir: string; vm?: string }) => {
    const r = await client().post<{ vm: string; bytes: number; ms: number; exportedAt: string }>('/v1/replicas/import', { dir: path.resolve(o.dir), vm: o.vm });
    print(r, () => `imported the export of ${r.vm} (${r.exportedAt}): ${formatBytes(r.bytes)} checked in ${(r.ms / 1000).toFixed(1)} s; delta replication goes on from it`);
  });
replica
  .command('promote <vm>')
  .description('failover: a recovery point becomes a writable VM on this host; older primaries are refused from now on')
  .option('--point <seq>', 'recovery point number (default: the latest)')
  .option('--epoch <n>', "the new replication epoch (default: the replica's + 1)")
  .option('--no-start', 'do not serve the VM\'s disks yet')
  .option('--no-commit', 'run the VM from the point until `osr vm commit`; `osr vm recovery-point` may choose another point meanwhile')
  .option('--machine <file>', 'a libvirt host: the JSON machine (vcpus, memoryMiB, nics on this host\'s networks, …) to define a new domain with, as the source host\'s GET /v1/host/inventory shows it')
  .action(async (vmName: string, o: { point?: string; epoch?: string; start: boolean; commit: boolean; machine?: string }) => {
    const machine: unknown = o.machine !== undefined ? JSON.parse(fs.readFileSync(path.resolve(o.machine), 'utf8')) : undefined;
    const r = await client().post<{ vm: string; epoch: number; point: { seq: number; timeMs: number }; rolledBackBytes: number; pending: boolean }>(`/v1/replicas/${vmName}/promote`, {
      point: o.point !== undefined ? Number(o.point) : undefined,
      epoch: o.epoch !== undefined ? Number(o.epoch) : undefined,
      start: o.start,
      commit: o.commit,
      ...(machine !== undefined ? { machine } : {}),
    });
    print(r, () => `${r.vm} promoted from point #${r.point.seq} (${new Date(r.point.timeMs).toISOString()}), epoch ${r.epoch}${r.rolledBackBytes > 0 ? `; later points rolled back (${formatBytes(r.rolledBackBytes)})` : ''}\nreverse replication: \`osr vm demote ${r.vm} --epoch ${r.epoch}\` at the old primary, then \`osr replication enable ${r.vm} --to OLD-PRIMARY\` here`);
  });
replica
  .command('discard <vm> <overlay>')
  .description('discard an overlay and its writes')
  .action(async (vmName: string, id: string) => print(await client().delete(`/v1/replicas/${vmName}/overlays/${id}`), () => `discarded ${id}`));

// ---- status -----------------------------------------------------------------------------
program
  .command('status')
  .description("the agent's VMs, replications and replicas")
  .action(async () => {
    const s = await client().get<{ name: string; vms: Record<string, unknown>[]; replications: ReplicationHealth[]; replicas: Record<string, unknown>[] }>('/v1/status');
    print(s, () =>
      [
        `agent ${s.name}`,
        '',
        'VMs',
        table(s.vms, ['name', 'running', 'disks', 'tracking']),
        '',
        'Replications',
        table(s.replications.map(repRow)),
        '',
        'Replicas',
        table(s.replicas.map((r) => ({ vm: r.vm, points: r.points, initialDone: r.initialDone }))),
      ].join('\n'),
    );
  });

addVaultCommand(program);
addProviderCommand(program);
addLabCommand(program, print);
addApiCommands(program);

program.parseAsync(process.argv).catch((e: unknown) => {
  const err = toOsrError(e);
  if (asJson()) console.error(JSON.stringify({ code: err.code, message: err.message, details: err.details, hint: ERROR_CODES[err.code].fix }));
  else console.error(`error ${err.code}: ${err.message}\n  what to do: ${ERROR_CODES[err.code].fix}`);
  process.exit(ERROR_CODES[err.code].class === 'usage' ? 2 : 1);
});
