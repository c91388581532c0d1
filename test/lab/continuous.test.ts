/**
 * Continuous replication through the vault, with real processes: the policy says so, the
 * item keeps a point every interval with an RPO of seconds, a test failover and its cleanup
 * run on it, and an unplanned failover after kill -9 of the primary site loses seconds of
 * writes at most (test/support/unplanned.ts).
 */
import assert from 'node:assert/strict';
import type { ProtectedItem, RecoveryPoint } from '../../src/domain/resources.js';
import type { ListAnswer } from '../../src/cli/api-common.js';
import { waitFor } from '../support/lab.js';
import { unplannedScenario } from '../support/unplanned.js';

const INTERVAL_S = 3;

unplannedScenario({
  name: 'continuous',
  policyFlags: ['--copy-frequency', 'continuous', '--point-interval', `${INTERVAL_S}s`, '--retention-hours', '1'],
  // a cut a second, shipped as it closes: a few seconds with slack for a busy machine
  maxLossSeconds: 6,
  beforeWrites: async (api, osr) => {
    assert.match(await osr('policy', 'show', 'fast'), new RegExp(`copy frequency:\\s+continuous, a point every ${INTERVAL_S}s`));
    // points every interval, the newest a cut of the last seconds
    const points = await waitFor(
      'four recovery points',
      async () => {
        const r = await api.request<ListAnswer<RecoveryPoint>>('GET', '/api/v1/protected-items/primary.db/recovery-points');
        return r.items.length >= 4 ? r.items : undefined;
      },
      60_000,
      500,
    );
    const t = points.map((p) => Date.parse(p.at)).reverse();
    for (let i = 1; i < t.length - 1; i++) assert.ok(t[i + 1]! - t[i - 1]! > INTERVAL_S * 1000, `the cut at ${points[i]!.at} was kept between points ${INTERVAL_S} s apart`);
    const item = await api.request<ProtectedItem>('GET', '/api/v1/protected-items/primary.db');
    assert.ok(item.rpoSeconds !== null && item.rpoSeconds <= 5, `RPO ${item.rpoSeconds} s`);
    // a drill on the latest point, and its cleanup, while the cuts go on
    await osr('item', 'test-failover', 'primary.db', '--wait');
    const drilled = await api.request<ProtectedItem>('GET', '/api/v1/protected-items/primary.db');
    assert.equal(drilled.state, 'TestFailoverComplete');
    // the drill runs the newest cut it found: never one older than the points listed before it
    assert.ok(Date.parse(drilled.replication.testFailover!.point.at) >= Date.parse(points[0]!.at), JSON.stringify(drilled.replication.testFailover!.point));
    await osr('item', 'test-failover-cleanup', 'primary.db', '--wait');
    assert.equal((await api.request<ProtectedItem>('GET', '/api/v1/protected-items/primary.db')).state, 'Protected');
  },
});
