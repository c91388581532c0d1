/**
 * Mutual TLS between osr processes: TLS 1.3 only, both sides present a certificate, and
 * both trust exactly one CA (the osr CA) instead of the system roots.
 *
 * Handshake failures surface differently on the two sides, and with TLS 1.3 some of them
 * surface late: the client finishes its half of the handshake before the server has looked
 * at the client certificate, so a refusal reaches the client only when it next reads. And
 * when Node's server refuses a client certificate (unknown CA, expired) it closes the
 * connection without sending an alert, so all the client sees is the connection ending
 * before the server said anything. classifyTlsError turns all of these into an OsrError
 * that says which side saw what.
 */
import net from 'node:net';
import tls from 'node:tls';
import { type ErrorCode, OsrError } from '../domain/errors.js';
import { readCertificateInfo, type TlsMaterial } from './ca.js';

export type TlsSide = 'client' | 'server';

export interface PeerIdentity {
  commonName: string;
  role?: string;
  /** the fabric its `urn:osr:fabric:` name names (a certificate the vault issued to a fabric's agent or provider) */
  fabricId?: string;
  fingerprintSha256: string;
}

export interface ClientTlsOptionsInput {
  /**
   * The name the server's certificate must carry. Defaults to the host connected to. An IP
   * address is checked against the certificate's IP names (it cannot be sent as SNI).
   */
  servername?: string;
}

export interface TlsErrorContext {
  /**
   * The connection the error happened on. It supplies the peer address and, for refusals
   * that arrive only as a closed connection, whether the handshake had completed.
   */
  socket?: tls.TLSSocket;
  /** "host:port" of the peer; wins over what the socket reports (which is gone once it closed). */
  peer?: string;
}

/**
 * TLS 1.3 suites in order of preference. AES-128-GCM comes first: it is the suite every
 * TLS 1.3 peer must implement, and with AES-NI it costs about two thirds of AES-256-GCM
 * per byte, which matters on a link that carries whole disks.
 */
export const TLS13_CIPHERSUITES = 'TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256';

/**
 * Node's `ciphers` option takes both lists; the TLS 1.2 part stays Node's default so that an
 * old client is still told plainly that its protocol version is refused (minVersion).
 */
const CIPHERS = [TLS13_CIPHERSUITES, ...tls.DEFAULT_CIPHERS.split(':').filter((c) => !c.startsWith('TLS_'))].join(':');

/** Options for tls.createServer: TLS 1.3 only, a client certificate from the CA required. */
export function serverTlsOptions(m: TlsMaterial): tls.TlsOptions {
  return {
    key: m.key,
    cert: m.cert,
    // Pinning the CA replaces the system roots: only certificates from the osr CA pass.
    ca: m.ca,
    // and, with the CA's revocation list, none it took back
    ...(m.crl !== undefined ? { crl: m.crl } : {}),
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ciphers: CIPHERS,
    honorCipherOrder: true,
  };
}

/** Options for tls.connect: TLS 1.3 only, presents the client certificate, trusts only the CA. */
export function clientTlsOptions(m: TlsMaterial, opts: ClientTlsOptionsInput = {}): tls.ConnectionOptions {
  const options: tls.ConnectionOptions = {
    key: m.key,
    cert: m.cert,
    ca: m.ca,
    ...(m.crl !== undefined ? { crl: m.crl } : {}),
    rejectUnauthorized: true,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ciphers: CIPHERS,
  };
  const name = opts.servername;
  if (name !== undefined && name !== '') {
    if (net.isIP(name) !== 0) {
      // SNI cannot carry an IP address, so the name check is pointed at it directly.
      options.checkServerIdentity = (_host, cert) => tls.checkServerIdentity(name, cert);
    } else {
      options.servername = name;
    }
  }
  return options;
}

/**
 * The verified identity of the peer on an established connection. Throws when the peer
 * presented no certificate or its certificate was not verified against the CA, so that
 * the identity can never come from an unverified certificate.
 */
export function peerIdentity(socket: tls.TLSSocket): PeerIdentity {
  // a connection's peer does not change: its certificate is parsed once, not on each request
  const known = identities.get(socket);
  if (known) return known;
  const cert = socket.getPeerX509Certificate();
  if (!cert) {
    throw new OsrError('TLS_PEER_CERT_MISSING', `peer at ${describePeer(socket)} presented no certificate`);
  }
  if (!socket.authorized) {
    const why = socket.authorizationError ? `: ${String(socket.authorizationError)}` : '';
    throw new OsrError('TLS_PEER_CERT_UNTRUSTED', `peer at ${describePeer(socket)} has a certificate that was not verified against the CA${why}`);
  }
  const info = readCertificateInfo(cert.toString());
  const identity: PeerIdentity = Object.freeze({
    commonName: info.commonName,
    ...(info.role !== undefined ? { role: info.role } : {}),
    ...(info.fabricId !== undefined ? { fabricId: info.fabricId } : {}),
    fingerprintSha256: info.fingerprintSha256,
  });
  identities.set(socket, identity);
  return identity;
}

/** Each connection's verified peer, once read. Its certificate cannot change on the connection; whether it is still accepted (revocation, renewal) callers check on each use. */
const identities = new WeakMap<tls.TLSSocket, PeerIdentity>();

/**
 * Subscribes to a TLS server's failed client connections, classified. When Node refuses a
 * client certificate it tears the socket down before 'tlsClientError' fires, which loses
 * the client's address, so the address is noted as the TCP connection arrives.
 */
export function onTlsClientError(server: tls.Server, handler: (err: OsrError, socket: tls.TLSSocket) => void): void {
  server.on('connection', (raw: net.Socket) => {
    if (raw.remoteAddress !== undefined) rawAddresses.set(raw, formatAddress(raw.remoteAddress, raw.remotePort));
  });
  server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
    handler(classifyTlsError(err, 'server', { socket }), socket);
  });
}

/**
 * Maps a Node/OpenSSL error seen by one side of an mTLS connection to an OsrError.
 *
 * `side` is the side that saw the error. Pass the socket in `ctx` whenever there is one:
 * on the server it carries the verdict on the client certificate, which Node records on
 * the socket rather than in the error. Pass `err` undefined when a client's connection
 * ended cleanly without the server sending anything: with TLS 1.3 that is how a Node
 * server refuses a client certificate it does not trust.
 */
export function classifyTlsError(err: unknown, side: TlsSide, ctx: TlsErrorContext = {}): OsrError {
  if (err instanceof OsrError) return err;
  const e = (err ?? undefined) as (Error & { code?: unknown; reason?: unknown; address?: unknown; port?: unknown }) | undefined;
  const rawCode = typeof e?.code === 'string' ? e.code : undefined;
  // A bare close or reset says nothing by itself; on the server, the verdict on the client's
  // certificate that made Node drop the connection is on the socket instead.
  const ended = err === undefined || err === null || rawCode === 'ECONNRESET' || rawCode === 'EPIPE' || rawCode === 'ERR_STREAM_PREMATURE_CLOSE';
  const code = (ended ? authorizationErrorOf(ctx.socket) : undefined) ?? rawCode;
  const peer = ctx.peer ?? describePeer(ctx.socket, e);
  const other: TlsSide = side === 'server' ? 'client' : 'server';
  const details = { side, peer, ...(rawCode !== undefined ? { tlsCode: rawCode } : {}) };
  const make = (c: ErrorCode, message: string, extra: Record<string, unknown> = {}): OsrError =>
    new OsrError(c, message, { ...details, ...extra }, err === undefined || err === null ? undefined : { cause: err });
  // "server refused client at 127.0.0.1:51234" / "client refused server at 127.0.0.1:7443"
  const weRefused = `${side} refused ${other} at ${peer}`;
  // "server at 127.0.0.1:7443 refused this client" / "client at ... refused this server"
  const theyRefused = `${other} at ${peer} refused this ${side}`;

  // Our own verification of the peer's certificate failed.
  if (code !== undefined && VERIFY_REASONS[code] !== undefined) {
    return make('TLS_PEER_CERT_UNTRUSTED', `${weRefused}: ${VERIFY_REASONS[code]}`, { verifyError: code });
  }

  switch (code) {
    case 'PEER_DID_NOT_RETURN_A_CERTIFICATE':
    case 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE':
      return make('TLS_PEER_CERT_MISSING', `${weRefused}: it presented no certificate`);
    case 'ERR_SSL_TLSV13_ALERT_CERTIFICATE_REQUIRED':
      return make('TLS_PEER_CERT_MISSING', `${theyRefused}: a certificate is required and this ${side} presented none`);
    case 'ERR_SSL_CERTIFICATE_VERIFY_FAILED':
      return make('TLS_PEER_CERT_UNTRUSTED', `${weRefused}: its certificate failed verification against this CA`);
    case 'ERR_TLS_CERT_ALTNAME_INVALID': {
      const reason = code === rawCode && typeof e?.reason === 'string' ? ` (${e.reason})` : '';
      return make('TLS_HANDSHAKE_FAILED', `${weRefused}: its certificate does not name the address used${reason}`);
    }
    case 'ERR_SSL_HTTP_REQUEST':
      return make('TLS_HANDSHAKE_FAILED', `${weRefused}: it sent plain HTTP, not TLS`);
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
      return make('TLS_HANDSHAKE_FAILED', `handshake between this ${side} and ${other} at ${peer} failed: the peer does not speak TLS 1.3 (is it a TLS port?)`);
    case 'ERR_TLS_HANDSHAKE_TIMEOUT':
      return make('NETWORK_ERROR', `TLS handshake with ${other} at ${peer} timed out`);
    default:
      break;
  }
  if (code !== undefined && PROTOCOL_CODES.has(code)) {
    return code.includes('ALERT')
      ? make('TLS_HANDSHAKE_FAILED', `${theyRefused}: no common TLS version (osr speaks TLS 1.3 only)`)
      : make('TLS_HANDSHAKE_FAILED', `${weRefused}: it offered no TLS 1.3 (osr speaks TLS 1.3 only)`);
  }
  if (code !== undefined && CERT_ALERTS[code] !== undefined) {
    return make('TLS_PEER_CERT_UNTRUSTED', `${theyRefused}'s certificate: ${CERT_ALERTS[code]}`);
  }
  if (code !== rawCode) {
    // A verification result from the socket that has no entry above.
    return make('TLS_PEER_CERT_UNTRUSTED', `${weRefused}: certificate not trusted (${String(code)})`, { verifyError: code });
  }

  // The connection ended on a client whose handshake had completed, before the server sent
  // a single byte: that is how a Node TLS 1.3 server refuses a client certificate.
  if (side === 'client' && ended && ctx.socket?.authorized === true && ctx.socket.bytesRead === 0) {
    return make(
      'TLS_PEER_CERT_UNTRUSTED',
      `${theyRefused}: it closed the connection right after the TLS handshake without sending anything, which is how it refuses a client certificate it does not trust (not issued by its CA, or expired); the server's log names the reason`,
    );
  }

  const library = (e as { library?: unknown } | undefined)?.library;
  if (code?.startsWith('ERR_SSL_') === true || library === 'SSL routines') {
    const reason = typeof e?.reason === 'string' ? e.reason : e?.message ?? String(code);
    return make('TLS_HANDSHAKE_FAILED', `TLS handshake between this ${side} and ${other} at ${peer} failed: ${reason}`);
  }
  if (side === 'server' && rawCode === 'ECONNRESET' && ctx.socket !== undefined) {
    // On 'tlsClientError' a reset means the client hung up mid-handshake, which is what a
    // Node client does when it does not trust this server's certificate.
    return make('NETWORK_ERROR', `client at ${peer} closed the connection during the TLS handshake (a client that does not trust this server's certificate does this; see the client's log)`);
  }
  if (err === undefined || err === null) {
    return make('NETWORK_ERROR', `connection with ${other} at ${peer} closed unexpectedly`);
  }
  return make('NETWORK_ERROR', `connection with ${other} at ${peer} failed: ${e?.message ?? String(err)}`);
}

// ---------------------------------------------------------------------------

/** OpenSSL verification results (as Node reports them) and what they mean to an operator. */
const NOT_FROM_CA = 'certificate not issued by this CA';
const VERIFY_REASONS: Record<string, string> = {
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: NOT_FROM_CA,
  UNABLE_TO_GET_ISSUER_CERT: NOT_FROM_CA,
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: NOT_FROM_CA,
  SELF_SIGNED_CERT_IN_CHAIN: NOT_FROM_CA,
  CERT_UNTRUSTED: NOT_FROM_CA,
  DEPTH_ZERO_SELF_SIGNED_CERT: 'certificate is self-signed, not issued by this CA',
  CERT_HAS_EXPIRED: 'certificate has expired',
  CERT_NOT_YET_VALID: 'certificate is not valid yet (check both clocks)',
  CERT_SIGNATURE_FAILURE: 'certificate signature does not verify against this CA',
  UNABLE_TO_DECRYPT_CERT_SIGNATURE: 'certificate signature does not verify against this CA',
  UNABLE_TO_DECODE_ISSUER_PUBLIC_KEY: 'certificate signature does not verify against this CA',
  ERROR_IN_CERT_NOT_BEFORE_FIELD: 'certificate has a malformed validity period',
  ERROR_IN_CERT_NOT_AFTER_FIELD: 'certificate has a malformed validity period',
  INVALID_PURPOSE: 'certificate is not valid for this use (its extended key usage does not allow it)',
  INVALID_CA: 'certificate chain holds a certificate that is not a CA',
  CERT_REVOKED: 'certificate has been revoked',
  CERT_REJECTED: 'certificate is marked as rejected',
  CERT_CHAIN_TOO_LONG: 'certificate chain is too long',
  PATH_LENGTH_EXCEEDED: 'certificate chain is longer than the CA allows',
};

/** Alerts a peer sends when it rejects our certificate. */
const CERT_ALERTS: Record<string, string> = {
  ERR_SSL_TLSV1_ALERT_UNKNOWN_CA: 'not issued by the CA it trusts',
  ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE: 'rejected as bad (not issued by its CA, or malformed)',
  ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED: 'it has expired',
  ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED: 'it has been revoked',
  ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN: 'rejected (certificate unknown)',
  ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE: 'rejected as unsupported (wrong key usage or type)',
  ERR_SSL_TLSV1_ALERT_ACCESS_DENIED: 'access denied',
  ERR_SSL_TLSV1_ALERT_DECRYPT_ERROR: 'its signature did not verify',
};

/** Codes for "no TLS version in common"; those naming an ALERT came from the peer. */
const PROTOCOL_CODES = new Set([
  'ERR_SSL_UNSUPPORTED_PROTOCOL',
  'ERR_SSL_NO_PROTOCOLS_AVAILABLE',
  'ERR_SSL_VERSION_TOO_LOW',
  'ERR_SSL_VERSION_TOO_HIGH',
  'ERR_SSL_UNSUPPORTED_SSL_VERSION',
  'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION',
]);

/** TCP sockets seen by onTlsClientError, with the address they came from. */
const rawAddresses = new WeakMap<object, string>();

function authorizationErrorOf(socket: tls.TLSSocket | undefined): string | undefined {
  if (!socket || socket.authorized) return undefined;
  const v: unknown = socket.authorizationError;
  if (v === null || v === undefined) return undefined;
  const s = typeof v === 'string' ? v : v instanceof Error ? String((v as Error & { code?: unknown }).code ?? v.message) : String(v);
  return s === '' ? undefined : s;
}

function formatAddress(address: string, port: number | undefined): string {
  const host = address.includes(':') ? `[${address}]` : address;
  return port === undefined ? host : `${host}:${port}`;
}

function describePeer(socket: tls.TLSSocket | undefined, err?: { address?: unknown; port?: unknown }): string {
  if (socket?.remoteAddress !== undefined) return formatAddress(socket.remoteAddress, socket.remotePort);
  // Node's server-side TLS socket keeps the TCP socket it wraps in `_parent`.
  const parent = (socket as unknown as { _parent?: unknown } | undefined)?._parent;
  if (parent !== null && typeof parent === 'object') {
    const known = rawAddresses.get(parent);
    if (known !== undefined) return known;
  }
  if (typeof err?.address === 'string') return formatAddress(err.address, typeof err.port === 'number' ? err.port : undefined);
  return 'unknown address';
}

/**
 * The usual name check, and the role: providers, the CLI and a vault's peers talk only to
 * a vault (OU=vault); an agent's or a provider's certificate from the same CA is refused.
 */
export function checkVaultIdentity(host: string, cert: tls.PeerCertificate): Error | undefined {
  const nameError = tls.checkServerIdentity(host, cert);
  if (nameError) return nameError;
  const ou = cert.subject?.OU;
  const roles = Array.isArray(ou) ? ou : ou === undefined ? [] : [ou];
  if (!roles.includes('vault')) {
    return new OsrError('AUTH_FAILED', `the server at ${host} has a certificate of role ${roles.join(',') || '(none)'} (${String(cert.subject?.CN)}), not a vault's; refusing to talk to it`, { role: roles.join(',') || null });
  }
  return undefined;
}
