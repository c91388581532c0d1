/** Fabrics and what their providers report: clouds, host groups, hosts, networks, storage, VMs. */
import { Type } from '@fastify/type-provider-typebox';
import type { InventoryKind } from '../../domain/resources.js';
import { OsrError } from '../../domain/errors.js';
import { Severity } from '../../domain/resources.js';
import { page, principal, type App, type VaultContext } from '../context.js';
import { IdParam, PageQuery } from '../schemas.js';

/** URL path → inventory kind */
const KINDS: [string, InventoryKind, string][] = [
  ['clouds', 'cloud', 'clouds (protection containers)'],
  ['host-groups', 'host-group', 'host groups'],
  ['hosts', 'host', 'hosts'],
  ['logical-networks', 'logical-network', 'logical networks'],
  ['vm-networks', 'vm-network', 'VM networks with their subnets'],
  ['ip-pools', 'ip-pool', 'static IP pools'],
  ['storage-classifications', 'storage-classification', 'storage classifications'],
  ['storage-locations', 'storage-location', 'storage locations (shares and cluster volumes)'],
  ['vms', 'vm', 'VMs with their disks and NICs'],
];

export const inventoryRoutes = (ctx: VaultContext) => async (app: App) => {
  const { fabrics } = ctx.store;
  const tags = ['fabrics'];

  app.get('/fabrics', { config: { access: 'read' }, schema: { summary: 'registered fabrics with their providers', tags } }, async () => ({ items: await fabrics.list(), next: null }));
  app.get('/fabrics/:id', { config: { access: 'read' }, schema: { summary: 'a fabric', tags, params: IdParam } }, async (request) => fabrics.get(request.params.id));
  app.delete('/fabrics/:id', { config: { access: 'configure' }, schema: { summary: 'unregister a fabric (none of its VMs may be protected)', tags, params: IdParam } }, async (request, reply) => {
    await fabrics.remove(request.params.id);
    // the fabric's provider and agents hold certificates no longer meant to work anywhere
    await ctx.store.certificates.revokeFabric(request.params.id, 'fabric removed');
    await ctx.store.hostAdmissions.removeFabric(request.params.id);
    return reply.status(204).send();
  });

  const HostParams = Type.Object({ fabric: Type.String({ minLength: 1, maxLength: 200 }), host: Type.String({ minLength: 1, maxLength: 253 }) });
  // host admission: which hosts the vault certifies (the first inventory's, and those an Owner approved)
  app.get(
    '/host-admissions',
    {
      config: { access: 'read' },
      schema: { summary: 'hosts of each fabric and whether the vault admitted them (it certifies an agent only for an admitted host)', tags, querystring: Type.Object({ fabric: Type.Optional(Type.String({ maxLength: 200 })), state: Type.Optional(Type.Union([Type.Literal('admitted'), Type.Literal('pending')])) }) },
    },
    async (request) => ({ items: await ctx.store.hostAdmissions.list({ fabricId: request.query.fabric, state: request.query.state }), next: null }),
  );
  app.post(
    '/host-admissions/:fabric/:host/approve',
    {
      config: { access: 'admin' },
      schema: { summary: 'admit a host its fabric reported after its first inventory: its agent may be certified from now on (Owner)', tags, params: HostParams },
    },
    async (request) => {
      const { fabric, host } = request.params;
      const before = await ctx.store.hostAdmissions.get(fabric, host);
      const a = await ctx.store.hostAdmissions.approve(fabric, host, principal(request).actor);
      if (before?.state !== 'admitted') await ctx.alerting.event({ target: fabric, kind: 'host.admitted', severity: Severity.Info, message: `host ${host} of fabric ${fabric} admitted by ${a.decidedBy}: its agent may be certified`, details: { host, by: a.decidedBy } });
      return a;
    },
  );

  app.post(
    '/host-admissions/:fabric/:host/reset',
    {
      config: { access: 'admin' },
      schema: { summary: 'revoke every certificate of a host\'s agent (it lost its key, or it is enrolled anew): its next enrolment needs no proof of a current key (Owner)', tags, params: HostParams },
    },
    async (request) => {
      const { fabric, host } = request.params;
      const a = await ctx.store.hostAdmissions.get(fabric, host);
      if (!a) throw new OsrError('NOT_FOUND', `fabric ${fabric} reports no host ${host}`, { fabric, host });
      const revoked = await ctx.store.certificates.revokeHolder(fabric, host, `reset by ${principal(request).actor}`, 'agent');
      await ctx.alerting.event({ target: fabric, kind: 'certificate.revoked', severity: Severity.Warning, message: `host ${host} of fabric ${fabric} was reset by ${principal(request).actor}: ${revoked} agent certificate(s) revoked; its provider enrols it anew`, details: { host, count: revoked } });
      return { fabricId: fabric, host, revoked };
    },
  );

  const ListQuery = Type.Object({ fabric: Type.Optional(Type.String({ maxLength: 200 })), parent: Type.Optional(Type.String({ maxLength: 300 })), ...PageQuery });
  for (const [pathName, kind, what] of KINDS) {
    app.get(`/${pathName}`, { config: { access: 'read' }, schema: { summary: `list ${what}`, tags: ['inventory'], querystring: ListQuery } }, async (request) => {
      const limit = request.query.limit ?? 100;
      return page(await fabrics.objects(kind, { fabricId: request.query.fabric, parentId: request.query.parent, after: request.query.after, limit }), limit);
    });
    app.get(`/${pathName}/:id`, { config: { access: 'read' }, schema: { summary: `one of the ${what}`, tags: ['inventory'], params: IdParam } }, async (request) => fabrics.object(request.params.id, kind));
  }

  app.get(
    '/protectable-items',
    { config: { access: 'read' }, schema: { summary: 'VMs not protected yet', tags: ['inventory'], querystring: Type.Object({ cloud: Type.Optional(Type.String({ maxLength: 300 })), ...PageQuery }) } },
    async (request) => {
      const limit = request.query.limit ?? 100;
      return page(await fabrics.protectable({ cloudId: request.query.cloud, after: request.query.after, limit }), limit);
    },
  );
};
