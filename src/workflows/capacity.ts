/**
 * The capacity planner's measurements, gathered from the vault: every replicating item's
 * disks (inventory), its policy, and its source's samples of the last hour (churn, pending
 * change logs). The figures are the domain's (domain/capacity.ts).
 */
import { growthRate, planCapacity, type CapacityItemInput, type CapacityPlan } from '../domain/capacity.js';
import type { VaultStore } from '../store/index.js';
import { copyCycleSeconds } from '../domain/policy.js';

const HOUR = 3600_000;
/** the span over which the pending logs' growth is measured */
const GROWTH_WINDOW_MS = 15 * 60_000;

export const DEFAULT_RPO_TARGETS_SECONDS = [60, 300, 900, 3600] as const;
/** 100 Mbit/s */
export const DEFAULT_PLANNER_BANDWIDTH = 12_500_000;

export async function capacityInputs(store: VaultStore, now: number): Promise<CapacityItemInput[]> {
  const out: CapacityItemInput[] = [];
  let after: string | undefined;
  for (;;) {
    const page = await store.items.list({ limit: 1000, ...(after ? { after } : {}) });
    for (const item of page) {
      const r = item.replication;
      if (!r.policyId) continue;
      const vm = await store.fabrics.findObject(r.primaryVmId ?? item.id);
      const disks = ((vm?.properties.disks ?? []) as { sizeBytes?: number }[]).reduce((n, d) => n + (d.sizeBytes ?? 0), 0);
      const policy = await store.config.policy(r.policyId).catch(() => undefined);
      const samples = await store.items.samples(item.id, now - HOUR);
      const churn = samples.filter((s) => s.churnBytesPerSec !== null);
      const pending = samples.filter((s) => s.pendingLogBytes !== null);
      const recent = pending.filter((s) => Date.parse(s.at) >= now - GROWTH_WINDOW_MS).map((s) => ({ atMs: Date.parse(s.at), bytes: s.pendingLogBytes! }));
      out.push({
        id: item.id,
        name: item.name,
        diskBytes: disks,
        // the agent's figure is already an hour's average: the newest one says it
        churnBytesPerSec: churn.at(-1)?.churnBytesPerSec ?? null,
        peakChurnBytesPerSec: churn.length ? Math.max(...churn.map((s) => s.peakChurnBytesPerSec ?? s.churnBytesPerSec!)) : null,
        pendingLogBytes: pending.at(-1)?.pendingLogBytes ?? null,
        logGrowthBytesPerSec: growthRate(recent),
        copyFrequencySeconds: policy ? copyCycleSeconds(policy.settings) : 300,
        retentionHours: policy?.settings.retentionHours ?? 0,
      });
    }
    if (page.length < 1000) break;
    after = page.at(-1)!.id;
  }
  return out;
}

export async function capacityPlanOf(store: VaultStore, o: { now: number; rpoTargetsSeconds?: readonly number[]; bandwidthBytesPerSec?: number }): Promise<CapacityPlan> {
  return planCapacity(await capacityInputs(store, o.now), {
    now: o.now,
    rpoTargetsSeconds: o.rpoTargetsSeconds ?? DEFAULT_RPO_TARGETS_SECONDS,
    bandwidthBytesPerSec: o.bandwidthBytesPerSec ?? DEFAULT_PLANNER_BANDWIDTH,
  });
}
