import { test } from 'node:test';
import assert from 'node:assert/strict';
import { unsupportedOptions } from '../../src/domain/capabilities.js';
import { checkCommandBody } from '../../src/domain/commands.js';
import { latestGroupPoint } from '../../src/domain/groups.js';
import { validatePolicy } from '../../src/domain/policy.js';
import { LAB_CAPABILITIES } from '../../src/lab/lab-driver.js';
import { LIBVIRT_CAPABILITIES } from '../../src/drivers/libvirt/libvirt-driver.js';
import { AZURE_CAPABILITIES } from '../../src/drivers/azure/capabilities.js';
import { assertThrowsCode } from '../support/unit.js';

const NOW = Date.parse('2026-12-07T00:00:00Z');
const at = (s: number) => new Date(NOW + s * 1000).toISOString();

test('the latest group point: the newest cut every member holds, each member\'s point of it; none when no cut is held by all', () => {
  const members = {
    a: [{ id: '1', at: at(0), cut: 'c1' }, { id: '2', at: at(30), cut: 'c2' }, { id: '3', at: at(60), cut: 'c3' }, { id: '4', at: at(70) }],
    // c3 is not at b's replica yet; b's own times differ from a's by its host's clock
    b: [{ id: '10', at: at(1), cut: 'c1' }, { id: '11', at: at(31), cut: 'c2' }],
  };
  assert.deepEqual(latestGroupPoint(members), { cut: 'c2', at: at(31), points: { a: '2', b: '11' } });
  assert.equal(latestGroupPoint({ a: members.a, b: [{ id: '9', at: at(5) }] }), undefined);
  assert.equal(latestGroupPoint({}), undefined);
});

test('a replication group: the lab takes part both ways, libvirt only as a recovery site, Azure not at all; a continuous policy takes no group', () => {
  const cycles = validatePolicy({ copyFrequencySeconds: 30 }, NOW);
  for (const role of ['source', 'target'] as const) assert.deepEqual(unsupportedOptions(LAB_CAPABILITIES, role, cycles, undefined, 'app'), []);
  assert.deepEqual(unsupportedOptions(LIBVIRT_CAPABILITIES, 'target', cycles, undefined, 'app'), []);
  assert.deepEqual(unsupportedOptions(LIBVIRT_CAPABILITIES, 'source', cycles, undefined, 'app').map((g) => g.option), ['group']);
  assert.match(unsupportedOptions(AZURE_CAPABILITIES, 'target', cycles, undefined, 'app')[0]!.message, /do not keep a group's cuts/);
  // without a group nothing is asked of either
  assert.deepEqual(unsupportedOptions(AZURE_CAPABILITIES, 'target', cycles), []);
  const continuous = validatePolicy({ copyMode: 'continuous' }, NOW);
  assert.match(unsupportedOptions(LAB_CAPABILITIES, 'source', continuous, undefined, 'app')[0]!.message, /under continuous replication/);
});

test('replication.enable carries a group name a host takes as a file name, nothing else', () => {
  const body = {
    item: 'site.vm1',
    policy: validatePolicy({ copyFrequencySeconds: 30 }, NOW),
    target: { fabricId: 'r', replicaVmId: 'r.vm1', hostId: 'r.h1', agent: { address: '127.0.0.1', port: 8084 }, nics: [], reused: false },
  };
  assert.equal(checkCommandBody('replication.enable', { ...body, group: 'app-1' }).group, 'app-1');
  assert.equal(checkCommandBody('replication.enable', body).group, undefined);
  for (const bad of ['../x', '.hidden', '', 'a/b', 7]) assertThrowsCode(() => checkCommandBody('replication.enable', { ...body, group: bad }), 'INVALID_ARGUMENT', /group/);
});
