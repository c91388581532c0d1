/** `osr capacity`: the capacity planner's figures, from the churn the vault measured. */
import type { Command } from 'commander';
import { parseRate } from '../agent/io/throttle.js';
import { parseDuration } from '../agent/io/time-window.js';
import type { CapacityPlan } from '../domain/capacity.js';
import { OsrError } from '../domain/errors.js';
import { print, withApi } from './api-common.js';
import { formatBytes, formatSeconds, table } from './format.js';

const rate = (n: number | null) => (n === null ? 'not measured' : `${formatBytes(n)}/s`);

export function addCapacityCommand(program: Command): void {
  program
    .command('capacity')
    .description('the capacity planner: for every replicating VM, from its disks and measured churn, the bandwidth each target RPO needs, initial replication time over a link, replica storage for the retention window, and when its change logs would force a resync at their current growth')
    .option('--rpo <list>', 'target RPOs, comma-separated durations', '1m,5m,15m,1h')
    .option('--bandwidth <rate>', 'the link initial replication would use (12.5MB/s is 100 Mbit/s)', '12.5MB/s')
    .action((o: { rpo: string; bandwidth: string }) =>
      withApi(program, async (api) => {
        const targets = o.rpo.split(',').map((t) => Math.round(parseDuration(t.trim()) / 1000));
        if (targets.some((t) => t < 30)) throw new OsrError('INVALID_ARGUMENT', `each target RPO is at least 30s (--rpo ${o.rpo})`, { field: '--rpo' });
        const bandwidth = parseRate(o.bandwidth);
        if (bandwidth === null) throw new OsrError('INVALID_ARGUMENT', '--bandwidth must be a rate (a link is never unlimited)', { field: '--bandwidth' });
        const plan = await api.get<CapacityPlan>('/capacity', { rpoSeconds: targets.join(','), bandwidthBytesPerSec: bandwidth });
        print(program, plan, () => text(plan));
      }),
    );
}

function text(plan: CapacityPlan): string {
  const rpoCols = plan.totals.bandwidthForRpo.map((b) => `rpo ${formatSeconds(b.rpoSeconds)}`);
  const rows = plan.items.map((i) => ({
    item: i.name,
    disks: formatBytes(i.diskBytes),
    churn: rate(i.churnBytesPerSec),
    peak: rate(i.peakChurnBytesPerSec),
    ...Object.fromEntries(i.bandwidthForRpo.map((b, k) => [rpoCols[k]!, b.bytesPerSec === null ? '-' : `${formatBytes(b.bytesPerSec)}/s`])),
    initial: i.initialReplicationSeconds === null ? 'never' : formatSeconds(i.initialReplicationSeconds),
    storage: formatBytes(i.replicaStorageBytes),
    'resync in': i.resync.inSeconds === null ? 'not at this rate' : formatSeconds(i.resync.inSeconds),
  }));
  const t = plan.totals;
  const lines = [
    table(rows),
    '',
    `${t.items} VM(s), ${t.measured} with measured churn; disks ${formatBytes(t.diskBytes)}, churn ${formatBytes(t.churnBytesPerSec)}/s (change logs, before compression)`,
    `bandwidth for RPO: ${t.bandwidthForRpo.map((b) => `${formatSeconds(b.rpoSeconds)} ${formatBytes(b.bytesPerSec)}/s`).join(', ')}`,
    `initial replication of all at ${formatBytes(plan.bandwidthBytesPerSec)}/s: ${t.initialReplicationSeconds === null ? 'never (the link carries less than the churn)' : formatSeconds(t.initialReplicationSeconds)}; replica storage ${formatBytes(t.replicaStorageBytes)}`,
    t.firstResync ? `first forced resync: ${t.firstResync.item} in ${formatSeconds(t.firstResync.inSeconds)} (${t.firstResync.at}) unless its change logs stop growing` : 'no change logs are growing: no resync ahead at this rate',
  ];
  return lines.join('\n');
}
