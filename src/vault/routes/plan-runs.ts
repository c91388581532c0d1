/** Recovery plan runs: test failover and its cleanup, planned and unplanned failover, commit and reprotect of a whole plan (jobs); the plan's drills. */
import { Type } from '@fastify/type-provider-typebox';
import { ItemOperation } from '../../workflows/item-jobs.js';
import { planDrills, startPlanRun, type PlanRunOptions } from '../../workflows/plan-run.js';
import { accepted, principal, type App, type VaultContext } from '../context.js';
import { IdParam } from '../schemas.js';

const Point = Type.String({ minLength: 1, maxLength: 200 });

export const planRunRoutes = (ctx: VaultContext) => async (app: App) => {
  const { config } = ctx.store;
  const tags = ['recovery plans'];

  const run = (op: ItemOperation, summary: string, body = Type.Object({}, { additionalProperties: false }), options: (b: Record<string, unknown>) => PlanRunOptions = () => ({})) =>
    app.post(
      `/recovery-plans/:id/${op}`,
      { config: { access: 'operate' }, schema: { summary, tags, params: IdParam, body: Type.Optional(body) } },
      async (request, reply) => {
        const plan = await config.plan(request.params.id);
        const job = await startPlanRun(ctx.engine, ctx.store, plan, op, options((request.body ?? {}) as Record<string, unknown>), principal(request).actor);
        return accepted(reply, job);
      },
    );

  run(
    ItemOperation.TestFailover,
    'test failover of a plan (a job): its groups in order, each group\'s VMs in parallel, from a recovery point through an overlay while replication goes on; pre and post actions run',
    Type.Object(
      {
        recoveryPoint: Type.Optional(Type.String({ minLength: 1, maxLength: 200, description: 'latest (default), latest-app-consistent, or a point id' })),
        network: Type.Optional(Type.String({ minLength: 1, maxLength: 300, description: 'none (default), temporary (one isolated network for the whole drill), or a VM network of the recovery site' })),
      },
      { additionalProperties: false },
    ),
    (b) => ({ recoveryPoint: (b.recoveryPoint as string | undefined) ?? 'latest', network: (b.network as string | undefined) ?? 'none' }),
  );
  run(
    ItemOperation.TestFailoverCleanup,
    'clean up a plan\'s test failover (a job): remove its test VMs and networks; the drill counts once this succeeded',
    Type.Object({ notes: Type.Optional(Type.String({ maxLength: 2000 })) }, { additionalProperties: false }),
    (b) => (b.notes !== undefined ? { notes: b.notes as string } : {}),
  );
  run(ItemOperation.PlannedFailover, 'planned failover of a plan (a job): the shutdown group first, then the groups in order with nothing lost; stops at the first error');
  run(
    ItemOperation.UnplannedFailover,
    'unplanned failover of a plan (a job): the groups in order from the chosen point; carries on past a VM that fails and reports per VM',
    Type.Object(
      {
        recoveryPoint: Type.Optional(Point),
        shutdownSource: Type.Optional(Type.Boolean({ description: 'try to shut the source VMs down first; carry on when their site cannot be reached' })),
        sourceTimeoutSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 3600 })),
      },
      { additionalProperties: false },
    ),
    (b) => ({ recoveryPoint: (b.recoveryPoint as string | undefined) ?? 'latest', shutdownSource: b.shutdownSource === true, sourceTimeoutSeconds: (b.sourceTimeoutSeconds as number | undefined) ?? 60 }),
  );
  run(
    ItemOperation.ChangeRecoveryPoint,
    'before the commit, run a plan\'s failed-over VMs from another recovery point (a job): each starts again from it, what it wrote since the failover discarded',
    Type.Object({ recoveryPoint: Type.String({ minLength: 1, maxLength: 200, description: 'latest, latest-app-consistent, or a point id' }) }, { additionalProperties: false }),
    (b) => ({ recoveryPoint: b.recoveryPoint as string }),
  );
  run(ItemOperation.Commit, 'commit a plan\'s failover (a job): every failed-over VM\'s failover becomes final, their other recovery points dropped');
  run(ItemOperation.Reprotect, 'reprotect a plan (a job): replication of every committed VM runs the other way, sending only what differs');

  app.get(
    '/recovery-plans/:id/drills',
    { config: { access: 'read' }, schema: { summary: 'a plan\'s drills (test failovers cleaned up), newest first, with measured RTO per plan and VM and the points used', tags, params: IdParam } },
    async (request) => {
      const plan = await config.plan(request.params.id);
      return { items: await planDrills(ctx.store, plan.id), next: null };
    },
  );
};
