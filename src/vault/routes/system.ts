/** Routes anyone may call: the vault's health and the OpenAPI document. */
import { Type } from '@fastify/type-provider-typebox';
import type { App, VaultContext } from '../context.js';
import { VERSION } from '../version.js';

export const systemRoutes = (ctx: VaultContext) => async (app: App) => {
  app.get(
    '/health',
    {
      config: { access: 'public' },
      schema: { summary: 'the vault is up', tags: ['system'], security: [], response: { 200: Type.Object({ status: Type.String(), vault: Type.String(), version: Type.String(), database: Type.String(), time: Type.String() }) } },
    },
    async () => ({ status: 'ok', vault: ctx.identity.name, version: VERSION, database: ctx.store.database.dialect, time: new Date(ctx.clock.now()).toISOString() }),
  );
  app.get('/openapi.json', { config: { access: 'public' }, schema: { hide: true } }, async () => app.swagger());
};
