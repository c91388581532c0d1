/**
 * Prometheus metrics at /metrics: requests by route and status with their durations, and
 * gauges read from the database when scraped (jobs by state, protected items by health,
 * seconds since each fabric's last heartbeat). One registry per vault, so several vaults
 * in one process (tests) do not share counters.
 */
import client from 'prom-client';
import type { VaultStore } from '../store/index.js';

export class VaultMetrics {
  readonly registry = new client.Registry();
  readonly requests: client.Counter<'method' | 'route' | 'status'>;
  readonly duration: client.Histogram<'method' | 'route'>;

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
}
