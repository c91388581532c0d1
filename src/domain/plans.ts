/**
 * The shape rules of a recovery plan that a schema cannot say: unique group names, each
 * item in one group only, dependencies between items of the plan that point to an earlier
 * group or the same one without a cycle. Whether items are protected and ready is checked
 * when a plan is validated for a run.
 */
import { OsrError } from './errors.js';
import type { ProtectedItem, RecoveryPlanSpec } from './resources.js';

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

export interface PlanProblem {
  severity: 'error' | 'warning';
  code: string;
  item: string | null;
  message: string;
}

/** What a plan's run would meet, item by item: the facts validatePlanForRun reads. */
export interface PlanItemFacts {
  item: ProtectedItem | undefined;
  /** the item's VM NICs with their source networks */
  nics: { id: string; vmNetwork?: string }[];
  /** the item's disks with the classification of their storage */
  diskClasses: (string | undefined)[];
}

/**
 * Check a plan before a run: every item protected and ready for failover (a recovery point
 * at the recovery site), its NICs' networks mapped and its storage mapped. Errors stop a
 * run; warnings say what the run will do that may surprise (a NIC left unconnected).
 */
export function validatePlanForRun(spec: RecoveryPlanSpec, facts: ReadonlyMap<string, PlanItemFacts>, mapped: { networks: ReadonlySet<string>; classifications: ReadonlySet<string> }): PlanProblem[] {
  const problems: PlanProblem[] = [];
  if (spec.groups.every((g) => g.items.length === 0)) problems.push({ severity: 'error', code: 'INVALID_ARGUMENT', item: null, message: `plan ${spec.name} has no items to fail over` });
  for (const g of spec.groups) {
    for (const id of g.items) {
      const f = facts.get(id);
      const item = f?.item;
      if (!item) {
        problems.push({ severity: 'error', code: 'NOT_FOUND', item: id, message: `${id} (group ${g.name}) is not a protected item: enable its protection or take it out of the plan` });
        continue;
      }
      if (!item.lastRecoveryPointAt) problems.push({ severity: 'error', code: 'POINT_NOT_FOUND', item: id, message: `${item.name} (group ${g.name}) has no recovery point at the recovery site yet` });
      else if (!item.readiness.ready) problems.push({ severity: 'error', code: 'INVALID_STATE', item: id, message: `${item.name} (group ${g.name}) is not ready for failover: ${item.readiness.reason}` });
      for (const nic of f.nics) {
        if (nic.vmNetwork && !mapped.networks.has(nic.vmNetwork)) problems.push({ severity: 'warning', code: 'NOT_FOUND', item: id, message: `NIC ${nic.id} of ${item.name} is on ${nic.vmNetwork}, which has no network mapping: after failover it is not connected` });
      }
      for (const [i, cls] of f.diskClasses.entries()) {
        if (cls && !mapped.classifications.has(cls)) problems.push({ severity: 'warning', code: 'NOT_FOUND', item: id, message: `disk ${i} of ${item.name} is on storage classification ${cls}, which has no storage mapping: its replica is on its host's default location` });
      }
    }
  }
  return problems;
}
