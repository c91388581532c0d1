/** Protected items: list and read them; enable and disable protection, test failover and its cleanup (jobs). */
import { randomUUID } from 'node:crypto';
import { Type } from '@fastify/type-provider-typebox';
import { OsrError } from '../../domain/errors.js';
import { ProtectionState, type ProtectedItem } from '../../domain/resources.js';
import { JobState } from '../../store/jobs.js';
import { JobKinds } from '../../workflows/protection.js';
import { TestFailoverJobs } from '../../workflows/test-failover.js';
import { FailoverJobs } from '../../workflows/failover.js';
import { accepted, page, principal, type App, type VaultContext } from '../context.js';
import { Id, IdParam, PageQuery } from '../schemas.js';

const ACTIVE: readonly string[] = [JobState.Queued, JobState.Running, JobState.WaitingForInput];

export const protectionRoutes = (ctx: VaultContext) => async (app: App) => {
  const { items, fabrics, config, jobs, activity } = ctx.store;
  const tags = ['protected items'];

  /**
   * A job on an existing item: refused while another job is active on it, or when the item
   * is not in one of the states the job starts from; the item takes the job and its state.
   */
  async function startItemJob(itemId: string, state: ProtectionState, kind: string, input: (item: ProtectedItem) => unknown, actor: string, from?: readonly ProtectionState[], needsReadiness = false) {
    const item = await items.get(itemId);
    if (item.activeJobId) {
      const running = await jobs.get(item.activeJobId).catch(() => undefined);
      if (running && ACTIVE.includes(running.state)) {
        throw new OsrError('INVALID_STATE', `protected item ${item.name} has job ${running.id} (${running.kind}) ${running.state}; cancel it or wait for it`, { jobId: running.id });
      }
    }
    if (from && !from.includes(item.state)) throw new OsrError('INVALID_STATE', `protected item ${item.name} is ${item.state}; ${kind} starts from ${from.join(' or ')}`, { state: item.state });
    if (needsReadiness && !item.readiness.ready) throw new OsrError('INVALID_STATE', `protected item ${item.name} is not ready for failover: ${item.readiness.reason}`, { state: item.state, readiness: item.readiness });
    const jobId = randomUUID();
    if (!(await items.takeActiveJob(item.id, jobId, item.activeJobId, state))) {
      throw new OsrError('INVALID_STATE', `protected item ${item.name} started another job meanwhile; look at its jobs and try again`);
    }
    return ctx.engine.submit(kind, { id: jobId, target: item.id, input: input(item), createdBy: actor });
  }

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
      const job = await startItemJob(request.params.id, ProtectionState.DisablingProtection, JobKinds.DisableProtection, (item) => ({ itemId: item.id, ...(request.query.deleteReplica !== undefined ? { deleteReplica: request.query.deleteReplica } : {}) }), principal(request).actor);
      return accepted(reply, job);
    },
  );

  app.post(
    '/protected-items/:id/test-failover',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'test failover (a job): a recovery point started at the recovery site in isolation while replication goes on',
        tags,
        params: IdParam,
        body: Type.Object(
          {
            recoveryPoint: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'latest (default), latest-app-consistent, or a point id' })),
            network: Type.Optional(Type.String({ minLength: 1, maxLength: 300, description: 'none (default), temporary (made for the drill, removed at cleanup), or a VM network id at the recovery site' })),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (request, reply) => {
      const b = request.body;
      const job = await startItemJob(request.params.id, ProtectionState.TestFailoverInProgress, TestFailoverJobs.TestFailover, (item) => ({ itemId: item.id, recoveryPoint: b.recoveryPoint ?? 'latest', network: b.network ?? 'none' }), principal(request).actor, [ProtectionState.Protected], true);
      return accepted(reply, job);
    },
  );

  app.post(
    '/protected-items/:id/test-failover-cleanup',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'clean up a test failover (a job): its VM and any network made for it are removed and the drill is recorded',
        tags,
        params: IdParam,
        body: Type.Object({ notes: Type.Optional(Type.String({ maxLength: 4000 })) }, { additionalProperties: false }),
      },
    },
    async (request, reply) => {
      const notes = request.body.notes;
      const job = await startItemJob(request.params.id, ProtectionState.CleaningUpTestFailover, TestFailoverJobs.Cleanup, (item) => ({ itemId: item.id, ...(notes !== undefined ? { notes } : {}) }), principal(request).actor, [ProtectionState.TestFailoverComplete]);
      return accepted(reply, job);
    },
  );

  const itemAction = (pathName: string, summary: string, kind: string, state: ProtectionState, from: ProtectionState[], needsReadiness = false) =>
    app.post(
      `/protected-items/:id/${pathName}`,
      { config: { access: 'operate' }, schema: { summary, tags, params: IdParam } },
      async (request, reply) => accepted(reply, await startItemJob(request.params.id, state, kind, (item) => ({ itemId: item.id }), principal(request).actor, from, needsReadiness)),
    );
  itemAction('planned-failover', 'planned failover (a job): shut the VM down, ship its final delta, start it at the other site with nothing lost, fence the old primary', FailoverJobs.PlannedFailover, ProtectionState.FailoverInProgress, [ProtectionState.Protected], true);
  itemAction('commit', 'commit a failover (a job): it becomes final; reprotect next', FailoverJobs.Commit, ProtectionState.FailedOver, [ProtectionState.FailedOver]);
  itemAction('reprotect', 'reprotect after a committed failover (a job): the old primary becomes the replica and replication runs the other way, sending only what differs', FailoverJobs.Reprotect, ProtectionState.Reprotecting, [ProtectionState.Committed]);
  app.post(
    '/protected-items/:id/unplanned-failover',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'unplanned failover (a job): start a recovery point at the other site when the primary may be gone; optionally shut the source down first, carrying on if it cannot be reached',
        tags,
        params: IdParam,
        body: Type.Object(
          {
            recoveryPoint: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'latest (default: the newest at the recovery site), latest-processed, latest-app-consistent, or a point id' })),
            shutdownSource: Type.Optional(Type.Boolean({ description: 'try to shut the source down and ship its last writes first (default false)' })),
            sourceTimeoutSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 3600, description: 'how long to wait for the source site (default 60)' })),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (request, reply) => {
      const b = request.body;
      const job = await startItemJob(request.params.id, ProtectionState.FailoverInProgress, FailoverJobs.UnplannedFailover, (item) => ({ itemId: item.id, recoveryPoint: b.recoveryPoint ?? 'latest', shutdownSource: b.shutdownSource ?? false, sourceTimeoutSeconds: b.sourceTimeoutSeconds ?? 60 }), principal(request).actor, [ProtectionState.Protected], true);
      return accepted(reply, job);
    },
  );
};
