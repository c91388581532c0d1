import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import { OsrError } from '../../src/domain/errors.js';
import {
  type CaMaterial,
  type IssuedCertificate,
  type PeerIdentity,
  type TlsMaterial,
  classifyTlsError,
  clientTlsOptions,
  createCa,
  issueCertificate,
  loadTlsMaterial,
  onTlsClientError,
  peerIdentity,
  readCertificateInfo,
  serverTlsOptions,
  writePkiFiles,
} from '../../src/pki/index.js';

const OID_SERVER_AUTH = '1.3.6.1.5.5.7.3.1';
const OID_CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';
const DAY = 24 * 60 * 60 * 1000;

function material(issued: IssuedCertificate): TlsMaterial {
  return { cert: issued.certPem, key: issued.keyPem, ca: issued.caPem };
}

/** TLS material that trusts `trustCa` but presents a certificate from wherever `issued` came from. */
function materialTrusting(issued: IssuedCertificate, trustCa: CaMaterial): TlsMaterial {
  return { cert: issued.certPem, key: issued.keyPem, ca: trustCa.certPem };
}

async function assertOsrError(p: Promise<unknown> | (() => unknown), code: string, pattern?: RegExp): Promise<OsrError> {
  let caught: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof OsrError, `expected an OsrError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  if (pattern) assert.match(caught.message, pattern);
  return caught;
}

interface Outcome {
  port: number;
  protocol?: string | null;
  /** What the client received first: the server's greeting on success. */
  clientData?: string;
  clientError?: OsrError;
  serverErrors: OsrError[];
  serverSawPeer?: PeerIdentity;
  clientSawPeer?: PeerIdentity;
  echoed?: string;
  cipher?: string;
}

/**
 * One connection over 127.0.0.1. The server speaks first (a greeting), the client waits for
 * it before writing, then the client sends a line and reads the echo. Both sides classify
 * what goes wrong: the server through onTlsClientError, the client through 'error' or an
 * end before any data.
 */
async function exchange(serverMaterial: TlsMaterial, clientOptions: tls.ConnectionOptions): Promise<Outcome> {
  const server = tls.createServer(serverTlsOptions(serverMaterial));
  const outcome: Outcome = { port: 0, serverErrors: [] };
  let serverDone!: () => void;
  const serverFinished = new Promise<void>((resolve) => (serverDone = resolve));
  onTlsClientError(server, (err) => {
    outcome.serverErrors.push(err);
    serverDone();
  });
  server.on('secureConnection', (sock) => {
    outcome.serverSawPeer = peerIdentity(sock);
    sock.on('error', () => undefined);
    sock.on('close', () => serverDone());
    sock.write('osr-hello\n');
    sock.on('data', (d) => sock.write(d));
    sock.on('end', () => sock.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  outcome.port = (server.address() as AddressInfo).port;
  const peer = `127.0.0.1:${outcome.port}`;

  await new Promise<void>((resolve) => {
    const sock = tls.connect({ host: '127.0.0.1', port: outcome.port, ...clientOptions });
    let received = '';
    const fail = (err: unknown): void => {
      outcome.clientError ??= classifyTlsError(err, 'client', { socket: sock, peer });
    };
    sock.on('secureConnect', () => {
      outcome.protocol = sock.getProtocol();
      outcome.cipher = sock.getCipher().standardName;
      outcome.clientSawPeer = peerIdentity(sock);
    });
    sock.on('data', (d: Buffer) => {
      received += d.toString();
      if (outcome.clientData === undefined && received.includes('\n')) {
        outcome.clientData = received.trim();
        received = '';
        sock.write('ping\n');
      } else if (outcome.clientData !== undefined && received.includes('\n')) {
        outcome.echoed = received.trim();
        sock.end();
      }
    });
    sock.on('error', fail);
    sock.on('end', () => {
      if (outcome.clientData === undefined) fail(undefined);
    });
    sock.on('close', () => resolve());
  });
  // The server may learn of the failure after the client gave up (e.g. the client refused
  // the server's certificate), so wait for its side too.
  await Promise.race([serverFinished, new Promise((r) => setTimeout(r, 3000))]);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return outcome;
}

function withoutClientCert(opts: tls.ConnectionOptions): tls.ConnectionOptions {
  const { key: _key, cert: _cert, ...rest } = opts;
  return rest;
}

let ca: CaMaterial;
let otherCa: CaMaterial;
let serverCert: IssuedCertificate;
let clientCert: IssuedCertificate;

before(async () => {
  ca = await createCa({ commonName: 'osr test CA' });
  otherCa = await createCa({ commonName: 'some other CA' });
  serverCert = await issueCertificate(ca, { commonName: 'agent-a', role: 'agent' });
  clientCert = await issueCertificate(ca, { commonName: 'agent-b', role: 'agent' });
});

describe('certificate authority', () => {
  test('the CA is a self-signed CA certificate with the requested name and lifetime', async () => {
    const cert = new crypto.X509Certificate(ca.certPem);
    assert.equal(cert.ca, true);
    assert.ok(cert.checkIssued(cert), 'self-issued');
    assert.ok(cert.verify(cert.publicKey), 'self-signed');
    assert.equal(cert.publicKey.asymmetricKeyType, 'ec');
    assert.equal(cert.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    const info = readCertificateInfo(ca.certPem);
    assert.equal(info.commonName, 'osr test CA');
    assert.equal(info.role, undefined);
    const days = (info.notAfter.getTime() - info.notBefore.getTime()) / DAY;
    assert.ok(Math.abs(days - 3650) < 1, `CA lifetime ${days} days`);

    // Extensions, read back with the library that wrote them (loaded after the pki module).
    const x509 = await import('@peculiar/x509');
    const parsed = new x509.X509Certificate(ca.certPem);
    const bc = parsed.getExtension(x509.BasicConstraintsExtension);
    assert.ok(bc?.ca && bc.critical, 'basicConstraints CA, critical');
    const ku = parsed.getExtension(x509.KeyUsagesExtension);
    assert.ok(ku?.critical);
    assert.equal(ku?.usages, x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign);
    assert.ok(parsed.getExtension(x509.SubjectKeyIdentifierExtension), 'subject key id');
  });

  test('an issued certificate verifies against the CA and carries role, usages, names and ids', async () => {
    const caCert = new crypto.X509Certificate(ca.certPem);
    const cert = new crypto.X509Certificate(serverCert.certPem);
    assert.ok(cert.checkIssued(caCert));
    assert.ok(cert.verify(caCert.publicKey));
    assert.equal(cert.ca, false);
    assert.ok(crypto.createPrivateKey(serverCert.keyPem) && cert.checkPrivateKey(crypto.createPrivateKey(serverCert.keyPem)));
    assert.deepEqual([...(cert.keyUsage ?? [])].sort(), [OID_SERVER_AUTH, OID_CLIENT_AUTH].sort());
    assert.equal(cert.subjectAltName, 'DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1');
    assert.match(cert.subject, /CN=agent-a/);
    assert.match(cert.subject, /OU=agent/);
    assert.equal(serverCert.caPem, ca.certPem);
    assert.equal(serverCert.serialNumber, cert.serialNumber.toLowerCase());
    assert.equal(serverCert.serialNumber.length, 32, '128-bit serial');
    assert.notEqual(serverCert.serialNumber, clientCert.serialNumber);
    assert.equal(serverCert.notAfter.getTime(), new Date(cert.validTo).getTime());
    const days = (serverCert.notAfter.getTime() - Date.now()) / DAY;
    assert.ok(days > 364 && days <= 365, `leaf lifetime ${days} days`);

    const x509 = await import('@peculiar/x509');
    const parsed = new x509.X509Certificate(serverCert.certPem);
    const aki = parsed.getExtension(x509.AuthorityKeyIdentifierExtension);
    const caSki = new x509.X509Certificate(ca.certPem).getExtension(x509.SubjectKeyIdentifierExtension);
    assert.ok(aki?.keyId && aki.keyId === caSki?.keyId, 'authority key id names the CA key');

    const info = readCertificateInfo(serverCert.certPem);
    assert.deepEqual(
      { commonName: info.commonName, role: info.role, issuer: info.issuer, fingerprintSha256: info.fingerprintSha256 },
      { commonName: 'agent-a', role: 'agent', issuer: 'CN=osr test CA', fingerprintSha256: cert.fingerprint256 },
    );
  });

  test('explicit names replace the loopback defaults; client certificates cannot act as servers', async () => {
    const cert = await issueCertificate(ca, { commonName: 'vault-1', role: 'vault', dnsNames: ['vault.example.net'], ipAddresses: ['10.1.2.3', 'fd00::7'], validDays: 30 });
    const x = new crypto.X509Certificate(cert.certPem);
    assert.equal(x.subjectAltName, 'DNS:vault.example.net, IP Address:10.1.2.3, IP Address:FD00:0:0:0:0:0:0:7');
    assert.equal(readCertificateInfo(cert.certPem).role, 'vault');
    assert.ok(Math.abs((cert.notAfter.getTime() - Date.now()) / DAY - 30) < 1);

    const client = await issueCertificate(ca, { commonName: 'operator', role: 'client' });
    assert.deepEqual(new crypto.X509Certificate(client.certPem).keyUsage, [OID_CLIENT_AUTH]);
  });

  test('bad requests are refused with INVALID_ARGUMENT', async () => {
    await assertOsrError(issueCertificate(ca, { commonName: 'x', role: 'admin' as never }), 'INVALID_ARGUMENT', /role/);
    await assertOsrError(issueCertificate(ca, { commonName: 'x', role: 'agent', ipAddresses: ['300.1.1.1'] }), 'INVALID_ARGUMENT', /IP address/);
    await assertOsrError(issueCertificate(ca, { commonName: 'x', role: 'agent', dnsNames: ['bad name'] }), 'INVALID_ARGUMENT', /DNS name/);
    await assertOsrError(issueCertificate(ca, { commonName: '', role: 'agent' }), 'INVALID_ARGUMENT', /common name/);
    await assertOsrError(issueCertificate(ca, { commonName: 'x', role: 'agent', validDays: 0 }), 'INVALID_ARGUMENT', /validDays/);
    await assertOsrError(issueCertificate({ certPem: ca.certPem, keyPem: otherCa.keyPem }, { commonName: 'x', role: 'agent' }), 'INVALID_ARGUMENT', /does not belong/);
    await assertOsrError(issueCertificate({ certPem: serverCert.certPem, keyPem: serverCert.keyPem }, { commonName: 'x', role: 'agent' }), 'INVALID_ARGUMENT', /not a CA/);
    assert.throws(() => readCertificateInfo('not a certificate'), (e: unknown) => e instanceof OsrError && e.code === 'INVALID_ARGUMENT');
  });
});

describe('certificate files', () => {
  let dir: string;
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'osr-pki-'));
  });
  after(async () => {
    await fs.rm(dir, { recursive: true, force: true });
  });

  test('writePkiFiles writes cert, private key (0600) and CA; loadTlsMaterial reads them back', async () => {
    const files = await writePkiFiles(path.join(dir, 'agent'), 'agent-a', serverCert);
    assert.deepEqual(files, {
      certFile: path.join(dir, 'agent', 'agent-a.crt'),
      keyFile: path.join(dir, 'agent', 'agent-a.key'),
      caFile: path.join(dir, 'agent', 'ca.crt'),
    });
    assert.equal((await fs.stat(files.keyFile)).mode & 0o777, 0o600);
    assert.deepEqual((await fs.readdir(path.join(dir, 'agent'))).sort(), ['agent-a.crt', 'agent-a.key', 'ca.crt'], 'no temporary files left');
    const m = await loadTlsMaterial(files);
    assert.deepEqual(m, { cert: serverCert.certPem, key: serverCert.keyPem, ca: ca.certPem });

    // Rewriting replaces the files in place.
    await writePkiFiles(path.join(dir, 'agent'), 'agent-a', clientCert);
    assert.equal((await loadTlsMaterial(files)).cert, clientCert.certPem);
  });

  test('loadTlsMaterial names the file that is missing, unreadable or does not fit', async () => {
    const files = await writePkiFiles(path.join(dir, 'b'), 'agent-b', clientCert);
    const missing = await assertOsrError(loadTlsMaterial({ ...files, keyFile: path.join(dir, 'b', 'nope.key') }), 'CONFIG_INVALID', /does not exist/);
    assert.match(missing.message, /nope\.key/);
    await assertOsrError(loadTlsMaterial({ ...files, caFile: path.join(dir, 'b') }), 'CONFIG_INVALID', /is a directory/);
    await assertOsrError(loadTlsMaterial({ ...files, keyFile: files.certFile }), 'CONFIG_INVALID', /no PEM PRIVATE KEY/);

    const other = await writePkiFiles(path.join(dir, 'c'), 'agent-a', serverCert);
    await assertOsrError(loadTlsMaterial({ ...files, keyFile: other.keyFile }), 'CONFIG_INVALID', /does not belong/);

    const foreign = await issueCertificate(otherCa, { commonName: 'stranger', role: 'agent' });
    const foreignFiles = await writePkiFiles(path.join(dir, 'd'), 'stranger', foreign);
    await assertOsrError(loadTlsMaterial({ ...foreignFiles, caFile: files.caFile }), 'CONFIG_INVALID', /not issued by the CA/);

    if (process.getuid?.() !== 0) {
      await fs.chmod(files.keyFile, 0o000);
      await assertOsrError(loadTlsMaterial(files), 'CONFIG_INVALID', /not readable/);
      await fs.chmod(files.keyFile, 0o600);
    }
  });

  test('file names that would escape the directory or clobber ca.crt are refused', async () => {
    for (const name of ['ca', '../x', 'a/b', '']) {
      await assertOsrError(writePkiFiles(dir, name, serverCert), 'INVALID_ARGUMENT');
    }
  });
});

describe('mutual TLS over 127.0.0.1', () => {
  test('client and server with certificates from the CA exchange bytes over TLS 1.3', async () => {
    const o = await exchange(material(serverCert), clientTlsOptions(material(clientCert)));
    assert.equal(o.clientError, undefined, o.clientError?.message);
    assert.deepEqual(o.serverErrors, []);
    assert.equal(o.protocol, 'TLSv1.3');
    assert.equal(o.cipher, 'TLS_AES_128_GCM_SHA256', 'the preferred suite is negotiated');
    assert.equal(o.clientData, 'osr-hello');
    assert.equal(o.echoed, 'ping');
    assert.deepEqual(o.serverSawPeer, { commonName: 'agent-b', role: 'agent', fingerprintSha256: readCertificateInfo(clientCert.certPem).fingerprintSha256 });
    assert.deepEqual(o.clientSawPeer, { commonName: 'agent-a', role: 'agent', fingerprintSha256: readCertificateInfo(serverCert.certPem).fingerprintSha256 });
  });

  test('the server name is checked when given', async () => {
    const ok = await exchange(material(serverCert), clientTlsOptions(material(clientCert), { servername: 'localhost' }));
    assert.equal(ok.clientError, undefined, ok.clientError?.message);
    assert.equal(ok.echoed, 'ping');

    const o = await exchange(material(serverCert), clientTlsOptions(material(clientCert), { servername: 'other.example' }));
    assert.equal(o.clientError?.code, 'TLS_HANDSHAKE_FAILED', o.clientError?.message);
    assert.match(o.clientError.message, /^client refused server at 127\.0\.0\.1:\d+: its certificate does not name/);

    // An IP given as the name is checked against the certificate's IP addresses.
    const byIp = await exchange(material(serverCert), clientTlsOptions(material(clientCert), { servername: '127.0.0.1' }));
    assert.equal(byIp.echoed, 'ping', byIp.clientError?.message);
    const wrongIp = await exchange(material(serverCert), clientTlsOptions(material(clientCert), { servername: '10.9.9.9' }));
    assert.equal(wrongIp.clientError?.code, 'TLS_HANDSHAKE_FAILED', wrongIp.clientError?.message);
  });

  test('a client without a certificate is refused, and both sides say so', async () => {
    const o = await exchange(material(serverCert), withoutClientCert(clientTlsOptions(material(clientCert))));
    assert.equal(o.clientData, undefined);
    assert.equal(o.serverErrors.length, 1);
    assert.equal(o.serverErrors[0].code, 'TLS_PEER_CERT_MISSING', o.serverErrors[0].message);
    assert.match(o.serverErrors[0].message, /^server refused client at 127\.0\.0\.1:\d+: it presented no certificate$/);
    assert.equal(o.clientError?.code, 'TLS_PEER_CERT_MISSING', o.clientError?.message);
    assert.equal(o.clientError.message, `server at 127.0.0.1:${o.port} refused this client: a certificate is required and this client presented none`);
  });

  test('a client with a certificate from another CA is refused, and both sides say so', async () => {
    const stranger = await issueCertificate(otherCa, { commonName: 'stranger', role: 'agent' });
    const o = await exchange(material(serverCert), clientTlsOptions(materialTrusting(stranger, ca)));
    assert.equal(o.clientData, undefined);
    assert.equal(o.serverErrors.length, 1);
    assert.equal(o.serverErrors[0].code, 'TLS_PEER_CERT_UNTRUSTED', o.serverErrors[0].message);
    assert.match(o.serverErrors[0].message, /^server refused client at 127\.0\.0\.1:\d+: certificate not issued by this CA$/);
    assert.equal(o.clientError?.code, 'TLS_PEER_CERT_UNTRUSTED', o.clientError?.message);
    assert.match(o.clientError.message, /^server at 127\.0\.0\.1:\d+ refused this client: it closed the connection right after the TLS handshake/);
  });

  test('a server with a certificate from another CA is refused by the client', async () => {
    const stranger = await issueCertificate(otherCa, { commonName: 'impostor', role: 'agent' });
    const o = await exchange(materialTrusting(stranger, ca), clientTlsOptions(material(clientCert)));
    assert.equal(o.clientData, undefined);
    assert.equal(o.clientError?.code, 'TLS_PEER_CERT_UNTRUSTED', o.clientError?.message);
    assert.equal(o.clientError.message, `client refused server at 127.0.0.1:${o.port}: certificate not issued by this CA`);
    // The server only sees the client hang up mid-handshake.
    assert.equal(o.serverErrors[0]?.code, 'NETWORK_ERROR', o.serverErrors[0]?.message);
    assert.match(o.serverErrors[0].message, /^client at 127\.0\.0\.1:\d+ closed the connection during the TLS handshake/);
  });

  test('expired certificates are refused on either side', async () => {
    const longAgo = new Date(Date.now() - 10 * DAY);
    const oldClient = await issueCertificate(ca, { commonName: 'old-client', role: 'agent', notBefore: longAgo, validDays: 1 });
    assert.ok(oldClient.notAfter.getTime() < Date.now());
    const c = await exchange(material(serverCert), clientTlsOptions(material(oldClient)));
    assert.equal(c.serverErrors[0]?.code, 'TLS_PEER_CERT_UNTRUSTED', c.serverErrors[0]?.message);
    assert.match(c.serverErrors[0].message, /^server refused client at 127\.0\.0\.1:\d+: certificate has expired$/);
    assert.equal(c.clientError?.code, 'TLS_PEER_CERT_UNTRUSTED', c.clientError?.message);

    const oldServer = await issueCertificate(ca, { commonName: 'old-server', role: 'agent', notBefore: longAgo, validDays: 1 });
    const s = await exchange(material(oldServer), clientTlsOptions(material(clientCert)));
    assert.equal(s.clientError?.code, 'TLS_PEER_CERT_UNTRUSTED', s.clientError?.message);
    assert.equal(s.clientError.message, `client refused server at 127.0.0.1:${s.port}: certificate has expired`);
  });

  test('a client-role certificate cannot serve', async () => {
    const operator = await issueCertificate(ca, { commonName: 'operator', role: 'client' });
    const o = await exchange(material(operator), clientTlsOptions(material(clientCert)));
    assert.equal(o.clientError?.code, 'TLS_PEER_CERT_UNTRUSTED', o.clientError?.message);
    assert.match(o.clientError.message, /not valid for this use/);
  });

  test('a TLS 1.2 client is refused, and both sides say so', async () => {
    const o = await exchange(material(serverCert), { ...clientTlsOptions(material(clientCert)), minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' });
    assert.equal(o.clientData, undefined);
    assert.equal(o.serverErrors[0]?.code, 'TLS_HANDSHAKE_FAILED', o.serverErrors[0]?.message);
    assert.match(o.serverErrors[0].message, /^server refused client at 127\.0\.0\.1:\d+: it offered no TLS 1\.3/);
    assert.equal(o.clientError?.code, 'TLS_HANDSHAKE_FAILED', o.clientError?.message);
    assert.match(o.clientError.message, /^server at 127\.0\.0\.1:\d+ refused this client: no common TLS version/);
  });

  test('server and client options pin TLS 1.3 and the CA', () => {
    const m = material(serverCert);
    const s = serverTlsOptions(m);
    assert.equal(s.minVersion, 'TLSv1.3');
    assert.equal(s.maxVersion, 'TLSv1.3');
    assert.equal(s.requestCert, true);
    assert.equal(s.rejectUnauthorized, true);
    assert.equal(s.ca, m.ca);
    const c = clientTlsOptions(m, { servername: 'agent-a.example' });
    assert.deepEqual([c.minVersion, c.maxVersion, c.rejectUnauthorized, c.ca, c.cert, c.servername], ['TLSv1.3', 'TLSv1.3', true, m.ca, m.cert, 'agent-a.example']);
    const byIp = clientTlsOptions(m, { servername: '127.0.0.1' });
    assert.equal(byIp.servername, undefined, 'an IP is not sent as SNI');
    assert.equal(typeof byIp.checkServerIdentity, 'function');
  });
});

describe('classifyTlsError', () => {
  const peer = '10.0.0.7:7443';
  const cases: Array<[string, 'client' | 'server', string, RegExp]> = [
    ['ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'client', 'TLS_PEER_CERT_UNTRUSTED', /^server at 10\.0\.0\.7:7443 refused this client's certificate: not issued by the CA it trusts$/],
    ['ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE', 'client', 'TLS_PEER_CERT_UNTRUSTED', /^server at .* refused this client's certificate/],
    ['ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED', 'client', 'TLS_PEER_CERT_UNTRUSTED', /expired/],
    ['ERR_SSL_TLSV1_ALERT_UNKNOWN_CA', 'server', 'TLS_PEER_CERT_UNTRUSTED', /^client at .* refused this server's certificate/],
    ['ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED', 'client', 'TLS_PEER_CERT_MISSING', /^server at .* refused this client: a certificate is required/],
    ['PEER_DID_NOT_RETURN_A_CERTIFICATE', 'server', 'TLS_PEER_CERT_MISSING', /^server refused client at 10\.0\.0\.7:7443: it presented no certificate$/],
    ['DEPTH_ZERO_SELF_SIGNED_CERT', 'client', 'TLS_PEER_CERT_UNTRUSTED', /^client refused server at .*: certificate is self-signed/],
    ['CERT_SIGNATURE_FAILURE', 'server', 'TLS_PEER_CERT_UNTRUSTED', /^server refused client at .*: certificate signature does not verify/],
    ['ERR_SSL_WRONG_VERSION_NUMBER', 'client', 'TLS_HANDSHAKE_FAILED', /does not speak TLS 1\.3/],
    ['ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE', 'client', 'TLS_HANDSHAKE_FAILED', /^TLS handshake between this client and server at 10\.0\.0\.7:7443 failed/],
    ['ECONNREFUSED', 'client', 'NETWORK_ERROR', /^connection with server at 10\.0\.0\.7:7443 failed/],
    ['ERR_TLS_HANDSHAKE_TIMEOUT', 'server', 'NETWORK_ERROR', /timed out/],
  ];
  for (const [code, side, expected, message] of cases) {
    test(`${side} ${code} -> ${expected}`, () => {
      const err = Object.assign(new Error(`raw ${code}`), { code });
      const e = classifyTlsError(err, side, { peer });
      assert.equal(e.code, expected, e.message);
      assert.match(e.message, message);
      assert.equal(e.cause, err);
      assert.deepEqual(e.details, { side, peer, tlsCode: code, ...(e.details?.verifyError ? { verifyError: code } : {}) });
    });
  }

  test('an OsrError passes through unchanged', () => {
    const original = new OsrError('PROTOCOL_ERROR', 'bad frame');
    assert.equal(classifyTlsError(original, 'client'), original);
  });

  test('a clean close without a socket that completed a handshake is a network error', () => {
    assert.equal(classifyTlsError(undefined, 'client', { peer }).code, 'NETWORK_ERROR');
  });
});
