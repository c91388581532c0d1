/**
 * The lab's Azure recovery site (`osr lab up --topology to-azure`): Azurite for the
 * storage account and the lab's emulated Resource Manager (fake-arm.ts) for compute and
 * networks, with a service principal it signs in. One process (`osr lab azure-emulator`)
 * runs both; the launcher writes the Azure provider's site file from what it answers.
 *
 * Its state stays in its directory across restarts: Azurite's blobs, the emulated
 * resources, the principal's secret (0600) and the two ports, which stay the same so that
 * the containers' URLs the agents replicate to stay valid.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { NetworkManagementClient } from '@azure/arm-network';
import { StorageSharedKeyCredential } from '@azure/storage-blob';
import { OsrError } from '../domain/errors.js';
import { writeFileAtomic } from '../pki/index.js';
import { startFakeArm, type FakeArm } from './fake-arm.js';

/** An Azure recovery site in a lab topology: its region, resource group and virtual networks. */
export interface AzureLabSpec {
  name: string;
  location: string;
  resourceGroup: string;
  virtualNetworks: { name: string; addressPrefix: string; subnets: { name: string; addressPrefix: string }[] }[];
}

/** Azurite's account; its key is the lab's own (made at the first start, 0600), not the emulator's published one. */
export const EMULATOR_ACCOUNT = 'devstoreaccount1';
export const EMULATOR_SUBSCRIPTION = '00000000-0000-0000-0000-00000000a2e0';
export const EMULATOR_TENANT = '0511ab00-0000-4000-8000-00000000a2e0';
export const EMULATOR_CLIENT = '0511ab00-0000-4000-8000-0000000c11e7';

export interface EmulatorFiles {
  /** the emulated Resource Manager's CA (rewritten at each start) */
  caFile: string;
  /** the principal's secret (0600) */
  secretFile: string;
  /** Azurite's key (0600) */
  keyFile: string;
}

export function emulatorFiles(dir: string): EmulatorFiles {
  return { caFile: path.join(dir, 'arm-ca.pem'), secretFile: path.join(dir, 'principal.secret'), keyFile: path.join(dir, 'account.key') };
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/**
 * Azurite's blob service, started as a child of this process on 127.0.0.1 (port 0: any
 * free one), its data in `location`; `key`: the account's key (default Azurite's
 * published one). Answers the child and the port it listens on.
 */
export async function spawnAzurite(location: string, port: number, key?: string): Promise<{ child: ChildProcess; port: number }> {
  let main: string;
  try {
    main = createRequire(import.meta.url).resolve('azurite/dist/src/blob/main.js');
  } catch {
    throw new OsrError('NOT_SUPPORTED', 'the lab\'s Azure site needs the azurite package: run `npm ci` in the osr checkout (it installs the development packages too)');
  }
  fs.mkdirSync(location, { recursive: true, mode: 0o700 });
  const env = key !== undefined ? { ...process.env, AZURITE_ACCOUNTS: `${EMULATOR_ACCOUNT}:${key}` } : process.env;
  const child = spawn(process.execPath, [main, '--blobHost', '127.0.0.1', '--blobPort', String(port), '--location', location, '--skipApiVersionCheck', '--disableTelemetry'], { stdio: ['ignore', 'pipe', 'pipe'], env });
  let out = '';
  const listening = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new OsrError('INTERNAL', `Azurite did not start within 60 s: ${out.slice(-500)}`)), 60_000);
    const onData = (b: Buffer) => {
      out += b.toString();
      const m = /listens on http:\/\/127\.0\.0\.1:(\d+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new OsrError(/EADDRINUSE/.test(out) ? 'PORT_IN_USE' : 'INTERNAL', `Azurite exited (${code}): ${out.slice(-500)}`));
    });
  });
  return { child, port: listening };
}

export interface RunningEmulator {
  blobEndpoint: string;
  armEndpoint: string;
  arm: FakeArm;
  stop(): Promise<void>;
}

/** Start the lab's Azure site in `dir` (made on the first start, taken up after). */
export async function runAzureEmulator(dir: string, spec: AzureLabSpec): Promise<RunningEmulator> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const files = emulatorFiles(dir);
  const portsFile = path.join(dir, 'ports.json');
  const ports = fs.existsSync(portsFile) ? (JSON.parse(fs.readFileSync(portsFile, 'utf8')) as { blob: number; arm: number }) : { blob: await freePort(), arm: await freePort() };
  await writeFileAtomic(portsFile, JSON.stringify(ports), 0o600);
  if (!fs.existsSync(files.secretFile)) await writeFileAtomic(files.secretFile, crypto.randomBytes(24).toString('base64url'), 0o600);
  if (!fs.existsSync(files.keyFile)) await writeFileAtomic(files.keyFile, crypto.randomBytes(64).toString('base64'), 0o600);
  const key = fs.readFileSync(files.keyFile, 'utf8').trim();
  const azurite = (await spawnAzurite(path.join(dir, 'azurite'), ports.blob, key)).child;
  const blobEndpoint = `http://127.0.0.1:${ports.blob}/${EMULATOR_ACCOUNT}`;
  let arm: FakeArm;
  try {
    arm = await startFakeArm({
      storageCredential: new StorageSharedKeyCredential(EMULATOR_ACCOUNT, key),
      storageBlobEndpoint: blobEndpoint,
      subscriptionId: EMULATOR_SUBSCRIPTION,
      resourceGroup: spec.resourceGroup,
      lroMs: 200,
      principal: { tenantId: EMULATOR_TENANT, clientId: EMULATOR_CLIENT, secret: fs.readFileSync(files.secretFile, 'utf8').trim() },
      port: ports.arm,
      stateFile: path.join(dir, 'arm-state.json'),
    });
  } catch (e) {
    azurite.kill('SIGKILL');
    if ((e as NodeJS.ErrnoException).code === 'EADDRINUSE') throw new OsrError('PORT_IN_USE', `port ${ports.arm} of the lab's Azure site is in use: stop what holds it, or remove ${portsFile} to take new ports (the replicas then start over)`);
    throw e;
  }
  await writeFileAtomic(files.caFile, arm.ca, 0o644);
  // the site's own networks, as an admin would have made them
  const network = new NetworkManagementClient(arm.credential, EMULATOR_SUBSCRIPTION, { endpoint: arm.endpoint, tlsOptions: { ca: arm.ca } });
  for (const v of spec.virtualNetworks) {
    if (arm.resources.has(`/subscriptions/${EMULATOR_SUBSCRIPTION}/resourceGroups/${spec.resourceGroup}/providers/Microsoft.Network/virtualNetworks/${v.name}`.toLowerCase())) continue;
    await network.virtualNetworks.createOrUpdate(spec.resourceGroup, v.name, { location: spec.location, addressSpace: { addressPrefixes: [v.addressPrefix] }, subnets: v.subnets.map((s) => ({ name: s.name, addressPrefix: s.addressPrefix })) }, { updateIntervalInMs: 100 });
  }
  return {
    blobEndpoint,
    armEndpoint: arm.endpoint,
    arm,
    async stop() {
      await arm.stop();
      if (azurite.exitCode === null) {
        const exited = new Promise((r) => azurite.once('exit', r));
        azurite.kill('SIGTERM');
        await exited;
      }
    },
  };
}

/** The Azure provider's site file for the lab's Azure site (YAML). */
export function emulatorSiteFile(dir: string, spec: AzureLabSpec, e: { blobEndpoint: string; armEndpoint: string }): Record<string, unknown> {
  const files = emulatorFiles(dir);
  return {
    name: spec.name,
    subscriptionId: EMULATOR_SUBSCRIPTION,
    resourceGroup: spec.resourceGroup,
    location: spec.location,
    storageAccount: { name: EMULATOR_ACCOUNT, blobEndpoint: e.blobEndpoint, keyFile: files.keyFile },
    credential: { tenantId: EMULATOR_TENANT, clientId: EMULATOR_CLIENT, clientSecretFile: files.secretFile },
    endpoints: { resourceManager: e.armEndpoint, authorityHost: e.armEndpoint, caFile: files.caFile },
  };
}
