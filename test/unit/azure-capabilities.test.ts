import { test } from 'node:test';
import assert from 'node:assert/strict';
import { unsupportedOptions } from '../../src/domain/capabilities.js';
import { validatePolicy } from '../../src/domain/policy.js';
import { AZURE_CAPABILITIES } from '../../src/drivers/azure/capabilities.js';

const NOW = Date.parse('2026-12-07T00:00:00Z');

test('Azure as a recovery site takes the policies ASR takes for Azure and refuses an offline initial copy, saying why', () => {
  for (const copyFrequencySeconds of [30, 300, 900]) {
    const ok = validatePolicy({ copyFrequencySeconds, retentionHours: 24, appConsistentFrequencyHours: 12, initialReplication: { method: 'scheduled', startAt: '2026-12-07T22:00:00Z' } }, NOW);
    assert.deepEqual(unsupportedOptions(AZURE_CAPABILITIES, 'target', ok), []);
  }
  const offline = validatePolicy({ copyFrequencySeconds: 300, retentionHours: 4, initialReplication: { method: 'offline', exportPath: '/srv/export', importPath: '/srv/import' } }, NOW);
  const gaps = unsupportedOptions(AZURE_CAPABILITIES, 'target', offline);
  assert.deepEqual(gaps.map((g) => g.option), ['initialReplication.method']);
  assert.match(gaps[0]!.message, /offline initial replication \(it does now or scheduled\)/);
});
