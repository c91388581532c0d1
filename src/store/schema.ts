/**
 * The vault's tables, as Kysely sees them. Times are milliseconds since the epoch (BIGINT,
 * read back as numbers on both dialects); structured fields are JSON text.
 */
import type { Insertable, Selectable } from 'kysely';

export interface SchemaMigrationsTable {
  version: number;
  name: string;
  applied_at: number;
}

export interface RegistrationKeysTable {
  id: string;
  vault: string;
  /** sha256 of the key's secret, hex: the secret itself is shown once and never stored */
  secret_hash: string;
  created_at: number;
  expires_at: number;
  revoked_at: number | null;
  used_at: number | null;
  used_by: string | null;
}

export interface JobsTable {
  id: string;
  kind: string;
  /** the object the job works on (e.g. a protected item), for lists and filters */
  target: string | null;
  state: string;
  input: string;
  output: string | null;
  error: string | null;
  progress: number;
  current_step: string | null;
  attempts: number;
  created_at: number;
  updated_at: number;
  /** the vault process holding the job's lease, and until when */
  locked_by: string | null;
  locked_until: number | null;
  /** index of the task the job is at (tasks before it are done) */
  step: number;
  /** the job's durable scratch data (JSON): what a step must find again after a restart */
  data: string | null;
  /** what a job waiting for input asks (JSON) */
  waiting_for: string | null;
  cancel_requested: number;
  created_by: string | null;
  started_at: number | null;
  ended_at: number | null;
}

export interface JobTasksTable {
  job_id: string;
  position: number;
  name: string;
  state: string;
  started_at: number | null;
  ended_at: number | null;
  error: string | null;
  progress: number | null;
  detail: string | null;
}

export interface ApiTokensTable {
  id: string;
  name: string;
  role: string;
  /** sha256 of the secret, hex */
  secret_hash: string;
  created_at: number;
  created_by: string | null;
  revoked_at: number | null;
  last_used_at: number | null;
}

export interface AuditTable {
  id: string;
  at: number;
  /** token name and id, or "provider:<id>", or "registration" */
  actor: string;
  role: string | null;
  method: string;
  path: string;
  /** the route, e.g. "POST /api/v1/policies" */
  action: string;
  status: number;
  code: string | null;
}

export interface FabricsTable {
  id: string;
  name: string;
  kind: string;
  version: string;
  /** JSON: "all" or the list of cloud names whose inventory is synced */
  inventory_scope: string;
  last_heartbeat_at: number | null;
  heartbeat_lost: number;
  inventory_at: number | null;
  created_at: number;
  /** JSON: what the fabric can do (src/domain/capabilities.ts), as its provider last reported; null until it does */
  capabilities: string | null;
}

export interface ProvidersTable {
  id: string;
  fabric_id: string;
  name: string;
  version: string;
  cert_serial: string;
  cert_fingerprint: string;
  /** a renewed certificate, issued but not yet used by the provider (the current one stays valid until it is) */
  next_cert_serial: string | null;
  next_cert_fingerprint: string | null;
  proxy: string | null;
  registered_at: number;
  last_heartbeat_at: number | null;
}

export interface InventoryTable {
  /** <fabric id>.<the provider's own id of the object> */
  id: string;
  fabric_id: string;
  kind: string;
  name: string;
  parent_id: string | null;
  body: string;
  updated_at: number;
}

export interface PoliciesTable {
  id: string;
  name: string;
  settings: string;
  created_at: number;
  updated_at: number;
}

export interface CloudPairingsTable {
  id: string;
  policy_id: string;
  source_cloud_id: string;
  target_cloud_id: string;
  created_at: number;
}

export interface MappingsTable {
  id: string;
  source_id: string;
  target_id: string;
  created_at: number;
}

export interface ProtectedItemsTable {
  /** the protected VM's inventory id */
  id: string;
  name: string;
  fabric_id: string;
  pairing_id: string;
  state: string;
  health: string;
  health_reasons: string;
  rpo_seconds: number | null;
  last_point_at: number | null;
  /** the newest succeeded drill's cleanup (ms; from replication.drills, kept with it) */
  last_drill_at: number | null;
  /** replication.group, kept beside it so a group's members are found without reading every item */
  replication_group: string | null;
  /** JSON: where the replica is and how it is reached */
  replication: string;
  progress: number | null;
  active_job_id: string | null;
  created_at: number;
  updated_at: number;
}

export interface ItemSamplesTable {
  item_id: string;
  at: number;
  rpo_seconds: number | null;
  churn_bps: number | null;
  peak_churn_bps: number | null;
  pending_bytes: number | null;
}

export interface RecoveryPointsTable {
  item_id: string;
  id: string;
  at: number;
  consistency: string;
  /** the replication group's cut (null: a point of the VM alone) */
  cut: string | null;
}

export interface RecoveryPlansTable {
  id: string;
  name: string;
  body: string;
  created_at: number;
  updated_at: number;
}

export interface EventsTable {
  id: string;
  at: number;
  target: string | null;
  kind: string;
  severity: string;
  message: string;
  details: string | null;
}

export interface AlertsTable {
  id: string;
  at: number;
  kind: string;
  severity: string;
  target: string | null;
  message: string;
  state: string;
  resolved_at: number | null;
  /** set while the alert is active: the same condition raises one alert, not one per vault or per check */
  dedupe_key: string | null;
  deliveries: string;
}

/** Which hosts of a fabric the vault certifies: admitted by the fabric's first inventory or an Owner, or waiting for one. */
export interface HostAdmissionsTable {
  fabric_id: string;
  /** the host's name in the fabric's inventory: its agent certificate's common name */
  host_name: string;
  /** 'admitted' or 'pending' */
  state: string;
  first_seen_at: number;
  decided_at: number | null;
  /** 'first-inventory', or the token's name of the Owner who approved it */
  decided_by: string | null;
}

/** Certificates the vault's CA issued to providers and agents, and whether they were taken back. */
export interface CertificatesTable {
  /** lower-case hex */
  serial: string;
  /** the fabric it was issued for (kept after the fabric is removed) */
  fabric_id: string | null;
  role: string;
  common_name: string;
  issued_at: number;
  not_after: number;
  revoked_at: number | null;
  reason: string | null;
}

export interface SettingsTable {
  key: string;
  value: string;
}

export interface ProviderCommandsTable {
  id: string;
  fabric_id: string;
  kind: string;
  body: string;
  job_id: string | null;
  state: string;
  progress: string | null;
  result: string | null;
  error: string | null;
  deliveries: number;
  created_at: number;
  sent_at: number | null;
  done_at: number | null;
}

export interface Database {
  schema_migrations: SchemaMigrationsTable;
  registration_keys: RegistrationKeysTable;
  jobs: JobsTable;
  job_tasks: JobTasksTable;
  api_tokens: ApiTokensTable;
  audit: AuditTable;
  fabrics: FabricsTable;
  providers: ProvidersTable;
  inventory: InventoryTable;
  policies: PoliciesTable;
  cloud_pairings: CloudPairingsTable;
  network_mappings: MappingsTable;
  storage_mappings: MappingsTable;
  protected_items: ProtectedItemsTable;
  recovery_points: RecoveryPointsTable;
  item_samples: ItemSamplesTable;
  recovery_plans: RecoveryPlansTable;
  events: EventsTable;
  alerts: AlertsTable;
  settings: SettingsTable;
  provider_commands: ProviderCommandsTable;
  certificates: CertificatesTable;
  host_admissions: HostAdmissionsTable;
}

export type JobRow = Selectable<JobsTable>;
export type NewJobRow = Insertable<JobsTable>;
export type JobTaskRow = Selectable<JobTasksTable>;
export type RegistrationKeyRow = Selectable<RegistrationKeysTable>;
