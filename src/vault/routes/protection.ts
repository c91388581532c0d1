/** Protected items: list and read them, enable protection (a job), disable it (a job). */
import { randomUUID } from 'node:crypto';
import { Type } from '@fastify/type-provider-typebox';
import { OsrError } from '../../domain/errors.js';
import { ProtectionState } from '../../domain/resources.js';
import { JobState } from '../../store/jobs.js';
import { JobKinds } from '../../workflows/protection.js';
import { accepted, page, principal, type App, type VaultContext } from '../context.js';
import { Id, IdParam, PageQuery } from '../schemas.js';

const ACTIVE: readonly string[] = [JobState.Queued, JobState.Running, JobState.WaitingForInput];

export const protectionRoutes = (ctx: VaultContext) => async (app: App) => {
  const { items, fabrics, config, jobs, activity } = ctx.store;
  const tags = ['protected items'];

  app.get(
    '/protected-items',
    {
      config: { access: 'read' },
      schema: {
        summary: 'protected items, filtered',
        tags,
        querystring: Type.Object({
          state: Type.Optional(Type.String({ maxLength: 50 })),
          health: Type.Optional(Type.String({ maxLength: 50 })),
          pairing: Type.Optional(Type.String({ maxLength: 300 })),
          fabric: Type.Optional(Type.String({ maxLength: 300 })),
          name: Type.Optional(Type.String({ maxLength: 200, description: 'names starting with this' })),
          ...PageQuery,
        }),
      },
    },
    async (request) => {
      const q = request.query;
      const limit = q.limit ?? 100;
      return page(await items.list({ state: q.state, health: q.health, pairingId: q.pairing, fabricId: q.fabric, namePrefix: q.name, after: q.after, limit }), limit);
    },
  );
  app.get('/protected-items/:id', { config: { access: 'read' }, schema: { summary: 'a protected item', tags, params: IdParam } }, async (request) => items.get(request.params.id));
  app.get('/protected-items/:id/recovery-points', { config: { access: 'read' }, schema: { summary: 'an item\'s recovery points, newest first', tags, params: IdParam } }, async (request) => {
    await items.get(request.params.id);
    return { items: await items.points(request.params.id), next: null };
  });
  app.get(
    '/protected-items/:id/events',
    { config: { access: 'read' }, schema: { summary: 'an item\'s event history, newest first', tags, params: IdParam, querystring: Type.Object(PageQuery) } },
    async (request) => {
      const limit = request.query.limit ?? 100;
      return page(await activity.events({ target: request.params.id, after: request.query.after, limit }), limit);
    },
  );

  app.post(
    '/protected-items',
    {
      config: { access: 'configure' },
      schema: {
        summary: 'enable protection of a VM (a job: 202 with its URL)',
        tags,
        body: Type.Object({ vmId: Id, pairingId: Type.Optional(Id) }, { additionalProperties: false }),
      },
    },
    async (request, reply) => {
      const vm = await fabrics.object(request.body.vmId, 'vm');
      const { cloud, replicaOf } = vm.properties as { cloud: string; replicaOf?: string };
      if (replicaOf) throw new OsrError('INVALID_STATE', `VM ${vm.name} (${vm.id}) is the replica of protected item ${replicaOf}; protect the source VM, or disable its protection keeping the replica to make this a VM of its own`, { replicaOf });
      const pairing = request.body.pairingId ? await config.pairing(request.body.pairingId) : await config.pairingOfSource(cloud);
      if (!pairing) throw new OsrError('INVALID_STATE', `cloud ${cloud} of VM ${vm.name} is not paired; pair it with a target cloud under a policy first`, { cloud });
      const jobId = randomUUID();
      // the item first: a VM is protected once, and a second request is refused here
      await items.create({ id: vm.id, name: vm.name, fabricId: vm.fabricId, pairingId: pairing.id, state: ProtectionState.EnablingProtection, activeJobId: jobId });
      try {
        const job = await ctx.engine.submit(JobKinds.EnableProtection, { id: jobId, target: vm.id, input: { vmId: vm.id, pairingId: pairing.id }, createdBy: principal(request).actor });
        return accepted(reply, job);
      } catch (e) {
        await items.remove(vm.id);
        throw e;
      }
    },
  );

  app.delete(
    '/protected-items/:id',
    {
      config: { access: 'configure' },
      schema: { summary: 'disable protection (a job); the replica is deleted or kept as the policy says, unless deleteReplica is given', tags, params: IdParam, querystring: Type.Object({ deleteReplica: Type.Optional(Type.Boolean()) }) },
    },
    async (request, reply) => {
      const item = await items.get(request.params.id);
      if (item.activeJobId) {
        const running = await jobs.get(item.activeJobId).catch(() => undefined);
        if (running && ACTIVE.includes(running.state)) {
          throw new OsrError('INVALID_STATE', `protected item ${item.name} has job ${running.id} (${running.kind}) ${running.state}; cancel it or wait for it`, { jobId: running.id });
        }
      }
      const jobId = randomUUID();
      if (!(await items.takeActiveJob(item.id, jobId, item.activeJobId, ProtectionState.DisablingProtection))) {
        throw new OsrError('INVALID_STATE', `protected item ${item.name} started another job meanwhile; look at its jobs and try again`);
      }
      const job = await ctx.engine.submit(JobKinds.DisableProtection, { id: jobId, target: item.id, input: { itemId: item.id, ...(request.query.deleteReplica !== undefined ? { deleteReplica: request.query.deleteReplica } : {}) }, createdBy: principal(request).actor });
      return accepted(reply, job);
    },
  );
};
