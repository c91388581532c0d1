/**
 * The vault itself: its role and term (public: providers, the CLI and the vault's peers
 * read it to follow the primary), and the promotion of a standby (Owner).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Type } from '@fastify/type-provider-typebox';
import { takeBackup } from '../backup.js';
import { Severity } from '../../domain/resources.js';
import { VaultRole } from '../../domain/vault-status.js';
import { OsrError } from '../../domain/errors.js';
import type { App, VaultContext } from '../context.js';

const tags = ['vault'];

const VaultStatusSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  role: Type.Union([Type.Literal('primary'), Type.Literal('standby'), Type.Literal('stale')]),
  term: Type.Integer(),
  since: Type.String(),
  origin: Type.Union([Type.Literal('created'), Type.Literal('promoted'), Type.Literal('restored')]),
  staleBecause: Type.Optional(Type.Object({ term: Type.Integer(), url: Type.String(), at: Type.String() })),
});

export const vaultRoutes = (ctx: VaultContext) => async (app: App) => {
  app.get(
    '/vault',
    {
      config: { access: 'public' },
      schema: { summary: 'this vault process: its role (primary, standby or stale) and term; providers and the CLI follow the primary of the newest term', tags, security: [], response: { 200: VaultStatusSchema } },
    },
    async () => ctx.role.status(),
  );

  app.post(
    '/vault/promote',
    {
      config: { access: 'admin', anyRole: true },
      schema: {
        summary: 'promote this standby vault: its PostgreSQL standby is promoted (pg_promote), the next term begins, and it runs jobs and takes providers from now on; for when the primary vault\'s site is lost',
        tags,
        body: Type.Optional(
          Type.Object(
            {
              waitSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 600 })),
              force: Type.Optional(Type.Boolean({ description: 'promote even though a peer still answers as the primary (it is fenced by the new term only once it hears of it)' })),
            },
            { additionalProperties: false },
          ),
        ),
        response: { 200: VaultStatusSchema },
      },
    },
    async (request) => {
      const role = ctx.role;
      if (role.role === VaultRole.Primary) throw new OsrError('INVALID_STATE', `this vault is the primary already (term ${role.term.term})`, { term: role.term.term });
      if (role.role === VaultRole.Stale) role.assertWritable();
      // the primary's site must be gone: two primaries would both take changes until the old one hears of the new term
      await role.probePeers();
      const live = role.livePrimaries[0];
      if (live && request.body?.force !== true) {
        throw new OsrError('INVALID_STATE', `the vault at ${live.url} still answers as the primary (term ${live.term}): promoting this one now would make two; stop that one first, or promote with force if it cannot be reached by the providers`, { url: live.url, term: live.term });
      }
      await ctx.store.role.promoteDatabase(request.body?.waitSeconds ?? 60);
      // the role check may have begun the term already (it looks every few seconds)
      if (!role.writable) await role.beginTerm('promoted');
      await ctx.alerting.event({
        target: 'vault',
        kind: 'vault.promoted',
        severity: Severity.Warning,
        message: `this vault was promoted: its database takes writes, term ${role.term.term} began (by ${request.principal?.actor ?? 'unknown'})`,
        details: { term: role.term.term },
      });
      return role.status();
    },
  );

  app.get(
    '/vault/backup',
    {
      config: { access: 'admin' },
      schema: {
        summary: 'a consistent backup of this SQLite vault, taken now and sent as the database file (its manifest, base64 JSON, in the osr-backup-manifest header); `osr vault backup --to DIR` keeps it at another host',
        tags,
        produces: ['application/octet-stream'],
      },
    },
    async (_request, reply) => {
      if (ctx.store.database.dialect !== 'sqlite') throw new OsrError('NOT_SUPPORTED', 'a PostgreSQL vault is backed up by PostgreSQL (a standby at the other site, pg_dump or pg_basebackup), not by osr');
      // a directory of the vault's user only: the copy holds the whole configuration
      const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-vault-backup-'));
      try {
        const m = await takeBackup({ database: ctx.store.database.location, dir: tmp, now: ctx.clock.now() });
        const stream = fs.createReadStream(path.join(tmp, m.file));
        stream.once('close', () => fs.rmSync(tmp, { recursive: true, force: true }));
        return reply
          .header('osr-backup-manifest', Buffer.from(JSON.stringify(m)).toString('base64'))
          .header('content-length', String(m.bytes))
          .type('application/octet-stream')
          .send(stream);
      } catch (e) {
        fs.rmSync(tmp, { recursive: true, force: true });
        throw e;
      }
    },
  );
};
