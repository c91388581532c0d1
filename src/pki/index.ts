/** PKI for mutual TLS between osr processes: the CA, certificate files, and TLS options. */
export {
  PKI_ROLES,
  createBootstrapCertificate,
  createCa,
  fabricUri,
  createCrl,
  formatFingerprint,
  fsyncDir,
  generateKeyPairPem,
  issueCertificate,
  loadTlsMaterial,
  readCertificateInfo,
  readCrl,
  renewalDue,
  writeFileAtomic,
  writePkiFiles,
} from './ca.js';
export type { CaMaterial, CertificateInfo, CreateCaOptions, IssueOptions, IssuedCertificate, PkiRole, RevokedCertificate, TlsFiles, TlsMaterial } from './ca.js';
export { checkVaultIdentity, classifyTlsError, clientTlsOptions, onTlsClientError, peerIdentity, serverTlsOptions } from './mtls.js';
export type { ClientTlsOptionsInput, PeerIdentity, TlsErrorContext, TlsSide } from './mtls.js';
export { MAX_GRANT_LENGTH, isGrantEnd, signGrant, verifyGrant } from './grant.js';
export type { GrantEnd, ReplicationGrant } from './grant.js';
export { signEnrolmentProof, verifyEnrolmentProof } from './enrolment-proof.js';
export type { EnrolmentProof } from './enrolment-proof.js';
