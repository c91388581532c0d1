/**
 * Who the vault is: its name and its CA certificate, kept in the database so that every
 * vault process on one database is the same vault (one CA signs every provider's and
 * agent's certificate). The first process to start creates them; its server certificate is
 * issued from that CA at each start, for the names it is reached by.
 *
 * The CA's private key is not in the database: it is a file of mode 0600 (by default
 * <dataDir>/ca.key), whose path the database records so that a second vault process on the
 * same machine finds it. A database from an older osr that still holds the key has it moved
 * out to that file on start, and the key's text is removed from the database (on SQLite
 * with the freed pages overwritten and the file compacted).
 */
import crypto, { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { sql } from 'kysely';
import { OsrError } from '../domain/errors.js';
import { createCa, formatFingerprint, issueCertificate, writeFileAtomic, type CaMaterial, type TlsMaterial } from '../pki/index.js';
import type { VaultStore } from '../store/index.js';

/** The CA as the database holds it: its certificate, and where its key is. */
interface StoredCa {
  certPem: string;
  keyFile?: string;
  /** only in databases from before the key moved out */
  keyPem?: string;
}

export interface VaultIdentity {
  id: string;
  name: string;
  ca: CaMaterial;
  /** SHA-256 of the CA certificate (colon-separated hex): what a registration key pins */
  caFingerprint: string;
  server: TlsMaterial;
  /** the names the server certificate carries (kept for its renewal) */
  serverNames: { dnsNames: string[]; ipAddresses: string[] };
  /** when it was issued, on the vault's clock, and how long it is valid */
  serverIssuedAt: number;
  serverLifetimeMs: number;
  serverNotAfter: string;
}

/** The server certificate's lifetime: renewed two thirds in (server.ts), without a restart. */
export const SERVER_CERT_DAYS = 90;

type ServerCertificate = Pick<VaultIdentity, 'server' | 'serverIssuedAt' | 'serverLifetimeMs' | 'serverNotAfter'>;

/** A server certificate for the vault from its CA, for the names given. */
export async function issueServerCertificate(ca: CaMaterial, vaultName: string, names: VaultIdentity['serverNames'], clock: { now(): number }): Promise<ServerCertificate> {
  const issued = await issueCertificate(ca, { commonName: `vault-${vaultName}`, role: 'vault', dnsNames: names.dnsNames, ipAddresses: names.ipAddresses, validDays: SERVER_CERT_DAYS });
  return {
    // the chain: a provider registering for the first time checks the CA against its key's pin
    server: { cert: `${issued.certPem.trimEnd()}\n${ca.certPem}`, key: issued.keyPem, ca: ca.certPem },
    serverIssuedAt: clock.now(),
    serverLifetimeMs: SERVER_CERT_DAYS * 86_400_000,
    serverNotAfter: issued.notAfter.toISOString(),
  };
}

export function certificateFingerprint(pem: string): string {
  return formatFingerprint(crypto.createHash('sha256').update(new crypto.X509Certificate(pem).raw).digest());
}

export async function loadIdentity(store: VaultStore, o: { name: string; host: string; extraNames?: string[]; dataDir: string; caKeyFile?: string; clock?: { now(): number } }): Promise<VaultIdentity> {
  const { activity } = store;
  const vault = await activity.settingOnce('vault', () => ({ id: randomUUID(), name: o.name }));
  const ca = await loadCa(store, `osr vault ${vault.name} CA`, o);
  const names = new Set(['localhost', ...(o.extraNames ?? [])]);
  const ips = new Set(['127.0.0.1', '::1']);
  if (net.isIP(o.host) !== 0) {
    if (o.host !== '0.0.0.0' && o.host !== '::') ips.add(o.host);
  } else names.add(o.host);
  const serverNames = { dnsNames: [...names], ipAddresses: [...ips] };
  return {
    id: vault.id,
    name: vault.name,
    ca,
    caFingerprint: certificateFingerprint(ca.certPem),
    serverNames,
    ...(await issueServerCertificate(ca, vault.name, serverNames, o.clock ?? { now: () => Date.now() })),
  };
}

/** The CA with its key: made on a fresh database, its key moved out of an old one, or read from its file. */
async function loadCa(store: VaultStore, commonName: string, o: { dataDir: string; caKeyFile?: string }): Promise<CaMaterial> {
  const { activity } = store;
  const defaultFile = path.resolve(o.caKeyFile ?? path.join(o.dataDir, 'ca.key'));
  let stored = await activity.setting<StoredCa | null>('ca', null);
  if (!stored) {
    // a key file there already belongs to a vault whose database this is not: never written over
    if (await fs.stat(defaultFile).then(() => true, () => false)) {
      throw new OsrError('CA_KEY_UNAVAILABLE', `the database holds no vault yet, but ${defaultFile} holds a CA key already: it belongs to another vault's database. Start this vault on that database (a restored one is in the directory \`osr vault restore --into\` wrote), or give another --ca-key-file to make a new vault`, { file: defaultFile });
    }
    // made before settingOnce so that a losing racer's CA is simply dropped; its key is written only by the winner
    const fresh = await createCa({ commonName });
    stored = await activity.settingOnce<StoredCa>('ca', () => ({ certPem: fresh.certPem, keyFile: defaultFile }));
    if (stored.certPem === fresh.certPem) {
      await writeKeyFile(defaultFile, fresh.keyPem);
      return fresh;
    }
  }
  if (stored.keyPem) return moveKeyOut(store, { certPem: stored.certPem, keyPem: stored.keyPem }, defaultFile);
  const file = path.resolve(o.caKeyFile ?? stored.keyFile ?? defaultFile);
  // the process that made the CA may be writing the file this very moment
  let keyPem: string | undefined;
  for (let i = 0; keyPem === undefined; i++) {
    try {
      keyPem = await fs.readFile(file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT' || i >= 50) {
        throw new OsrError('CA_KEY_UNAVAILABLE', `cannot read the CA's private key ${file}: ${(e as Error).message}; give this vault the key file the first vault process wrote (--ca-key-file)`, { file }, { cause: e });
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  checkKey(stored.certPem, keyPem, file);
  await fs.chmod(file, 0o600).catch(() => undefined);
  return { certPem: stored.certPem, keyPem };
}

function checkKey(certPem: string, keyPem: string, file: string): void {
  let same = false;
  try {
    same = new crypto.X509Certificate(certPem).checkPrivateKey(crypto.createPrivateKey(keyPem));
  } catch {
    same = false;
  }
  if (!same) throw new OsrError('CA_KEY_UNAVAILABLE', `${file} does not hold the private key of this vault's CA`, { file });
}

async function writeKeyFile(file: string, keyPem: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, keyPem, 0o600);
}

/** A database from before: the key goes to its file, then out of the database. */
async function moveKeyOut(store: VaultStore, ca: CaMaterial, file: string): Promise<CaMaterial> {
  const existing = await fs.readFile(file, 'utf8').catch(() => undefined);
  if (existing !== undefined) checkKey(ca.certPem, existing, file);
  else await writeKeyFile(file, ca.keyPem);
  await store.activity.putSetting('ca', { certPem: ca.certPem, keyFile: file } satisfies StoredCa);
  const { db, dialect } = store.database;
  if (dialect === 'sqlite') {
    // the old row's bytes must not stay behind in free pages or the write-ahead log
    await sql`PRAGMA wal_checkpoint(TRUNCATE)`.execute(db);
    await sql`VACUUM`.execute(db);
    await sql`PRAGMA wal_checkpoint(TRUNCATE)`.execute(db);
  }
  return ca;
}
