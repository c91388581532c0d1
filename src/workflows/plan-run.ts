/**
 * Recovery plan runs: one job that runs an operation (test failover, its cleanup, planned
 * or unplanned failover, commit, reprotect) on every item of a plan, in the plan's order.
 *
 * A failover run: Prerequisites check → the shutdown group (planned and unplanned, when the
 * plan has one: every source VM is shut down and its final delta shipped before any group
 * starts) → for each group its pre actions, the group (its items' jobs in parallel, an item
 * waiting for the items it depends on), its post actions → Finalize. The other operations
 * run every item at once, without actions. The task list follows from the run's input (a
 * snapshot of the plan taken when the run started), so a vault that takes the run over
 * finds the same tasks.
 *
 * Each item's part is the item's own job (item-jobs.ts), started with an id chosen and
 * saved before it is submitted: a run taken over after a vault restart finds the jobs the
 * first run started instead of starting others. A planned run, a test failover and the
 * others stop at the first error (what already runs finishes first); an unplanned run
 * carries on and reports per VM.
 *
 * Actions: a script run by the recovery site's provider with the run's JSON context, a
 * manual step (the run waits for someone to resume it with a comment), or a webhook the
 * vault calls with the same context. Each is filtered by failover type and direction, and
 * a script or webhook has a timeout and retries.
 */
import { randomUUID } from 'node:crypto';
import { Commands } from '../domain/commands.js';
import { OsrError, toOsrError } from '../domain/errors.js';
import { validatePlanForRun, type PlanItemFacts, type PlanProblem } from '../domain/plans.js';
import { latestGroupPoint } from '../domain/groups.js';
import { PointChoice } from '../domain/recovery-point.js';
import type { PlanActionContext, PlanActionResult, PlanDrill, PlanRunOutput as RunOutput, PlanVmResult } from '../domain/runs.js';
import { Direction, Severity, type ProtectedItem, type RecoveryPoint, type RecoveryPlan, type RecoveryPlanAction, type RecoveryPlanSpec } from '../domain/resources.js';
import type { JobContext, JobData, JobEngine, TaskDef } from '../jobs/engine.js';
import { MappingKind } from '../store/config.js';
import type { VaultStore } from '../store/index.js';
import { JobState } from '../store/jobs.js';
import type { JobRow } from '../store/schema.js';
import { AlertKind } from './alerting.js';
import { findJob, ITEM_OPERATIONS, ItemOperation, startItemOperation } from './item-jobs.js';
import type { WorkflowDeps } from './protection.js';
import { DEFAULT_WEBHOOK_SETTINGS, postWebhook, type WebhookSettings } from './webhook.js';

export const PlanJobs = { Run: 'plan-run' } as const;

/** The failover type an action's filter names, by operation (the others run no actions). */
const FAILOVER_TYPE: Partial<Record<ItemOperation, 'test' | 'planned' | 'unplanned'>> = {
  [ItemOperation.TestFailover]: 'test',
  [ItemOperation.PlannedFailover]: 'planned',
  [ItemOperation.UnplannedFailover]: 'unplanned',
};

export interface PlanRunOptions {
  /** test and unplanned failover, change recovery point: latest, latest-processed (unplanned), latest-app-consistent, or a point id */
  recoveryPoint?: string;
  /** test failover: none, temporary, or a VM network of the recovery site */
  network?: string;
  /** unplanned failover: try to shut the source down first */
  shutdownSource?: boolean;
  sourceTimeoutSeconds?: number;
  /** cleanup: what the drill showed */
  notes?: string;
}

export interface PlanRunInput {
  planId: string;
  operation: ItemOperation;
  /** the plan as it was when the run started */
  spec: RecoveryPlanSpec;
  direction: Direction;
  sourceFabricId: string;
  targetFabricId: string;
  options: PlanRunOptions;
}

export type { PlanActionResult, PlanDrill, PlanVmResult } from '../domain/runs.js';

/** A run's output, with the workflow's own names for its operation and direction. */
export interface PlanRunOutput extends RunOutput {
  operation: ItemOperation;
  direction: Direction;
}

/** The JSON context a script or webhook receives. */
export type ActionContext = PlanActionContext;

/** What a run keeps between its tasks. */
interface PlanRunData extends JobData {
  startedAt?: number;
  /** when the last VM of a failover ran */
  lastUpAt?: number;
  /** item → its part in the run */
  results?: Record<string, PlanVmResult>;
  /** item → its job's id (chosen before the job is submitted) */
  children?: Record<string, string>;
  actions?: PlanActionResult[];
  /** item → what the shutdown group did with its source VM */
  shutdown?: Record<string, string>;
  /** a test failover's isolated network, made for the drill */
  testNetwork?: string;
  /** item → the point of its replication group's cut it fails over at (chosen once, before any VM) */
  groupPoints?: Record<string, string>;
}

/** A run whose VMs start from a point it chooses (the latest, not a point named by its id): a replication group's members then share one cut. */
const usesGroupPoints = (op: ItemOperation, choice: string | undefined): boolean =>
  (op === ItemOperation.TestFailover || op === ItemOperation.UnplannedFailover) && (choice === undefined || choice === PointChoice.Latest || choice === 'latest-processed');

/** a VM that failed, was cancelled, or was not started because what it depends on failed */
const isBad = (r: PlanVmResult | undefined): boolean => r !== undefined && (r.state === 'Failed' || r.state === 'Cancelled' || (r.state === 'Skipped' && r.error !== undefined));

const actionApplies = (a: RecoveryPlanAction, type: 'test' | 'planned' | 'unplanned' | undefined, direction: Direction): boolean =>
  type !== undefined && (a.failoverTypes === undefined || a.failoverTypes.includes(type)) && (a.directions === undefined || a.directions.includes(direction));

/** What a plan's items would meet in a run: the facts validatePlanForRun reads. */
export async function planFacts(store: VaultStore, spec: RecoveryPlanSpec): Promise<{ facts: Map<string, PlanItemFacts>; networks: Set<string>; classifications: Set<string> }> {
  const { items, fabrics, config } = store;
  const facts = new Map<string, PlanItemFacts>();
  for (const id of spec.groups.flatMap((g) => g.items)) {
    const item = await items.find(id);
    const vm = await fabrics.findObject(item?.replication.primaryVmId ?? id);
    const p = (vm?.properties ?? {}) as { nics?: { id: string; vmNetwork?: string }[]; disks?: { storageLocation?: string }[] };
    const diskClasses: (string | undefined)[] = [];
    for (const d of p.disks ?? []) {
      const loc = d.storageLocation ? await fabrics.findObject(d.storageLocation) : undefined;
      diskClasses.push((loc?.properties as { classification?: string } | undefined)?.classification);
    }
    facts.set(id, { item, nics: p.nics ?? [], diskClasses });
  }
  const networks = new Set((await config.mappings(MappingKind.Network)).map((m) => m.sourceId));
  const classifications = new Set((await config.mappings(MappingKind.Storage)).map((m) => m.sourceId));
  return { facts, networks, classifications };
}

/** A plan checked for an operation: the problems, and (without errors) where the run goes. */
export async function checkPlanRun(store: VaultStore, plan: RecoveryPlanSpec, op: ItemOperation): Promise<{ problems: PlanProblem[]; direction?: Direction; sourceFabricId?: string; targetFabricId?: string }> {
  const { facts, networks, classifications } = await planFacts(store, plan);
  const def = ITEM_OPERATIONS[op];
  const failover = FAILOVER_TYPE[op] !== undefined;
  const problems = failover ? validatePlanForRun(plan, facts, { networks, classifications }) : [];
  const present: ProtectedItem[] = [];
  for (const g of plan.groups) {
    for (const id of g.items) {
      const item = facts.get(id)?.item;
      if (!item) {
        if (!failover) problems.push({ severity: 'error', code: 'NOT_FOUND', item: id, message: `${id} (group ${g.name}) is not a protected item: enable its protection or take it out of the plan` });
        continue;
      }
      present.push(item);
      // failovers read readiness (validatePlanForRun); the others start from their own states
      if (!failover && !def.from.includes(item.state)) problems.push({ severity: 'warning', code: 'INVALID_STATE', item: id, message: `${item.name} (group ${g.name}) is ${item.state}; ${op} starts from ${def.from.join(' or ')}, so the run leaves it as it is` });
      if (item.activeJobId && failover && item.readiness.ready) {
        const job = await store.jobs.get(item.activeJobId).catch(() => undefined);
        if (job && ([JobState.Queued, JobState.Running, JobState.WaitingForInput] as string[]).includes(job.state)) problems.push({ severity: 'error', code: 'INVALID_STATE', item: id, message: `${item.name} (group ${g.name}) has job ${job.id} (${job.kind}) ${job.state}; wait for it or cancel it` });
      }
    }
  }
  if (present.length === 0 && !problems.some((p) => p.severity === 'error')) problems.push({ severity: 'error', code: 'INVALID_ARGUMENT', item: null, message: `plan ${plan.name} has no items` });
  if (!failover && present.length > 0 && !present.some((i) => def.from.includes(i.state))) {
    problems.push({ severity: 'error', code: 'INVALID_STATE', item: null, message: `no item of plan ${plan.name} is ${def.from.join(' or ')}, so there is nothing to ${op}` });
  }
  // one run goes one way, to one recovery site; its VMs may come from several primary sites
  // (a datacenter's Hyper-V and KVM hosts both protected to Azure: one plan brings them up)
  const where = (i: ProtectedItem) => {
    const r = i.replication;
    const failedOver = r.failover;
    // after a failover (commit, reprotect) the run goes the way the failover went
    return failedOver
      ? { direction: failedOver.direction, source: failedOver.fromFabricId, target: failedOver.toFabricId }
      : { direction: r.direction === Direction.RecoveryToPrimary ? Direction.RecoveryToPrimary : Direction.PrimaryToRecovery, source: r.sourceFabricId ?? i.fabricId, target: r.targetFabricId ?? '' };
  };
  // the items the run acts on (a reprotect leaves those reprotected already, whichever way they go now)
  const acted = failover ? present : present.filter((i) => def.from.includes(i.state));
  const first = acted[0];
  if (!first) return { problems };
  const w0 = where(first);
  for (const i of acted.slice(1)) {
    const w = where(i);
    if (w.target !== w0.target || w.direction !== w0.direction) problems.push({ severity: 'error', code: 'INVALID_ARGUMENT', item: i.id, message: `${i.name} replicates from ${w.source} to ${w.target} (${w.direction}), ${first.name} from ${w0.source} to ${w0.target} (${w0.direction}): the items of a plan fail over to one site, the same way` });
  }
  return { problems, direction: w0.direction, sourceFabricId: w0.source, targetFabricId: w0.target };
}

/** Start a plan run: refused with every problem when the plan cannot run now. */
export async function startPlanRun(engine: JobEngine, store: VaultStore, plan: RecoveryPlan, op: ItemOperation, options: PlanRunOptions, actor: string | null): Promise<JobRow> {
  const check = await checkPlanRun(store, plan, op);
  const errors = check.problems.filter((p) => p.severity === 'error');
  if (errors.length > 0) {
    throw new OsrError(errors[0]!.code === 'NOT_FOUND' ? 'NOT_FOUND' : 'INVALID_STATE', `plan ${plan.name} cannot run ${op}: ${errors.map((e) => e.message).join('; ')}`, { problems: check.problems });
  }
  await refuseActiveRun(store, plan.id, plan.name);
  const { id: _id, createdAt: _c, updatedAt: _u, ...spec } = plan;
  const input: PlanRunInput = { planId: plan.id, operation: op, spec, direction: check.direction!, sourceFabricId: check.sourceFabricId!, targetFabricId: check.targetFabricId!, options };
  return engine.submit(PlanJobs.Run, { target: plan.id, input, createdBy: actor });
}

/** One run of a plan at a time: another that has not ended is refused with its id. */
async function refuseActiveRun(store: VaultStore, planId: string, planName: string, except?: string): Promise<void> {
  for (const state of [JobState.Running, JobState.WaitingForInput, JobState.Queued]) {
    const active = (await store.jobs.list({ kind: PlanJobs.Run, target: planId, state, limit: 2 })).find((j) => j.id !== except);
    if (active) throw new OsrError('INVALID_STATE', `plan ${planName} has run ${active.id} ${active.state}; wait for it, resume it, or cancel it`, { jobId: active.id });
  }
}

/** The drills of a plan, newest first, from its cleanup runs. */
export async function planDrills(store: VaultStore, planId: string, limit = 50): Promise<PlanDrill[]> {
  const runs = await store.jobs.list({ kind: PlanJobs.Run, target: planId, state: JobState.Succeeded, limit: 1000 });
  return runs
    .map((j) => (j.output ? (JSON.parse(j.output) as PlanRunOutput).drill : undefined))
    .filter((d): d is PlanDrill => d !== undefined)
    .slice(0, limit);
}

export function registerPlanRunJobs(engine: JobEngine, deps: WorkflowDeps): void {
  const { store, alerting, clock } = deps;
  type Ctx = JobContext<PlanRunInput, PlanRunData>;

  const results = (ctx: Ctx) => (ctx.data.results ??= {});
  const children = (ctx: Ctx) => (ctx.data.children ??= {});
  const actionResults = (ctx: Ctx) => (ctx.data.actions ??= []);

  /** The input an item's job takes for the run's operation. */
  function itemInput(ctx: Ctx, item: ProtectedItem, groupName: string): Record<string, unknown> {
    const input = ctx.input;
    const o = input.options;
    const base = { itemId: item.id, planRun: { planId: input.planId, group: groupName } };
    switch (input.operation) {
      case ItemOperation.TestFailover:
        // a temporary network is one for the whole drill, made by the run: its VMs reach each other
        return { ...base, recoveryPoint: ctx.data.groupPoints?.[item.id] ?? o.recoveryPoint ?? 'latest', network: ctx.data.testNetwork ?? o.network ?? 'none' };
      case ItemOperation.TestFailoverCleanup:
        return { ...base, ...(o.notes !== undefined ? { notes: o.notes } : {}) };
      case ItemOperation.ChangeRecoveryPoint:
        return { ...base, recoveryPoint: o.recoveryPoint ?? 'latest' };
      case ItemOperation.UnplannedFailover:
        return { ...base, recoveryPoint: ctx.data.groupPoints?.[item.id] ?? o.recoveryPoint ?? 'latest', shutdownSource: o.shutdownSource === true || input.spec.shutdownGroup === true, sourceTimeoutSeconds: o.sourceTimeoutSeconds ?? 60 };
      default:
        return base;
    }
  }

  /** What a VM's finished job left on its item: the point it runs from and its RTO. */
  async function succeeded(ctx: Ctx, itemId: string, r: PlanVmResult, endedAt: number): Promise<void> {
    const item = await store.items.get(itemId);
    const x = item.replication;
    r.state = 'Succeeded';
    if (ctx.input.operation === ItemOperation.TestFailover && x.testFailover) {
      r.point = x.testFailover.point;
      r.rtoSeconds = x.testFailover.rtoSeconds;
      r.testVmId = x.testFailover.testVm.testVmId;
    } else if ((ctx.input.operation === ItemOperation.PlannedFailover || ctx.input.operation === ItemOperation.UnplannedFailover) && x.failover) {
      r.point = x.failover.point;
      r.rtoSeconds = x.failover.rtoSeconds;
    } else if (ctx.input.operation === ItemOperation.ChangeRecoveryPoint && x.failover) {
      r.point = x.failover.point;
    }
    if (FAILOVER_TYPE[ctx.input.operation]) {
      // when its job ended, not when this run noticed (a run taken over notices late)
      r.upAfterSeconds = (endedAt - ctx.data.startedAt!) / 1000;
      ctx.data.lastUpAt = Math.max(ctx.data.lastUpAt ?? 0, endedAt);
    }
  }

  /**
   * Run the operation on a set of items in parallel, each once the items it depends on are
   * done, and wait for them all. Stops starting items at the first failure unless the run
   * carries on (unplanned); throws then, once what runs has ended.
   */
  async function runItems(ctx: Ctx, groupName: string, ids: readonly string[], useDependencies: boolean): Promise<void> {
    // chosen once, before the first VM starts (after the shutdown group, whose VMs keep their final writes)
    if (ctx.data.groupPoints === undefined && usesGroupPoints(ctx.input.operation, ctx.input.options.recoveryPoint)) {
      ctx.data.groupPoints = await chooseGroupPoints(ctx);
      await ctx.save();
    }
    const res = results(ctx);
    const kids = children(ctx);
    const carryOn = ctx.input.operation === ItemOperation.UnplannedFailover;
    const deps = useDependencies ? (ctx.input.spec.dependencies ?? {}) : {};
    // this task run again (a restart after a failure, a takeover): what failed is tried again
    for (const id of ids) {
      const r = res[id];
      if (!isBad(r)) continue;
      delete res[id];
      const jobId = kids[id];
      const job = jobId ? await findJob(store, jobId) : undefined;
      if (!job || !([JobState.Failed, JobState.Cancelled] as string[]).includes(job.state)) continue;
      const item = await store.items.find(id);
      // an item back where the operation starts gets a new job; one left half way goes on with its job
      if (item && ITEM_OPERATIONS[ctx.input.operation].from.includes(item.state)) delete kids[id];
      else await engine.restart(job.id).catch(() => delete kids[id]);
    }
    await ctx.save();
    const names = new Map<string, string>();
    const name = async (id: string) => {
      if (!names.has(id)) names.set(id, (await store.items.find(id))?.name ?? id);
      return names.get(id)!;
    };
    const fail = async (id: string, jobId: string | null, state: PlanVmResult['state'], error: { code: string; message: string }) => {
      res[id] = { item: id, name: await name(id), group: groupName, state, job: jobId, error };
      await ctx.save();
      await alerting.event({ target: id, kind: 'plan.vm-failed', severity: Severity.Warning, message: `plan ${ctx.input.spec.name}, group ${groupName}: ${ctx.input.operation} of ${await name(id)} ${state === 'Skipped' ? 'was skipped' : 'failed'}: ${error.message}`, details: { job: ctx.jobId, itemJob: jobId } });
    };
    const isFailover = FAILOVER_TYPE[ctx.input.operation] !== undefined;
    /** items whose job exists */
    const started = new Set<string>();
    for (;;) {
      if (ctx.signal.aborted) throw new OsrError('INVALID_STATE', 'the plan run stopped');
      const stopStarting = !carryOn && ids.some((id) => isBad(res[id]));
      // the run's data is saved once per pass, not once per VM: with a thousand VMs a save
      // per VM rewrote their results a thousand times
      let dirty = false;
      const starting: [string, string][] = [];
      const candidates = ids.filter((id) => !res[id] && !stopStarting && !started.has(id));
      const existing = await store.jobs.many(candidates.map((id) => kids[id]).filter((j): j is string => j !== undefined));
      for (const id of candidates) {
        const jobId = kids[id];
        if (jobId && existing.has(jobId)) {
          started.add(id); // watched below
          continue;
        }
        const blocked = (Object.hasOwn(deps, id) ? deps[id]! : []).filter((d) => res[d]?.state !== 'Succeeded');
        if (blocked.some((d) => !res[d])) continue; // a dependency still runs
        // (an item whose job id was chosen may be taken already, its job not yet submitted: startItemJob finishes that)
        if (!isFailover && !jobId) {
          // commit, reprotect, cleanup: an item not in the state the operation starts from has nothing to do
          const item = await store.items.find(id);
          if (item && !ITEM_OPERATIONS[ctx.input.operation].from.includes(item.state)) {
            res[id] = { item: id, name: item.name, group: groupName, state: 'Skipped', job: null, note: `it is ${item.state}; nothing to ${ctx.input.operation}` };
            dirty = true;
            continue;
          }
        }
        if (blocked.length > 0 && !carryOn) {
          await fail(id, null, 'Skipped', { code: 'INVALID_STATE', message: `it depends on ${blocked.join(', ')}, which did not succeed` });
          continue;
        }
        const id2 = jobId ?? randomUUID();
        if (!jobId) {
          kids[id] = id2;
          dirty = true;
        }
        starting.push([id, id2]);
      }
      // the chosen job ids are saved before any is submitted: a run taken over finds them
      if (dirty) await ctx.save();
      dirty = false;
      for (const [id, id2] of starting) {
        try {
          await startItemOperation(engine, store, ctx.input.operation, { itemId: id, input: (item) => itemInput(ctx, item, groupName), actor: `plan-run:${ctx.jobId}`, id: id2 });
          started.add(id);
        } catch (e) {
          // the chosen id is kept: if the item was taken before the error, a retry with it finishes the start
          const err = toOsrError(e);
          await fail(id, null, 'Failed', { code: err.code, message: err.message });
        }
      }
      // what ended since the last look (one query for the group's jobs)
      const watched = ids.filter((id) => !res[id] && kids[id]);
      const jobs = await store.jobs.many(watched.map((id) => kids[id]!));
      for (const id of watched) {
        const job = jobs.get(kids[id]!);
        if (!job) continue;
        if (job.state === JobState.Succeeded) {
          const r: PlanVmResult = { item: id, name: await name(id), group: groupName, state: 'Succeeded', job: job.id };
          await succeeded(ctx, id, r, job.ended_at ?? clock.now());
          res[id] = r;
          dirty = true;
        } else if (job.state === JobState.Failed || job.state === JobState.Cancelled) {
          const e = job.error ? (JSON.parse(job.error) as { code: string; message: string }) : { code: 'JOB_FAILED', message: `job ${job.id} ${job.state}` };
          await fail(id, job.id, job.state === JobState.Failed ? 'Failed' : 'Cancelled', { code: e.code, message: e.message });
        }
      }
      if (dirty) await ctx.save();
      const done = ids.filter((id) => res[id]).length;
      const running = ids.filter((id) => !res[id] && kids[id]).length;
      await ctx.progress(ids.length === 0 ? 1 : done / ids.length, { group: groupName, vms: ids.length, done, running, failed: ids.filter((id) => isBad(res[id])).length });
      if (done === ids.length || (stopStarting && running === 0)) break;
      await ctx.sleep();
    }
    // a run that stopped: what it did not start says why
    for (const id of ids) {
      if (res[id]) continue;
      const blocked = (Object.hasOwn(deps, id) ? deps[id]! : []).filter((d) => res[d]?.state !== 'Succeeded');
      res[id] = { item: id, name: await name(id), group: groupName, state: 'Skipped', job: null, error: { code: 'INVALID_STATE', message: blocked.length > 0 ? `it depends on ${blocked.join(', ')}, which did not succeed` : 'not started: the run stops at the first error' } };
    }
    await ctx.save();
    const bad = ids.map((id) => res[id]).filter((r): r is PlanVmResult => isBad(r));
    if (bad.length > 0 && !carryOn) {
      throw new OsrError('JOB_FAILED', `group ${groupName}: ${bad.map((r) => `${r.name} ${r.state.toLowerCase()}${r.error ? ` (${r.error.message})` : ''}`).join('; ')}; the run stops here (fix the cause and restart it: it goes on with what did not succeed)`, { failed: bad.map((r) => r.item) });
    }
  }

  /** The context a script or webhook receives. */
  async function actionContext(ctx: Ctx, gi: number, phase: 'pre' | 'post', a: RecoveryPlanAction): Promise<ActionContext> {
    const vms: ActionContext['vms'] = {};
    const res = results(ctx);
    for (const id of ctx.input.spec.groups.flatMap((g) => g.items)) {
      const item = await store.items.find(id);
      const r = res[id];
      const x = item?.replication;
      vms[id] = {
        name: item?.name ?? id,
        state: r?.state ?? 'NotStarted',
        vmId: x?.failover?.newPrimaryVmId ?? x?.primaryVmId ?? (item ? item.id : null),
        recoveryPoint: r?.point ?? null,
        testVmId: r?.testVmId ?? null,
      };
    }
    const g = ctx.input.spec.groups[gi]!;
    return { plan: { id: ctx.input.planId, name: ctx.input.spec.name }, job: ctx.jobId, failoverType: FAILOVER_TYPE[ctx.input.operation]!, direction: ctx.input.direction, group: { name: g.name, index: gi + 1 }, action: { name: a.name, phase }, vms };
  }

  /** A script or webhook, tried 1 + retries times with a growing pause between tries. */
  async function withRetries(ctx: Ctx, a: RecoveryPlanAction, attempt: (n: number) => Promise<Partial<PlanActionResult>>): Promise<Partial<PlanActionResult> & { attempts: number }> {
    const tries = 1 + (a.retries ?? 0);
    let last: OsrError | undefined;
    for (let n = 1; n <= tries; n++) {
      try {
        return { ...(await attempt(n)), attempts: n };
      } catch (e) {
        last = toOsrError(e, 'ACTION_FAILED');
        if (ctx.signal.aborted) throw last;
        // a webhook the vault refuses to call is refused again on every try
        if (last.code === 'WEBHOOK_REFUSED') throw new OsrError('WEBHOOK_REFUSED', `action ${a.name}: ${last.message}`, { ...last.details, action: a.name });
        // a script its provider has not answered may still run: another try could run it twice at once
        if (last.code === 'PROVIDER_UNREACHABLE') throw new OsrError('ACTION_FAILED', `action ${a.name} (${a.kind} ${a.target}): ${last.message}; not tried again while it may still run (restart the run to try again)`, { action: a.name });
        if (n < tries) await clock.sleep(Math.min(30_000, 1000 * 2 ** (n - 1)), ctx.signal).catch(() => undefined);
      }
    }
    throw new OsrError('ACTION_FAILED', `action ${a.name} (${a.kind} ${a.target}) failed after ${tries} ${tries === 1 ? 'try' : 'tries'}: ${last?.message}`, { ...last?.details, action: a.name });
  }

  async function callWebhook(ctx: Ctx, a: RecoveryPlanAction, context: ActionContext): Promise<Partial<PlanActionResult>> {
    const timeoutMs = (a.timeoutSeconds ?? 60) * 1000;
    const { allow } = await store.activity.setting<WebhookSettings>('webhooks', DEFAULT_WEBHOOK_SETTINGS);
    let res: { status: number; text: string; truncated: boolean };
    try {
      res = await postWebhook({ url: a.target, body: context, allow, signal: AbortSignal.any([ctx.signal, AbortSignal.timeout(timeoutMs)]) });
    } catch (e) {
      if (e instanceof OsrError) throw e;
      const err = e as Error;
      throw new OsrError('ACTION_FAILED', err.name === 'TimeoutError' || err.name === 'AbortError' ? `webhook ${a.target} did not answer within ${timeoutMs / 1000} s` : `webhook ${a.target} cannot be reached: ${err.message}`);
    }
    // the answer's text is kept in the run's output only (shown to the roles that configure plans), never in the error
    if (res.status < 200 || res.status >= 300) throw new OsrError('ACTION_FAILED', `webhook ${a.target} answered ${res.status}`, { status: res.status });
    return { status: res.status, output: res.text, ...(res.truncated ? { outputTruncated: true } : {}) };
  }

  function actionTask(gi: number, phase: 'pre' | 'post', a: RecoveryPlanAction, spec: RecoveryPlanSpec): TaskDef<PlanRunInput, PlanRunData> {
    const g = spec.groups[gi]!;
    return {
      name: `Group ${gi + 1} (${g.name}) ${phase} action: ${a.name} (${a.kind})`,
      async run(ctx) {
        const base = { group: g.name, phase, name: a.name, kind: a.kind };
        let r: Partial<PlanActionResult> & { attempts: number };
        if (a.kind === 'manual') {
          const answer = ctx.waitForInput({ message: a.target, action: a.name, group: g.name, phase, plan: spec.name });
          r = { attempts: 1, comment: answer.comment, by: answer.by };
        } else {
          const context = await actionContext(ctx, gi, phase, a);
          if (a.kind === 'webhook') r = await withRetries(ctx, a, () => callWebhook(ctx, a, context));
          else {
            const timeoutSeconds = a.timeoutSeconds ?? 300;
            r = await withRetries(ctx, a, async () => {
              const out = await ctx.command(ctx.input.targetFabricId, Commands.RunScript, { script: a.target, context, timeoutSeconds }, { timeoutMs: (timeoutSeconds + 120) * 1000 });
              return { exitCode: out.exitCode, output: out.stdout };
            });
          }
        }
        actionResults(ctx).push({ ...base, ...r, at: new Date(clock.now()).toISOString() });
        await alerting.event({ target: ctx.input.planId, kind: 'plan.action-done', severity: Severity.Info, message: `plan ${spec.name}, group ${g.name}: ${phase} action ${a.name} (${a.kind}) done${r.comment ? `: ${r.comment}` : ''}${r.by ? ` (by ${r.by})` : ''}`, details: { job: ctx.jobId } });
      },
    };
  }

  /**
   * One point per replication group: the plan's members of a group fail over at the newest
   * cut all of them hold, as the recovery site last reported their points. A member whose
   * source is shut down first (the shutdown group did, or its own job will: an unplanned
   * failover with shutdownSource whose source site answers) fails over at the final state
   * its shutdown ships instead, and is left out. A group none of whose cuts every member
   * holds yet fails over each VM at its own latest point, with a warning (a failover is
   * not held back for it).
   */
  async function chooseGroupPoints(ctx: Ctx): Promise<Record<string, string>> {
    const { spec, planId, options } = ctx.input;
    const silent = new Map<string, boolean>();
    const shutDownFirst = async (item: ProtectedItem): Promise<boolean> => {
      if (ctx.input.operation !== ItemOperation.UnplannedFailover) return false;
      if (spec.shutdownGroup) return ctx.data.shutdown?.[item.id] === 'shut down';
      if (options.shutdownSource !== true) return false;
      const source = item.replication.sourceFabricId ?? item.fabricId;
      if (!silent.has(source)) silent.set(source, (await store.fabrics.get(source)).heartbeatLost);
      return !silent.get(source);
    };
    const groups = new Map<string, ProtectedItem[]>();
    for (const id of spec.groups.flatMap((g) => g.items)) {
      const item = await store.items.find(id);
      const group = item?.replication.group;
      if (!item || group === undefined || (await shutDownFirst(item))) continue;
      groups.set(group, [...(groups.get(group) ?? []), item]);
    }
    const chosen: Record<string, string> = {};
    for (const [group, members] of groups) {
      if (members.length < 2) continue;
      const points: Record<string, RecoveryPoint[]> = {};
      for (const m of members) points[m.id] = await store.items.points(m.id);
      const g = latestGroupPoint(points);
      if (!g) {
        await alerting.event({ target: planId, kind: 'plan.group-point-missing', severity: Severity.Warning, message: `plan ${spec.name}: replication group ${group} has no cut that all ${members.length} of its VMs in the plan hold; each fails over at its own latest point`, details: { job: ctx.jobId, group } });
        continue;
      }
      Object.assign(chosen, g.points);
      await alerting.event({ target: planId, kind: 'plan.group-point', severity: Severity.Info, message: `plan ${spec.name}: replication group ${group} (${members.length} VMs) fails over at cut ${g.cut} of ${g.at}`, details: { job: ctx.jobId, group, cut: g.cut, at: g.at } });
    }
    return chosen;
  }

  function tasksFor(input: PlanRunInput): TaskDef<PlanRunInput, PlanRunData>[] {
    const { spec, operation: op } = input;
    const type = FAILOVER_TYPE[op];
    const tasks: TaskDef<PlanRunInput, PlanRunData>[] = [
      {
        name: 'Prerequisites check',
        async run(ctx) {
          ctx.data.startedAt ??= clock.now();
          await alerting.event({ target: input.planId, kind: 'plan.run-started', severity: Severity.Info, message: `plan ${spec.name}: ${op} of ${spec.groups.reduce((n, g) => n + g.items.length, 0)} VMs in ${spec.groups.length} group(s) started (${input.direction})`, details: { job: ctx.jobId } });
        },
      },
    ];
    if (op === ItemOperation.TestFailover && input.options.network === 'temporary') {
      tasks.push({
        name: 'Create the drill\'s isolated network',
        async run(ctx) {
          const r = await ctx.command(input.targetFabricId, Commands.CreateTestNetwork, { name: spec.name }, { timeoutMs: 5 * 60_000 });
          // the VMs' jobs check their network in the inventory, which the provider sends right after
          const deadline = clock.now() + 60_000;
          while (!(await store.fabrics.findObject(r.vmNetwork))) {
            if (clock.now() > deadline) throw new OsrError('PROVIDER_UNREACHABLE', `the drill's network ${r.vmNetwork} is not in the inventory of ${input.targetFabricId} after 60 s`);
            await ctx.sleep();
          }
          ctx.data.testNetwork = r.vmNetwork;
        },
      });
    }
    if (type === undefined) {
      tasks.push({ name: `${op} of ${spec.groups.reduce((n, g) => n + g.items.length, 0)} VMs`, run: (ctx) => runItems(ctx, 'all', spec.groups.flatMap((g) => g.items), false) });
    } else {
      if (type !== 'test' && spec.shutdownGroup) {
        tasks.push({
          name: `Shutdown group: shut down ${spec.groups.reduce((n, g) => n + g.items.length, 0)} source VMs`,
          async run(ctx) {
            const ids = spec.groups.flatMap((g) => g.items).sort();
            const shut = (ctx.data.shutdown ??= {});
            const timeoutMs = (input.options.sourceTimeoutSeconds ?? (type === 'planned' ? 900 : 60)) * 1000;
            // each VM at its own primary site (a plan's VMs may come from several)
            const vmIds = new Map<string, string>();
            const sources = new Map<string, string>();
            for (const id of ids) {
              const item = await store.items.get(id);
              vmIds.set(id, item.replication.primaryVmId ?? id);
              sources.set(id, item.replication.sourceFabricId ?? item.fabricId);
            }
            const silent = new Set<string>();
            if (type === 'unplanned') for (const f of new Set(sources.values())) if ((await store.fabrics.get(f)).heartbeatLost) silent.add(f);
            for (const f of silent) {
              await alerting.event({ target: input.planId, kind: 'plan.shutdown-incomplete', severity: Severity.Warning, message: `plan ${spec.name}: the source site ${f} is silent (no heartbeat); the unplanned failover goes on without shutting its VMs down`, details: { job: ctx.jobId } });
            }
            const reached = ids.filter((id) => !silent.has(sources.get(id)!));
            // sent in a fixed order, so a run taken over waits for the same commands
            const outcomes = await Promise.allSettled(
              reached.map((id) =>
                ctx.command(sources.get(id)!, Commands.PrepareFailover, { item: id, vmId: vmIds.get(id) }, { timeoutMs }).then(() => {
                  shut[id] = 'shut down';
                }),
              ),
            );
            const bad = outcomes.map((o, i) => [reached[i]!, o] as const).filter(([, o]) => o.status === 'rejected');
            for (const [id, o] of bad) shut[id] = `not shut down: ${toOsrError((o as PromiseRejectedResult).reason).message}`;
            if (bad.length === 0) return;
            if (type === 'planned') throw new OsrError('JOB_FAILED', `the shutdown group could not shut down ${bad.map(([id]) => id).join(', ')}: ${toOsrError((bad[0]![1] as PromiseRejectedResult).reason).message}`);
            await alerting.event({ target: input.planId, kind: 'plan.shutdown-incomplete', severity: Severity.Warning, message: `plan ${spec.name}: ${bad.length} source VM(s) could not be shut down (${bad.map(([id]) => id).join(', ')}); the unplanned failover carries on without them`, details: { job: ctx.jobId } });
          },
        });
      }
      spec.groups.forEach((g, gi) => {
        for (const a of g.pre ?? []) if (actionApplies(a, type, input.direction)) tasks.push(actionTask(gi, 'pre', a, spec));
        tasks.push({ name: `Group ${gi + 1} (${g.name}): ${op} of ${g.items.length} VM${g.items.length === 1 ? '' : 's'}`, run: (ctx) => runItems(ctx, g.name, g.items, true) });
        for (const a of g.post ?? []) if (actionApplies(a, type, input.direction)) tasks.push(actionTask(gi, 'post', a, spec));
      });
    }
    if (op === ItemOperation.TestFailoverCleanup) {
      tasks.push({
        name: 'Remove the drill\'s network',
        async run(ctx) {
          // the plan's last test failover, whether it succeeded or not: its network goes either way
          const network = (await lastTestFailover(ctx))?.testNetwork;
          if (network) await ctx.command(input.targetFabricId, Commands.RemoveTestNetwork, { vmNetwork: network }, { timeoutMs: 5 * 60_000 });
        },
      });
    }
    tasks.push({
      name: 'Finalize',
      async run(ctx) {
        const res = results(ctx);
        const vms = spec.groups.flatMap((g) => g.items.map((id) => res[id] ?? { item: id, name: id, group: g.name, state: 'Skipped' as const, job: children(ctx)[id] ?? null, note: 'not reached' }));
        const failed = vms.filter((v) => isBad(v)).length;
        const startedAt = ctx.data.startedAt!;
        const output: PlanRunOutput = {
          plan: spec.name,
          planId: input.planId,
          operation: op,
          direction: input.direction,
          startedAt: new Date(startedAt).toISOString(),
          endedAt: new Date(clock.now()).toISOString(),
          rtoSeconds: type !== undefined && ctx.data.lastUpAt !== undefined ? (ctx.data.lastUpAt - startedAt) / 1000 : null,
          failed,
          vms,
          actions: actionResults(ctx),
          ...(ctx.data.testNetwork ? { testNetwork: ctx.data.testNetwork } : {}),
        };
        if (op === ItemOperation.TestFailoverCleanup) output.drill = await drillOf(ctx, output);
        ctx.data.output = output;
        await alerting.resolve(`plan-run-failed:${input.planId}`);
        await alerting.event({
          target: input.planId,
          kind: 'plan.run-completed',
          severity: failed > 0 ? Severity.Critical : Severity.Info,
          message: `plan ${spec.name}: ${op} done, ${vms.length - failed} of ${vms.length} VMs succeeded${output.rtoSeconds !== null ? `, RTO ${output.rtoSeconds} s` : ''}${failed > 0 ? `; failed: ${vms.filter((v) => isBad(v)).map((v) => v.name).join(', ')}` : ''}`,
          details: { job: ctx.jobId, failed, rtoSeconds: output.rtoSeconds },
        });
      },
    });
    return tasks;
  }

  /** The drill a cleanup run completes: the plan's last test failover run, with its VMs. */
  /**
   * The plan's last test failover run, in whatever state, which a cleanup run ends: none
   * when a cleanup ended it already. A run that did not succeed has no output; what it did
   * is read from its data.
   */
  async function lastTestFailover(ctx: Ctx): Promise<{ j: JobRow; succeeded: boolean; startedAt: string | null; rtoSeconds: number | null; vms: PlanVmResult[]; testNetwork?: string } | undefined> {
    const runs = await store.jobs.list({ kind: PlanJobs.Run, target: ctx.input.planId, limit: 200 });
    for (const j of runs) {
      if (j.id === ctx.jobId) continue;
      const op = (JSON.parse(j.input) as PlanRunInput).operation;
      if (op === ItemOperation.TestFailoverCleanup && j.state === JobState.Succeeded) return undefined;
      if (op !== ItemOperation.TestFailover) continue;
      if (j.state === JobState.Succeeded && j.output) {
        const out = JSON.parse(j.output) as PlanRunOutput;
        return { j, succeeded: out.failed === 0, startedAt: out.startedAt, rtoSeconds: out.rtoSeconds, vms: out.vms, ...(out.testNetwork ? { testNetwork: out.testNetwork } : {}) };
      }
      const data = (j.data ? JSON.parse(j.data) : {}) as { startedAt?: number; results?: Record<string, PlanVmResult>; testNetwork?: string };
      return { j, succeeded: false, startedAt: data.startedAt ? new Date(data.startedAt).toISOString() : null, rtoSeconds: null, vms: Object.values(data.results ?? {}), ...(data.testNetwork ? { testNetwork: data.testNetwork } : {}) };
    }
    return undefined;
  }

  async function drillOf(ctx: Ctx, cleanup: PlanRunOutput): Promise<PlanDrill> {
    const test = await lastTestFailover(ctx);
    return {
      plan: ctx.input.spec.name,
      testFailoverJob: test?.j.id ?? null,
      cleanupJob: ctx.jobId,
      startedAt: test?.startedAt ?? null,
      cleanedUpAt: cleanup.endedAt,
      rtoSeconds: test?.rtoSeconds ?? null,
      vms: (test?.vms ?? []).map((v) => ({ item: v.item, name: v.name, point: v.point ?? null, rtoSeconds: v.upAfterSeconds ?? v.rtoSeconds ?? null })),
      notes: ctx.input.options.notes ?? null,
      // a drill counts when its test failover succeeded for every VM and its cleanup did too
      succeeded: cleanup.failed === 0 && test?.succeeded === true,
    };
  }

  engine.register<PlanRunInput>({
    kind: PlanJobs.Run,
    tasks: [],
    tasksFor,
    // cancelling a run stops it starting more VMs; the VMs' jobs that run go on (a failover is not stopped half way)
    async onRestart(ctx) {
      await refuseActiveRun(store, ctx.input.planId, ctx.input.spec.name, ctx.jobId);
    },
    async onEnd(ctx, state, err) {
      const failed = state === JobState.Failed;
      await alerting.event({ target: ctx.input.planId, kind: 'plan.run-failed', severity: failed ? Severity.Critical : Severity.Warning, message: `plan ${ctx.input.spec.name}: ${ctx.input.operation} ${failed ? `failed: ${err?.message}` : 'was cancelled'}; restart the run to go on from where it stopped`, details: { job: ctx.jobId } });
      if (failed) await alerting.raise({ key: `plan-run-failed:${ctx.input.planId}`, kind: AlertKind.FailoverFailed, severity: Severity.Critical, target: ctx.input.planId, message: `plan ${ctx.input.spec.name}: ${ctx.input.operation} failed: ${err?.message}` });
    },
  });
}
