/** Protected items: list and read them; enable and disable protection, failovers, test failover and its cleanup, resync (jobs). */
import { randomUUID } from 'node:crypto';
import { Type } from '@fastify/type-provider-typebox';
import { OsrError } from '../../domain/errors.js';
import { ProtectionState, type ProtectedItem } from '../../domain/resources.js';
import { ItemOperation, startItemOperation } from '../../workflows/item-jobs.js';
import { checkFabricCan, checkGroupSite, checkProtectionOptions } from '../../workflows/fabric-capabilities.js';
import { MAX_NAME_LENGTH, SAFE_NAME_PATTERN } from '../../domain/names.js';
import { JobKinds } from '../../workflows/protection.js';
import { ResyncJobs } from '../../workflows/resync.js';
import { accepted, page, principal, type App, type VaultContext } from '../context.js';
import { Id, IdParam, PageQuery } from '../schemas.js';

export const protectionRoutes = (ctx: VaultContext) => async (app: App) => {
  const { items, fabrics, config, activity } = ctx.store;
  const tags = ['protected items'];

  const startOperation = (op: ItemOperation, itemId: string, input: (item: ProtectedItem) => unknown, actor: string) => startItemOperation(ctx.engine, ctx.store, op, { itemId, input, actor });

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
          plan: Type.Optional(Type.String({ maxLength: 300, description: 'the VMs of this recovery plan (id or name) only' })),
          ...PageQuery,
        }),
      },
    },
    async (request) => {
      const q = request.query;
      const limit = q.limit ?? 100;
      const ids = q.plan ? (await config.plan(q.plan)).groups.flatMap((g) => g.items) : undefined;
      return page(await items.list({ state: q.state, health: q.health, pairingId: q.pairing, fabricId: q.fabric, namePrefix: q.name, ...(ids ? { ids } : {}), after: q.after, limit }), limit);
    },
  );
  app.get('/protected-items/summary', { config: { access: 'read' }, schema: { summary: 'every protected item at a glance: counts by health and state, the worst RPO, the drills due', tags } }, async () => items.summary(ctx.clock.now()));
  app.get('/protected-items/:id', { config: { access: 'read' }, schema: { summary: 'a protected item', tags, params: IdParam } }, async (request) => items.get(request.params.id));
  app.get('/protected-items/:id/recovery-points', { config: { access: 'read' }, schema: { summary: 'an item\'s recovery points, newest first', tags, params: IdParam } }, async (request) => {
    await items.get(request.params.id);
    return { items: await items.points(request.params.id), next: null };
  });
  app.get(
    '/protected-items/:id/samples',
    {
      config: { access: 'read' },
      schema: {
        summary: 'an item\'s RPO, churn and pending change logs over time (one sample a minute at most, a week kept), oldest first',
        tags,
        params: IdParam,
        querystring: Type.Object({ since: Type.Optional(Type.String({ format: 'date-time', description: 'from this instant (default: 24 hours ago)' })) }),
      },
    },
    async (request) => {
      await items.get(request.params.id);
      const since = request.query.since ? Date.parse(request.query.since) : ctx.clock.now() - 24 * 3600_000;
      return { items: await items.samples(request.params.id, since), next: null };
    },
  );
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
        body: Type.Object(
          {
            vmId: Id,
            pairingId: Type.Optional(Id),
            recoveryVm: Type.Optional(
              Type.Object(
                {
                  size: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_]{1,64}$', description: 'the replica VM\'s size, of those the recovery site offers (its capabilities\' recoveryVmSizes)' })),
                  diskType: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_]{1,64}$', description: 'its disks\' type, of the recovery site\'s recoveryDiskTypes' })),
                },
                { additionalProperties: false },
              ),
            ),
            replicationGroup: Type.Optional(
              Type.String({ pattern: SAFE_NAME_PATTERN, maxLength: MAX_NAME_LENGTH, description: 'a replication group (consistency group): its members\' recovery points are cut at one instant, and a recovery plan fails them over at one group point' }),
            ),
          },
          { additionalProperties: false },
        ),
      },
    },
    async (request, reply) => {
      const vm = await fabrics.object(request.body.vmId, 'vm');
      const group = request.body.replicationGroup;
      const { cloud, replicaOf } = vm.properties as { cloud: string; replicaOf?: string };
      if (replicaOf) throw new OsrError('INVALID_STATE', `VM ${vm.name} (${vm.id}) is the replica of protected item ${replicaOf}; protect the source VM, or disable its protection keeping the replica to make this a VM of its own`, { replicaOf });
      const pairing = request.body.pairingId ? await config.pairing(request.body.pairingId) : await config.pairingOfSource(cloud);
      if (!pairing) throw new OsrError('INVALID_STATE', `cloud ${cloud} of VM ${vm.name} is not paired; pair it with a target cloud under a policy first`, { cloud });
      // what the policy asks that either fabric cannot do is refused now, before the item or its job exists
      const target = await fabrics.object(pairing.targetCloudId, 'cloud');
      const recoveryVm = request.body.recoveryVm;
      await checkProtectionOptions(ctx.store, { vm, policy: await config.policy(pairing.policyId), targetFabricId: target.fabricId, recoveryVm, group });
      if (group !== undefined) await checkGroupSite(ctx.store, group, vm, target.fabricId);
      const jobId = randomUUID();
      // the item first: a VM is protected once, and a second request is refused here
      await items.create({ id: vm.id, name: vm.name, fabricId: vm.fabricId, pairingId: pairing.id, state: ProtectionState.EnablingProtection, activeJobId: jobId, group });
      try {
        const job = await ctx.engine.submit(JobKinds.EnableProtection, { id: jobId, target: vm.id, input: { vmId: vm.id, pairingId: pairing.id, ...(recoveryVm ? { recoveryVm } : {}), ...(group !== undefined ? { group } : {}) }, createdBy: principal(request).actor });
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
      const job = await startOperation(ItemOperation.DisableProtection, request.params.id, (item) => ({ itemId: item.id, ...(request.query.deleteReplica !== undefined ? { deleteReplica: request.query.deleteReplica } : {}) }), principal(request).actor);
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
      const target = (await items.get(request.params.id)).replication.targetFabricId;
      if (target) await checkFabricCan(ctx.store, target, 'testFailover', 'run a test failover');
      const job = await startOperation(ItemOperation.TestFailover, request.params.id, (item) => ({ itemId: item.id, recoveryPoint: b.recoveryPoint ?? 'latest', network: b.network ?? 'none' }), principal(request).actor);
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
      const job = await startOperation(ItemOperation.TestFailoverCleanup, request.params.id, (item) => ({ itemId: item.id, ...(notes !== undefined ? { notes } : {}) }), principal(request).actor);
      return accepted(reply, job);
    },
  );

  const itemAction = (op: ItemOperation, summary: string) =>
    app.post(
      `/protected-items/:id/${op}`,
      { config: { access: 'operate' }, schema: { summary, tags, params: IdParam } },
      async (request, reply) => accepted(reply, await startOperation(op, request.params.id, (item) => ({ itemId: item.id }), principal(request).actor)),
    );
  itemAction(ItemOperation.PlannedFailover, 'planned failover (a job): shut the VM down, ship its final delta, start it at the other site with nothing lost, fence the old primary');
  itemAction(ItemOperation.Commit, 'commit a failover (a job): it becomes final, the other recovery points are dropped; reprotect next');
  app.post(
    '/protected-items/:id/change-recovery-point',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'before the commit, run the failed-over VM from another recovery point (a job): it starts again from that point; what it wrote since the failover is discarded',
        tags,
        params: IdParam,
        body: Type.Object({ recoveryPoint: Type.String({ minLength: 1, maxLength: 200, description: 'latest, latest-app-consistent, or a point id (the item keeps its points until the commit)' }) }, { additionalProperties: false }),
      },
    },
    async (request, reply) => {
      const point = request.body.recoveryPoint;
      return accepted(reply, await startOperation(ItemOperation.ChangeRecoveryPoint, request.params.id, (item) => ({ itemId: item.id, recoveryPoint: point }), principal(request).actor));
    },
  );
  app.post(
    '/protected-items/:id/resync',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'resynchronize now (a job), whatever the resync window: every block is compared with the replica and only those that differ are sent; the item is Resynchronizing until the resync\'s point is at the replica',
        tags,
        params: IdParam,
      },
    },
    async (request, reply) => {
      const source = (await items.get(request.params.id)).replication.sourceFabricId;
      if (source) await checkFabricCan(ctx.store, source, 'resyncOnRequest', 'resynchronize on request; its resync runs in the window its hosts allow');
      return accepted(reply, await startOperation(ItemOperation.Resync, request.params.id, (item) => ({ itemId: item.id, from: item.state }), principal(request).actor));
    },
  );
  app.post(
    '/protected-items/:id/confirm-disks',
    {
      config: { access: 'operate' },
      schema: {
        summary: 'confirm a disk change (a job): the VM\'s disks shrank or one was removed, and its replication waits (health reason DISK_CHANGE_UNCONFIRMED); the replica\'s next points have the disks as they are now, older points keep theirs',
        tags,
        params: IdParam,
      },
    },
    async (request, reply) => {
      const item = await items.get(request.params.id);
      if (!item.replication.sourceFabricId) throw new OsrError('INVALID_STATE', `${item.name} does not replicate; there is no disk change to confirm`);
      return accepted(reply, await ctx.engine.submit(ResyncJobs.ConfirmDisks, { target: item.id, input: { itemId: item.id }, createdBy: principal(request).actor }));
    },
  );
  itemAction(ItemOperation.Reprotect, 'reprotect after a committed failover (a job): the old primary becomes the replica and replication runs the other way, sending only what differs');
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
      const job = await startOperation(ItemOperation.UnplannedFailover, request.params.id, (item) => ({ itemId: item.id, recoveryPoint: b.recoveryPoint ?? 'latest', shutdownSource: b.shutdownSource ?? false, sourceTimeoutSeconds: b.sourceTimeoutSeconds ?? 60 }), principal(request).actor);
      return accepted(reply, job);
    },
  );
};
