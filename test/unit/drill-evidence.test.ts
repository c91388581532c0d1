/**
 * A drill's evidence comes from the recovery site's provider, and its console from a guest
 * that writes what it likes: the vault keeps the fields it knows, the console's last 4 KiB,
 * with control characters (a terminal's escape sequences) shown as '?'.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { DRILL_CONSOLE_BYTES, drillEvidence } from '../../src/domain/runs.js';

test('evidence is kept as the vault knows it: bounded, printable, known fields only', () => {
  const e = drillEvidence({ at: '2026-12-06T14:00:00Z', running: true, console: `boot\r\n\u001b]0;owned\u0007\u001b[2Jmounted\tok\n`, guestAgentAnswered: true, extra: 'x'.repeat(10) });
  assert.deepEqual(e, { at: '2026-12-06T14:00:00.000Z', running: true, console: 'boot\n?]0;owned??[2Jmounted\tok\n', guestAgentAnswered: true });
  const long = drillEvidence({ at: '2026-12-06T14:00:00Z', console: `${'a'.repeat(10_000)}end` });
  assert.equal(long?.console.length, DRILL_CONSOLE_BYTES);
  assert.ok(long?.console.endsWith('end'));
  assert.equal(long?.running, false);
  assert.equal(long?.guestAgentAnswered, false);
});

test('an answer without evidence, or with a wrong one, keeps none', () => {
  for (const v of [undefined, null, 'text', {}, { at: 'yesterday', console: '' }, { at: '2026-12-06T14:00:00Z', console: 42 }]) assert.equal(drillEvidence(v), null, JSON.stringify(v));
});
