/**
 * The local API's routes through which a provider enrols an agent it did not start (a KVM
 * host's, docs/agent-api.md "Enrolment"): the agent makes a key pair, hands out its public
 * key, and takes the certificate the vault's CA issued for it, with that CA (and later its
 * revocation list). The private key never leaves the host. The files replace the agent's
 * TLS files (the ones it was started with, from `osr pki` or an earlier enrolment); the
 * agent loads them without a restart (agent.ts, watchTls).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { OsrError } from '../domain/errors.js';
import { fsyncDir, generateKeyPairPem, readCertificateInfo, readCrl, signEnrolmentProof, writeFileAtomic, type EnrolmentProof } from '../pki/index.js';
import type { Agent } from './agent.js';

const PEM_MAX = 64 * 1024;

function certificateOf(pem: string, what: string): crypto.X509Certificate {
  try {
    return new crypto.X509Certificate(pem);
  } catch (e) {
    throw new OsrError('INVALID_ARGUMENT', `${what} is not a PEM certificate: ${(e as Error).message}`, { field: what });
  }
}

const publicKeyDer = (k: crypto.KeyObject): string => k.export({ type: 'spki', format: 'der' }).toString('base64');

/** A proof of the agent's current certificate, when it holds one from its CA with its name (none otherwise). */
function currentProof(tls: { certFile: string; keyFile: string; caFile: string }, name: string, publicKeyPem: string): EnrolmentProof | undefined {
  try {
    const certPem = fs.readFileSync(tls.certFile, 'utf8');
    const cert = new crypto.X509Certificate(certPem);
    const ca = new crypto.X509Certificate(fs.readFileSync(tls.caFile, 'utf8'));
    if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey) || readCertificateInfo(certPem).commonName !== name) return undefined;
    return signEnrolmentProof({ certPem, keyPem: fs.readFileSync(tls.keyFile, 'utf8') }, name, publicKeyPem);
  } catch {
    // no certificate yet (a bootstrap agent), or none that can sign: no proof to give
    return undefined;
  }
}

export function addEnrolmentRoutes(app: FastifyInstance, agent: Agent): void {
  const tls = agent.config.tls;
  const pendingKey = path.join(agent.config.dataDir, 'enrolment', 'pending.key');

  /** The agent's certificate and CA now (what a provider checks before it enrols the agent again). */
  app.get('/v1/enrolment', async () => {
    const read = (f: string) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : null);
    const cert = read(tls.certFile);
    const info = cert ? readCertificateInfo(cert) : null;
    return {
      name: agent.config.name,
      certificate: cert && info ? { pem: cert, commonName: info.commonName, notBefore: info.notBefore.toISOString(), notAfter: info.notAfter.toISOString(), serial: new crypto.X509Certificate(cert).serialNumber.toLowerCase() } : null,
      caCertificate: read(tls.caFile),
      pending: fs.existsSync(pendingKey),
    };
  });

  /** A new key pair for the next certificate (kept until a certificate for it arrives; asked again, the same key). */
  app.post('/v1/enrolment/key', async () => {
    let privateKeyPem: string;
    if (fs.existsSync(pendingKey)) privateKeyPem = fs.readFileSync(pendingKey, 'utf8');
    else {
      fs.mkdirSync(path.dirname(pendingKey), { recursive: true, mode: 0o700 });
      privateKeyPem = (await generateKeyPairPem()).privateKeyPem;
      await writeFileAtomic(pendingKey, privateKeyPem, 0o600);
      await fsyncDir(path.dirname(pendingKey));
    }
    const publicKeyPem = crypto.createPublicKey(privateKeyPem).export({ type: 'spki', format: 'pem' }).toString();
    // holding a certificate from its CA, the agent proves it with that certificate's key: the
    // vault renews a valid certificate only for its holder
    const proof = currentProof(tls, agent.config.name, publicKeyPem);
    return { name: agent.config.name, publicKeyPem, ...(proof ? { proof } : {}) };
  });

  /** The certificate for the pending key, from the CA given with it: they become the agent's TLS files. */
  app.put<{ Body: { certificate: string; caCertificate: string } }>(
    '/v1/enrolment/certificate',
    { schema: { body: { type: 'object', required: ['certificate', 'caCertificate'], additionalProperties: false, properties: { certificate: { type: 'string', maxLength: PEM_MAX }, caCertificate: { type: 'string', maxLength: PEM_MAX } } } } },
    async (req) => {
      const cert = certificateOf(req.body.certificate, 'certificate');
      const ca = certificateOf(req.body.caCertificate, 'caCertificate');
      if (!cert.checkIssued(ca) || !cert.verify(ca.publicKey)) throw new OsrError('INVALID_ARGUMENT', 'the certificate was not issued by the CA given with it', { field: 'certificate' });
      const cn = readCertificateInfo(req.body.certificate).commonName;
      if (cn !== agent.config.name) throw new OsrError('INVALID_ARGUMENT', `the certificate names ${cn}; this agent is ${agent.config.name}`, { field: 'certificate' });
      const current = fs.existsSync(tls.certFile) ? fs.readFileSync(tls.certFile, 'utf8') : '';
      if (current.trim() === req.body.certificate.trim()) {
        // installed already (the call made a second time)
        if (fs.readFileSync(tls.caFile, 'utf8').trim() !== req.body.caCertificate.trim()) await writeFileAtomic(tls.caFile, req.body.caCertificate, 0o644);
        return { serial: cert.serialNumber.toLowerCase(), notAfter: new Date(cert.validTo).toISOString(), installed: true };
      }
      if (!fs.existsSync(pendingKey)) throw new OsrError('INVALID_STATE', 'this agent has no pending key for a certificate: ask for one first (POST /v1/enrolment/key)');
      const key = fs.readFileSync(pendingKey, 'utf8');
      if (publicKeyDer(crypto.createPublicKey(key)) !== publicKeyDer(cert.publicKey)) throw new OsrError('INVALID_ARGUMENT', "the certificate is not for this agent's pending key: ask for the key again and have it certified", { field: 'certificate' });
      // the key first: a certificate never names a key the agent does not have
      await writeFileAtomic(tls.keyFile, key, 0o600);
      if (!fs.existsSync(tls.caFile) || fs.readFileSync(tls.caFile, 'utf8').trim() !== req.body.caCertificate.trim()) await writeFileAtomic(tls.caFile, req.body.caCertificate, 0o644);
      await writeFileAtomic(tls.certFile, req.body.certificate, 0o644);
      for (const dir of new Set([tls.keyFile, tls.caFile, tls.certFile].map((f) => path.dirname(f)))) await fsyncDir(dir);
      fs.rmSync(pendingKey, { force: true });
      agent.log.info({ serial: cert.serialNumber, notAfter: cert.validTo }, 'enrolled: certificate from the provider installed');
      // in use at once: the next connection is served with it
      await agent.reloadTls();
      return { serial: cert.serialNumber.toLowerCase(), notAfter: new Date(cert.validTo).toISOString(), installed: true };
    },
  );

  /** The CA's revocation list: peers whose certificates it names are refused. */
  app.put<{ Body: { crl: string } }>(
    '/v1/enrolment/crl',
    { schema: { body: { type: 'object', required: ['crl'], additionalProperties: false, properties: { crl: { type: 'string', maxLength: 4 * 1024 * 1024 } } } } },
    async (req) => {
      if (!tls.crlFile) throw new OsrError('NOT_SUPPORTED', 'this agent was started without a revocation list file: give it --crl FILE or --pki-dir');
      const ca = fs.readFileSync(tls.caFile, 'utf8');
      let list: Awaited<ReturnType<typeof readCrl>>;
      try {
        list = await readCrl(req.body.crl, ca);
      } catch (e) {
        throw new OsrError('INVALID_ARGUMENT', `${(e as Error).message} (the agent's CA)`, { field: 'crl' });
      }
      const serials = list.serials;
      const current = fs.existsSync(tls.crlFile) ? fs.readFileSync(tls.crlFile, 'utf8') : undefined;
      // never back to an older list: it could leave out a certificate revoked since (a list of another CA is replaced)
      const held = current !== undefined ? await readCrl(current, ca).catch(() => undefined) : undefined;
      const older = (why: string): never => {
        throw new OsrError('INVALID_ARGUMENT', `the revocation list ${why}: an older list is not taken`, { field: 'crl', thisUpdate: list.thisUpdate.toISOString(), crlNumber: list.crlNumber ?? null, held: held?.thisUpdate.toISOString() ?? null, heldNumber: held?.crlNumber ?? null });
      };
      if (held !== undefined) {
        // the CRL number orders lists made within one second too; a list without one is older than one with
        if (held.crlNumber !== undefined && (list.crlNumber === undefined || list.crlNumber < held.crlNumber)) older(`has CRL number ${list.crlNumber ?? '(none)'}, below the ${held.crlNumber} of the one this agent holds`);
        if ((list.crlNumber === undefined || list.crlNumber === held.crlNumber) && list.thisUpdate.getTime() < held.thisUpdate.getTime()) older(`was made at ${list.thisUpdate.toISOString()}, before the one this agent holds (${held.thisUpdate.toISOString()})`);
      }
      if (current !== req.body.crl) {
        await writeFileAtomic(tls.crlFile, req.body.crl, 0o644);
        await agent.reloadTls();
      }
      return { revoked: serials.length };
    },
  );
}
