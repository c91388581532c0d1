/**
 * The certificate authority behind osr's mutual TLS. One CA signs every certificate an
 * osr process presents (agents now; the vault, providers and operator clients later), and
 * every process trusts that CA and nothing else, so "issued by our CA" is the whole test
 * of membership. Keys are ECDSA P-256: small, fast to generate and sign with, and accepted
 * by every TLS 1.3 stack osr talks to.
 *
 * Certificates and keys travel as PEM strings (PKCS#8 for keys) because that is what
 * node:tls takes directly and what operators can inspect with `openssl x509 -text`.
 */
import crypto, { type webcrypto } from 'node:crypto';
import fs from 'node:fs/promises';
import net from 'node:net';
import tls from 'node:tls';
import path from 'node:path';
// @peculiar/x509 resolves its classes through tsyringe, which needs the Reflect metadata
// API loaded first.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { OsrError } from '../domain/errors.js';

// The library needs a WebCrypto implementation; Node's is complete for ECDSA P-256.
x509.cryptoProvider.set(crypto.webcrypto);

const KEY_ALGORITHM: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const SIGNING_ALGORITHM: webcrypto.EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' };
const DAY_MS = 24 * 60 * 60 * 1000;
/**
 * Certificates start a little in the past so that a peer whose clock runs a few minutes
 * behind the issuer does not reject a certificate issued "in its future".
 */
const CLOCK_SKEW_MS = 5 * 60 * 1000;

export const PKI_ROLES = ['agent', 'provider', 'vault', 'client'] as const;
export type PkiRole = (typeof PKI_ROLES)[number];

export interface CaMaterial {
  certPem: string;
  keyPem: string;
}

export interface CreateCaOptions {
  commonName: string;
  /** Default 3650 (ten years): the CA outlives many rounds of leaf certificates. */
  validDays?: number;
}

export interface IssueOptions {
  commonName: string;
  role: PkiRole;
  /**
   * Subject alternative names. When neither dnsNames nor ipAddresses is given the
   * certificate names the loopback host (DNS localhost, IP 127.0.0.1 and ::1); when
   * either is given, only what is given is used.
   */
  dnsNames?: string[];
  ipAddresses?: string[];
  /**
   * The fabric the holder belongs to: the certificate then carries the URI name
   * `urn:osr:fabric:<fabricId>` (agent-channel.md). Only the issuer's own records may
   * give it, never a request.
   */
  fabricId?: string | undefined;
  /** Default 365. */
  validDays?: number;
  /** Default: now minus a few minutes of clock skew allowance. */
  notBefore?: Date;
  /**
   * Certify this public key (SPKI PEM, ECDSA P-256) instead of generating a key pair: the
   * holder made its key itself and never sends it (a provider registering). The result's
   * keyPem is then empty.
   */
  publicKeyPem?: string;
}

export interface IssuedCertificate {
  certPem: string;
  keyPem: string;
  /** The issuing CA's certificate, which the holder needs in order to verify its peers. */
  caPem: string;
  /** Hexadecimal, lower case. */
  serialNumber: string;
  notAfter: Date;
}

export interface CertificateInfo {
  commonName: string;
  role?: string;
  /** the fabric its `urn:osr:fabric:` URI name names, when it has one */
  fabricId?: string;
  notBefore: Date;
  notAfter: Date;
  /** SHA-256 of the DER certificate as colon-separated upper-case hex, the same form node:tls reports as fingerprint256. */
  fingerprintSha256: string;
  issuer: string;
}

/** What a TLS endpoint needs: its own certificate and key, the CA it trusts, and the CA's revocation list if it has one. */
export interface TlsMaterial {
  cert: string;
  key: string;
  ca: string;
  /** the CA's certificate revocation list (PEM): peers whose certificate it lists are refused */
  crl?: string | undefined;
}

export interface TlsFiles {
  certFile: string;
  keyFile: string;
  caFile: string;
  /** the CA's revocation list; a missing file means none yet */
  crlFile?: string | undefined;
}

/** A certificate the CA took back. */
export interface RevokedCertificate {
  /** hexadecimal, as IssuedCertificate.serialNumber */
  serialNumber: string;
  revokedAt: Date;
}

/**
 * The CA's certificate revocation list (PEM), signed by the CA, valid until `nextUpdate`
 * (a peer that checks revocation refuses every certificate once its list is past that).
 */
export async function createCrl(ca: CaMaterial, revoked: readonly RevokedCertificate[], o: { thisUpdate?: Date; nextUpdate: Date; crlNumber?: number }): Promise<string> {
  const caCert = parseCertificate(ca.certPem, 'CA certificate');
  const caKey = await loadCaKey(ca, caCert);
  const crl = await x509.X509CrlGenerator.create({
    issuer: caCert.subjectName,
    thisUpdate: wholeSeconds(o.thisUpdate ?? new Date(Date.now() - CLOCK_SKEW_MS)),
    nextUpdate: wholeSeconds(o.nextUpdate),
    signingAlgorithm: SIGNING_ALGORITHM,
    signingKey: caKey,
    extensions: [await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey), ...(o.crlNumber !== undefined ? [new x509.Extension(CRL_NUMBER_OID, false, derInteger(o.crlNumber))] : [])],
    entries: revoked.map((r) => ({ serialNumber: r.serialNumber, revocationDate: wholeSeconds(r.revokedAt), reason: x509.X509CrlReason.cessationOfOperation })),
  });
  // OpenSSL (and so node:tls) reads a CRL only under the X509 CRL label
  return x509.PemConverter.encode(crl.rawData, 'X509 CRL');
}

/** The CRL Number extension (RFC 5280, 5.2.3): a list with a higher number is newer. */
const CRL_NUMBER_OID = '2.5.29.20';

/** DER INTEGER of a non-negative safe integer. */
function derInteger(n: number): Uint8Array {
  if (!Number.isSafeInteger(n) || n < 0) throw new OsrError('INVALID_ARGUMENT', `CRL number ${n} is not a non-negative integer`);
  const bytes: number[] = [];
  let v = BigInt(n);
  do {
    bytes.unshift(Number(v & 0xffn));
    v >>= 8n;
  } while (v > 0n);
  if (bytes[0]! & 0x80) bytes.unshift(0);
  return Uint8Array.from([0x02, bytes.length, ...bytes]);
}

/** The CRL number of a list, when it carries one (undefined otherwise, or when it is not a small DER INTEGER). */
function crlNumberOf(crl: x509.X509Crl): number | undefined {
  const ext = crl.getExtension(CRL_NUMBER_OID);
  if (!ext) return undefined;
  const b = new Uint8Array(ext.value);
  if (b.length < 3 || b[0] !== 0x02 || b[1] !== b.length - 2 || b[1]! > 7 || (b[2]! & 0x80) !== 0) return undefined;
  let v = 0;
  for (const x of b.subarray(2)) v = v * 256 + x;
  return v;
}

/** The serial numbers (lower-case hex) a revocation list lists, when it was made and its CRL number, after checking that `ca` signed it. */
export async function readCrl(pem: string, caPem: string): Promise<{ serials: string[]; thisUpdate: Date; nextUpdate: Date | undefined; crlNumber: number | undefined }> {
  let crl: x509.X509Crl;
  try {
    crl = new x509.X509Crl(pem);
    // what node:tls will be handed must parse there too
    tls.createSecureContext({ crl: pem });
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `the revocation list is not a valid PEM CRL: ${(e as Error).message}`, undefined, { cause: e });
  }
  const caCert = parseCertificate(caPem, 'CA certificate');
  if (!(await crl.verify({ publicKey: caCert.publicKey }))) throw new OsrError('CONFIG_INVALID', 'the revocation list is not signed by this CA');
  return { serials: crl.entries.map((e) => e.serialNumber.toLowerCase()), thisUpdate: crl.thisUpdate, nextUpdate: crl.nextUpdate, crlNumber: crlNumberOf(crl) };
}

/** Creates a self-signed CA that may sign end-entity certificates only (path length 0). */
export async function createCa(opts: CreateCaOptions): Promise<CaMaterial> {
  const commonName = checkCommonName(opts.commonName);
  const validDays = checkValidDays(opts.validDays ?? 3650);
  const keys = await generateKeyPair();
  const notBefore = wholeSeconds(new Date(Date.now() - CLOCK_SKEW_MS));
  const notAfter = wholeSeconds(new Date(notBefore.getTime() + validDays * DAY_MS));
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [commonName] }],
    notBefore,
    notAfter,
    keys,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { certPem: cert.toString('pem'), keyPem: await exportPrivateKey(keys.privateKey) };
}

/**
 * Issues an end-entity certificate signed by the CA. The role goes into the subject as
 * OU=<role> so that a server can tell an agent from a provider by its certificate alone.
 */
export async function issueCertificate(ca: CaMaterial, opts: IssueOptions): Promise<IssuedCertificate> {
  const commonName = checkCommonName(opts.commonName);
  if (!(PKI_ROLES as readonly string[]).includes(opts.role)) {
    throw new OsrError('INVALID_ARGUMENT', `unknown certificate role '${String(opts.role)}'; expected one of ${PKI_ROLES.join(', ')}`);
  }
  const validDays = checkValidDays(opts.validDays ?? 365);
  const useDefaults = opts.dnsNames === undefined && opts.ipAddresses === undefined;
  const dnsNames = useDefaults ? ['localhost'] : (opts.dnsNames ?? []);
  const ipAddresses = useDefaults ? ['127.0.0.1', '::1'] : (opts.ipAddresses ?? []);
  if (opts.fabricId !== undefined && !FABRIC_ID.test(opts.fabricId)) throw new OsrError('INVALID_ARGUMENT', `'${opts.fabricId}' is not a fabric id`);
  for (const ip of ipAddresses) {
    if (net.isIP(ip) === 0) throw new OsrError('INVALID_ARGUMENT', `'${ip}' is not an IP address`);
  }
  for (const name of dnsNames) {
    if (!/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/.test(name)) {
      throw new OsrError('INVALID_ARGUMENT', `'${name}' is not a valid DNS name`);
    }
  }

  const caCert = parseCertificate(ca.certPem, 'CA certificate');
  const caKey = await loadCaKey(ca, caCert);
  const now = Date.now();
  if (caCert.notAfter.getTime() <= now) {
    throw new OsrError('INVALID_STATE', `the CA certificate '${caCert.subject}' expired on ${caCert.notAfter.toISOString()}; create a new CA and reissue`);
  }

  const notBefore = wholeSeconds(opts.notBefore ?? new Date(now - CLOCK_SKEW_MS));
  // A certificate cannot be valid longer than its issuer, so the lifetime stops at the CA's end.
  const requestedEnd = notBefore.getTime() + validDays * DAY_MS;
  const notAfter = wholeSeconds(new Date(Math.min(requestedEnd, caCert.notAfter.getTime())));

  const keys = opts.publicKeyPem !== undefined ? { publicKey: await importPublicKey(opts.publicKeyPem), privateKey: undefined } : await generateKeyPair();
  const usages = opts.role === 'client' ? [x509.ExtendedKeyUsage.clientAuth] : [x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth];
  const altNames: x509.JsonGeneralNames = [
    ...dnsNames.map((value) => ({ type: 'dns' as const, value })),
    ...ipAddresses.map((value) => ({ type: 'ip' as const, value })),
    ...(opts.fabricId !== undefined ? [{ type: 'url' as const, value: fabricUri(opts.fabricId) }] : []),
  ];
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension(usages, false),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey),
  ];
  // An empty SAN extension is not valid DER, so a certificate without names simply has none.
  if (altNames.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(altNames, false));

  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: [{ CN: [commonName] }, { OU: [opts.role] }],
    issuer: caCert.subjectName,
    notBefore,
    notAfter,
    publicKey: keys.publicKey,
    signingKey: caKey,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions,
  });
  return {
    certPem: cert.toString('pem'),
    keyPem: keys.privateKey ? await exportPrivateKey(keys.privateKey) : '',
    caPem: caCert.toString('pem'),
    serialNumber: cert.serialNumber.toLowerCase(),
    notAfter: cert.notAfter,
  };
}

const FABRIC_URI_PREFIX = 'urn:osr:fabric:';
/** What a fabric id looks like (the vault makes them): what a certificate's or a grant's fabric must match. */
export const FABRIC_ID = /^[a-z0-9][a-z0-9-]{0,99}$/;

/** The URI name that ties a certificate to a fabric (agent-channel.md). */
export function fabricUri(fabricId: string): string {
  return `${FABRIC_URI_PREFIX}${fabricId}`;
}

/**
 * A self-signed certificate and key for an agent that has no certificate from the vault's
 * CA yet (agent-channel.md, Bootstrap). Nobody trusts it through a CA: a provider trusts it
 * only by the SHA-256 fingerprint the operator copied into the site file, and only to
 * enrol the agent. Role `bootstrap`, never one of PKI_ROLES.
 */
export async function createBootstrapCertificate(commonName: string, validDays = 3650): Promise<{ certPem: string; keyPem: string; fingerprintSha256: string }> {
  const keys = await generateKeyPair();
  const notBefore = wholeSeconds(new Date(Date.now() - CLOCK_SKEW_MS));
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: [{ CN: [checkCommonName(commonName)] }, { OU: ['bootstrap'] }],
    notBefore,
    notAfter: wholeSeconds(new Date(notBefore.getTime() + checkValidDays(validDays) * DAY_MS)),
    keys,
    signingAlgorithm: SIGNING_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth], false),
    ],
  });
  const certPem = cert.toString('pem');
  return { certPem, keyPem: await exportPrivateKey(keys.privateKey), fingerprintSha256: readCertificateInfo(certPem).fingerprintSha256 };
}

/** Reads the fields osr cares about from a PEM certificate. */
export function readCertificateInfo(pem: string): CertificateInfo {
  const cert = parseCertificate(pem, 'certificate');
  const role = cert.subjectName.getField('OU')[0];
  const fabrics = (cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.items ?? []).filter((n) => n.type === 'url' && n.value.startsWith(FABRIC_URI_PREFIX)).map((n) => n.value.slice(FABRIC_URI_PREFIX.length));
  return {
    commonName: cert.subjectName.getField('CN')[0] ?? '',
    ...(role !== undefined ? { role } : {}),
    // a certificate naming two fabrics names none: it is refused wherever a fabric is checked
    ...(fabrics.length === 1 ? { fabricId: fabrics[0]! } : {}),
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    fingerprintSha256: formatFingerprint(crypto.createHash('sha256').update(new Uint8Array(cert.rawData)).digest()),
    issuer: cert.issuer,
  };
}

/**
 * Whether a certificate is due for renewal at `now`: two thirds of its life have passed
 * (a year's certificate is renewed with four months left, a 90-day one with a month).
 */
export function renewalDue(info: Pick<CertificateInfo, 'notBefore' | 'notAfter'>, now: number): boolean {
  const from = info.notBefore.getTime();
  return now >= from + ((info.notAfter.getTime() - from) * 2) / 3;
}

/** Colon-separated upper-case hex, matching node:tls `fingerprint256`. */
export function formatFingerprint(digest: Uint8Array): string {
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0').toUpperCase()).join(':');
}

/**
 * Writes `<name>.crt`, `<name>.key` (mode 0600) and `ca.crt` into dir. Each file is
 * written to a temporary name, fsynced and renamed into place, so a crash leaves either
 * the old file or the new one, never a truncated key. Returns the paths written.
 */
export async function writePkiFiles(dir: string, name: string, issued: IssuedCertificate): Promise<TlsFiles> {
  if (name === '' || name === 'ca' || name === '.' || name === '..' || /[/\\\0]/.test(name)) {
    throw new OsrError('INVALID_ARGUMENT', `'${name}' cannot be used as a certificate file name (no path separators, and 'ca' is reserved for ca.crt)`);
  }
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const files: TlsFiles = {
    certFile: path.join(dir, `${name}.crt`),
    keyFile: path.join(dir, `${name}.key`),
    caFile: path.join(dir, 'ca.crt'),
  };
  await writeFileAtomic(files.caFile, issued.caPem, 0o644);
  await writeFileAtomic(files.keyFile, issued.keyPem, 0o600);
  await writeFileAtomic(files.certFile, issued.certPem, 0o644);
  await fsyncDir(dir);
  return files;
}

/**
 * Loads the PEM files an endpoint needs and checks them against each other, so that a
 * mix-up (wrong key, certificate from another CA) is reported at startup with the file
 * name rather than later as an opaque handshake failure.
 */
export async function loadTlsMaterial(files: TlsFiles): Promise<TlsMaterial> {
  const cert = await readPemFile(files.certFile, 'certificate', 'CERTIFICATE');
  const key = await readPemFile(files.keyFile, 'private key', 'PRIVATE KEY');
  const ca = await readPemFile(files.caFile, 'CA certificate', 'CERTIFICATE');

  let certObj: crypto.X509Certificate;
  try {
    certObj = new crypto.X509Certificate(cert);
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `${files.certFile} does not hold a valid certificate: ${(e as Error).message}`, { file: files.certFile }, { cause: e });
  }
  let keyObj: crypto.KeyObject;
  try {
    keyObj = crypto.createPrivateKey(key);
  } catch (e) {
    throw new OsrError('CONFIG_INVALID', `${files.keyFile} does not hold a valid private key: ${(e as Error).message}`, { file: files.keyFile }, { cause: e });
  }
  if (!certObj.checkPrivateKey(keyObj)) {
    throw new OsrError('CONFIG_INVALID', `the private key in ${files.keyFile} does not belong to the certificate in ${files.certFile}`, { certFile: files.certFile, keyFile: files.keyFile });
  }
  const cas = splitPemCertificates(ca).map((pem, i) => {
    try {
      return new crypto.X509Certificate(pem);
    } catch (e) {
      throw new OsrError('CONFIG_INVALID', `certificate #${i + 1} in ${files.caFile} is not valid: ${(e as Error).message}`, { file: files.caFile }, { cause: e });
    }
  });
  if (!cas.some((c) => certObj.checkIssued(c) && certObj.verify(c.publicKey))) {
    throw new OsrError('CONFIG_INVALID', `the certificate in ${files.certFile} was not issued by the CA in ${files.caFile}`, { certFile: files.certFile, caFile: files.caFile });
  }
  let crl: string | undefined;
  if (files.crlFile !== undefined) {
    crl = await fs.readFile(files.crlFile, 'utf8').catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return undefined;
      throw new OsrError('CONFIG_INVALID', `cannot read the revocation list ${files.crlFile}: ${e.message}`, { file: files.crlFile }, { cause: e });
    });
    if (crl !== undefined) await readCrl(crl, ca).catch((e: unknown) => {
      throw new OsrError('CONFIG_INVALID', `${files.crlFile}: ${(e as Error).message}`, { file: files.crlFile }, { cause: e });
    });
  }
  return { cert, key, ca, ...(crl !== undefined ? { crl } : {}) };
}

// ---------------------------------------------------------------------------

async function generateKeyPair(): Promise<webcrypto.CryptoKeyPair> {
  return (await crypto.webcrypto.subtle.generateKey(KEY_ALGORITHM, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
}

/** A new ECDSA P-256 key pair as PEM (PKCS#8 private, SPKI public), for a certificate request. */
export async function generateKeyPairPem(): Promise<{ privateKeyPem: string; publicKeyPem: string }> {
  const keys = await generateKeyPair();
  const spki = await crypto.webcrypto.subtle.exportKey('spki', keys.publicKey);
  return { privateKeyPem: await exportPrivateKey(keys.privateKey), publicKeyPem: x509.PemConverter.encode(spki, 'PUBLIC KEY') };
}

async function importPublicKey(pem: string): Promise<webcrypto.CryptoKey> {
  try {
    const spki = crypto.createPublicKey(pem).export({ type: 'spki', format: 'der' });
    return (await crypto.webcrypto.subtle.importKey('spki', spki, KEY_ALGORITHM, true, ['verify'])) as webcrypto.CryptoKey;
  } catch (e) {
    throw new OsrError('INVALID_ARGUMENT', `the public key is not an ECDSA P-256 key in PEM: ${(e as Error).message}`, undefined, { cause: e });
  }
}

async function exportPrivateKey(key: webcrypto.CryptoKey): Promise<string> {
  const der = await crypto.webcrypto.subtle.exportKey('pkcs8', key);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

async function loadCaKey(ca: CaMaterial, caCert: x509.X509Certificate): Promise<webcrypto.CryptoKey> {
  const basic = caCert.getExtension(x509.BasicConstraintsExtension);
  if (!basic?.ca) throw new OsrError('INVALID_ARGUMENT', `'${caCert.subject}' is not a CA certificate`);
  let keyObj: crypto.KeyObject;
  try {
    keyObj = crypto.createPrivateKey(ca.keyPem);
  } catch (e) {
    throw new OsrError('INVALID_ARGUMENT', `the CA private key is not a valid PEM key: ${(e as Error).message}`, undefined, { cause: e });
  }
  // A CA key that does not match the CA certificate would sign certificates nobody can verify.
  const keySpki = crypto.createPublicKey(keyObj).export({ type: 'spki', format: 'der' });
  if (!Buffer.from(caCert.publicKey.rawData).equals(keySpki)) {
    throw new OsrError('INVALID_ARGUMENT', `the CA private key does not belong to the CA certificate '${caCert.subject}'`);
  }
  const pkcs8 = keyObj.export({ type: 'pkcs8', format: 'der' });
  return crypto.webcrypto.subtle.importKey('pkcs8', pkcs8, KEY_ALGORITHM, false, ['sign']) as Promise<webcrypto.CryptoKey>;
}

function parseCertificate(pem: string, what: string): x509.X509Certificate {
  try {
    return new x509.X509Certificate(pem);
  } catch (e) {
    throw new OsrError('INVALID_ARGUMENT', `the ${what} is not a valid PEM certificate: ${(e as Error).message}`, undefined, { cause: e });
  }
}

/** 16 random bytes, positive and without a leading zero byte, so the DER integer keeps all 128 bits. */
function randomSerial(): string {
  const bytes = crypto.randomBytes(16);
  bytes[0] = (bytes[0] & 0x7f) | 0x40;
  return bytes.toString('hex');
}

function checkCommonName(cn: string): string {
  if (typeof cn !== 'string' || cn.trim() === '' || cn.length > 64) {
    throw new OsrError('INVALID_ARGUMENT', `the common name must be 1 to 64 characters, got '${String(cn)}'`);
  }
  return cn;
}

function checkValidDays(days: number): number {
  if (!Number.isFinite(days) || days <= 0) {
    throw new OsrError('INVALID_ARGUMENT', `validDays must be a positive number, got ${days}`);
  }
  return days;
}

/** X.509 times carry whole seconds; truncating up front keeps returned dates equal to the encoded ones. */
function wholeSeconds(d: Date): Date {
  return new Date(Math.floor(d.getTime() / 1000) * 1000);
}

function splitPemCertificates(text: string): string[] {
  return text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
}

async function readPemFile(file: string, what: string, label: string): Promise<string> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const reason =
      code === 'ENOENT' ? 'does not exist' : code === 'EACCES' || code === 'EPERM' ? 'is not readable by this process (check owner and mode)' : code === 'EISDIR' ? 'is a directory' : `cannot be read (${(e as Error).message})`;
    throw new OsrError('CONFIG_INVALID', `TLS ${what} file ${file} ${reason}`, { file }, { cause: e });
  }
  if (!new RegExp(`-----BEGIN (?:[A-Z]+ )?${label}-----`).test(text)) {
    throw new OsrError('CONFIG_INVALID', `TLS ${what} file ${file} holds no PEM ${label} block`, { file });
  }
  return text;
}

/** Write a file whole: a temporary name, synced, renamed into place (mode set at creation). */
export async function writeFileAtomic(file: string, data: string, mode: number): Promise<void> {
  const tmp = `${file}.tmp-${process.pid}-${crypto.randomBytes(4).toString('hex')}`;
  // The mode is set at creation so a key is never readable by others, not even briefly.
  const fh = await fs.open(tmp, 'wx', mode);
  try {
    await fh.writeFile(data, 'utf8');
    await fh.chmod(mode);
    await fh.sync();
  } catch (e) {
    await fh.close().catch(() => undefined);
    await fs.rm(tmp, { force: true });
    throw e;
  }
  await fh.close();
  try {
    await fs.rename(tmp, file);
  } catch (e) {
    await fs.rm(tmp, { force: true });
    throw e;
  }
}

/** Sync a directory, making the renames in it durable. */
export async function fsyncDir(dir: string): Promise<void> {
  // Makes the renames durable; some platforms cannot open a directory, which is harmless.
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(dir, 'r');
    await fh.sync();
  } catch {
    // ignore
  } finally {
    await fh?.close();
  }
}
