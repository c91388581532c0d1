/**
 * A provider's registration: make a key pair, check the vault's CA against the key's
 * pin, exchange the registration key for a certificate, and keep what it got in the
 * provider's directory (the certificate, its key mode 0600, ca.crt, and registration.json
 * naming them), each file written whole and synced, so a crash leaves the old
 * registration or the new. A renewed certificate is kept the same way.
 */
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { OsrError } from '../domain/errors.js';
import { fsyncDir, generateKeyPairPem, writeFileAtomic, type TlsMaterial } from '../pki/index.js';
import { parseRegistrationKey } from '../domain/registration-key.js';
import { fetchPinnedCa, VaultClient } from './vault-client.js';

export interface RegisterOptions {
  vaultUrl: string;
  /** the registration key as the vault issued it */
  key: string;
  fabric: { name: string; kind: string };
  /** the friendly name of this management server */
  serverName: string;
  version: string;
  proxy?: { url: string; bypass?: string[] };
  /** sync all clouds, or only these */
  inventoryScope?: 'all' | string[];
  /** where to keep the certificate and registration (omit to keep them in memory only) */
  dir?: string;
}

export interface ProviderRegistration {
  providerId: string;
  fabricId: string;
  /**
   * the vault: the URL this provider uses now, every URL of the vault's processes it knows
   * (a standby at the other site), and the newest term it was answered with
   */
  vault: { id: string; name: string; url: string; urls?: string[]; term?: number };
  tls: TlsMaterial;
  notAfter: string;
  heartbeatIntervalSeconds: number;
}

export async function registerWithVault(o: RegisterOptions): Promise<ProviderRegistration> {
  const key = parseRegistrationKey(o.key);
  const ca = await fetchPinnedCa(o.vaultUrl, key.ca);
  const pair = await generateKeyPairPem();
  const client = new VaultClient(o.vaultUrl, { ca });
  try {
    const r = await client.request<{ providerId: string; fabricId: string; vault: { id: string; name: string }; certificate: string; caCertificate: string; notAfter: string; heartbeatIntervalSeconds: number }>('POST', '/api/v1/registrations', {
      key: o.key.trim(),
      vault: key.vault,
      fabric: o.fabric,
      serverName: o.serverName,
      version: o.version,
      publicKey: pair.publicKeyPem,
      ...(o.proxy ? { proxy: o.proxy } : {}),
      inventoryScope: o.inventoryScope ?? 'all',
    });
    if (r.caCertificate.trim() !== ca.trim()) throw new OsrError('TLS_PEER_CERT_UNTRUSTED', 'the vault answered with a CA other than the one its key names');
    const reg: ProviderRegistration = { providerId: r.providerId, fabricId: r.fabricId, vault: { ...r.vault, url: o.vaultUrl }, tls: { cert: r.certificate, key: pair.privateKeyPem, ca }, notAfter: r.notAfter, heartbeatIntervalSeconds: r.heartbeatIntervalSeconds };
    if (o.dir) await saveRegistration(o.dir, reg);
    return reg;
  } finally {
    client.close();
  }
}

/** The files a registration's certificate and key are in, named in registration.json. */
interface RegistrationFiles {
  cert: string;
  key: string;
}

const DEFAULT_FILES: RegistrationFiles = { cert: 'provider.crt', key: 'provider.key' };
const FILE_NAME = /^provider(-[0-9a-f]{1,64})?\.(crt|key)$/;

/**
 * Keep a registration in its directory. The certificate and key go to files of their own
 * first (the key 0600), then registration.json names them: that one rename is the moment
 * the new registration counts, so a crash leaves the old pair or the new, never a key of
 * one and a certificate of the other. Files no longer named are removed after.
 */
export async function saveRegistration(dir: string, reg: ProviderRegistration, files: RegistrationFiles = DEFAULT_FILES): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(path.join(dir, 'ca.crt'), reg.tls.ca, 0o644);
  await writeFileAtomic(path.join(dir, files.key), reg.tls.key, 0o600);
  await writeFileAtomic(path.join(dir, files.cert), reg.tls.cert, 0o644);
  await fsyncDir(dir);
  const { tls: _tls, ...rest } = reg;
  await writeFileAtomic(path.join(dir, 'registration.json'), `${JSON.stringify({ ...rest, files }, null, 2)}\n`, 0o644);
  await fsyncDir(dir);
  await removeUnnamed(dir, files);
}

/** A renewed certificate and its key, saved beside the registration and then made current. */
export async function saveRenewal(dir: string, reg: ProviderRegistration): Promise<void> {
  const serial = new crypto.X509Certificate(reg.tls.cert).serialNumber.toLowerCase();
  await saveRegistration(dir, reg, { cert: `provider-${serial}.crt`, key: `provider-${serial}.key` });
}

async function removeUnnamed(dir: string, files: RegistrationFiles): Promise<void> {
  for (const f of await fs.readdir(dir)) {
    if (FILE_NAME.test(f) && f !== files.cert && f !== files.key) await fs.rm(path.join(dir, f), { force: true });
  }
}

export async function loadRegistration(dir: string): Promise<ProviderRegistration | undefined> {
  let meta: string;
  try {
    meta = await fs.readFile(path.join(dir, 'registration.json'), 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw e;
  }
  const { files: named, ...rest } = JSON.parse(meta) as Omit<ProviderRegistration, 'tls'> & { files?: RegistrationFiles };
  const files = named ?? DEFAULT_FILES;
  if (!FILE_NAME.test(files.cert) || !FILE_NAME.test(files.key)) throw new OsrError('CONFIG_INVALID', `${path.join(dir, 'registration.json')} names certificate files osr does not write (${files.cert}, ${files.key}); restore it or register the provider again`);
  const [cert, key, ca] = await Promise.all([files.cert, files.key, 'ca.crt'].map((f) => fs.readFile(path.join(dir, f), 'utf8')));
  // what a renewal cut short by a crash left behind
  await removeUnnamed(dir, files);
  return { ...rest, tls: { cert: cert!, key: key!, ca: ca! } };
}

/** Keep what the provider learnt of the vault (its URLs, its newest term) in registration.json, its certificate files unchanged. */
export async function saveVaultInfo(dir: string, vault: ProviderRegistration['vault']): Promise<void> {
  const file = path.join(dir, 'registration.json');
  const meta = JSON.parse(await fs.readFile(file, 'utf8')) as Record<string, unknown>;
  await writeFileAtomic(file, `${JSON.stringify({ ...meta, vault }, null, 2)}\n`, 0o644);
  await fsyncDir(dir);
}
