/** Who the caller is, and the Owner-only routes: API tokens, registration keys and the audit trail. */
import { Type } from '@fastify/type-provider-typebox';
import { allows, Permission, ROLES } from '../../domain/roles.js';
import { principal, type App, type VaultContext } from '../context.js';

const IdParam = Type.Object({ id: Type.String({ minLength: 1, maxLength: 200 }) });

export const accessRoutes = (ctx: VaultContext) => async (app: App) => {
  const { activity } = ctx.store;
  const tags = ['access'];

  app.get('/me', { config: { access: 'read' }, schema: { summary: 'the caller: its token\'s name, role and what the role may do (the portal hides what it may not)', tags } }, async (request) => {
    const p = principal(request);
    return { actor: p.actor, role: p.role, tokenId: p.tokenId ?? null, permissions: Object.values(Permission).filter((x) => p.role !== null && allows(p.role, x)), vault: ctx.identity.name };
  });
  app.get('/tokens', { config: { access: 'admin' }, schema: { summary: 'list API tokens (never their secrets)', tags } }, async () => ({ items: await activity.tokens(), next: null }));
  app.post(
    '/tokens',
    {
      config: { access: 'admin' },
      schema: {
        summary: 'create an API token; its secret is in this answer only',
        tags,
        body: Type.Object({ name: Type.String({ minLength: 1, maxLength: 100 }), role: Type.Union(ROLES.map((r) => Type.Literal(r))) }, { additionalProperties: false }),
      },
    },
    async (request, reply) => {
      const { token, secret } = await activity.createToken(request.body.name, request.body.role, principal(request).actor);
      return reply.status(201).send({ ...token, secret });
    },
  );
  app.delete('/tokens/:id', { config: { access: 'admin' }, schema: { summary: 'revoke an API token', tags, params: IdParam } }, async (request) => activity.revokeToken(request.params.id));

  app.get('/registration-keys', { config: { access: 'admin' }, schema: { summary: 'list registration keys', tags } }, async () => ({ items: await activity.registrationKeys(), next: null }));
  app.post(
    '/registration-keys',
    { config: { access: 'admin' }, schema: { summary: 'create a registration key (valid 5 days, one provider, once); the key text is in this answer only', tags } },
    async (_request, reply) => {
      const { key, text } = await activity.createRegistrationKey(ctx.identity.name, ctx.identity.caFingerprint, ctx.settings.registrationKeyValidMs);
      return reply.status(201).send({ ...key, key: text });
    },
  );
  app.post('/registration-keys/:id/revoke', { config: { access: 'admin' }, schema: { summary: 'revoke a registration key', tags, params: IdParam } }, async (request) => activity.revokeRegistrationKey(request.params.id));

  app.get(
    '/audit',
    {
      config: { access: 'admin' },
      schema: {
        summary: 'the audit trail of mutating calls, newest first; `since` (a time) lists those made at or after it, e.g. what a vault restored from a backup taken then does not have',
        tags,
        querystring: Type.Object({ actor: Type.Optional(Type.String()), after: Type.Optional(Type.String()), since: Type.Optional(Type.String({ format: 'date-time' })), limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })) }),
      },
    },
    async (request) => {
      const limit = request.query.limit ?? 100;
      const { since, ...rest } = request.query;
      const items = await activity.auditTrail({ ...rest, ...(since !== undefined ? { since: Date.parse(since) } : {}), limit });
      return { items, next: items.length === limit ? items[items.length - 1]!.id : null };
    },
  );
};
