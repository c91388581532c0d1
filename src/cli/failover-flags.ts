/**
 * The flags of test, unplanned failover, change recovery point and cleanup, the same for one item (`osr item`) and
 * for a recovery plan (`osr plan`), and the request bodies they make.
 */
import type { Command } from 'commander';
import { parseDuration } from '../agent/io/time-window.js';

export interface TestFailoverFlags {
  point: string;
  network: string;
}
export interface CleanupFlags {
  notes?: string;
}
export interface UnplannedFlags {
  point: string;
  shutdownSource: boolean;
  sourceTimeout: string;
}

/** `network temporary` says what it makes: one VM's network, or one for the whole plan's drill. */
export const testFailoverFlags = (temporary: string) => (c: Command) =>
  c
    .option('--point <point>', 'latest, latest-app-consistent, or a recovery point id (osr item points)', 'latest')
    .option('--network <network>', `none, temporary (${temporary}), or the id of an isolated VM network at the recovery site`, 'none');
export const testFailoverBody = (o: TestFailoverFlags) => ({ recoveryPoint: o.point, network: o.network });

export const cleanupFlags = (c: Command) => c.option('--notes <text>', 'what the drill showed (kept with the drill)');
export const cleanupBody = (o: CleanupFlags) => (o.notes !== undefined ? { notes: o.notes } : {});

export const unplannedFlags = (c: Command) =>
  c
    .option('--point <point>', 'latest (the newest at the recovery site), latest-processed, latest-app-consistent, or a recovery point id', 'latest')
    .option('--shutdown-source', 'try to shut the source down and ship its last writes first; carry on if its site cannot be reached', false)
    .option('--source-timeout <duration>', 'how long to wait for the source site', '60s');
export const unplannedBody = (o: UnplannedFlags) => ({ recoveryPoint: o.point, shutdownSource: o.shutdownSource, sourceTimeoutSeconds: Math.max(1, Math.round(parseDuration(o.sourceTimeout) / 1000)) });

export interface ChangePointFlags {
  point: string;
}
export const changePointFlags = (c: Command) => c.requiredOption('--point <point>', 'latest, latest-app-consistent, or a recovery point id (osr item points: a failed-over item keeps its points until the commit)');
export const changePointBody = (o: ChangePointFlags) => ({ recoveryPoint: o.point });
