/** Configuration: policies, cloud pairings, network and storage mappings, recovery plans. */
import { randomUUID } from 'node:crypto';
import { Type } from '@fastify/type-provider-typebox';
import { validatePolicy } from '../../domain/policy.js';
import type { RecoveryPlanSpec } from '../../domain/resources.js';
import { validatePlanForRun, validatePlanShape } from '../../domain/plans.js';
import { MappingKind } from '../../store/config.js';
import { MappingJobs } from '../../workflows/mappings.js';
import { planFacts } from '../../workflows/plan-run.js';
import { principal, type App, type VaultContext } from '../context.js';
import { Id, IdParam, Name, PolicySettingsSchema, RecoveryPlanSchema } from '../schemas.js';

export const configurationRoutes = (ctx: VaultContext) => async (app: App) => {
  const { config } = ctx.store;
  const now = () => ctx.clock.now();

  // ---- policies ------------------------------------------------------------------------
  const policyTags = ['policies'];
  app.get('/policies', { config: { access: 'read' }, schema: { summary: 'replication policies', tags: policyTags } }, async () => ({ items: await config.policies(), next: null }));
  app.get('/policies/:id', { config: { access: 'read' }, schema: { summary: 'a policy', tags: policyTags, params: IdParam } }, async (request) => config.policy(request.params.id));
  app.post(
    '/policies',
    { config: { access: 'configure' }, schema: { summary: 'create a policy (ASR\'s rules apply: see POLICY_INVALID)', tags: policyTags, body: Type.Object({ name: Name, settings: Type.Optional(PolicySettingsSchema) }, { additionalProperties: false }) } },
    async (request, reply) => reply.status(201).send(await config.createPolicy(request.body.name, validatePolicy(request.body.settings ?? {}, now()))),
  );
  app.put(
    '/policies/:id',
    { config: { access: 'configure' }, schema: { summary: 'change a policy', tags: policyTags, params: IdParam, body: Type.Object({ name: Type.Optional(Name), settings: PolicySettingsSchema }, { additionalProperties: false }) } },
    async (request) => config.updatePolicy(request.params.id, { ...(request.body.name ? { name: request.body.name } : {}), settings: validatePolicy(request.body.settings, now()) }),
  );
  app.delete('/policies/:id', { config: { access: 'configure' }, schema: { summary: 'delete a policy no pairing uses', tags: policyTags, params: IdParam } }, async (request, reply) => {
    await config.deletePolicy(request.params.id);
    return reply.status(204).send();
  });

  // ---- cloud pairings --------------------------------------------------------------------
  const pairTags = ['cloud pairings'];
  app.get('/cloud-pairings', { config: { access: 'read' }, schema: { summary: 'cloud pairings (policy, source cloud, target cloud)', tags: pairTags } }, async () => ({ items: await config.pairings(), next: null }));
  app.get('/cloud-pairings/:id', { config: { access: 'read' }, schema: { summary: 'a cloud pairing', tags: pairTags, params: IdParam } }, async (request) => config.pairing(request.params.id));
  app.post(
    '/cloud-pairings',
    { config: { access: 'configure' }, schema: { summary: 'pair a source cloud with a target cloud under a policy (both may be on one fabric)', tags: pairTags, body: Type.Object({ policyId: Id, sourceCloudId: Id, targetCloudId: Id }, { additionalProperties: false }) } },
    async (request, reply) => reply.status(201).send(await config.createPairing(request.body)),
  );
  app.delete('/cloud-pairings/:id', { config: { access: 'configure' }, schema: { summary: 'remove a pairing that covers no protected item', tags: pairTags, params: IdParam } }, async (request, reply) => {
    await config.deletePairing(request.params.id);
    return reply.status(204).send();
  });

  // ---- mappings --------------------------------------------------------------------------
  /** Replicas follow their network mappings: a job reconnects those a change concerns. */
  const reconnect = (sourceNetworkId: string, actor: string) => ctx.engine.submit(MappingJobs.ReconnectReplicas, { id: randomUUID(), target: sourceNetworkId, input: { sourceNetworkId }, createdBy: actor });
  for (const [pathName, kind, what] of [
    ['network-mappings', MappingKind.Network, 'VM network to VM network'],
    ['storage-mappings', MappingKind.Storage, 'storage classification to storage classification'],
  ] as const) {
    const tags = ['mappings'];
    app.get(`/${pathName}`, { config: { access: 'read' }, schema: { summary: `mappings of ${what}`, tags } }, async () => ({ items: await config.mappings(kind), next: null }));
    app.post(
      `/${pathName}`,
      { config: { access: 'configure' }, schema: { summary: `map ${what}`, tags, body: Type.Object({ sourceId: Id, targetId: Id }, { additionalProperties: false }) } },
      async (request, reply) => {
        const mapping = await config.createMapping(kind, request.body);
        const job = kind === MappingKind.Network ? await reconnect(mapping.sourceId, principal(request).actor) : null;
        return reply.status(201).send({ ...mapping, reconnectJobId: job?.id ?? null });
      },
    );
    app.delete(`/${pathName}/:id`, { config: { access: 'configure' }, schema: { summary: 'remove a mapping (a network mapping\'s replicas are disconnected by a reconnect-replicas job)', tags, params: IdParam } }, async (request, reply) => {
      const mapping = (await config.mappings(kind)).find((m) => m.id === request.params.id);
      await config.deleteMapping(kind, request.params.id);
      if (mapping && kind === MappingKind.Network) await reconnect(mapping.sourceId, principal(request).actor);
      return reply.status(204).send();
    });
  }

  // ---- recovery plans --------------------------------------------------------------------
  const planTags = ['recovery plans'];
  app.get('/recovery-plans', { config: { access: 'read' }, schema: { summary: 'recovery plans', tags: planTags } }, async () => ({ items: await config.plans(), next: null }));
  app.get('/recovery-plans/:id', { config: { access: 'read' }, schema: { summary: 'a recovery plan (by id or name)', tags: planTags, params: IdParam } }, async (request) => config.plan(request.params.id));
  app.post('/recovery-plans', { config: { access: 'configure' }, schema: { summary: 'create a recovery plan', tags: planTags, body: RecoveryPlanSchema } }, async (request, reply) =>
    reply.status(201).send(await config.createPlan(validatePlanShape(request.body as RecoveryPlanSpec))),
  );
  app.put('/recovery-plans/:id', { config: { access: 'configure' }, schema: { summary: 'replace a recovery plan', tags: planTags, params: IdParam, body: RecoveryPlanSchema } }, async (request) =>
    config.updatePlan(request.params.id, validatePlanShape(request.body as RecoveryPlanSpec)),
  );
  app.get('/recovery-plans/:id/validation', { config: { access: 'read' }, schema: { summary: 'check a plan before a run: every item protected and ready for failover, its networks and storage mapped', tags: planTags, params: IdParam } }, async (request) => {
    const plan = await config.plan(request.params.id);
    const { facts, networks, classifications } = await planFacts(ctx.store, plan);
    const problems = validatePlanForRun(plan, facts, { networks, classifications });
    return { plan: plan.name, valid: !problems.some((x) => x.severity === 'error'), problems };
  });
  app.delete('/recovery-plans/:id', { config: { access: 'configure' }, schema: { summary: 'delete a recovery plan', tags: planTags, params: IdParam } }, async (request, reply) => {
    await config.deletePlan(request.params.id);
    return reply.status(204).send();
  });
};
