/**
 * What an agent hands with a new public key when it already holds a certificate from the
 * vault's CA: that certificate, and its key's signature over its name and the new key
 * (src/pki/enrolment-proof.ts). The vault issues a host that holds a valid certificate a
 * new one only against it.
 */
export interface EnrolmentProof {
  certificate: string;
  /** base64url ECDSA P-256 / SHA-256 (IEEE P1363) */
  signature: string;
}
