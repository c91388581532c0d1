/**
 * Prometheus metrics at /metrics: requests by route and status with their durations,
 * requests refused before authentication, rows pruned, bytes received, and
 * gauges read from the database when scraped (jobs by state, protected items by health,
 * seconds since each fabric's last heartbeat). One registry per vault, so several vaults
 * in one process (tests) do not share counters.
 */
import type net from 'node:net';
import client from 'prom-client';
import type { VaultStore } from '../store/index.js';

export class VaultMetrics {
  readonly registry = new client.Registry();
  readonly requests: client.Counter<'method' | 'route' | 'status'>;
  readonly duration: client.Histogram<'method' | 'route'>;
  readonly unauthenticated: client.Counter<'reason'>;
  readonly pruned: client.Counter<'table'>;
  /** bytes received on the vault's connections that closed (open ones are added when scraped) */
  private closedBytes = 0;
  private readonly sockets = new Set<net.Socket>();

  constructor(store: VaultStore, now: () => number) {
    client.collectDefaultMetrics({ register: this.registry, prefix: 'osr_vault_' });
    this.requests = new client.Counter({ name: 'osr_vault_http_requests_total', help: 'API requests answered', labelNames: ['method', 'route', 'status'], registers: [this.registry] });
    this.duration = new client.Histogram({
      name: 'osr_vault_http_request_duration_seconds',
      help: 'time to answer an API request',
      labelNames: ['method', 'route'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      registers: [this.registry],
    });
    this.unauthenticated = new client.Counter({
      name: 'osr_vault_unauthenticated_requests_total',
      help: 'requests refused before authentication (no token, an unknown or revoked token, a refused certificate or registration key, a throttled address); none is audited',
      labelNames: ['reason'],
      registers: [this.registry],
    });
    this.pruned = new client.Counter({ name: 'osr_vault_pruned_rows_total', help: 'events, ended jobs and audit records deleted for being older than the retention', labelNames: ['table'], registers: [this.registry] });
    const received = () => {
      let n = this.closedBytes;
      for (const s of this.sockets) n += s.bytesRead;
      return n;
    };
    new client.Counter({
      name: 'osr_vault_received_bytes_total',
      help: 'bytes the vault\'s server received on all its connections (TLS included): metadata only, never disk data',
      registers: [this.registry],
      collect() {
        this.reset();
        this.inc(received());
      },
    });
    new client.Gauge({
      name: 'osr_vault_jobs',
      help: 'jobs by state and kind',
      labelNames: ['state', 'kind'],
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const r of await store.jobs.countByState()) this.set({ state: r.state, kind: r.kind }, r.n);
      },
    });
    new client.Gauge({
      name: 'osr_vault_protected_items',
      help: 'protected items by health and state',
      labelNames: ['health', 'state'],
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const r of await store.items.countByHealth()) this.set({ health: r.health, state: r.state }, r.n);
      },
    });
    new client.Gauge({
      name: 'osr_vault_fabric_heartbeat_age_seconds',
      help: 'seconds since a fabric\'s provider was last heard from',
      labelNames: ['fabric'],
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const f of await store.fabrics.list()) if (f.lastHeartbeatAt) this.set({ fabric: f.id }, (now() - Date.parse(f.lastHeartbeatAt)) / 1000);
      },
    });
  }

  /** Count what a connection of the vault's server receives. */
  watch(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => {
      this.sockets.delete(socket);
      this.closedBytes += socket.bytesRead;
    });
  }
}
