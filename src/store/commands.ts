/**
 * The command queue between the vault and the providers. A job step enqueues a command
 * for a fabric; that fabric's provider fetches it over its channel (long-poll), reports
 * progress, and posts the result. Commands are delivered at least once — one fetched but
 * never answered is delivered again after `redeliverAfterMs` — and providers act on each
 * id once, so a command runs once even when a vault or a provider restarts in between.
 */
import type { Kysely } from 'kysely';
import { OsrError } from '../domain/errors.js';
import type { Database, ProviderCommandsTable } from './schema.js';
import type { Selectable } from 'kysely';

export type CommandRow = Selectable<ProviderCommandsTable>;

export const CommandState = { Pending: 'Pending', Sent: 'Sent', Succeeded: 'Succeeded', Failed: 'Failed' } as const;
export type CommandState = (typeof CommandState)[keyof typeof CommandState];

export interface CommandError {
  code: string;
  message: string;
  details?: Record<string, unknown>;
}

export class CommandStore {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly now: () => number = Date.now,
  ) {}

  /**
   * Forget the secrets a job's finished commands carried: every `access` field (an Azure
   * container's SAS, src/domain/replicas.ts) of their bodies and answers. A job calls it
   * once the task that used them is done, so that the vault's database keeps no SAS past
   * the moment it was handed on; a command still under way keeps its body (it may be
   * delivered again). Answers how many rows changed; a second call changes none.
   */
  async forgetAccess(jobId: string): Promise<number> {
    const rows = await this.db.selectFrom('provider_commands').select(['id', 'body', 'result']).where('job_id', '=', jobId).where('state', 'in', [CommandState.Succeeded, CommandState.Failed]).execute();
    let changed = 0;
    for (const r of rows) {
      const body = withoutAccess(r.body);
      const result = r.result === null ? null : withoutAccess(r.result);
      if (body === r.body && result === r.result) continue;
      await this.db.updateTable('provider_commands').set({ body, result }).where('id', '=', r.id).execute();
      changed++;
    }
    return changed;
  }

  /** Enqueue a command under the id given; enqueuing the same id again does nothing. */
  /** Queue a command (one queued already under its id stays as it is); `trx`: inside that transaction. */
  async enqueue(c: { id: string; fabricId: string; kind: string; body: unknown; jobId?: string | null }, trx: Kysely<Database> = this.db): Promise<void> {
    await trx
      .insertInto('provider_commands')
      .values({ id: c.id, fabric_id: c.fabricId, kind: c.kind, body: JSON.stringify(c.body ?? {}), job_id: c.jobId ?? null, state: CommandState.Pending, progress: null, result: null, error: null, deliveries: 0, created_at: this.now(), sent_at: null, done_at: null })
      .onConflict((oc) => oc.column('id').doNothing())
      .execute();
  }

  async get(id: string): Promise<CommandRow | undefined> {
    return this.db.selectFrom('provider_commands').selectAll().where('id', '=', id).executeTakeFirst();
  }

  /**
   * Hand a fabric's provider the commands waiting for it: pending ones, and sent ones not
   * heard of for redeliverAfterMs. Marks them sent.
   */
  async take(fabricId: string, limit: number, redeliverAfterMs: number): Promise<CommandRow[]> {
    const t = this.now();
    const rows = await this.db
      .selectFrom('provider_commands')
      .selectAll()
      .where('fabric_id', '=', fabricId)
      .where((eb) => eb.or([eb('state', '=', CommandState.Pending), eb.and([eb('state', '=', CommandState.Sent), eb('sent_at', '<', t - redeliverAfterMs)])]))
      .orderBy('id')
      .limit(limit)
      .execute();
    if (rows.length === 0) return [];
    // each row is taken by one conditional update: two long-polls for one fabric (two
    // nodes, or two vault processes) never both get the same command. All in one
    // transaction: one commit for the batch, not one per command
    return this.db.transaction().execute(async (trx) => {
      const taken: CommandRow[] = [];
      for (const r of rows) {
        const u = await trx
          .updateTable('provider_commands')
          .set({ state: CommandState.Sent, sent_at: t, deliveries: r.deliveries + 1 })
          .where('id', '=', r.id)
          .where('state', '=', r.state)
          .where('deliveries', '=', r.deliveries)
          .executeTakeFirst();
        if (Number(u.numUpdatedRows) === 1) taken.push({ ...r, state: CommandState.Sent, sent_at: t, deliveries: r.deliveries + 1 });
      }
      return taken;
    });
  }

  /** Progress from the provider (keeps the command from being delivered again). */
  async progress(fabricId: string, id: string, progress: unknown): Promise<void> {
    const r = await this.db
      .updateTable('provider_commands')
      .set({ progress: JSON.stringify(progress), sent_at: this.now() })
      .where('id', '=', id)
      .where('fabric_id', '=', fabricId)
      .where('state', '=', CommandState.Sent)
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) await this.mustBeOpen(fabricId, id);
  }

  /** The provider's answer. A second answer for a finished command is ignored (the first stands). */
  async complete(fabricId: string, id: string, outcome: { result?: unknown; error?: CommandError }): Promise<void> {
    const r = await this.db
      .updateTable('provider_commands')
      .set({
        state: outcome.error ? CommandState.Failed : CommandState.Succeeded,
        result: outcome.result === undefined ? null : JSON.stringify(outcome.result),
        error: outcome.error ? JSON.stringify(outcome.error) : null,
        done_at: this.now(),
      })
      .where('id', '=', id)
      .where('fabric_id', '=', fabricId)
      .where('state', 'in', [CommandState.Pending, CommandState.Sent])
      .executeTakeFirst();
    if (Number(r.numUpdatedRows) === 0) await this.mustExist(fabricId, id);
  }

  private async mustExist(fabricId: string, id: string): Promise<CommandRow> {
    const row = await this.get(id);
    if (!row || row.fabric_id !== fabricId) throw new OsrError('NOT_FOUND', `command ${id} does not exist for this fabric`);
    return row;
  }

  private async mustBeOpen(fabricId: string, id: string): Promise<void> {
    const row = await this.mustExist(fabricId, id);
    if (row.state === CommandState.Pending) throw new OsrError('INVALID_STATE', `command ${id} was not fetched yet`);
    // a late progress report of a finished command changes nothing
  }
}

/** A command's JSON without any `access` field at any depth (the same text when it has none). */
function withoutAccess(text: string): string {
  if (!text.includes('"access"')) return text;
  const strip = (v: unknown): unknown => {
    if (Array.isArray(v)) return v.map(strip);
    if (typeof v !== 'object' || v === null) return v;
    return Object.fromEntries(Object.entries(v).filter(([k]) => k !== 'access').map(([k, x]) => [k, strip(x)]));
  };
  return JSON.stringify(strip(JSON.parse(text)));
}
