/**
 * `osr plan test-failover|test-failover-cleanup|planned-failover|unplanned-failover|change-recovery-point|commit|
 * reprotect|drills`: runs of a whole recovery plan (jobs), followed with --wait, and the
 * plan's drills. Failback is a planned failover of the reprotected plan, then reprotect.
 */
import type { Command } from 'commander';
import { parseDuration } from '../agent/io/time-window.js';
import { OsrError } from '../domain/errors.js';
import type { RecoveryPlan } from '../domain/resources.js';
import type { PlanDrill, PlanRunOutput } from '../workflows/plan-run.js';
import { asJson, print, when, withApi, type CliApi } from './api-common.js';
import { formatSeconds, table } from './format.js';
import { changePointBody, changePointFlags, cleanupBody, cleanupFlags, testFailoverBody, testFailoverFlags, unplannedBody, unplannedFlags, type ChangePointFlags, type CleanupFlags, type TestFailoverFlags, type UnplannedFlags } from './failover-flags.js';
import { watchJobs, type JobView } from './job-watch.js';

const getPlan = (api: CliApi, idOrName: string) => api.get<RecoveryPlan>(`/recovery-plans/${encodeURIComponent(idOrName)}`);

/** A run's result, VM by VM. */
export function planRunText(o: PlanRunOutput): string {
  const rows = o.vms.map((v) => ({
    group: v.group,
    vm: v.name,
    result: v.state,
    point: v.point ? `${v.point.id} (${v.point.at})` : null,
    rto: v.upAfterSeconds !== undefined ? formatSeconds(v.upAfterSeconds) : null,
    job: v.job,
    note: v.error ? `${v.error.code}: ${v.error.message}` : (v.note ?? null),
  }));
  const head = `plan ${o.plan}: ${o.operation} (${o.direction}) ${o.failed === 0 ? 'succeeded' : `${o.failed} of ${o.vms.length} VMs did not succeed`}${o.rtoSeconds !== null ? `; RTO ${formatSeconds(o.rtoSeconds)}` : ''}`;
  const actions = o.actions.length ? `\n\nactions:\n${table(o.actions.map((a) => ({ group: a.group, phase: a.phase, action: a.name, kind: a.kind, tries: a.attempts, result: a.comment ?? (a.exitCode !== undefined ? `exit ${a.exitCode}` : a.status !== undefined ? `HTTP ${a.status}` : 'done') })))}` : '';
  return `${head}\n\n${table(rows)}${actions}`;
}

export function addPlanRunCommands(program: Command, plan: Command): void {
  const run = <O extends object>(op: string, what: string, options: (c: Command) => Command, body: (o: O) => Record<string, unknown>) =>
    options(plan.command(`${op} <plan>`).description(what))
      .option('--wait', 'follow the run until it ends, then print each VM\'s result', false)
      .option('--interval <duration>', 'how often --wait polls', '1s')
      .action((idOrName: string, o: O & { wait: boolean; interval: string }) =>
        withApi(program, async (api) => {
          const p = await getPlan(api, idOrName);
          const r = await api.post<{ jobId: string }>(`/recovery-plans/${encodeURIComponent(p.id)}/${op}`, body(o));
          print(program, r, () => `plan ${p.name}: ${op} started: job ${r.jobId}${o.wait ? '' : ` (osr job watch ${r.jobId})`}`);
          if (!o.wait) return;
          let job: JobView;
          try {
            [job] = (await watchJobs(api, [r.jobId], { json: asJson(program), intervalMs: parseDuration(o.interval) })) as [JobView];
          } catch (e) {
            // the task it failed in (its error names each VM that did not succeed there)
            const failed = await api.get<JobView>(`/jobs/${encodeURIComponent(r.jobId)}`).catch(() => undefined);
            if (failed && !asJson(program)) process.stderr.write(`${failed.error?.task ? `failed in "${failed.error.task}"\n` : ''}`);
            throw e;
          }
          const out = job.output as PlanRunOutput | null;
          if (out && !asJson(program)) process.stdout.write(`${planRunText(out)}\n`);
          if (out && out.failed > 0) throw new OsrError('JOB_FAILED', `plan ${p.name}: ${out.failed} of ${out.vms.length} VMs did not succeed (job ${job.id})`, { jobId: job.id });
        }),
      );

  run<TestFailoverFlags>(
    'test-failover',
    'test failover of a plan (a job): the groups in order, each group\'s VMs in parallel, at the recovery site in isolation while replication goes on; clean it up with test-failover-cleanup',
    testFailoverFlags('one isolated network for the whole drill, its VMs reach each other; removed at cleanup'),
    testFailoverBody,
  );
  run<CleanupFlags>(
    'test-failover-cleanup',
    'clean up a plan\'s test failover (a job): remove its test VMs and networks; the drill is recorded with its notes and counts once this succeeded',
    cleanupFlags,
    cleanupBody,
  );
  run('planned-failover', 'planned failover of a plan (a job): the shutdown group, then each group with nothing lost; stops at the first error. After reprotect, the same command fails back', (c) => c, () => ({}));
  run<UnplannedFlags>('unplanned-failover', 'unplanned failover of a plan (a job): each group from the chosen point; carries on past a VM that fails and reports per VM', unplannedFlags, unplannedBody);
  run<ChangePointFlags>('change-recovery-point', 'before the commit, run a plan\'s failed-over VMs from another recovery point (a job): each starts again from that point, what it wrote since the failover discarded', changePointFlags, changePointBody);
  run('commit', 'commit a plan\'s failover (a job): every failed-over VM\'s failover becomes final, their other recovery points dropped; reprotect next', (c) => c, () => ({}));
  run('reprotect', 'reprotect a plan (a job): every committed VM replicates the other way, sending only what differs', (c) => c, () => ({}));

  plan
    .command('drills <plan>')
    .description('a plan\'s drills, newest first: when, measured RTO of the plan and each VM, the points used, notes')
    .action((idOrName: string) =>
      withApi(program, async (api) => {
        const p = await getPlan(api, idOrName);
        const r = await api.get<{ items: PlanDrill[] }>(`/recovery-plans/${encodeURIComponent(p.id)}/drills`);
        print(program, r.items, () =>
          r.items.length === 0
            ? `plan ${p.name} has no drill yet: osr plan test-failover ${p.name}, then osr plan test-failover-cleanup ${p.name}`
            : table(
                r.items.map((d) => ({
                  started: when(d.startedAt),
                  cleanedUp: when(d.cleanedUpAt),
                  rto: d.rtoSeconds !== null ? formatSeconds(d.rtoSeconds) : null,
                  vms: d.vms.length,
                  slowest: d.vms.reduce<{ name: string; rto: number } | null>((m, v) => (v.rtoSeconds !== null && (!m || v.rtoSeconds > m.rto) ? { name: v.name, rto: v.rtoSeconds } : m), null)?.name ?? null,
                  succeeded: d.succeeded ? 'yes' : 'no',
                  notes: d.notes,
                })),
              ),
        );
      }),
    );
}
