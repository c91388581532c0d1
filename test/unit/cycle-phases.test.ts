import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CyclePhases } from '../../src/agent/sending/cycle-phases.js';

const F = 30_000;

/** Phases (ms into the frequency) of every replication's next cycle, sorted. */
function phasesOf(at: number[], now: number): number[] {
  return at.map((t) => (((t - now) % F) + F) % F).sort((a, b) => a - b);
}

test('a lone replication cycles one frequency from now', () => {
  const p = new CyclePhases();
  assert.equal(p.place('a', 1000, F), 1000 + F);
});

test('replications placed together spread evenly over the frequency', () => {
  const p = new CyclePhases();
  const now = 5_000;
  const at: number[] = [];
  for (let i = 0; i < 20; i++) at.push(p.place(`vm${i}`, now, F));
  for (const t of at) assert.ok(t > now && t <= now + F, `${t} lies in (now, now + frequency]`);
  const sorted = phasesOf(at, now);
  const gaps = sorted.map((x, i) => (i === 0 ? x + F - sorted[sorted.length - 1] : x - sorted[i - 1]));
  // 20 in 30 s: an even spread is 1.5 s apart; halving the widest gap each time never
  // leaves two closer than a quarter of that or any gap wider than twice it
  assert.ok(Math.min(...gaps) >= F / 20 / 2, `closest two ${Math.min(...gaps)} ms apart`);
  assert.ok(Math.max(...gaps) <= (F / 20) * 2, `widest gap ${Math.max(...gaps)} ms`);
});

test('placing again moves only the one replication, into the widest gap', () => {
  const p = new CyclePhases();
  const now = 0;
  p.set('a', 10_000);
  p.set('b', 12_000);
  p.set('c', 14_000);
  // gaps: 10→12, 12→14, 14→40 (wraps to 10 of the next window): widest is 14→40, middle 27
  assert.equal(p.place('d', now, F), 27_000);
  // a later placement sees the others' cycles one or more frequencies ahead the same way
  p.delete('d');
  assert.equal(p.place('d', now + 3 * F, F), 3 * F + 27_000);
});

test('a replication does not count itself', () => {
  const p = new CyclePhases();
  p.set('a', 10_000);
  assert.equal(p.place('a', 0, F), F);
});
