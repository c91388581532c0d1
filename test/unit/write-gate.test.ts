import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WriteGate } from '../../src/agent/io/write-gate.js';
import { assertThrowsCode } from '../support/unit.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a held gate lets writes through in the order they came once released, or by itself at its deadline; a hold waits as long as the last one held', async () => {
  const g = new WriteGate();
  assert.equal(g.wait, undefined, 'open: a write goes on at once');
  g.hold(1000, () => assert.fail('released before its deadline'));
  const order: number[] = [];
  const writes = [1, 2, 3].map(async (i) => {
    await g.wait;
    order.push(i);
  });
  await sleep(20);
  assert.deepEqual(order, [], 'held: no write went on');
  assertThrowsCode(() => g.hold(1000, () => undefined), 'INVALID_STATE', /held already/);
  const held = g.release();
  await Promise.all(writes);
  assert.deepEqual(order, [1, 2, 3]);
  assert.ok(held >= 15, `held ${held} ms`);
  // right after, a new hold is refused until the writes flowed as long as they were held
  assertThrowsCode(() => g.hold(1000, () => undefined), 'INVALID_STATE', /flow as long again/);
  await sleep(held + 5);
  let expired = false;
  g.hold(30, () => (expired = true));
  const late = (async () => {
    await g.wait;
    return true;
  })();
  assert.equal(await late, true, 'the deadline let the write through');
  assert.equal(expired, true);
  assert.equal(g.holding, false);
  assert.equal(g.waitedWrites, 4);
});
