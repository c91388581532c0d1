/**
 * Providers: registration with a key (public: the key is the credential), and from then
 * on the provider channel, over mutual TLS with the certificate registration gave:
 * heartbeats, inventory, commands fetched by long-poll, their progress and results, and
 * the replication status of protected items.
 */
import { randomUUID } from 'node:crypto';
import { isIP } from 'node:net';
import { Type } from '@fastify/type-provider-typebox';
import type { FabricCapabilities } from '../../domain/capabilities.js';
import { ERROR_CODES, OsrError } from '../../domain/errors.js';
import { MAX_NAME_LENGTH, SAFE_NAME_PATTERN } from '../../domain/names.js';
import { Health, ProtectionState, Severity, type HealthReason, type InventoryDocument } from '../../domain/resources.js';
import { createCrl, issueCertificate, verifyEnrolmentProof } from '../../pki/index.js';
import { fabricIdFor } from '../../store/inventory.js';
import { AlertKind } from '../../workflows/alerting.js';
import { itemCriticalKey } from '../../workflows/protection.js';
import { authFailure } from '../auth.js';
import { principal, type App, type VaultContext } from '../context.js';
import { certificateFingerprint } from '../identity.js';
import { heartbeatAlertKey } from '../monitor.js';
import { isTerm, TERM_HEADER } from '../../domain/vault-status.js';
import { adoptOutsideFailover } from '../../workflows/outside-failover.js';
import { MAX_REPLICATION_EPOCH } from '../../domain/replicas.js';
import { FabricCapabilitiesSchema, IdParam, InventoryDocumentSchema, Name } from '../schemas.js';

/** a recovery point dated later than the vault's time by more than this is refused: a clock that far ahead would make it the newest forever */
const MAX_POINT_CLOCK_SKEW_MS = 10 * 60_000;

/** Inventory documents of big fabrics are large; everything else stays under the default limit. */
const INVENTORY_BODY_LIMIT = 64 * 1024 * 1024;
/** Lifetimes of the certificates issued here; each is renewed two thirds in, over the provider channel. */
const PROVIDER_CERT_DAYS = 365;
const AGENT_CERT_DAYS = 365;
/** Inventory changes beyond this many become one summary event instead of one each. */
const EVENTS_PER_SYNC = 200;

const VAULT_ONLY_CODES = new Set(['LEASE_LOST', 'STORE_UNAVAILABLE', 'STORE_SCHEMA_NEWER', 'UNAUTHENTICATED', 'FORBIDDEN']);

const Scope = Type.Union([Type.Literal('all'), Type.Array(Name, { maxItems: 1000 })]);
const ErrorSchema = Type.Object({ code: Type.String({ maxLength: 100 }), message: Type.String({ maxLength: 10_000 }), details: Type.Optional(Type.Record(Type.String(), Type.Unknown())) });

/** Only the chosen clouds (by name) and their VMs, when the provider syncs a few clouds. */
function scoped(doc: InventoryDocument, scope: 'all' | string[]): InventoryDocument {
  if (scope === 'all') return doc;
  const clouds = doc.clouds.filter((c) => scope.includes(c.name));
  const ids = new Set(clouds.map((c) => c.id));
  return { ...doc, clouds, vms: doc.vms.filter((v) => ids.has(v.cloud)) };
}

export const providerRoutes = (ctx: VaultContext) => async (app: App) => {
  const { store, clock, alerting } = ctx;
  const tags = ['providers'];

  app.post(
    '/registrations',
    {
      config: { access: 'public', credential: true },
      schema: {
        summary: 'register a provider with a registration key; answers with its client certificate',
        tags,
        security: [],
        body: Type.Object(
          {
            key: Type.String({ minLength: 1, maxLength: 4096 }),
            vault: Name,
            fabric: Type.Object({ name: Name, kind: Type.String({ minLength: 1, maxLength: 50 }) }, { additionalProperties: false }),
            serverName: Name,
            version: Type.String({ minLength: 1, maxLength: 50 }),
            publicKey: Type.String({ minLength: 1, maxLength: 10_000 }),
            proxy: Type.Optional(Type.Object({ url: Type.String({ minLength: 1, maxLength: 2000 }), bypass: Type.Optional(Type.Array(Type.String({ maxLength: 255 }), { maxItems: 100 })) }, { additionalProperties: false })),
            inventoryScope: Type.Optional(Scope),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (request, reply) => {
      const b = request.body;
      if (b.vault !== ctx.identity.name) throw new OsrError('REGISTRATION_KEY_INVALID', `this is vault "${ctx.identity.name}", not "${b.vault}"`);
      const providerId = `prov-${randomUUID()}`;
      const key = await store.activity.useRegistrationKey(b.key, ctx.identity.name, `${b.serverName} (${providerId})`).catch(async (e: unknown) => {
        // a wrong secret may be a guess; a used, expired or revoked key was a real one
        if (e instanceof OsrError && e.code === 'REGISTRATION_KEY_INVALID') await authFailure(ctx, request, 'registration-key');
        else if (e instanceof OsrError && e.code.startsWith('REGISTRATION_KEY_')) ctx.metrics.unauthenticated.inc({ reason: 'registration-key' });
        throw e;
      });
      try {
        // the fabric the provider registers for, as the store names it (its agents check it: agent-channel.md)
        const cert = await issueCertificate(ctx.identity.ca, { commonName: providerId, role: 'provider', publicKeyPem: b.publicKey, dnsNames: [], ipAddresses: [], fabricId: fabricIdFor(b.fabric.name), validDays: PROVIDER_CERT_DAYS });
        const { fabric, provider } = await store.fabrics.registerProvider({
          providerId,
          fabricName: b.fabric.name,
          fabricKind: b.fabric.kind,
          serverName: b.serverName,
          version: b.version,
          certSerial: cert.serialNumber,
          certFingerprint: certificateFingerprint(cert.certPem),
          proxy: b.proxy ?? null,
          inventoryScope: b.inventoryScope ?? 'all',
        });
        await store.certificates.record({ serial: cert.serialNumber, fabricId: fabric.id, role: 'provider', commonName: providerId, notAfter: cert.notAfter.getTime() });
        await alerting.event({ target: fabric.id, kind: 'provider.registered', severity: Severity.Info, message: `provider ${b.serverName} (${b.version}) registered for fabric ${fabric.name}`, details: { provider: providerId, key: key.id } });
        return reply.status(201).send({
          providerId: provider.id,
          fabricId: fabric.id,
          vault: { id: ctx.identity.id, name: ctx.identity.name },
          certificate: cert.certPem,
          caCertificate: ctx.identity.ca.certPem,
          notAfter: cert.notAfter.toISOString(),
          heartbeatIntervalSeconds: ctx.settings.heartbeatIntervalMs / 1000,
        });
      } catch (e) {
        // the key was not spent on a registration that did not happen
        await store.activity.releaseRegistrationKey(key.id);
        throw e;
      }
    },
  );

  app.post(
    '/provider/heartbeat',
    {
      config: { access: 'provider' },
      schema: {
        summary: 'a provider is alive; with what its fabric can do, kept on the fabric (enabling protection refuses an option the fabric cannot do)',
        tags,
        body: Type.Object({ version: Type.Optional(Type.String({ maxLength: 50 })), status: Type.Optional(Type.Record(Type.String(), Type.Unknown())), capabilities: Type.Optional(FabricCapabilitiesSchema) }),
      },
    },
    async (request) => {
      const p = principal(request);
      const c = request.body.capabilities;
      // the fields this vault knows, and no others
      const capabilities: FabricCapabilities | undefined = c && {
        initialReplication: c.initialReplication,
        appConsistentPoints: c.appConsistentPoints,
        copyFrequenciesSeconds: c.copyFrequenciesSeconds,
        ...(c.continuousReplication !== undefined ? { continuousReplication: c.continuousReplication } : {}),
        ...(c.consistencyGroups !== undefined ? { consistencyGroups: c.consistencyGroups } : {}),
        testFailover: c.testFailover,
        rawDisks: c.rawDisks,
        changedBlockTracking: c.changedBlockTracking,
        nbdExport: c.nbdExport,
        resyncOnRequest: c.resyncOnRequest,
        ...(c.recoveryVmSizes !== undefined ? { recoveryVmSizes: c.recoveryVmSizes } : {}),
        ...(c.recoveryDiskTypes !== undefined ? { recoveryDiskTypes: c.recoveryDiskTypes } : {}),
      };
      const { fabricId, wasLost } = await store.fabrics.heartbeat(p.providerId!, capabilities);
      if (wasLost) {
        await alerting.resolve(heartbeatAlertKey(fabricId));
        await alerting.event({ target: fabricId, kind: 'fabric.heartbeat-restored', severity: Severity.Info, message: `the provider of fabric ${fabricId} is heard from again` });
      }
      // a provider that has seen a newer term makes this vault ask its peers whether it is stale
      const heard = Number(request.headers[TERM_HEADER]);
      if (isTerm(heard)) ctx.role.heard(heard);
      return { time: new Date(clock.now()).toISOString(), heartbeatIntervalSeconds: ctx.settings.heartbeatIntervalMs / 1000, vault: { term: ctx.role.term.term, urls: ctx.urls } };
    },
  );

  app.put(
    '/provider/inventory',
    {
      config: { access: 'provider' },
      bodyLimit: INVENTORY_BODY_LIMIT,
      schema: { summary: 'replace the fabric\'s inventory (all clouds, or the chosen ones)', tags, body: Type.Object({ scope: Type.Optional(Scope), inventory: InventoryDocumentSchema }, { additionalProperties: false }) },
    },
    async (request) => {
      const fabricId = principal(request).fabricId!;
      const doc = scoped(request.body.inventory as InventoryDocument, request.body.scope ?? 'all');
      // the first inventory's hosts are admitted with it; a host that appears later waits for an
      // Owner, and so does one whose record was replaced (another id under its name): decided
      // in the inventory's own transaction
      let pending: string[] = [];
      const changes = await store.fabrics.replaceInventory(fabricId, doc, async (trx, { first, changes: c }) => {
        const replaced = c.filter((x) => x.kind === 'host' && x.change === 'removed').map((x) => x.name);
        pending = await store.hostAdmissions.reported(trx, fabricId, doc.hosts.map((h) => h.name), { firstInventory: first, replaced });
      });
      for (const host of pending) {
        await alerting.event({ target: fabricId, kind: 'host.admission-pending', severity: Severity.Warning, message: `fabric ${fabricId} reports a new host ${host}: its agent is certified once an Owner approves it (osr host approve ${fabricId} ${host})`, details: { host } });
      }
      // a host gone from the inventory keeps no certificate: its agent's are revoked
      for (const c of changes) {
        if (c.kind !== 'host' || c.change !== 'removed') continue;
        const n = await store.certificates.revokeHolder(fabricId, c.name, 'host removed from the inventory');
        if (n > 0) await alerting.event({ target: fabricId, kind: 'certificate.revoked', severity: Severity.Warning, message: `host ${c.name} left the inventory of ${fabricId}: ${n} agent certificate(s) revoked`, details: { host: c.name, count: n } });
      }
      if (changes.length > EVENTS_PER_SYNC) {
        const count = (c: string) => changes.filter((x) => x.change === c).length;
        await alerting.event({ target: fabricId, kind: 'inventory.synced', severity: Severity.Info, message: `inventory of ${fabricId}: ${count('added')} added, ${count('changed')} changed, ${count('removed')} removed`, details: { added: count('added'), changed: count('changed'), removed: count('removed') } });
      } else if (changes.length > 0) {
        await store.activity.eventBatch(changes.map((c) => ({ target: c.id, kind: `inventory.${c.change}`, severity: Severity.Info, message: `${c.kind} ${c.name} ${c.change}`, details: { fabric: fabricId, kind: c.kind } })));
      }
      return { changes: changes.length };
    },
  );

  app.get(
    '/provider/commands',
    {
      config: { access: 'provider' },
      schema: { summary: 'fetch the commands waiting for this fabric (long-poll)', tags, querystring: Type.Object({ waitSeconds: Type.Optional(Type.Number({ minimum: 0, maximum: 60 })), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100 })) }) },
    },
    async (request) => {
      const fabricId = principal(request).fabricId!;
      const waitMs = Math.min((request.query.waitSeconds ?? 20) * 1000, ctx.settings.longPollMaxMs);
      const deadline = clock.now() + waitMs;
      const closed = new AbortController();
      const abort = () => closed.abort();
      request.raw.once('close', abort);
      if (ctx.closing.aborted) closed.abort();
      else ctx.closing.addEventListener('abort', abort, { once: true });
      try {
        for (;;) {
          // a vault fenced or demoted while the provider waits hands out nothing more
          ctx.role.assertWritable();
          const rows = await store.commands.take(fabricId, request.query.limit ?? 20, ctx.settings.commandRedeliverMs);
          if (rows.length > 0 || clock.now() >= deadline || closed.signal.aborted) {
            // (a vault shutting down answers its long-polls empty; the provider asks again)
            return { commands: rows.map((r) => ({ id: r.id, kind: r.kind, body: JSON.parse(r.body), jobId: r.job_id, deliveries: r.deliveries, createdAt: new Date(r.created_at).toISOString() })) };
          }
          await clock.sleep(Math.min(100, deadline - clock.now()), closed.signal);
        }
      } finally {
        // a long-running vault serves a long-poll every few seconds per provider: leave no listener behind
        ctx.closing.removeEventListener('abort', abort);
        request.raw.off('close', abort);
      }
    },
  );

  app.post(
    '/provider/commands/:id/progress',
    { config: { access: 'provider' }, schema: { summary: 'progress of a command', tags, params: IdParam, body: Type.Object({ progress: Type.Record(Type.String(), Type.Unknown()) }, { additionalProperties: false }) } },
    async (request, reply) => {
      await store.commands.progress(principal(request).fabricId!, request.params.id, request.body.progress);
      ctx.engine.commandChanged(request.params.id);
      return reply.status(204).send();
    },
  );

  app.post(
    '/provider/commands/:id/result',
    { config: { access: 'provider' }, schema: { summary: 'the result of a command, or its error', tags, params: IdParam, body: Type.Object({ result: Type.Optional(Type.Unknown()), error: Type.Optional(ErrorSchema) }, { additionalProperties: false }) } },
    async (request, reply) => {
      const { result, error } = request.body;
      // a provider names its error from the registry; codes about the vault's own machinery are not its to give
      if (error && (!Object.hasOwn(ERROR_CODES, error.code) || VAULT_ONLY_CODES.has(error.code))) error.code = 'JOB_FAILED';
      await store.commands.complete(principal(request).fabricId!, request.params.id, { result, ...(error ? { error } : {}) });
      ctx.engine.commandChanged(request.params.id);
      return reply.status(204).send();
    },
  );

  app.get(
    '/provider/crl',
    { config: { access: 'provider' }, schema: { summary: 'the CA\'s certificate revocation list (PEM): certificates of removed hosts and fabrics, for the provider to hand to its agents', tags } },
    async (_request, reply) => {
      // taken first: a revocation made after it is in this list or in the next, whose number is higher
      const crlNumber = await store.certificates.nextCrlNumber();
      const revoked = await store.certificates.revoked();
      const now = clock.now();
      const crl = await createCrl(ctx.identity.ca, revoked.map((r) => ({ serialNumber: r.serial, revokedAt: new Date(r.revokedAt) })), { thisUpdate: new Date(now - 5 * 60_000), nextUpdate: new Date(now + CRL_VALID_MS), crlNumber });
      return reply.type('application/pkix-crl').header('cache-control', 'no-store').send(crl);
    },
  );

  app.post(
    '/provider/certificate',
    {
      config: { access: 'provider' },
      schema: {
        summary: 'renew this provider\'s own certificate for a public key it made; the current one stays valid until the provider first calls with the new one',
        tags,
        body: Type.Object({ publicKey: Type.String({ minLength: 1, maxLength: 10_000 }) }, { additionalProperties: false }),
      },
    },
    async (request, reply) => {
      const p = principal(request);
      const cert = await issueCertificate(ctx.identity.ca, { commonName: p.providerId!, role: 'provider', publicKeyPem: request.body.publicKey, dnsNames: [], ipAddresses: [], fabricId: p.fabricId!, validDays: PROVIDER_CERT_DAYS });
      await store.certificates.record({ serial: cert.serialNumber, fabricId: p.fabricId!, role: 'provider', commonName: p.providerId!, notAfter: cert.notAfter.getTime() });
      await store.fabrics.offerProviderCertificate(p.providerId!, { serial: cert.serialNumber, fingerprint: certificateFingerprint(cert.certPem) });
      await alerting.event({ target: p.fabricId!, kind: 'provider.certificate-renewed', severity: Severity.Info, message: `provider ${p.providerId} renewed its certificate; the new one is valid until ${cert.notAfter.toISOString()}`, details: { provider: p.providerId, serial: cert.serialNumber, notAfter: cert.notAfter.toISOString() } });
      return reply.status(201).send({ certificate: cert.certPem, caCertificate: ctx.identity.ca.certPem, notAfter: cert.notAfter.toISOString() });
    },
  );

  app.post(
    '/provider/agent-certificates',
    {
      config: { access: 'provider' },
      schema: {
        summary: 'enrol a host agent of this fabric: a certificate from the vault\'s CA for the public key the agent made',
        tags,
        body: Type.Object(
          {
            name: Name,
            publicKey: Type.String({ minLength: 1, maxLength: 10_000 }),
            dnsNames: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 253 }), { maxItems: 20 })),
            ipAddresses: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 45 }), { maxItems: 20 })),
            // the host's current certificate and its key's signature over the new key (src/pki/enrolment-proof.ts)
            proof: Type.Optional(Type.Object({ certificate: Type.String({ minLength: 1, maxLength: 10_000 }), signature: Type.String({ minLength: 1, maxLength: 200 }) }, { additionalProperties: false })),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (request, reply) => {
      const p = principal(request);
      const b = request.body;
      const names = await agentCertificateNames(store, p.fabricId!, b);
      const admission = await store.hostAdmissions.get(p.fabricId!, b.name);
      if (admission?.state !== 'admitted') {
        throw new OsrError('HOST_NOT_APPROVED', `host ${b.name} of fabric ${p.fabricId} is not admitted: it appeared after the fabric's first inventory, and an Owner approves it first (osr host approve ${p.fabricId} ${b.name})`, { fabric: p.fabricId, host: b.name });
      }
      // a host that holds a valid certificate gets a new one only for its holder: proof of its current key
      const live = await store.certificates.live(p.fabricId!, 'agent', b.name);
      if (live.length > 0) {
        if (!b.proof) throw new OsrError('AUTH_FAILED', `host ${b.name} holds a valid certificate (serial ${live.join(', ')}): a new one is issued only against proof of its current key, which its agent gives with the new key; if the host lost its key, an Owner revokes its certificates first (osr host reset ${p.fabricId} ${b.name})`, { fabric: p.fabricId, host: b.name });
        const held = verifyEnrolmentProof(b.proof, b.name, b.publicKey, ctx.identity.ca.certPem);
        // a certificate from before fabrics were named carries none: its record says the fabric (live() asked for this one)
        if ((held.fabricId !== undefined && held.fabricId !== p.fabricId) || !live.includes(held.serial)) throw new OsrError('AUTH_FAILED', `the proof of host ${b.name}'s current key is made with a certificate (serial ${held.serial}) that is not one of its valid certificates in fabric ${p.fabricId}`, { fabric: p.fabricId, host: b.name });
        // the newest only: a key the host renewed away from (a backup, an old disk) proves nothing
        if (held.serial !== live[0]) throw new OsrError('AUTH_FAILED', `the proof of host ${b.name}'s current key is made with certificate ${held.serial}, not with its newest (${live[0]})`, { fabric: p.fabricId, host: b.name });
      }
      // the fabric is the calling provider's, from its registration: never from the request
      const cert = await issueCertificate(ctx.identity.ca, { commonName: b.name, role: 'agent', publicKeyPem: b.publicKey, validDays: AGENT_CERT_DAYS, fabricId: p.fabricId!, ...names });
      await store.certificates.record({ serial: cert.serialNumber, fabricId: p.fabricId!, role: 'agent', commonName: b.name, notAfter: cert.notAfter.getTime() });
      await alerting.event({ target: p.fabricId!, kind: 'agent.enrolled', severity: Severity.Info, message: `host agent ${b.name} enrolled through provider ${p.providerId}`, details: { agent: b.name, serial: cert.serialNumber, notAfter: cert.notAfter.toISOString() } });
      return reply.status(201).send({ certificate: cert.certPem, caCertificate: ctx.identity.ca.certPem, notAfter: cert.notAfter.toISOString() });
    },
  );

  app.post(
    '/provider/items/:id/status',
    {
      config: { access: 'provider' },
      schema: {
        summary: 'replication status of a protected item: health, RPO, recovery points',
        tags,
        params: IdParam,
        body: Type.Object(
          {
            health: Type.Optional(Type.Union([Type.Literal('Healthy'), Type.Literal('Warning'), Type.Literal('Critical')])),
            healthReasons: Type.Optional(Type.Array(Type.Object({ code: Type.String({ maxLength: 100 }), message: Type.String({ maxLength: 2000 }) }), { maxItems: 50 })),
            rpoSeconds: Type.Optional(Type.Union([Type.Number({ minimum: 0 }), Type.Null()])),
            recoveryPoints: Type.Optional(Type.Array(Type.Object({ id: Type.String({ minLength: 1, maxLength: 200 }), at: Type.String({ maxLength: 40, format: 'date-time' }), consistency: Type.Union([Type.Literal('crash'), Type.Literal('app')]), cut: Type.Optional(Type.String({ pattern: SAFE_NAME_PATTERN, maxLength: MAX_NAME_LENGTH })) }), { maxItems: 10_000 })),
            churnBytesPerSec: Type.Optional(Type.Union([Type.Number({ minimum: 0 }), Type.Null()])),
            peakChurnBytesPerSec: Type.Optional(Type.Union([Type.Number({ minimum: 0 }), Type.Null()])),
            pendingLogBytes: Type.Optional(Type.Union([Type.Integer({ minimum: 0 }), Type.Null()])),
            promoted: Type.Optional(
              Type.Object(
                {
                  epoch: Type.Integer({ minimum: 1, maximum: MAX_REPLICATION_EPOCH }),
                  point: Type.Object({ id: Type.String({ minLength: 1, maxLength: 200 }), at: Type.String({ format: 'date-time' }), consistency: Type.Union([Type.Literal('crash'), Type.Literal('app')]) }, { additionalProperties: false }),
                  pending: Type.Boolean(),
                },
                { additionalProperties: false },
              ),
            ),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (request, reply) => {
      const fabricId = principal(request).fabricId!;
      const item = await store.items.get(request.params.id).catch(async (e: unknown) => {
        // a vault restored from a backup does not know what was protected after it: listed for the user, once per item
        if ((e as { code?: unknown }).code === 'NOT_FOUND' && ctx.role.term.origin === 'restored' && (await store.fabrics.findObject(request.params.id))?.kind === 'vm') {
          await alerting.raise({
            key: `unknown-item:${fabricId}:${request.params.id}`,
            kind: AlertKind.UnknownItemReported,
            severity: Severity.Warning,
            target: fabricId,
            message: `fabric ${fabricId} reports protected item ${request.params.id}, which this vault does not know: this vault was restored from a backup taken ${ctx.role.term.backupTakenAt ?? 'earlier'}, and the item was protected after it; look at that VM at its sites and enable its protection again`,
          });
        }
        throw e;
      });
      // the item's own fabric, or either end of its replication (they swap after a reverse)
      if (item.fabricId !== fabricId && item.replication.targetFabricId !== fabricId && item.replication.sourceFabricId !== fabricId) throw new OsrError('FORBIDDEN', `protected item ${item.id} is not replicated by fabric ${fabricId}`);
      const b = request.body;
      // the replica was promoted at its host without the vault: recorded, never undone; the provider stops reporting it once the vault knows
      if (b.promoted) {
        const adoption = await adoptOutsideFailover({ store, alerting, clock }, item, fabricId, b.promoted);
        if (adoption.outcome === 'ignored') request.log.warn({ item: item.id, why: adoption.why }, 'a promotion reported by the recovery site was not recorded');
        return reply.status(200).send({ promotion: adoption.outcome });
      }
      // the points are the recovery site's to tell: they choose what a failover starts from.
      // While a reprotect runs, the recovery site is already the old primary's (its disks
      // are the replica now); the item's record swaps its two sites when the reprotect ends
      const reprotectingTo = item.state === ProtectionState.Reprotecting ? item.replication.failover?.fromFabricId : undefined;
      if (b.recoveryPoints && fabricId !== (reprotectingTo ?? item.replication.targetFabricId)) {
        throw new OsrError('FORBIDDEN', `fabric ${fabricId} is not the recovery site of ${item.id}: only its recovery site reports its points`, { field: 'recoveryPoints' });
      }
      const latestAllowed = clock.now() + MAX_POINT_CLOCK_SKEW_MS;
      const points = b.recoveryPoints?.map((p) => {
        const at = Date.parse(p.at);
        if (Number.isNaN(at)) throw new OsrError('INVALID_ARGUMENT', `recovery point ${p.id} has no valid time: ${p.at}`);
        if (at > latestAllowed) throw new OsrError('INVALID_ARGUMENT', `recovery point ${p.id} is dated ${p.at}, after the vault's time by more than ${MAX_POINT_CLOCK_SKEW_MS / 60_000} minutes: check the recovery site's clock`, { field: 'recoveryPoints' });
        return { id: p.id, at, consistency: p.consistency, ...(p.cut !== undefined ? { cut: p.cut } : {}) };
      });
      if (points && new Set(points.map((p) => p.id)).size !== points.length) throw new OsrError('INVALID_ARGUMENT', 'recovery point ids must be unique within a report', { field: 'recoveryPoints' });
      const cuts = points?.flatMap((p) => (p.cut !== undefined ? [p.cut] : []));
      if (cuts && new Set(cuts).size !== cuts.length) throw new OsrError('INVALID_ARGUMENT', 'a replication group\'s cut names one point of an item: a cut is named twice in the report', { field: 'recoveryPoints' });
      if (points) await store.items.replacePoints(item.id, points);
      const latest = points && points.length > 0 ? Math.max(...points.map((p) => p.at)) : undefined;
      const { before, after } = await store.items.update(item.id, {
        ...(b.health ? { health: b.health } : {}),
        ...(b.healthReasons ? { healthReasons: b.healthReasons as HealthReason[] } : {}),
        ...(b.rpoSeconds !== undefined ? { rpoSeconds: b.rpoSeconds } : {}),
        ...(latest !== undefined ? { lastPointAt: latest } : {}),
      });
      // the source's facts over time: the RPO chart and the capacity planner read them
      if (b.rpoSeconds !== undefined || b.churnBytesPerSec !== undefined || b.pendingLogBytes !== undefined) {
        await store.items.addSample(item.id, { rpoSeconds: b.rpoSeconds ?? null, churnBytesPerSec: b.churnBytesPerSec ?? null, peakChurnBytesPerSec: b.peakChurnBytesPerSec ?? null, pendingLogBytes: b.pendingLogBytes ?? null });
      }
      // the source's change tracking cannot be trusted: the item needs a resync (it runs in its window, or on request)
      if (b.healthReasons) {
        const needed = b.healthReasons.some((r) => r.code === 'RESYNC_REQUIRED');
        const [from, to] = needed ? [ProtectionState.Protected, ProtectionState.ResyncRequired] : [ProtectionState.ResyncRequired, ProtectionState.Protected];
        if (after.state === from && (await store.items.setIdleState(item.id, from, to))) {
          const why = b.healthReasons.find((r) => r.code === 'RESYNC_REQUIRED')?.message;
          await alerting.event({
            target: item.id,
            kind: needed ? 'item.resync-required' : 'item.resynchronized',
            severity: needed ? Severity.Warning : Severity.Info,
            message: needed ? `${item.name} needs a resynchronization${why ? `: ${why}` : ''}; it runs in the policy's resync window, or now with osr item resync ${item.name}` : `${item.name} no longer needs a resynchronization`,
            details: { from, to },
          });
        }
      }
      if (before.health !== after.health) {
        const why = after.healthReasons.map((r) => r.message).join('; ');
        await alerting.event({ target: item.id, kind: 'item.health', severity: after.health === Health.Critical ? Severity.Critical : after.health === Health.Warning ? Severity.Warning : Severity.Info, message: `${item.name} is ${after.health}${why ? `: ${why}` : ''}`, details: { from: before.health, to: after.health } });
        if (after.health === Health.Critical) {
          await alerting.raise({ key: itemCriticalKey(item.id), kind: AlertKind.ItemCritical, severity: Severity.Critical, target: item.id, message: `protected item ${item.name} is Critical${why ? `: ${why}` : ''}` });
        } else {
          await alerting.resolve(itemCriticalKey(item.id));
        }
      }
      return reply.status(204).send();
    },
  );
};

/**
 * The names a host agent's certificate may carry: only a host its provider's fabric
 * reported in its inventory is certified, with the common name the inventory gives it and
 * the addresses the inventory lists (DNS names and IPs). Names the provider asks for are
 * taken only if the inventory lists them too.
 */
async function agentCertificateNames(store: VaultContext['store'], fabricId: string, b: { name: string; dnsNames?: string[] | undefined; ipAddresses?: string[] | undefined }): Promise<{ dnsNames: string[]; ipAddresses: string[] }> {
  const hosts = await store.fabrics.named(fabricId, 'host', b.name);
  if (hosts.length !== 1) {
    throw new OsrError('NOT_IN_INVENTORY', hosts.length === 0 ? `fabric ${fabricId} has reported no host ${b.name}; a certificate is issued only for a host of the fabric's inventory` : `fabric ${fabricId} reports ${hosts.length} hosts named ${b.name}; host names must be unique to be certified`, { host: b.name });
  }
  const listed = Array.isArray(hosts[0]!.properties.addresses) ? (hosts[0]!.properties.addresses as string[]) : [];
  const asked = [...(b.dnsNames ?? []), ...(b.ipAddresses ?? [])];
  const unlisted = asked.filter((n) => !listed.includes(n));
  if (unlisted.length > 0) throw new OsrError('NOT_IN_INVENTORY', `host ${b.name} is not reported at ${unlisted.join(', ')}; its certificate names only the addresses of the inventory`, { host: b.name, unlisted });
  const ipAddresses = listed.filter((a) => isIP(a) !== 0);
  const dnsNames = listed.filter((a) => isIP(a) === 0 && DNS_NAME.test(a));
  // with no address listed, the host's name alone, where it is a DNS name
  if (listed.length === 0 && DNS_NAME.test(b.name)) dnsNames.push(b.name);
  return { dnsNames, ipAddresses };
}

const DNS_NAME = /^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/;

/** How long a revocation list is valid: providers fetch a new one long before (every minute). */
const CRL_VALID_MS = 7 * 86_400_000;
