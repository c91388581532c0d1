/**
 * Who the vault is: its name and its CA, kept in the database so that every vault process
 * on one database is the same vault (one CA signs every provider's and agent's
 * certificate). The first process to start creates them; its server certificate is
 * issued from that CA at each start, for the names it is reached by.
 */
import crypto, { randomUUID } from 'node:crypto';
import net from 'node:net';
import { createCa, formatFingerprint, issueCertificate, type CaMaterial, type TlsMaterial } from '../pki/index.js';
import type { VaultStore } from '../store/index.js';

export interface VaultIdentity {
  id: string;
  name: string;
  ca: CaMaterial;
  /** SHA-256 of the CA certificate (colon-separated hex): what a registration key pins */
  caFingerprint: string;
  server: TlsMaterial;
}

export function certificateFingerprint(pem: string): string {
  return formatFingerprint(crypto.createHash('sha256').update(new crypto.X509Certificate(pem).raw).digest());
}

export async function loadIdentity(store: VaultStore, o: { name: string; host: string; extraNames?: string[] }): Promise<VaultIdentity> {
  const { activity } = store;
  const vault = await activity.settingOnce('vault', () => ({ id: randomUUID(), name: o.name }));
  // made before settingOnce so that a losing racer's CA is simply dropped
  const fresh = (await activity.setting<CaMaterial | null>('ca', null)) ?? (await createCa({ commonName: `osr vault ${vault.name} CA` }));
  const ca = await activity.settingOnce<CaMaterial>('ca', () => fresh);
  const names = new Set(['localhost', ...(o.extraNames ?? [])]);
  const ips = new Set(['127.0.0.1', '::1']);
  if (net.isIP(o.host) !== 0) {
    if (o.host !== '0.0.0.0' && o.host !== '::') ips.add(o.host);
  } else names.add(o.host);
  const issued = await issueCertificate(ca, { commonName: `vault-${vault.name}`, role: 'vault', dnsNames: [...names], ipAddresses: [...ips], validDays: 90 });
  return {
    id: vault.id,
    name: vault.name,
    ca,
    caFingerprint: certificateFingerprint(ca.certPem),
    // the chain: a provider registering for the first time checks the CA against its key's pin
    server: { cert: `${issued.certPem.trimEnd()}\n${ca.certPem}`, key: issued.keyPem, ca: ca.certPem },
  };
}
