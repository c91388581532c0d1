/**
 * The shape rules of a recovery plan that a schema cannot say: unique group names, each
 * item in one group only, dependencies between items of the plan that point to an earlier
 * group or the same one without a cycle. Whether items are protected and ready is checked
 * when a plan is validated for a run.
 */
import { OsrError } from './errors.js';
import type { RecoveryPlanSpec } from './resources.js';

export function validatePlanShape(spec: RecoveryPlanSpec): RecoveryPlanSpec {
  const groups = new Set<string>();
  const groupOf = new Map<string, number>();
  spec.groups.forEach((g, i) => {
    if (groups.has(g.name)) throw new OsrError('INVALID_ARGUMENT', `group name "${g.name}" is used twice in plan ${spec.name}`, { field: `groups[${i}].name` });
    groups.add(g.name);
    for (const item of g.items) {
      if (groupOf.has(item)) throw new OsrError('INVALID_ARGUMENT', `item ${item} is in group ${spec.groups[groupOf.get(item)!]!.name} and in group ${g.name}; an item belongs to one group`, { field: `groups[${i}].items`, item });
      groupOf.set(item, i);
    }
  });
  const deps = spec.dependencies ?? {};
  for (const [item, before] of Object.entries(deps)) {
    const gi = groupOf.get(item);
    if (gi === undefined) throw new OsrError('INVALID_ARGUMENT', `dependency of ${item}, which is in no group of the plan`, { field: `dependencies.${item}` });
    for (const b of before) {
      const gb = groupOf.get(b);
      if (gb === undefined) throw new OsrError('INVALID_ARGUMENT', `${item} depends on ${b}, which is in no group of the plan`, { field: `dependencies.${item}` });
      if (gb > gi) throw new OsrError('INVALID_ARGUMENT', `${item} (group ${spec.groups[gi]!.name}) depends on ${b} of a later group (${spec.groups[gb]!.name})`, { field: `dependencies.${item}` });
    }
  }
  // no cycles among items of one group
  const state = new Map<string, 1 | 2>();
  const visit = (n: string, trail: string[]): void => {
    if (state.get(n) === 2) return;
    if (state.get(n) === 1) throw new OsrError('INVALID_ARGUMENT', `dependencies form a cycle: ${[...trail, n].join(' → ')}`, { field: 'dependencies' });
    state.set(n, 1);
    for (const m of Object.hasOwn(deps, n) ? deps[n]! : []) visit(m, [...trail, n]);
    state.set(n, 2);
  };
  for (const n of Object.keys(deps)) visit(n, []);
  return spec;
}
