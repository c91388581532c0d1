import { test } from 'node:test';
import assert from 'node:assert/strict';
import { unsupportedOptions, unsupportedRecoveryVm } from '../../src/domain/capabilities.js';
import { formatIpv4, inCidr, parseIpv4 } from '../../src/domain/ipv4.js';
import { resourceName } from '../../src/drivers/azure/recovery.js';
import { defaultVmSize } from '../../src/drivers/azure/vm-sizes.js';
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

test('a replica VM\'s size and disk type: Azure\'s are offered, others refused with the option named; the default size fits the source', () => {
  assert.deepEqual(unsupportedRecoveryVm(AZURE_CAPABILITIES, { size: 'Standard_B2s', diskType: 'Premium_LRS' }), []);
  assert.deepEqual(unsupportedRecoveryVm(AZURE_CAPABILITIES, { size: 'Standard_Nope', diskType: 'UltraSSD_LRS' }).map((g) => g.option), ['recoveryVm.size', 'recoveryVm.diskType']);
  // a site without the choice (the lab's) refuses any
  assert.match(unsupportedRecoveryVm({ ...AZURE_CAPABILITIES, recoveryVmSizes: undefined }, { size: 'Standard_B2s' })[0]!.message, /it offers none/);
  assert.equal(defaultVmSize(undefined), 'Standard_B1s');
  assert.equal(defaultVmSize({ vcpus: 2, memoryMiB: 6144 }), 'Standard_B2ms');
  assert.equal(defaultVmSize({ vcpus: 3, memoryMiB: 1024 }), 'Standard_D4s_v5');
  assert.throws(() => defaultVmSize({ vcpus: 128, memoryMiB: 1024 }), /no Azure size/);
});

test('Azure resource names: parts that had to change, or a name too long, end in a hash of the parts, so two never share a name', () => {
  assert.equal(resourceName('web1', 'sda'), 'web1-sda');
  const names = ['data_1', 'data.1', 'data-1', 'data 1'].map((d) => resourceName('web1', d));
  assert.equal(new Set(names).size, 4, names.join(' '));
  assert.equal(names[2], 'web1-data-1', 'a clean name stays as it is');
  const long = [resourceName('x'.repeat(60), 'disk10'), resourceName('x'.repeat(60), 'disk11')];
  assert.notEqual(long[0], long[1]);
  for (const n of [...names, ...long]) assert.match(n, /^[a-zA-Z0-9][a-zA-Z0-9-]{0,62}[a-zA-Z0-9]$/);
});

test('IPv4: an address in a CIDR block or not; text that is not IPv4 is in none', () => {
  assert.equal(inCidr('10.9.0.17', '10.9.0.0/24'), true);
  assert.equal(inCidr('10.9.1.17', '10.9.0.0/24'), false);
  assert.equal(inCidr('10.9.1.17', '0.0.0.0/0'), true);
  for (const [ip, cidr] of [['10.9.0.256', '10.9.0.0/24'], ['10.9.0.1', '10.9.0.0/33'], ['10.9.0.1', '10.9.0.0'], ['x', '10.9.0.0/24'], ['10.9.0.1', '10.9.0.0/2x']]) assert.equal(inCidr(ip!, cidr!), false, `${ip} in ${cidr}`);
  assert.equal(formatIpv4(parseIpv4('192.168.10.250')!), '192.168.10.250');
});
