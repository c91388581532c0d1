/**
 * The portal: the web UI's static files (built by `npm run build` into dist/portal), served
 * at `/`. It calls the same public REST API as the CLI, with the API token the user signs
 * in with, so the files themselves are public. Hashed assets are cached for a year; the
 * page is not cached and carries a content security policy that allows only this origin.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { App } from './context.js';

/** dist/portal, beside the compiled sources (dist/src/vault → dist/portal) */
export const DEFAULT_PORTAL_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../portal');

const CSP = ["default-src 'self'", "img-src 'self' data:", "style-src 'self'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'"].join('; ');

export async function servePortal(app: App, dir: string): Promise<void> {
  await app.register(async (scope) => {
    // the files are public: what they show comes from the API, which checks the token
    scope.addHook('onRoute', (route) => {
      route.config = { ...(route.config as object), access: 'public' };
    });
    const built = fs.existsSync(path.join(dir, 'index.html'));
    if (!built) {
      scope.get('/', { schema: { hide: true } }, async (_request, reply) =>
        reply.status(503).type('text/plain; charset=utf-8').send(`the portal is not built: run \`npm run build\` (it writes ${dir}); the API is at /api/v1\n`),
      );
      return;
    }
    await scope.register(fastifyStatic, {
      root: dir,
      prefix: '/',
      index: ['index.html'],
      schemaHide: true,
      setHeaders: (res, file) => {
        res.header('x-content-type-options', 'nosniff');
        res.header('referrer-policy', 'no-referrer');
        if (file.endsWith('.html')) {
          res.header('cache-control', 'no-cache');
          res.header('content-security-policy', CSP);
          res.header('x-frame-options', 'DENY');
        } else if (file.includes(`${path.sep}assets${path.sep}`)) {
          res.header('cache-control', 'public, max-age=31536000, immutable');
        }
      },
    });
  });
}
