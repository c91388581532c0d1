/**
 * The enrolment of a host's osr agent with the vault's CA, through the agent's API
 * (docs/agent-api.md, "Enrolment"): what every driver that drives agents on other machines
 * does for them (libvirt's hosts, Azure's region agent).
 */
import crypto from 'node:crypto';
import { toOsrError } from '../domain/errors.js';
import type { EnrolmentProof } from '../domain/enrolment.js';
import type { DriverContext } from '../fabric/driver.js';
import { readCertificateInfo, renewalDue } from '../pki/index.js';
import type { AgentApi } from './agent-replication.js';

/** What the driver knows of a host's agent, for the client that reaches it over the provider channel. */
export interface AgentTrust {
  /** the serials (lower-case hex) of the vault's revocation list as the provider last had it */
  revoked(): ReadonlySet<string>;
  /** whether the host was seen enrolled since the site file gave its bootstrap fingerprint: that bootstrap certificate is spent */
  bootstrapSpent(): boolean;
  /** the agent presented its certificate from the vault's CA (recorded once, durably) */
  enrolledSeen(): void;
}

interface AgentEnrolment {
  name: string;
  certificate: { pem: string; commonName: string; notBefore: string; notAfter: string; serial: string } | null;
  caCertificate: string | null;
}

/**
 * Enrol a host's agent with the vault's CA through its API, unless its certificate is the
 * vault CA's already and not due for renewal (`again`: whatever it has). The agent makes
 * the key pair; only the public key travels.
 */
export async function enrolAgent(api: AgentApi, hostName: string, ctx: DriverContext, again = false): Promise<boolean> {
  const now = await api.get<AgentEnrolment>('/v1/enrolment');
  if (!again && now.certificate && now.caCertificate && now.caCertificate.trim() === ctx.vaultCa.trim() && now.certificate.commonName === hostName) {
    try {
      const cert = new crypto.X509Certificate(now.certificate.pem);
      const ca = new crypto.X509Certificate(ctx.vaultCa);
      const info = readCertificateInfo(now.certificate.pem);
      // a certificate that names no fabric (issued before they were named) is replaced: the provider channel needs it
      if (cert.checkIssued(ca) && cert.verify(ca.publicKey) && info.fabricId !== undefined && !renewalDue(info, ctx.clock.now())) return false;
    } catch (e) {
      ctx.log.warn({ host: hostName, err: toOsrError(e).message }, `the certificate of host ${hostName} cannot be checked; enrolling it again`);
    }
  }
  const { publicKeyPem, proof } = await api.post<{ publicKeyPem: string; proof?: EnrolmentProof }>('/v1/enrolment/key');
  const r = await ctx.enrolAgent(hostName, publicKeyPem, proof);
  await api.call('PUT', '/v1/enrolment/certificate', { certificate: r.certificate, caCertificate: r.caCertificate });
  ctx.log.info({ host: hostName, notAfter: r.notAfter }, `host ${hostName} enrolled: certificate from the vault's CA`);
  return true;
}

/** The serial of a host's agent certificate now (null: it has none). */
export async function agentCertificateSerial(api: AgentApi): Promise<string | null> {
  return (await api.get<AgentEnrolment>('/v1/enrolment')).certificate?.serial ?? null;
}

export async function handRevocationList(api: AgentApi, pem: string): Promise<void> {
  await api.call('PUT', '/v1/enrolment/crl', { crl: pem });
}
