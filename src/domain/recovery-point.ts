/**
 * Choosing the recovery point a failover starts from (ASR's choices): the latest point,
 * the latest app-consistent one, or one named by its id. Pure: the caller gives the points
 * the vault recorded.
 */
import { OsrError } from './errors.js';
import type { RecoveryPoint } from './resources.js';

export const PointChoice = { Latest: 'latest', LatestAppConsistent: 'latest-app-consistent' } as const;
export type PointChoice = (typeof PointChoice)[keyof typeof PointChoice];

export function chooseRecoveryPoint(points: readonly RecoveryPoint[], choice: string, item: string): RecoveryPoint {
  const newest = [...points].sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
  const found = choice === PointChoice.Latest ? newest[0] : choice === PointChoice.LatestAppConsistent ? newest.find((p) => p.consistency === 'app') : newest.find((p) => p.id === choice);
  if (!found) {
    const what = choice === PointChoice.Latest ? 'no recovery point' : choice === PointChoice.LatestAppConsistent ? 'no app-consistent recovery point' : `no recovery point ${choice}`;
    throw new OsrError('POINT_NOT_FOUND', `${item} has ${what} at the recovery site${newest.length ? `; its points: ${newest.slice(0, 5).map((p) => `${p.id} (${p.at}, ${p.consistency})`).join(', ')}${newest.length > 5 ? ', …' : ''}` : ''}`, { points: newest.length });
  }
  return found;
}
