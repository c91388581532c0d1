/**
 * Proof that whoever asks for a host's new agent certificate holds the host's current one
 * (docs/security.md, host admission). The agent signs, with its current key, the name and
 * the new public key; the vault issues a new certificate for a host that holds a valid one
 * only against such a proof, so a provider — or a stolen provider key — cannot have its own
 * key certified under a host's name while the host's certificate is good. The signed text is
 * `osr-enrol-v1\n<name>\n<new public key PEM>`.
 */
import crypto from 'node:crypto';
import type { EnrolmentProof } from '../domain/enrolment.js';
import { OsrError } from '../domain/errors.js';
import { readCertificateInfo, type CertificateInfo } from './ca.js';

export type { EnrolmentProof };

const text = (name: string, publicKeyPem: string) => Buffer.from(`osr-enrol-v1\n${name}\n${publicKeyPem.trim()}`);

export function signEnrolmentProof(current: { certPem: string; keyPem: string }, name: string, newPublicKeyPem: string): EnrolmentProof {
  const signature = crypto.sign('sha256', text(name, newPublicKeyPem), { key: current.keyPem, dsaEncoding: 'ieee-p1363' }).toString('base64url');
  return { certificate: current.certPem, signature };
}

/**
 * The certificate a proof was made with, once it is checked: issued by the CA, for `name`,
 * and its key signed `newPublicKeyPem` under that name. AUTH_FAILED otherwise. Whether that
 * certificate is still valid (not revoked, not expired) is the caller's to check.
 */
export function verifyEnrolmentProof(proof: EnrolmentProof, name: string, newPublicKeyPem: string, caPem: string): CertificateInfo & { serial: string } {
  const refuse = (why: string): never => {
    throw new OsrError('AUTH_FAILED', `the proof of host ${name}'s current certificate was refused: ${why}`, { host: name });
  };
  let cert: crypto.X509Certificate;
  try {
    cert = new crypto.X509Certificate(proof.certificate);
  } catch {
    return refuse('its certificate is not a PEM certificate');
  }
  const ca = new crypto.X509Certificate(caPem);
  if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) return refuse('its certificate is not from the vault\'s CA');
  const info = readCertificateInfo(proof.certificate);
  if (info.commonName !== name || info.role !== 'agent') return refuse(`its certificate is ${info.role ?? 'a role-less'} certificate of ${info.commonName}, not host ${name}'s agent certificate`);
  if (!/^[A-Za-z0-9_-]{1,200}$/.test(proof.signature)) return refuse('its signature is not base64url');
  const ok = crypto.verify('sha256', text(name, newPublicKeyPem), { key: cert.publicKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(proof.signature, 'base64url'));
  if (!ok) return refuse('the signature is not by the key of its certificate over this name and new key');
  return { ...info, serial: cert.serialNumber.toLowerCase() };
}
