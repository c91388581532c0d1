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
}

export interface JobTasksTable {
  job_id: string;
  position: number;
  name: string;
  state: string;
  started_at: number | null;
  ended_at: number | null;
  error: string | null;
}

export interface Database {
  schema_migrations: SchemaMigrationsTable;
  registration_keys: RegistrationKeysTable;
  jobs: JobsTable;
  job_tasks: JobTasksTable;
}

export type JobRow = Selectable<JobsTable>;
export type NewJobRow = Insertable<JobsTable>;
export type JobTaskRow = Selectable<JobTasksTable>;
export type RegistrationKeyRow = Selectable<RegistrationKeysTable>;
