/** What every route of the vault works with, and the small helpers routes share. */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { Clock } from '../domain/clock.js';
import type { Permission, Role } from '../domain/roles.js';
import type { JobEngine } from '../jobs/engine.js';
import type { VaultStore } from '../store/index.js';
import type { JobRow } from '../store/schema.js';
import type { Alerting } from '../workflows/alerting.js';
import type { AuthThrottle, AuthThrottleOptions } from './auth-throttle.js';
import type { VaultIdentity } from './identity.js';
import type { VaultMetrics } from './metrics.js';
import type { RoleWatcher } from './role.js';

export interface VaultSettings {
  /** the heartbeat interval providers are told to keep */
  heartbeatIntervalMs: number;
  /** a fabric whose provider was not heard from for this long raises an alert */
  heartbeatLostAfterMs: number;
  /** a command fetched but neither answered nor reported on for this long is delivered again */
  commandRedeliverMs: number;
  /** the longest a provider's command long-poll waits */
  longPollMaxMs: number;
  /** how long a registration key stays valid */
  registrationKeyValidMs: number;
  /** events, ended jobs and audit records older than this are deleted */
  retentionMs: number;
  /** how often they are looked for */
  pruneIntervalMs: number;
  /** how often the server certificate's age is checked (it is renewed two thirds into its life) */
  certificateCheckIntervalMs: number;
  /** failed authentications: the pause and the refusal */
  authThrottle: AuthThrottleOptions;
}

export interface VaultContext {
  store: VaultStore;
  engine: JobEngine;
  identity: VaultIdentity;
  clock: Clock;
  alerting: Alerting;
  metrics: VaultMetrics;
  settings: VaultSettings;
  /** failed authentications by address */
  authThrottle: AuthThrottle;
  /** primary, standby or stale: only the primary changes anything (role.ts) */
  role: RoleWatcher;
  /** the URLs of this vault's processes providers are told (its own, then its peers') */
  urls: string[];
  /** aborted when the vault shuts down: long-polls answer at once */
  closing: AbortSignal;
}

export type App = FastifyInstance<any, any, any, any, TypeBoxTypeProvider>; // eslint-disable-line @typescript-eslint/no-explicit-any -- the server type differs between HTTPS and tests

/** Who made a request: a token (with its role) or a provider (by its certificate). */
export interface Principal {
  actor: string;
  role: Role | null;
  tokenId?: string;
  providerId?: string;
  fabricId?: string;
}

/** The permission a route needs: a role's, or "public" (no token), or "provider" (a provider's certificate). */
export type RouteAccess = Permission | 'public' | 'provider';

declare module 'fastify' {
  interface FastifyContextConfig {
    access?: RouteAccess;
    /** a public route that takes a credential of its own (a registration key): refused while its caller is throttled */
    credential?: boolean;
    /** a change a standby or stale vault takes too (its promotion); every other one is refused on them */
    anyRole?: boolean;
  }
  interface FastifyRequest {
    principal?: Principal;
    errorCode?: string;
  }
}

export const API = '/api/v1';

export function principal(request: FastifyRequest): Principal {
  return request.principal ?? { actor: 'anonymous', role: null };
}

/** 202 Accepted with the job's URL: the answer of every long operation. */
export function accepted(reply: FastifyReply, job: Pick<JobRow, 'id' | 'kind' | 'state'>): FastifyReply {
  const url = `${API}/jobs/${job.id}`;
  return reply.status(202).header('location', url).send({ jobId: job.id, kind: job.kind, state: job.state, url });
}

/** A page of a list: the items and, when there may be more, the cursor for the next page (`after`). */
export function page<T extends { id: string }>(items: T[], limit: number): { items: T[]; next: string | null } {
  return { items, next: items.length === limit && items.length > 0 ? items[items.length - 1]!.id : null };
}
