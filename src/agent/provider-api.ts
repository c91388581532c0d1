/**
 * The provider's channel into the agent (docs/design/agent-channel.md): `osr agent
 * --provider-api HOST:PORT` serves the local API's routes over HTTPS, TLS 1.3 only, to a
 * client certificate from the agent's CA (its ca.crt, reloaded with it), and only to a
 * provider of the agent's own fabric whose certificate the agent's revocation list does not
 * name. What a provider may call is the allow-list below; everything else, and every check
 * that fails, is AUTH_FAILED (403), logged with the peer's common name, role, fingerprint
 * and the reason.
 *
 * An agent that holds no certificate from its CA yet (bootstrap: it was started with the
 * vault's CA only) presents a self-signed certificate and serves the enrolment calls only,
 * to any provider certificate of its CA; the provider trusts that certificate by the
 * fingerprint the operator copied into the site file. Over this channel an enrolment may
 * install only a certificate from the agent's own CA, with role agent, naming the calling
 * provider's fabric (and, once enrolled, the agent's fabric): a provider cannot swap the
 * agent's CA or move it to another fabric.
 */
import crypto from 'node:crypto';
import net from 'node:net';
import type tls from 'node:tls';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { OsrError } from '../domain/errors.js';
import { readCertificateInfo, type CertificateInfo } from '../pki/index.js';

const ENROLMENT_ROUTES = ['GET /v1/enrolment', 'POST /v1/enrolment/key', 'PUT /v1/enrolment/certificate', 'PUT /v1/enrolment/crl'];

/** The routes a provider may call: "METHOD route pattern" as the local API declares them. */
export const PROVIDER_ROUTES: ReadonlySet<string> = new Set([
  // inventory and health
  'GET /v1/status',
  'GET /v1/vms',
  'GET /v1/vms/:name/disks',
  'GET /v1/replications',
  'GET /v1/replications/:id',
  'GET /v1/replicas',
  'GET /v1/replicas/:vm',
  'GET /v1/replicas/:vm/points',
  'GET /v1/replicas/:vm/overlays',
  // protection: enable, disable, resync, planned failover
  'POST /v1/replications',
  'DELETE /v1/replications/:id',
  'POST /v1/replications/:id/cycle',
  'POST /v1/replications/:id/retry',
  'POST /v1/replications/:id/resync',
  'POST /v1/replications/:id/confirm-disks',
  'POST /v1/replications/:id/prepare-failover',
  // a consistency group's cuts (its coordinator holds, then swaps or aborts)
  'POST /v1/cuts',
  'POST /v1/cuts/:id/hold',
  'POST /v1/cuts/:id/swap',
  'DELETE /v1/cuts/:id',
  // the vault's word on who may replicate into a replica here
  'PUT /v1/replicas/:vmId/source',
  // failover, change of recovery point, commit, fence, reprotect
  'POST /v1/replicas/:vm/promote',
  'POST /v1/vms/:name/recovery-point',
  'POST /v1/vms/:name/commit',
  'POST /v1/vms/:name/fence',
  'POST /v1/vms/:name/demote',
  // a failback's VM brought in from Azure managed disks (an agent in the Azure region)
  'POST /v1/vms/:name/import',
  'GET /v1/vms/:name/import',
  'DELETE /v1/vms/:name/import',
  // test failover and its cleanup; disable protection that deletes the replica
  'POST /v1/replicas/:vm/overlays',
  'DELETE /v1/replicas/:vm/overlays/:id',
  'DELETE /v1/replicas/:vm',
  // a hypervisor host's management (drill-api.ts)
  'GET /v1/host/inventory',
  'PUT /v1/host/networks/:name',
  'DELETE /v1/host/networks/:name',
  'GET /v1/host/test-domains',
  'GET /v1/host/test-domains/:name',
  'PUT /v1/host/test-domains/:name',
  'DELETE /v1/host/test-domains/:name',
  // enrolment and the revocation list (enrolment-api.ts)
  ...ENROLMENT_ROUTES,
]);

/** What an agent without a certificate from its CA serves: who it is, and its enrolment. */
export const BOOTSTRAP_ROUTES: ReadonlySet<string> = new Set(['GET /v1/status', ...ENROLMENT_ROUTES]);

/** Power a VM: the hypervisor's job, which on a hypervisor host (libvirt) the agent is the provider's way to. */
export const HYPERVISOR_POWER_ROUTES: ReadonlySet<string> = new Set(['POST /v1/vms/:name/start', 'POST /v1/vms/:name/stop']);

/** The calls that set up replication between hosts: over the provider channel each needs the vault's grant. */
const GRANTED_ROUTES: ReadonlySet<string> = new Set(['POST /v1/replications', 'PUT /v1/replicas/:vmId/source', 'POST /v1/vms/:name/demote']);

/** The only call taken from a provider once the agent's revocation list has expired. */
const CRL_ROUTE = 'PUT /v1/enrolment/crl';

/** What the channel's checks need to know of the agent, now. */
export interface ProviderApiState {
  name: string;
  /** the agent's own certificate when it is from its CA; undefined while it runs on its bootstrap certificate */
  enrolled: CertificateInfo | undefined;
  /** names the agent's own certificate carries (DNS and IP), for the Host header */
  certificateNames: string[];
  /** the agent's revocation list: serials (lower-case hex) and when it expires; undefined when it has none */
  revocation: { serials: ReadonlySet<string>; nextUpdate: Date | undefined } | undefined;
  /** whether the agent's host is a hypervisor that powers its VMs (a libvirt host) */
  hypervisor: boolean;
  /** the fabric whose provider may enrol the agent while it is not enrolled (--provider-fabric); undefined: any of the vault's */
  bootstrapFabric?: string | undefined;
  /** where the channel listens */
  host: string;
  port: number;
  now(): number;
}

export interface ProviderPeer {
  /** the certificate's validity, checked on every request (a keep-alive connection outlives a certificate) */
  validFrom: number;
  validTo: number;
  commonName: string;
  role: string | undefined;
  fabricId: string | undefined;
  fingerprintSha256: string;
  serial: string;
}

/** A refusal, logged with the peer and answered AUTH_FAILED. */
export type RefusalLog = (peer: Partial<ProviderPeer> & { address?: string | undefined }, reason: string, request: string) => void;

const peers = new WeakMap<object, ProviderPeer>();

/** The verified provider certificate on a connection (read once per TLS session). */
function peerOf(socket: tls.TLSSocket): ProviderPeer | undefined {
  const known = peers.get(socket);
  if (known) return known;
  const cert = socket.getPeerX509Certificate();
  if (!cert || !socket.authorized) return undefined;
  const info = readCertificateInfo(cert.toString());
  const peer: ProviderPeer = { validFrom: Date.parse(cert.validFrom), validTo: Date.parse(cert.validTo), commonName: info.commonName, role: info.role, fabricId: info.fabricId, fingerprintSha256: info.fingerprintSha256, serial: cert.serialNumber.toLowerCase() };
  peers.set(socket, peer);
  return peer;
}

function hostPart(hostHeader: string): { host: string; port: string } | undefined {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(hostHeader);
  return m ? { host: m[1]!.replace(/^\[|\]$/g, '').toLowerCase(), port: m[2]! } : undefined;
}

/**
 * The checks of agent-channel.md, in its order, on every request: the chain (TLS did it),
 * role, fabric, revocation and the list's expiry, the route, the Host header.
 */
export function providerAccessCheck(state: () => ProviderApiState, refused: RefusalLog) {
  return async (req: FastifyRequest, _reply: FastifyReply): Promise<void> => {
    const s = state();
    const socket = req.raw.socket as tls.TLSSocket;
    const route = `${req.method} ${req.routeOptions.url ?? req.url.split('?')[0]}`;
    const peer = peerOf(socket);
    const refuse = (reason: string, message = reason): never => {
      refused({ ...(peer ?? {}), address: socket.remoteAddress }, reason, route);
      throw new OsrError('AUTH_FAILED', message, { route, ...(peer ? { peer: peer.commonName, role: peer.role ?? null } : {}) });
    };
    if (!peer) return refuse('no verified client certificate', 'the provider channel takes only a client certificate from the agent\'s CA');
    if (peer.role !== 'provider') {
      return refuse(`role ${peer.role ?? '(none)'} is not provider`, `a certificate with role ${peer.role ?? '(none)'} may not use the provider channel: only a provider's (agents replicate on the replication port; an operator on the host uses the local API)`);
    }
    if (!(peer.validFrom <= s.now() && s.now() <= peer.validTo)) return refuse(`certificate not valid now (valid ${new Date(peer.validFrom).toISOString()} to ${new Date(peer.validTo).toISOString()})`, 'the provider\'s certificate is not valid now: renew it');
    if (!s.enrolled && s.bootstrapFabric !== undefined && peer.fabricId !== s.bootstrapFabric) {
      return refuse(`provider of fabric ${peer.fabricId ?? '(none)'}, not ${s.bootstrapFabric} (--provider-fabric)`, `agent ${s.name} is to be enrolled by fabric ${s.bootstrapFabric}'s provider only (osr agent --provider-fabric)`);
    }
    if (s.enrolled) {
      const own = s.enrolled.fabricId;
      if (own === undefined) return refuse('the agent\'s own certificate names no fabric', `agent ${s.name}'s certificate names no fabric (it was issued before fabrics were named): the provider's next enrolment gives it one; until then it takes no provider calls`);
      if (peer.fabricId !== own) {
        return refuse(`provider of fabric ${peer.fabricId ?? '(none)'}, not ${own}`, peer.fabricId === undefined ? `the provider's certificate names no fabric; agent ${s.name} belongs to fabric ${own} (renew the provider's certificate: the vault's new ones name their fabric)` : `agent ${s.name} belongs to fabric ${own}, not to the provider's fabric ${peer.fabricId}`);
      }
    }
    if (s.revocation) {
      if (s.revocation.serials.has(peer.serial)) return refuse('certificate revoked', `the provider's certificate (serial ${peer.serial}) has been revoked`);
      const next = s.revocation.nextUpdate;
      if (next !== undefined && next.getTime() < s.now() && route !== CRL_ROUTE) {
        return refuse(`the revocation list expired at ${next.toISOString()}`, `the agent's revocation list expired at ${next.toISOString()}: it takes only a newer list (PUT /v1/enrolment/crl) until it has one`);
      }
    }
    const allowed = s.enrolled ? PROVIDER_ROUTES.has(route) || (s.hypervisor && HYPERVISOR_POWER_ROUTES.has(route)) : BOOTSTRAP_ROUTES.has(route);
    if (!allowed) {
      return refuse(
        `route ${route} is not on the provider's list`,
        s.enrolled ? `${route} is not a call a provider may make over the network (docs/agent-api.md, The provider channel); the host's operator uses the local API` : `agent ${s.name} is not enrolled yet: over the provider channel it answers only its status and the enrolment calls`,
      );
    }
    const h = hostPart(req.headers.host ?? '');
    const names = new Set([s.name.toLowerCase(), ...s.certificateNames.map((n) => n.toLowerCase()), ...(net.isIP(s.host) !== 0 && !isWildcard(s.host) ? [s.host.toLowerCase()] : [])]);
    // before enrolment the agent's certificate names nothing a provider could check: the port only
    if (!h || h.port !== String(s.port) || (s.enrolled && !names.has(h.host))) {
      refused({ ...peer, address: socket.remoteAddress }, `Host header "${req.headers.host ?? ''}" is not the agent's`, route);
      throw new OsrError('HOST_NOT_ALLOWED', `the provider channel answers to ${s.enrolled ? [...names].map((n) => `${n.includes(':') ? `[${n}]` : n}:${s.port}`).join(', ') : `port ${s.port}`} in the Host header, not to "${req.headers.host ?? ''}"`);
    }
  };
}

/** Checks of a body a provider sent: what it must not name (paths on the host, another CA or fabric). */
export function providerBodyCheck(state: () => ProviderApiState, caPem: () => string, refused: RefusalLog) {
  return async (req: FastifyRequest): Promise<void> => {
    const route = `${req.method} ${req.routeOptions.url ?? ''}`;
    const body = (req.body ?? {}) as Record<string, unknown>;
    const peer = peerOf(req.raw.socket as tls.TLSSocket);
    const refuse = (reason: string): never => {
      refused({ ...(peer ?? {}), address: req.raw.socket.remoteAddress }, reason, route);
      throw new OsrError('AUTH_FAILED', reason, { route });
    };
    if (route === 'POST /v1/replications' && (body.exportDir !== undefined || body.initialReplication === 'offline')) {
      refuse('an offline initial replication names a path on the host: it is set up on the host (the local API), not over the provider channel');
    }
    // replication between hosts is set up on the vault's word, not the provider's (agent-channel.md, Replication grants)
    if (GRANTED_ROUTES.has(route) && body.grant === undefined) {
      refuse(`${route} over the provider channel needs the vault's replication grant (grant): a provider alone may not say where a VM replicates`);
    }
    if (route === 'POST /v1/vms/:name/demote' && body.source === undefined) {
      refuse('a demote over the provider channel names the source that may replicate into the demoted disks, with the vault\'s grant for it');
    }
    if (route === 'PUT /v1/enrolment/certificate' && typeof body.certificate === 'string' && typeof body.caCertificate === 'string') {
      if (body.caCertificate.trim() !== caPem().trim()) refuse('over the provider channel the agent takes a certificate from its own CA only: its CA is changed on the host');
      let info: CertificateInfo;
      try {
        info = readCertificateInfo(body.certificate);
      } catch {
        return; // the route itself answers INVALID_ARGUMENT
      }
      if (info.role !== 'agent') refuse(`the certificate has role ${info.role ?? '(none)'}, not agent`);
      if (info.fabricId === undefined || info.fabricId !== peer?.fabricId) refuse(`the certificate names fabric ${info.fabricId ?? '(none)'}, not the provider's fabric ${peer?.fabricId ?? '(none)'}`);
      const own = state().enrolled?.fabricId;
      if (own !== undefined && info.fabricId !== own) refuse(`the agent belongs to fabric ${own}; a certificate of fabric ${info.fabricId} is installed on the host only`);
    }
  };
}

function isWildcard(host: string): boolean {
  return host === '0.0.0.0' || host === '::';
}

/** The DNS names and IP addresses a PEM certificate carries. */
export function certificateNames(pem: string): string[] {
  const san = new crypto.X509Certificate(pem).subjectAltName ?? '';
  return san
    .split(', ')
    .map((n) => /^(?:DNS|IP Address):(.+)$/.exec(n)?.[1])
    .filter((n): n is string => n !== undefined);
}
