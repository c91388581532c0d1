/**
 * The agent's local API: HTTP on a Unix socket only the agent's user may open (or on
 * loopback TCP with a token, api-access.ts), JSON in and out, errors as
 * {code, message, details}. The `osr` CLI talks to it; reference in docs/agent-api.md.
 */
import { parseContainerUrl, parseSas } from '../domain/azure-layout.js';
import type { ReplicationSpec } from './wire/replication-types.js';
import Fastify, { type FastifyInstance } from 'fastify';
import path from 'node:path';
import type tls from 'node:tls';
import { ERROR_CODES, OsrError, toOsrError, type ErrorCode } from '../domain/errors.js';
import { checkMachine } from '../domain/machine.js';
import { MAX_NAME_LENGTH, SAFE_NAME_PATTERN, safeName } from '../domain/names.js';
import { CONTINUOUS_CUT_MS, DEFAULT_POINT_INTERVAL_SECONDS, MAX_POINT_INTERVAL_SECONDS, MIN_POINT_INTERVAL_SECONDS } from '../domain/policy.js';
import type { Agent } from './agent.js';
import { addAccessChecks, type ApiAccess } from './api-access.js';
import { addDrillRoutes } from './drill-api.js';
import { addEnrolmentRoutes } from './enrolment-api.js';
import { MAX_GRANT_LENGTH } from '../pki/index.js';
import { providerAccessCheck, providerBodyCheck, type ProviderApiState, type RefusalLog } from './provider-api.js';
import type { ReplicaStore } from './replica/replica-store.js';
import type { ImportRequest } from './azure/vm-imports.js';
import { diskRangesBytes } from './io/ranges.js';
import { parseSize } from './io/size.js';
import { parseBandwidth } from './io/throttle.js';
import { parseDuration, parseTimeWindow } from './io/time-window.js';

export { parseDuration };

/** the vault's replication grant (src/pki/grant.ts) in a request body */
const GRANT_SCHEMA = { type: 'string', minLength: 1, maxLength: MAX_GRANT_LENGTH };

/** A VM stopped through the API shuts down cleanly within this time; a host then stops it (ports/host.ts). */
export const VM_SHUTDOWN_TIMEOUT_MS = 300_000;

export function httpStatusOf(code: ErrorCode): number {
  switch (code) {
    case 'NOT_FOUND':
    case 'VM_NOT_FOUND':
    case 'POINT_NOT_FOUND':
      return 404;
    case 'ALREADY_EXISTS':
    case 'INVALID_STATE':
    case 'OVERLAY_IN_USE':
    case 'CUT_EXPIRED':
      return 409;
    case 'AUTH_FAILED':
    case 'HOST_NOT_ALLOWED':
      return 403;
    default:
      return ERROR_CODES[code].class === 'usage' ? 400 : 500;
  }
}

function replicaSummary(agent: Agent, s: ReplicaStore) {
  const owner = agent.replicas.owner(s.vmId);
  return {
    vmId: s.vmId,
    vm: s.vmName,
    /** the source agent that may replicate into it (its certificate's name) */
    source: owner?.source ?? null,
    /** that agent's fabric, when the vault's replication grant named it (its certificate must name it too) */
    sourceFabric: owner?.sourceFabric ?? null,
    disks: s.disks,
    initialDone: s.initialDone,
    committed: s.isCommitted,
    epoch: s.epoch,
    divergent: s.divergent === undefined ? null : s.divergent === 'all' ? 'all' : diskRangesBytes(s.divergent),
    points: s.points().length,
    latestPoint: s.latestPoint() ?? null,
    overlays: s.listOverlays().map((o) => overlaySummary(agent, s, o.id)),
  };
}

function overlaySummary(agent: Agent, s: ReplicaStore, id: string) {
  const o = s.getOverlay(id);
  const p = s.points().find((x) => x.seq === o.pointSeq);
  return {
    id: o.id,
    point: o.pointSeq,
    pointTime: p ? new Date(p.timeMs).toISOString() : null,
    consistency: p?.consistency ?? null,
    disks: o.disks.map((d) => ({ name: d.name, size: d.size, nbd: agent.nbdUris(`replica/${s.vmName}/${o.id}/${d.name}`) })),
  };
}

/** How the provider channel (provider-api.ts) serves the API: its TLS options and its checks. */
export interface ProviderChannelOptions {
  https: tls.SecureContextOptions & tls.TlsOptions;
  state: () => ProviderApiState;
  refused: RefusalLog;
}

/**
 * `access` says how the API is reached once it listens (the port bound to, the token).
 * With `channel`, the API is the provider channel instead: HTTPS, a provider's certificate
 * and the channel's checks in place of the local API's.
 */
export async function buildAgentApi(agent: Agent, access: () => ApiAccess, channel?: ProviderChannelOptions): Promise<FastifyInstance> {
  const app = channel
    ? // over the network: a request gets 2 minutes, an idle connection 1, a connection 1,000 requests
      (Fastify({ logger: false, bodyLimit: 1024 * 1024, ajv: { customOptions: { allowUnionTypes: true } }, https: channel.https, connectionTimeout: 60_000, requestTimeout: 120_000, keepAliveTimeout: 30_000, maxRequestsPerSocket: 1000 }) as unknown as FastifyInstance)
    : Fastify({ logger: false, bodyLimit: 1024 * 1024, ajv: { customOptions: { allowUnionTypes: true } } });

  app.setErrorHandler((err, _req, reply) => {
    const e = (err as { validation?: unknown }).validation ? new OsrError('INVALID_ARGUMENT', (err as Error).message) : toOsrError(err);
    // no credential at all is 401 (with WWW-Authenticate), a wrong one 403
    const status = e.code === 'AUTH_FAILED' && reply.hasHeader('www-authenticate') ? 401 : httpStatusOf(e.code);
    void reply.status(status).send({ code: e.code, message: e.message, details: e.details, hint: ERROR_CODES[e.code].fix });
  });

  if (channel) {
    app.addHook('onRequest', providerAccessCheck(channel.state, channel.refused));
    app.addHook('preHandler', providerBodyCheck(channel.state, () => agent.caPem(), channel.refused));
  } else addAccessChecks(app, access);

  app.get('/v1/status', async () => ({
    name: agent.config.name,
    endpoints: agent.endpoints,
    vms: [
      ...agent.host.list().map((vm) => ({ name: vm.name, id: vm.spec.id, running: vm.running, disks: vm.spec.disks.length, tracking: vm.tracking.enabled, resyncRequired: vm.tracking.resyncRequired ?? null, origin: vm.spec.origin ?? null, fenced: vm.spec.fenced ?? null })),
      ...agent.provisionalVms().map((vm) => ({ name: vm.name, id: vm.id, running: vm.running, disks: vm.disks.length, tracking: false, resyncRequired: null, origin: vm.origin, fenced: null })),
    ],
    replications: [...agent.replications.values()].map((r) => r.health()),
    replicas: agent.replicas.list().map((s) => replicaSummary(agent, s)),
    /** replicas found on disk that could not be opened (not served until fixed) */
    unopenedReplicas: [...agent.replicas.failed].map(([vmId, e]) => ({ vmId, ...e })),
  }));

  // ---- the host's VMs
  app.get('/v1/vms', async () => [...agent.host.list().map((vm) => vm.spec), ...agent.provisionalVms()]);

  app.post<{ Body: { name: string; disks: (string | number)[] } }>(
    '/v1/vms',
    { schema: { body: { type: 'object', required: ['name', 'disks'], properties: { name: { type: 'string' }, disks: { type: 'array', items: { type: ['string', 'number'] } } } } } },
    async (req, reply) => {
      const sizes = req.body.disks.map((d) => (typeof d === 'number' ? d : parseSize(d)));
      const vm = await agent.host.createVm(req.body.name, sizes);
      return reply.status(201).send(vm.spec);
    },
  );

  // ---- a VM's disks changed as its admin would on the hypervisor (the lab's hosts)
  const diskChanges = () => {
    const c = agent.host.diskChanges;
    if (!c) throw new OsrError('NOT_SUPPORTED', 'this host\'s VMs change their disks on the hypervisor, not through the agent');
    return c;
  };
  const sizeSchema = { type: 'object', required: ['size'], additionalProperties: false, properties: { size: { type: ['string', 'number'] } } } as const;
  const sizeOf = (v: string | number) => (typeof v === 'number' ? v : parseSize(v));
  app.post<{ Params: { name: string }; Body: { size: string | number } }>('/v1/vms/:name/disks', { schema: { body: sizeSchema } }, async (req, reply) =>
    reply.status(201).send(await diskChanges().addDisk(req.params.name, sizeOf(req.body.size))),
  );
  app.put<{ Params: { name: string; disk: string }; Body: { size: string | number } }>('/v1/vms/:name/disks/:disk', { schema: { body: sizeSchema } }, async (req) =>
    diskChanges().resizeDisk(req.params.name, req.params.disk, sizeOf(req.body.size)),
  );
  app.delete<{ Params: { name: string; disk: string } }>('/v1/vms/:name/disks/:disk', async (req, reply) => {
    await diskChanges().removeDisk(req.params.name, req.params.disk);
    return reply.status(204).send();
  });

  const provisional = (name: string) => (agent.host.has(name) ? undefined : agent.provisionalVms().find((v) => v.name === name));
  app.post<{ Params: { name: string } }>('/v1/vms/:name/start', async (req) => {
    if (provisional(req.params.name)) {
      await agent.setProvisionalRunning(req.params.name, true);
      return provisional(req.params.name);
    }
    return (await agent.host.start(req.params.name)).spec;
  });
  app.post<{ Params: { name: string }; Body: { force?: boolean; timeout?: string | number } | undefined }>(
    '/v1/vms/:name/stop',
    { schema: { body: { type: ['object', 'null'], additionalProperties: false, properties: { force: { type: 'boolean' }, timeout: { type: ['string', 'number'] } } } } },
    async (req) => {
      if (provisional(req.params.name)) {
        await agent.setProvisionalRunning(req.params.name, false);
        return provisional(req.params.name);
      }
      // force: off at once, as a power cut; otherwise a clean shutdown, cut short after the timeout
      if (req.body?.force === true) return (await agent.host.stop(req.params.name)).spec;
      const timeoutMs = req.body?.timeout !== undefined ? parseDuration(req.body.timeout) : VM_SHUTDOWN_TIMEOUT_MS;
      return (await agent.host.shutdown(req.params.name, timeoutMs)).spec;
    },
  );

  app.post<{ Params: { name: string }; Body: { epoch: number } }>(
    '/v1/vms/:name/fence',
    { schema: { body: { type: 'object', required: ['epoch'], additionalProperties: false, properties: { epoch: { type: 'integer', minimum: 1 } } } } },
    async (req) => agent.fence(req.params.name, req.body.epoch),
  );

  app.post<{ Params: { name: string }; Body: { epoch?: number; source?: string; grant?: string } | undefined }>(
    '/v1/vms/:name/demote',
    { schema: { body: { type: ['object', 'null'], additionalProperties: false, properties: { epoch: { type: 'integer', minimum: 1 }, source: { type: 'string', pattern: SAFE_NAME_PATTERN, maxLength: MAX_NAME_LENGTH }, grant: GRANT_SCHEMA } } } },
    async (req) => agent.demote(req.params.name, req.body?.epoch, req.body?.source, req.body?.grant),
  );

  app.post<{ Params: { name: string }; Body: { point: number } }>(
    '/v1/vms/:name/recovery-point',
    { schema: { body: { type: 'object', required: ['point'], properties: { point: { type: 'integer', minimum: 0 } } } } },
    async (req) => agent.changePromotedPoint(req.params.name, req.body.point),
  );
  app.post<{ Params: { name: string } }>('/v1/vms/:name/commit', async (req) => agent.commitPromotion(req.params.name));

  // ---- a VM brought in from Azure managed disks (a failback, at an agent in the Azure region)
  const importSchema = {
    type: 'object',
    required: ['id', 'epoch', 'disks'],
    additionalProperties: false,
    properties: {
      id: { type: 'string', pattern: SAFE_NAME_PATTERN, maxLength: MAX_NAME_LENGTH },
      epoch: { type: 'integer', minimum: 1 },
      refresh: { type: 'boolean' },
      disks: {
        type: 'array',
        minItems: 1,
        maxItems: 16,
        items: {
          type: 'object',
          required: ['id', 'name', 'size', 'url'],
          additionalProperties: false,
          properties: { id: { type: 'string', pattern: SAFE_NAME_PATTERN, maxLength: MAX_NAME_LENGTH }, name: { type: 'string', pattern: SAFE_NAME_PATTERN, maxLength: MAX_NAME_LENGTH }, size: { type: 'integer', minimum: 512 }, url: { type: 'string', minLength: 1, maxLength: 4096 } },
        },
      },
    },
  };
  app.post<{ Params: { name: string }; Body: ImportRequest }>('/v1/vms/:name/import', { schema: { body: importSchema } }, async (req, reply) => {
    const p = agent.importVm(req.params.name, req.body);
    return reply.status(p.state === 'done' ? 200 : 202).send(p);
  });
  app.get<{ Params: { name: string } }>('/v1/vms/:name/import', async (req) => agent.imports.progress(req.params.name));
  app.delete<{ Params: { name: string } }>('/v1/vms/:name/import', async (req, reply) => {
    await agent.removeImportedVm(req.params.name);
    return reply.status(204).send();
  });

  app.get<{ Params: { name: string } }>('/v1/vms/:name/disks', async (req) => {
    const p = provisional(req.params.name);
    if (p) return p.disks.map((d) => ({ name: d.name, size: d.size, image: null, running: p.running, nbd: agent.nbdUris(`${p.name}/${d.name}`) }));
    const vm = agent.host.get(req.params.name);
    // a hypervisor's guests reach their disks through it: the agent serves none of them
    return vm.spec.disks.map((d) => ({ name: d.name, size: d.size, image: d.image, running: vm.running, nbd: agent.host.servesDisks ? agent.nbdUris(`${vm.name}/${d.name}`) : null }));
  });

  // ---- replications (primary role)
  app.get('/v1/replications', async () => [...agent.replications.values()].map((r) => r.health()));

  app.post<{
    Body: {
      vm: string;
      peer: string;
      servername?: string;
      peerName?: string;
      copyFrequency?: string | number;
      pointInterval?: string | number;
      group?: string;
      retentionHours?: number;
      maxPoints?: number;
      compression?: boolean;
      startAt?: string;
      appConsistentFrequency?: string | number;
      quiesceHook?: unknown;
      epoch?: number;
      resyncBlockSize?: number;
      resyncWindow?: string;
      bandwidth?: string;
      initialReplication?: 'online' | 'offline';
      exportDir?: string;
      grant?: string;
      azureSas?: string;
    };
  }>(
    '/v1/replications',
    { schema: { body: { type: 'object', required: ['vm', 'peer'], properties: { vm: { type: 'string' }, peer: { type: 'string' }, peerName: { type: 'string', pattern: SAFE_NAME_PATTERN, maxLength: MAX_NAME_LENGTH }, retentionHours: { type: 'number', minimum: 0, maximum: 24 }, maxPoints: { type: 'integer', minimum: 1, maximum: 10000 }, compression: { type: 'boolean' }, startAt: { type: 'string' }, grant: GRANT_SCHEMA, azureSas: { type: 'string', maxLength: 4096 } } } } },
    async (req, reply) => {
      const b = req.body;
      if (b.quiesceHook !== undefined) {
        throw new OsrError('INVALID_ARGUMENT', `quiesceHook is not taken from a request: quiesce hooks are the agent's configuration (osr agent --quiesce-hook-dir DIR runs DIR/${b.vm} for this VM); remove quiesceHook from the request`);
      }
      // a replica agent (host:port), or an Azure storage container (its URL)
      const m = /^(.+):(\d+)$/.exec(b.peer);
      const peer: ReplicationSpec['peer'] = /^https?:\/\//i.test(b.peer)
        ? { kind: 'azure', containerUrl: parseContainerUrl(b.peer) }
        : { ...(m ? { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) } : { host: b.peer, port: 8084 }), servername: b.servername, name: b.peerName };
      if (peer.kind === 'azure' && (b.servername !== undefined || b.peerName !== undefined || b.compression === true)) {
        throw new OsrError('INVALID_ARGUMENT', 'servername, peerName and compression are for a replica agent; the agent writes an Azure container itself');
      }
      if (b.startAt !== undefined && Number.isNaN(Date.parse(b.startAt))) throw new OsrError('INVALID_ARGUMENT', `startAt "${b.startAt}" is not an ISO date-time`);
      // "continuous": a cut every CONTINUOUS_CUT_MS, a point kept every pointInterval
      const continuous = b.copyFrequency === 'continuous' ? { pointIntervalMs: parseDuration(b.pointInterval ?? `${DEFAULT_POINT_INTERVAL_SECONDS}s`) } : undefined;
      if (continuous && (continuous.pointIntervalMs < MIN_POINT_INTERVAL_SECONDS * 1000 || continuous.pointIntervalMs > MAX_POINT_INTERVAL_SECONDS * 1000)) {
        throw new OsrError('INVALID_ARGUMENT', `continuous replication keeps a point every ${MIN_POINT_INTERVAL_SECONDS} to ${MAX_POINT_INTERVAL_SECONDS} s, not every ${b.pointInterval}`);
      }
      if (!continuous && b.pointInterval !== undefined) throw new OsrError('INVALID_ARGUMENT', 'pointInterval is for continuous replication (copyFrequency "continuous")');
      const copyFrequencyMs = continuous ? CONTINUOUS_CUT_MS : parseDuration(b.copyFrequency ?? '5m');
      if (copyFrequencyMs < 100) throw new OsrError('INVALID_ARGUMENT', 'copy frequency must be at least 100 ms');
      const bs = b.resyncBlockSize;
      if (bs !== undefined && (!Number.isInteger(bs) || bs < 512 || bs > 16 * 1024 * 1024 || (bs & (bs - 1)) !== 0)) {
        throw new OsrError('INVALID_ARGUMENT', `resync block size ${bs} is not a power of two between 512 bytes and 16 MiB`);
      }
      if (b.resyncWindow !== undefined && b.resyncWindow !== 'always' && b.resyncWindow !== 'never') parseTimeWindow(b.resyncWindow);
      if (b.bandwidth !== undefined) parseBandwidth(b.bandwidth);
      if (b.initialReplication !== undefined && b.initialReplication !== 'online' && b.initialReplication !== 'offline') {
        throw new OsrError('INVALID_ARGUMENT', `initial replication "${String(b.initialReplication)}" is online or offline`);
      }
      if (b.initialReplication === 'offline' && (!b.exportDir || !path.isAbsolute(b.exportDir))) {
        throw new OsrError('INVALID_ARGUMENT', 'offline initial replication needs exportDir, an absolute path where the export is written');
      }
      const spec = agent.enableReplication({
        vm: b.vm,
        peer,
        azureSas: b.azureSas !== undefined ? parseSas(b.azureSas) : undefined,
        copyFrequencyMs,
        continuous,
        group: b.group !== undefined ? safeName(b.group, 'group') : undefined,
        retention: { hours: b.retentionHours ?? 24, maxPoints: b.maxPoints ?? 24, ...(continuous ? { minSpacingMs: continuous.pointIntervalMs } : {}) },
        compression: b.compression ?? false,
        startAt: b.startAt,
        appConsistentEveryMs: b.appConsistentFrequency !== undefined ? parseDuration(b.appConsistentFrequency) : 0,
        epoch: b.epoch,
        resyncBlockSize: bs,
        resyncWindow: b.resyncWindow,
        bandwidth: b.bandwidth,
        initialReplication: b.initialReplication,
        exportDir: b.exportDir,
        grant: b.grant,
      });
      return reply.status(201).send(spec);
    },
  );

  app.get<{ Params: { id: string } }>('/v1/replications/:id', async (req) => agent.getReplication(req.params.id).health());
  app.post<{ Params: { id: string } }>('/v1/replications/:id/cycle', async (req, reply) => {
    agent.getReplication(req.params.id).triggerCycle();
    return reply.status(202).send({ accepted: true });
  });
  // a consistency group's cut (group-cuts.ts): prepare, hold the members' writes, then swap or abort
  app.post<{ Body: { id?: unknown; group?: unknown; vms?: unknown } | undefined }>('/v1/cuts', async (req) => agent.cuts.prepare(req.body ?? {}));
  app.post<{ Params: { id: string }; Body: { holdMs?: unknown } | undefined }>('/v1/cuts/:id/hold', async (req) => agent.cuts.hold(req.params.id, req.body?.holdMs));
  app.post<{ Params: { id: string } }>('/v1/cuts/:id/swap', async (req) => agent.cuts.swap(req.params.id));
  app.delete<{ Params: { id: string } }>('/v1/cuts/:id', async (req) => agent.cuts.abort(req.params.id));
  app.post<{ Params: { id: string }; Body: { timeout?: string | number } | undefined }>('/v1/replications/:id/prepare-failover', async (req) =>
    agent.prepareFailover(req.params.id, req.body?.timeout !== undefined ? parseDuration(req.body.timeout) : undefined),
  );
  // a renewed SAS for a replication to Azure storage (the old one is about to expire)
  app.put<{ Params: { id: string }; Body: { sas: string } }>(
    '/v1/replications/:id/azure-sas',
    { schema: { body: { type: 'object', required: ['sas'], additionalProperties: false, properties: { sas: { type: 'string', maxLength: 4096 } } } } },
    async (req, reply) => {
      agent.setAzureSas(req.params.id, parseSas(req.body.sas));
      return reply.status(204).send();
    },
  );
  app.post<{ Params: { id: string } }>('/v1/replications/:id/retry', async (req, reply) => {
    agent.getReplication(req.params.id).retryNow();
    return reply.status(202).send({ accepted: true });
  });
  app.post<{ Params: { id: string } }>('/v1/replications/:id/confirm-disks', async (req) => agent.getReplication(req.params.id).confirmDiskChange());
  app.post<{ Params: { id: string } }>('/v1/replications/:id/resync', async (req, reply) => {
    agent.getReplication(req.params.id).requestResync();
    return reply.status(202).send({ accepted: true });
  });
  app.delete<{ Params: { id: string } }>('/v1/replications/:id', async (req, reply) => {
    await agent.disableReplication(req.params.id);
    return reply.status(204).send();
  });

  // ---- replicas (replica role)
  app.get('/v1/replicas', async () => agent.replicas.list().map((s) => replicaSummary(agent, s)));
  // the vault's word on who may replicate a VM here (a failover's new primary, a placement)
  app.put<{ Params: { vmId: string }; Body: { source: string; claim?: boolean; grant?: string } }>(
    '/v1/replicas/:vmId/source',
    { schema: { body: { type: 'object', required: ['source'], additionalProperties: false, properties: { source: { type: 'string', pattern: SAFE_NAME_PATTERN, maxLength: MAX_NAME_LENGTH }, claim: { type: 'boolean' }, grant: GRANT_SCHEMA } } } },
    async (req) => {
      const b = req.body;
      const grant = b.grant !== undefined ? agent.takeGrant(b.grant, 'target', { replicationId: req.params.vmId, otherHost: b.source }) : undefined;
      return { vmId: req.params.vmId, ...agent.replicas.authorize(req.params.vmId, b.source, { claim: b.claim === true, grant }) };
    },
  );
  app.get<{ Params: { vm: string } }>('/v1/replicas/:vm', async (req) => replicaSummary(agent, agent.replicas.get(req.params.vm)));
  app.get<{ Params: { vm: string } }>('/v1/replicas/:vm/points', async (req) =>
    agent.replicas
      .get(req.params.vm)
      .points()
      .map((p) => ({ ...p, time: new Date(p.timeMs).toISOString() })),
  );
  app.delete<{ Params: { vm: string } }>('/v1/replicas/:vm', async (req) => {
    const removed = agent.replicas.remove(req.params.vm);
    agent.log.info(removed, `replica of ${removed.vmName} deleted`);
    return removed;
  });
  app.post<{ Body: { dir: string; vm?: string } }>(
    '/v1/replicas/import',
    { schema: { body: { type: 'object', required: ['dir'], properties: { dir: { type: 'string' }, vm: { type: 'string' } } } } },
    async (req, reply) => {
      const t0 = performance.now();
      const { store, manifest } = await agent.replicas.importOffline(req.body.dir, { vm: req.body.vm });
      agent.log.info({ vm: store.vmName, dir: req.body.dir }, `offline export of ${store.vmName} imported`);
      return reply.status(201).send({ vm: store.vmName, vmId: store.vmId, disks: store.disks, seq: manifest.seq, exportedAt: manifest.createdAt, bytes: store.disks.reduce((n, d) => n + d.size, 0), ms: Math.round(performance.now() - t0) });
    },
  );
  app.post<{ Params: { vm: string }; Body: { point?: number; epoch?: number; start?: boolean; commit?: boolean; machine?: unknown } | undefined }>(
    '/v1/replicas/:vm/promote',
    { schema: { body: { type: ['object', 'null'], properties: { point: { type: 'integer', minimum: 0 }, epoch: { type: 'integer', minimum: 1 }, start: { type: 'boolean' }, commit: { type: 'boolean' }, machine: { type: 'object' } } } } },
    async (req) => {
      const { machine, ...opts } = req.body ?? {};
      return agent.promote(req.params.vm, { ...opts, ...(machine !== undefined ? { machine: checkMachine(machine) } : {}) });
    },
  );
  /** A promoted replica's overlay is its VM's disks until the promotion is committed: not for other uses. */
  const unpromoted = (vm: string): ReplicaStore => {
    const s = agent.replicas.get(vm);
    if (agent.replicas.provisional().some((p) => p.store === s)) throw new OsrError('INVALID_STATE', `${s.vmName} was promoted here and runs from an overlay until the failover is committed; change its recovery point or commit it instead`);
    return s;
  };
  app.post<{ Params: { vm: string }; Body: { point?: number } | undefined }>('/v1/replicas/:vm/overlays', async (req, reply) => {
    const s = unpromoted(req.params.vm);
    const t0 = performance.now();
    const o = s.openOverlay(req.body?.point);
    const openMs = performance.now() - t0;
    return reply.status(201).send({ ...overlaySummary(agent, s, o.id), openMs: Math.round(openMs * 1000) / 1000 });
  });
  app.get<{ Params: { vm: string } }>('/v1/replicas/:vm/overlays', async (req) => {
    const s = agent.replicas.get(req.params.vm);
    return s.listOverlays().map((o) => overlaySummary(agent, s, o.id));
  });
  app.post<{ Params: { vm: string; id: string } }>('/v1/replicas/:vm/overlays/:id/commit', async (req) => {
    const s = unpromoted(req.params.vm);
    return { committed: await s.commitOverlay(req.params.id), disks: s.disks.map((d) => ({ name: d.name, image: s.imagePath(d.name) })) };
  });
  app.delete<{ Params: { vm: string; id: string } }>('/v1/replicas/:vm/overlays/:id', async (req, reply) => {
    unpromoted(req.params.vm).discardOverlay(req.params.id);
    return reply.status(204).send();
  });

  addDrillRoutes(app, agent);
  addEnrolmentRoutes(app, agent);

  return app;
}
