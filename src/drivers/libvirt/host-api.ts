/**
 * What the libvirt driver reads from and asks of a KVM host's agent beyond replication
 * (docs/agent-api.md, "Host" and "Enrolment"): the shapes of the answers it reads, and the
 * calls, over the AgentApi the CLI hands in.
 */
import crypto from 'node:crypto';
import { toOsrError } from '../../domain/errors.js';
import type { MachineSpec } from '../../domain/machine.js';
import type { DriverContext } from '../../fabric/driver.js';
import { readCertificateInfo, renewalDue } from '../../pki/index.js';
import type { AgentApi } from '../agent-replication.js';
import type { EnrolmentProof } from '../../domain/enrolment.js';

/** GET /v1/host/inventory */
export interface AgentHostInventory {
  domains: {
    name: string;
    uuid: string;
    state: string;
    running: boolean;
    disks: { target: string; device: string; file?: string; format?: string; sizeBytes: number | null }[];
    nics: { mac?: string; network?: string; bridge?: string; model?: string }[];
    machine: MachineSpec;
  }[];
  networks: { name: string; bridge?: string; forward?: string; active: boolean }[];
  pools: { name: string; type: string; path?: string; capacityBytes: number; availableBytes: number; active: boolean }[];
}

export interface AgentTestDomain {
  name: string;
  uuid: string;
  running: boolean;
  network: string | null;
}

export interface AgentEvidence {
  name: string;
  running: boolean;
  console: string;
  guestPing: unknown;
}

export const hostInventory = (api: AgentApi): Promise<AgentHostInventory> => api.get<AgentHostInventory>('/v1/host/inventory');

/** Define and start a drill's test domain from an overlay (the agent puts every NIC on the drill network). */
export const startTestDomain = (api: AgentApi, name: string, body: { replica: string; overlay: string; machine: MachineSpec; network: string | null }): Promise<AgentTestDomain> =>
  api.call<AgentTestDomain>('PUT', `/v1/host/test-domains/${encodeURIComponent(name)}`, body);

export const testDomainEvidence = (api: AgentApi, name: string): Promise<AgentEvidence> => api.get<AgentEvidence>(`/v1/host/test-domains/${encodeURIComponent(name)}`);

export const removeTestDomain = async (api: AgentApi, name: string): Promise<void> => {
  await api.delete(`/v1/host/test-domains/${encodeURIComponent(name)}`);
};

export const removeDrillNetwork = async (api: AgentApi, name: string): Promise<void> => {
  await api.delete(`/v1/host/networks/${encodeURIComponent(name)}`);
};

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
