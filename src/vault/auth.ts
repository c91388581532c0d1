/**
 * Who may call what. Every route declares its access: a permission (read, operate,
 * configure, admin) that a bearer token's role must grant, "provider" for the provider
 * channel (a client certificate from the vault's CA, role provider, of a provider still
 * registered), or "public". Every mutating call by a token is audited after its answer:
 * who, what, when, and the result. A request that is not authenticated writes nothing to
 * the database: it is counted in /metrics (osr_vault_unauthenticated_requests_total), and
 * one that may be guessing (an unknown token, a registration key with a wrong secret)
 * counts against its address (auth-throttle.ts).
 */
import tls from 'node:tls';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { OsrError } from '../domain/errors.js';
import { allows, type Permission } from '../domain/roles.js';
import { peerIdentity } from '../pki/index.js';
import type { App, VaultContext } from './context.js';

const TOUCH_EVERY_MS = 60_000;
const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export function installAuth(app: App, ctx: VaultContext): void {
  const touched = new Map<string, number>();

  app.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    const access = request.routeOptions.config?.access;
    // a standby or stale vault serves reads; every change, and the provider channel, goes to the primary
    if (!ctx.role.writable && (MUTATING.has(request.method) || access === 'provider') && request.routeOptions.config?.anyRole !== true) ctx.role.assertWritable();
    if (access === 'public' && request.routeOptions.config?.credential !== true) return;
    if (access === undefined) {
      // only Fastify's own not-found answer has no access level; a route that forgot one is closed
      if (request.is404) return;
      ctx.metrics.unauthenticated.inc({ reason: 'closed-route' });
      throw new OsrError('FORBIDDEN', `${request.method} ${request.routeOptions.url} declares no access level; it is closed`);
    }
    // an address that failed too often is refused before its credential is even looked at
    const wait = ctx.authThrottle.retryAfter(request.ip);
    if (wait !== undefined) {
      ctx.metrics.unauthenticated.inc({ reason: 'throttled' });
      void reply.header('retry-after', String(wait));
      throw new OsrError('AUTH_THROTTLED', `too many failed authentications from ${request.ip}; try again in ${wait} s`, { retryAfterSeconds: wait });
    }
    if (access === 'public') return;
    if (access === 'provider') {
      try {
        request.principal = await providerPrincipal(request, ctx);
      } catch (e) {
        // a certificate cannot be guessed (the vault's CA signs it): a refused one is counted, not slowed down
        ctx.metrics.unauthenticated.inc({ reason: 'certificate' });
        throw e;
      }
      return;
    }
    const header = request.headers.authorization;
    const m = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!m) {
      ctx.metrics.unauthenticated.inc({ reason: 'no-token' });
      throw new OsrError('UNAUTHENTICATED', 'this call needs an API token: send "Authorization: Bearer <token>"');
    }
    const token = await ctx.store.activity.authenticate(m[1]!);
    if (!token) {
      // a revoked token was a real one (a client not told yet), an unknown one may be a guess
      if (await ctx.store.activity.isRevokedToken(m[1]!)) ctx.metrics.unauthenticated.inc({ reason: 'revoked-token' });
      else await authFailure(ctx, request, 'bad-token');
      throw new OsrError('UNAUTHENTICATED', 'the API token is unknown or revoked');
    }
    request.principal = { actor: `${token.name} (${token.id})`, role: token.role, tokenId: token.id };
    if (!allows(token.role, access as Permission)) {
      throw new OsrError('FORBIDDEN', `the ${token.role} role may not ${describe(access as Permission)}`, { role: token.role, needs: access });
    }
    const t = ctx.clock.now();
    if (ctx.role.writable && (touched.get(token.id) ?? 0) + TOUCH_EVERY_MS < t) {
      touched.set(token.id, t);
      await ctx.store.activity.touchToken(token.id);
    }
  });

  app.addHook('onResponse', async (request: FastifyRequest, reply: FastifyReply) => {
    const access = request.routeOptions.config?.access;
    const route = request.routeOptions.url ?? 'unknown';
    ctx.metrics.requests.inc({ method: request.method, route, status: String(reply.statusCode) });
    ctx.metrics.duration.observe({ method: request.method, route }, reply.elapsedTime / 1000);
    if (!MUTATING.has(request.method) || access === 'provider' || access === undefined) return;
    // a standby cannot write the record (a promotion is recorded as an event once it took)
    if (!ctx.role.writable) return;
    // only what an authenticated caller did is audited (a registration: once its key was taken)
    if (!request.principal && !(access === 'public' && reply.statusCode < 400)) return;
    const who = request.principal ?? { actor: 'registration', role: null };
    try {
      await ctx.store.activity.audit({
        actor: who.actor,
        role: who.role,
        method: request.method,
        path: request.url.split('?')[0]!,
        action: `${request.method} ${route}`,
        status: reply.statusCode,
        code: request.errorCode ?? null,
      });
    } catch (e) {
      request.log.error({ err: e }, 'writing the audit record failed');
    }
  });
}

/**
 * A wrong credential: counted in /metrics and against the caller's address, and answered
 * after the pause the throttle asks for.
 */
export async function authFailure(ctx: VaultContext, request: FastifyRequest, reason: string): Promise<void> {
  ctx.metrics.unauthenticated.inc({ reason });
  const pause = ctx.authThrottle.fail(request.ip);
  if (pause > 0) await ctx.clock.sleep(pause);
}

function describe(p: Permission): string {
  switch (p) {
    case 'read':
      return 'read';
    case 'operate':
      return 'run operations (failover, jobs)';
    case 'configure':
      return 'change configuration';
    case 'admin':
      return 'manage tokens, registration keys and what webhooks may reach';
  }
}

async function providerPrincipal(request: FastifyRequest, ctx: VaultContext) {
  const socket = request.raw.socket;
  if (!(socket instanceof tls.TLSSocket)) throw new OsrError('TLS_PEER_CERT_MISSING', 'the provider channel needs TLS with a provider certificate');
  const id = peerIdentity(socket);
  if (id.role !== 'provider') throw new OsrError('FORBIDDEN', `a ${id.role ?? 'role-less'} certificate cannot use the provider channel`);
  const provider = await ctx.store.fabrics.provider(id.commonName);
  if (!provider) throw new OsrError('UNAUTHENTICATED', `provider ${id.commonName} is not registered (it was removed); register it again with a new key`);
  if (provider.certificateFingerprint !== id.fingerprintSha256) {
    if (provider.nextCertificateFingerprint !== id.fingerprintSha256) throw new OsrError('UNAUTHENTICATED', `provider ${id.commonName} presented a certificate other than the one it registered with`);
    // the first call with a renewed certificate: from now on only it is accepted, and the old one is revoked
    const replaced = await ctx.store.fabrics.adoptProviderCertificate(provider.id, id.fingerprintSha256);
    if (replaced) await ctx.store.certificates.revokeSerial(replaced, 'superseded by a renewed certificate');
  }
  return { actor: `provider:${provider.name} (${provider.id})`, role: null, providerId: provider.id, fabricId: provider.fabricId };
}
