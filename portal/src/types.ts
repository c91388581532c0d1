/** The API's shapes: the domain's own types where the vault has them, the rest as the API answers. */
export type {
  Alert,
  CloudPairing,
  Fabric,
  Health,
  InventoryObject,
  ItemSummary,
  Mapping,
  Policy,
  ProtectedItem,
  ProtectionState,
  RecoveryPlan,
  RecoveryPlanAction,
  RecoveryPlanGroup,
  RecoveryPlanSpec,
  RecoveryPoint,
  VaultEvent,
} from '../../src/domain/resources.js';
export type { PolicySettings } from '../../src/domain/policy.js';
export type { CapacityPlan, ItemCapacity } from '../../src/domain/capacity.js';
export type { ItemDrill, PlanActionResult, PlanDrill, PlanRunOutput, PlanVmResult } from '../../src/domain/runs.js';

export interface Me {
  actor: string;
  role: string | null;
  tokenId: string | null;
  permissions: ('read' | 'operate' | 'configure' | 'admin')[];
  vault: string;
}

export interface JobTask {
  name: string;
  state: string;
  progress: number | null;
  startedAt: string | null;
  endedAt: string | null;
  error: { code: string; message: string } | null;
  detail: unknown;
}

export interface Job {
  id: string;
  kind: string;
  target: string | null;
  state: string;
  progress: number | null;
  currentStep: string | null;
  attempts: number;
  createdBy: string | null;
  createdAt: string | null;
  updatedAt: string | null;
  startedAt: string | null;
  endedAt: string | null;
  error: { code: string; message: string; task?: string } | null;
  output: unknown;
  waitingFor: unknown;
  allowedActions: string[];
  tasks?: JobTask[];
}

export interface Sample {
  at: string;
  rpoSeconds: number | null;
  churnBytesPerSec: number | null;
  pendingLogBytes: number | null;
}

export interface Drill {
  jobId: string;
  [k: string]: unknown;
}
