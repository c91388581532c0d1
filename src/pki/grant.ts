/**
 * Replication grants (agent-channel.md, Replication grants): the vault's signed word that
 * one host's agent may replicate one VM to another host's agent. The vault signs a grant
 * with its CA's key when it sets replication up (enable protection, reprotect); the
 * provider hands it on; the agents check it against the CA they trust, so a provider —
 * or whoever holds a provider's key — cannot point a VM's replication at a host the vault
 * did not pick.
 *
 * The form is `osr-grant-v1.<payload>.<signature>`: the payload is base64url JSON, the
 * signature base64url ECDSA P-256 / SHA-256 (IEEE P1363) over the ASCII bytes
 * `osr-grant-v1.<payload>`. The prefix keeps a grant's signed bytes apart from the DER of
 * the certificates and revocation lists the same key signs.
 */
import crypto from 'node:crypto';
import { OsrError } from '../domain/errors.js';
import type { GrantEnd, ReplicationGrant } from '../domain/grants.js';
import { isContainerUrl } from '../domain/azure-layout.js';
import { isSafeName } from '../domain/names.js';
import { FABRIC_ID, type CaMaterial } from './ca.js';

const PREFIX = 'osr-grant-v1';
/** a grant is a few hundred bytes; anything much longer is not one */
export const MAX_GRANT_LENGTH = 4096;

export type { GrantEnd, ReplicationGrant };

/** Sign a grant with the CA's key. */
export function signGrant(ca: CaMaterial, g: ReplicationGrant): string {
  checkGrant(g, 'INVALID_ARGUMENT');
  const payload = Buffer.from(JSON.stringify({ replicationId: g.replicationId, item: g.item, source: g.source, target: g.target, issuedAt: g.issuedAt })).toString('base64url');
  const signed = `${PREFIX}.${payload}`;
  const sig = crypto.sign('sha256', Buffer.from(signed), { key: ca.keyPem, dsaEncoding: 'ieee-p1363' });
  return `${signed}.${sig.toString('base64url')}`;
}

/**
 * The grant a token carries, once its signature verifies against the CA certificate
 * (AUTH_FAILED otherwise: not a grant, not the CA's, or altered).
 */
export function verifyGrant(token: unknown, caPem: string): ReplicationGrant {
  if (typeof token !== 'string' || token.length > MAX_GRANT_LENGTH) throw refused('it is not a grant (a string of at most 4096 characters)');
  const parts = token.split('.');
  if (parts.length !== 3 || parts[0] !== PREFIX || !/^[A-Za-z0-9_-]+$/.test(parts[1]!) || !/^[A-Za-z0-9_-]+$/.test(parts[2]!)) throw refused(`it is not an ${PREFIX} grant`);
  let key: crypto.KeyObject;
  try {
    key = new crypto.X509Certificate(caPem).publicKey;
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `the agent's CA certificate cannot be read: ${(e as Error).message}`, undefined, { cause: e });
  }
  const ok = crypto.verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(parts[2]!, 'base64url'));
  if (!ok) throw refused('its signature is not the vault CA\'s (a grant from another vault, or altered)');
  let g: unknown;
  try {
    g = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
  } catch {
    throw refused('its payload is not JSON');
  }
  return checkGrant(g, 'AUTH_FAILED');
}

function refused(why: string): OsrError {
  return new OsrError('AUTH_FAILED', `the replication grant was refused: ${why}`);
}

function checkGrant(g: unknown, code: 'AUTH_FAILED' | 'INVALID_ARGUMENT'): ReplicationGrant {
  const bad = (why: string): never => {
    throw new OsrError(code, `the replication grant was refused: ${why}`);
  };
  if (typeof g !== 'object' || g === null) return bad('its payload is not an object');
  const o = g as Record<string, unknown>;
  const end = (v: unknown, what: string): GrantEnd => {
    if (typeof v !== 'object' || v === null) return bad(`its ${what} is missing`);
    const e = v as Record<string, unknown>;
    if (typeof e.fabricId !== 'string' || !FABRIC_ID.test(e.fabricId)) return bad(`its ${what} names no fabric id`);
    // a target may be an Azure container (its URL), written by the source host's own agent
    if (!isSafeName(e.host) && !(what === 'target' && isContainerUrl(e.host))) return bad(`its ${what} names no host`);
    return { fabricId: e.fabricId, host: e.host };
  };
  if (!isSafeName(o.replicationId)) return bad('it names no VM');
  if (!isSafeName(o.item)) return bad('it names no protected item');
  if (typeof o.issuedAt !== 'string' || o.issuedAt.length > 40 || Number.isNaN(Date.parse(o.issuedAt))) return bad('it has no time of issue');
  return { replicationId: o.replicationId, item: o.item, source: end(o.source, 'source'), target: end(o.target, 'target'), issuedAt: o.issuedAt };
}

/** Whether an agent whose certificate names `host` of `fabricId` is this end of the grant. */
export function isGrantEnd(e: GrantEnd, host: string, fabricId: string | undefined): boolean {
  return e.host === host && e.fabricId === fabricId;
}
