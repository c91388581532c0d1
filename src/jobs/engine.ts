/**
 * The durable job engine. A job kind is a list of tasks; the engine claims a job under a
 * lease (store/jobs.ts), runs its tasks from the one it is at, and persists after each:
 * the task's state, the job's step and its data. A vault killed in the middle of a job
 * loses nothing but the task in flight; when the lease runs out another vault — or the
 * same one restarted — claims the job and runs that task again. Tasks are therefore
 * written to be run again safely: a provider command a task sends is keyed in the job's
 * data before it is sent, so a second run waits for the same command instead of sending
 * another.
 *
 * A task may wait for input (a manual step): the job is parked WaitingForInput, its lease
 * released, until someone resumes it with a comment. Cancelling a running job aborts the
 * task's signal at the next lease renewal.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { systemClock, type Clock } from '../domain/clock.js';
import type { CommandBody, CommandKind, CommandProgress, CommandResult } from '../domain/commands.js';
import { ERROR_CODES, OsrError, toOsrError, type ErrorCode } from '../domain/errors.js';
import { CommandState, type CommandStore } from '../store/commands.js';
import { JobState, TaskState, type JobStore } from '../store/jobs.js';
import type { JobRow } from '../store/schema.js';


/** How often a job waiting for a provider's answer reads its command when nothing woke it. */
const COMMAND_POLL_MS = 2_000;
export interface JobInputAnswer {
  comment: string;
  by: string;
  at: number;
}

export interface CommandOptions<P = unknown> {
  /** called with each progress report the provider sends */
  onProgress?: (progress: P) => void | Promise<void>;
  /** fail with PROVIDER_UNREACHABLE when the command is not answered in this time (default: wait) */
  timeoutMs?: number;
}

/**
 * A job's durable scratch: what its kind keeps between tasks (a kind may name its fields
 * in a type of its own), beside what the engine keeps there (`commands`, `inputs`,
 * `vaults`) and the job's `output`.
 */
export type JobData = Record<string, unknown>;

export interface JobContext<I = unknown, D extends JobData = JobData> {
  readonly jobId: string;
  readonly kind: string;
  readonly target: string | null;
  readonly input: I;
  /** how many times the job has been claimed (1 on the first run) */
  readonly attempt: number;
  /**
   * the vault process whose lease the job runs under; null in onRestart and onEnd (no vault
   * holds the job then). A protected item's changes check it (store/items.ts, transition).
   */
  readonly owner: string | null;
  /** the job's durable scratch: saved after each task, and by save() */
  readonly data: D;
  /** aborted when the job is cancelled, its lease is lost, or the vault stops */
  readonly signal: AbortSignal;
  readonly clock: Clock;
  /** the running task's progress, 0..1 (written at most every progressIntervalMs) */
  progress(fraction: number, detail?: unknown): Promise<void>;
  save(): Promise<void>;
  /** the answer given when the job was resumed; parks the job until then */
  waitForInput(prompt: { message: string; [k: string]: unknown }): JobInputAnswer;
  /** wait until something happens in this vault (a job ended, a command answered) or the poll interval passed */
  sleep(): Promise<void>;
  /**
   * send a command to a fabric's provider and wait for its result (sent once per task run,
   * durable); the command's body, answer and progress are its kind's (src/domain/commands.ts)
   */
  command<K extends CommandKind>(fabricId: string, kind: K, body: CommandBody<K>, o?: CommandOptions<CommandProgress<K>>): Promise<CommandResult<K>>;
}

export interface TaskDef<I = unknown, D extends JobData = JobData> {
  name: string;
  run(ctx: JobContext<I, D>): Promise<void>;
}

export interface JobKind<I = unknown, D extends JobData = JobData> {
  kind: string;
  /** the kind's tasks, in order */
  tasks: readonly TaskDef<I, D>[];
  /**
   * tasks that depend on the job's input (a recovery plan's groups and actions); called with
   * the stored input whenever the job runs, so it must answer the same list for the same input
   */
  tasksFor?(input: I): readonly TaskDef<I, D>[];
  /** default true */
  cancellable?: boolean;
  /** why a job of this kind cannot be cancelled, and what to do instead (with cancellable: false) */
  notCancellableBecause?: string;
  /** before a failed or cancelled job is queued again: may refuse (throw) or restore state */
  onRestart?(ctx: JobContext<I, D>): Promise<void>;
  /** after the job ended Failed or Cancelled (e.g. to set the item's state); errors are logged */
  onEnd?(ctx: JobContext<I, D>, state: JobState, error?: OsrError): Promise<void>;
}

export interface JobEngineOptions {
  jobs: JobStore;
  commands: CommandStore;
  /** this vault process's id: the lease owner */
  owner: string;
  leaseMs?: number;
  /** how often to look for claimable jobs and command results (default 250 ms) */
  pollMs?: number;
  /** jobs run at once (default 64) */
  concurrency?: number;
  progressIntervalMs?: number;
  clock?: Clock;
  log?: { info(o: object, msg?: string): void; warn(o: object, msg?: string): void; error(o: object, msg?: string): void };
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- each kind types its own input and data; the engine passes them through
type AnyJobKind = JobKind<any, any>;

class WaitForInput extends Error {
  constructor(readonly prompt: unknown) {
    super('waiting for input');
  }
}

const StopReason = { Cancel: 'cancel', Lease: 'lease', Stop: 'stop' } as const;

const tasksOf = (kind: AnyJobKind, input: unknown): readonly TaskDef<unknown>[] => (kind.tasksFor ? kind.tasksFor(input) : kind.tasks);

const knownCode = (c: unknown): c is ErrorCode => typeof c === 'string' && Object.hasOwn(ERROR_CODES, c) && c !== 'LEASE_LOST';

export class JobEngine {
  readonly owner: string;
  private readonly kinds = new Map<string, AnyJobKind>();
  private readonly leaseMs: number;
  private readonly pollMs: number;
  private readonly concurrency: number;
  private readonly progressIntervalMs: number;
  private readonly clock: Clock;
  private readonly running = new Map<string, { controller: AbortController; done: Promise<void> }>();
  private readonly wakeups = new EventEmitter();
  private loop: Promise<void> | undefined;
  private stopping = new AbortController();

  constructor(private readonly o: JobEngineOptions) {
    this.owner = o.owner;
    this.leaseMs = o.leaseMs ?? 30_000;
    this.pollMs = o.pollMs ?? 250;
    this.concurrency = o.concurrency ?? 64;
    this.progressIntervalMs = o.progressIntervalMs ?? 1000;
    this.clock = o.clock ?? systemClock;
    this.wakeups.setMaxListeners(0);
  }

  register<I, D extends JobData = JobData>(kind: JobKind<I, D>): void {
    this.kinds.set(kind.kind, kind as AnyJobKind);
  }

  kind(name: string): AnyJobKind | undefined {
    return this.kinds.get(name);
  }

  /** The actions a job allows now, from its state and kind. */
  allowedActions(job: Pick<JobRow, 'state' | 'kind'>): string[] {
    const cancellable = this.kinds.get(job.kind)?.cancellable !== false;
    switch (job.state) {
      case JobState.Queued:
      case JobState.Running:
        return cancellable ? ['cancel'] : [];
      case JobState.WaitingForInput:
        return cancellable ? ['resume', 'cancel'] : ['resume'];
      case JobState.Failed:
      case JobState.Cancelled:
        return ['restart'];
      default:
        return [];
    }
  }

  /** Create a job of a registered kind; it runs in whichever vault claims it first. */
  async submit(kind: string, o: { target?: string | null; input?: unknown; createdBy?: string | null; id?: string } = {}): Promise<JobRow> {
    const k = this.kinds.get(kind);
    if (!k) throw new OsrError('INVALID_ARGUMENT', `unknown job kind ${kind}`);
    const job = await this.o.jobs.create({ kind, target: o.target ?? null, input: o.input, createdBy: o.createdBy ?? null, tasks: tasksOf(k, o.input).map((t) => t.name), ...(o.id ? { id: o.id } : {}) });
    this.wake();
    return job;
  }

  async cancel(id: string): Promise<JobRow> {
    const job = await this.o.jobs.get(id);
    const kind = this.kinds.get(job.kind);
    if (kind?.cancellable === false) throw new OsrError('INVALID_STATE', `a ${job.kind} job cannot be cancelled${kind.notCancellableBecause ? `: ${kind.notCancellableBecause}` : ' once it started'}`, { jobId: job.id });
    const after = await this.o.jobs.requestCancel(id);
    // a local run sees the flag at once; a run in another vault at its next renewal
    this.running.get(id)?.controller.abort(StopReason.Cancel);
    if (after.state === JobState.Cancelled) await this.ended(after, JobState.Cancelled);
    return after;
  }

  /**
   * Run a failed or cancelled job again from the task that did not finish. That task's
   * commands that failed are forgotten, so it sends them anew; the kind may refuse or
   * prepare the restart (onRestart).
   */
  async restart(id: string): Promise<JobRow> {
    const before = await this.o.jobs.get(id);
    const kind = this.kinds.get(before.kind);
    if (kind?.onRestart) await kind.onRestart(this.context(before, before.data === null ? {} : JSON.parse(before.data), new AbortController(), () => before.step, false));
    const job = await this.o.jobs.restart(id, async (data) => {
      const d = (data ?? {}) as Record<string, unknown>;
      const commands = { ...((d.commands as Record<string, string> | undefined) ?? {}) };
      for (const [key, cmd] of Object.entries(commands)) {
        if (!key.startsWith(`${before.step}.`)) continue;
        const row = await this.o.commands.get(cmd);
        if (!row || row.state === CommandState.Failed) delete commands[key];
      }
      return { ...d, commands };
    });
    this.wake();
    return job;
  }

  async resume(id: string, answer: JobInputAnswer): Promise<JobRow> {
    const job = await this.o.jobs.resume(id, (data, row) => {
      const d = (data ?? {}) as Record<string, unknown>;
      return { ...d, inputs: { ...((d.inputs as object) ?? {}), [row.step]: answer } };
    });
    this.wake();
    return job;
  }

  /** Wake the claim loop (a job was submitted, restarted, resumed or ended). */
  wake(): void {
    this.wakeups.emit('wake');
  }

  /**
   * A command's progress or result arrived: wake the job waiting for it, and only that one
   * (a thousand VMs' jobs each waiting for its command must not each read its command again
   * whenever any of them is answered).
   */
  commandChanged(id: string): void {
    this.wakeups.emit(`command:${id}`);
  }

  start(): void {
    if (this.loop) return;
    this.stopping = new AbortController();
    this.loop = this.claimLoop();
  }

  /** Stop claiming; running jobs stop at once and their leases are released for another vault. */
  async stop(): Promise<void> {
    this.stopping.abort();
    for (const r of this.running.values()) r.controller.abort(StopReason.Stop);
    await this.loop;
    await Promise.all([...this.running.values()].map((r) => r.done));
    this.loop = undefined;
  }

  get activeJobs(): number {
    return this.running.size;
  }

  private async claimLoop(): Promise<void> {
    const signal = this.stopping.signal;
    while (!signal.aborted) {
      try {
        while (!signal.aborted && this.running.size < this.concurrency) {
          const job = await this.o.jobs.claim(this.owner, this.leaseMs);
          if (!job) break;
          // our own lease ran out while the run went on (the store was unreachable): that run stops first
          if (this.running.has(job.id)) {
            this.running.get(job.id)!.controller.abort(StopReason.Lease);
            await this.running.get(job.id)!.done;
          }
          this.launch(job);
        }
      } catch (e) {
        this.o.log?.warn({ err: toOsrError(e, 'STORE_UNAVAILABLE').toJSON() }, 'claiming jobs failed; trying again');
      }
      await this.idle(signal);
    }
  }

  /** Sleep until woken (by `event`) or pollMs passed. */
  private idle(signal: AbortSignal, ms = this.pollMs, event = 'wake'): Promise<void> {
    return new Promise<void>((resolve) => {
      const ac = new AbortController();
      const done = () => {
        this.wakeups.off(event, done);
        signal.removeEventListener('abort', done);
        ac.abort();
        resolve();
      };
      this.wakeups.once(event, done);
      signal.addEventListener('abort', done, { once: true });
      void this.clock.sleep(ms, ac.signal).then(done);
    });
  }

  private launch(job: JobRow): void {
    const controller = new AbortController();
    const done = this.run(job, controller)
      .catch((e) => this.o.log?.error({ job: job.id, err: toOsrError(e).toJSON() }, 'job run failed outside its tasks'))
      .finally(() => {
        this.running.delete(job.id);
        this.wake();
      });
    this.running.set(job.id, { controller, done });
  }

  private context(job: JobRow, data: Record<string, unknown>, controller: AbortController, step: () => number, held = true): JobContext<unknown> {
    const { jobs, commands } = this.o;
    const owner = this.owner;
    let lastProgress = 0;
    let commandSeq = 0;
    let commandStep = -1;
    const input: unknown = JSON.parse(job.input);
    const tasksCount = tasksOf(this.kinds.get(job.kind)!, input).length;
    const ctx: JobContext<unknown> = {
      jobId: job.id,
      kind: job.kind,
      target: job.target,
      input,
      attempt: job.attempts,
      owner: held ? owner : null,
      data,
      signal: controller.signal,
      clock: this.clock,
      progress: async (fraction, detail) => {
        const t = this.clock.now();
        if (t - lastProgress < this.progressIntervalMs && fraction < 1) return;
        lastProgress = t;
        const f = Math.min(Math.max(fraction, 0), 1);
        await jobs.updateTask(job.id, owner, step(), { progress: f, ...(detail !== undefined ? { detail } : {}) }, { progress: (step() + f) / tasksCount });
      },
      save: () => jobs.update(job.id, owner, { data }),
      sleep: () => this.idle(controller.signal),
      waitForInput: (prompt) => {
        const answer = (data.inputs as Record<string, JobInputAnswer> | undefined)?.[step()];
        if (answer) return answer;
        throw new WaitForInput(prompt);
      },
      command: async (fabricId, kind, body, o = {}) => {
        // numbered within the task, so a later run of the task finds the same keys
        if (commandStep !== step()) {
          commandStep = step();
          commandSeq = 0;
        }
        const key = `${step()}.${commandSeq++}`;
        const ids = ((data.commands as Record<string, string> | undefined) ?? {}) as Record<string, string>;
        let id = ids[key];
        if (!id) {
          id = randomUUID();
          data.commands = { ...ids, [key]: id };
          // recorded with the command, in one transaction: a second run of this task finds it and waits for it
          const command = { id, fabricId, kind, body, jobId: job.id };
          await jobs.update(job.id, owner, { data }, (trx) => commands.enqueue(command, trx));
        } else await commands.enqueue({ id, fabricId, kind, body, jobId: job.id });
        const result = await this.awaitCommand(id, controller.signal, o);
        // the provider's answer (an authenticated provider's, of the kind's shape: src/domain/commands.ts)
        return result === null ? undefined : JSON.parse(result);
      },
    };
    return ctx;
  }

  /** The command's result as the provider posted it (JSON), once it succeeded. */
  private async awaitCommand<P>(id: string, signal: AbortSignal, o: CommandOptions<P>): Promise<string | null> {
    const started = this.clock.now();
    let lastProgress: string | null = null;
    for (;;) {
      if (signal.aborted) throw new OsrError('INVALID_STATE', 'the job stopped while waiting for its provider');
      const row = await this.o.commands.get(id);
      if (!row) throw new OsrError('INTERNAL', `command ${id} vanished from the queue`);
      if (row.state === CommandState.Succeeded) return row.result;
      if (row.state === CommandState.Failed) {
        const err = row.error ? (JSON.parse(row.error) as { code?: string; message?: string; details?: Record<string, unknown> }) : {};
        throw new OsrError(knownCode(err.code) ? err.code : 'JOB_FAILED', err.message ?? `the provider failed command ${row.kind}`, { ...err.details, command: row.kind });
      }
      if (row.progress !== null && row.progress !== lastProgress) {
        lastProgress = row.progress;
        await o.onProgress?.(JSON.parse(row.progress));
      }
      if (o.timeoutMs !== undefined && this.clock.now() - started > o.timeoutMs) {
        throw new OsrError('PROVIDER_UNREACHABLE', `the provider of fabric ${row.fabric_id} did not answer ${row.kind} within ${Math.round(o.timeoutMs / 1000)} s`, { fabric: row.fabric_id });
      }
      // woken by its own command's answer (only this process takes answers: a standby refuses
      // them); the poll, slower than the claim loop's, is a safety net and the timeout's clock
      await this.idle(signal, Math.max(this.pollMs, COMMAND_POLL_MS), `command:${id}`);
    }
  }

  private async run(job: JobRow, controller: AbortController): Promise<void> {
    const { jobs } = this.o;
    const kind = this.kinds.get(job.kind);
    const owner = this.owner;
    if (!kind) {
      await jobs.finish(job.id, owner, JobState.Failed, { error: { code: 'NOT_SUPPORTED', message: `this vault does not know job kind ${job.kind}; run a vault of the version that created it` } });
      return;
    }
    let step = job.step;
    const data = (job.data === null ? {} : JSON.parse(job.data)) as Record<string, unknown>;
    const ctx = this.context(job, data, controller, () => step);
    const tasks = tasksOf(kind, ctx.input);
    const lease = { renewedAt: this.clock.now() };
    const renewal = setInterval(() => void this.renew(job.id, controller, lease), Math.max(50, Math.floor(this.leaseMs / 3)));
    try {
      if (job.cancel_requested) controller.abort(StopReason.Cancel);
      // which vault processes ran the job, in order: a takeover shows as a second entry
      data.vaults = [...((data.vaults as string[] | undefined) ?? []), owner];
      await jobs.update(job.id, owner, { data, ...(job.started_at === null ? { startedAt: this.clock.now() } : {}) });
      /** the task marked running with the end of the one before (one commit for both) */
      let begun = -1;
      for (; step < tasks.length; step++) {
        if (controller.signal.aborted) break;
        const task = tasks[step]!;
        if (begun !== step) await jobs.updateTask(job.id, owner, step, { state: TaskState.Running }, { currentStep: task.name, progress: step / tasks.length });
        await task.run(ctx);
        if (controller.signal.aborted) break;
        const next = tasks[step + 1];
        await jobs.updateTask(job.id, owner, step, { state: TaskState.Succeeded, progress: 1 }, { step: step + 1, data, progress: (step + 1) / tasks.length, ...(next ? { currentStep: next.name } : {}) }, next ? { position: step + 1, patch: { state: TaskState.Running } } : undefined);
        begun = step + 1;
      }
      if (!controller.signal.aborted) {
        await jobs.finish(job.id, owner, JobState.Succeeded, { output: data.output ?? null });
        return;
      }
      await this.stopped(job, ctx, step, controller.signal.reason);
    } catch (e) {
      if (e instanceof WaitForInput) {
        await jobs.update(job.id, owner, { state: JobState.WaitingForInput, waitingFor: e.prompt, data, currentStep: tasks[step]?.name ?? null, release: true });
        return;
      }
      if (controller.signal.aborted) {
        await this.stopped(job, ctx, step, controller.signal.reason);
        return;
      }
      const err = toOsrError(e);
      if (err.code === 'LEASE_LOST') return;
      const error = { code: err.code, message: err.message, ...(err.details ? { details: err.details } : {}) };
      await jobs.updateTask(job.id, owner, step, { state: TaskState.Failed, error });
      await jobs.finish(job.id, owner, JobState.Failed, { error: { ...error, task: tasks[step]?.name } as typeof error });
      await this.ended(job, JobState.Failed, err, ctx);
    } finally {
      clearInterval(renewal);
    }
  }

  /** The run stopped on its signal: cancelled (recorded), or the lease lost or the vault stopping (released). */
  private async stopped(job: JobRow, ctx: JobContext<unknown>, step: number, reason: unknown): Promise<void> {
    const { jobs } = this.o;
    try {
      if (reason === StopReason.Cancel) {
        await jobs.updateTask(job.id, this.owner, step, { state: TaskState.Cancelled });
        await jobs.finish(job.id, this.owner, JobState.Cancelled, { error: { code: 'INVALID_STATE', message: 'cancelled' } });
        await this.ended(job, JobState.Cancelled, undefined, ctx);
      } else if (reason === StopReason.Stop) {
        // another vault (or this one, restarted) takes it over at once
        await jobs.update(job.id, this.owner, { data: ctx.data, release: true });
      }
    } catch (e) {
      if (toOsrError(e).code !== 'LEASE_LOST') throw e;
    }
  }

  private async ended(job: JobRow, state: JobState, err?: OsrError, ctx?: JobContext<unknown>): Promise<void> {
    const kind = this.kinds.get(job.kind);
    if (!kind?.onEnd) return;
    // the job has ended and no vault holds it: its end handler writes as such
    const c = ctx ? { ...ctx, owner: null } : this.context(job, job.data === null ? {} : JSON.parse(job.data), new AbortController(), () => job.step, false);
    try {
      await kind.onEnd(c, state, err);
    } catch (e) {
      this.o.log?.error({ job: job.id, err: toOsrError(e).toJSON() }, 'job end handler failed');
    }
  }

  private async renew(id: string, controller: AbortController, lease: { renewedAt: number }): Promise<void> {
    if (controller.signal.aborted) return;
    try {
      const t = this.clock.now();
      await this.o.jobs.renew(id, this.owner, this.leaseMs);
      lease.renewedAt = t;
      const job = await this.o.jobs.get(id);
      if (job.cancel_requested) controller.abort(StopReason.Cancel);
    } catch (e) {
      const err = toOsrError(e, 'STORE_UNAVAILABLE');
      if (err.code === 'LEASE_LOST') controller.abort(StopReason.Lease);
      else if (this.clock.now() - lease.renewedAt >= this.leaseMs) {
        // the lease has run out unrenewed: another vault may hold the job now, so this run stops
        this.o.log?.warn({ job: id, err: err.toJSON() }, 'the job lease ran out while it could not be renewed; stopping the run');
        controller.abort(StopReason.Lease);
      } else this.o.log?.warn({ job: id, err: err.toJSON() }, 'renewing a job lease failed');
    }
  }
}
