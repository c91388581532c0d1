import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { Clock } from '../../src/domain/clock.js';
import { DEFAULT_RETRY_POLICY, parseBackoff, retryDelayMs } from '../../src/agent/io/retry.js';
import { Pacer, parseBandwidth, parseRate, rateAt } from '../../src/agent/io/throttle.js';
import { msUntilMinute } from '../../src/agent/io/time-window.js';
import { assertThrowsCode } from '../support/unit.js';

const MIN = 60_000;

/** A clock whose sleeps pass at once, moving time forward: a day runs in a moment. */
function manualClock(start: number): Clock & { slept: number[] } {
  let now = start;
  const slept: number[] = [];
  return {
    slept,
    now: () => now,
    sleep: async (ms) => {
      slept.push(ms);
      now += ms;
    },
  };
}

/** A local time of day on a fixed date. */
const at = (h: number, m = 0) => new Date(2026, 10, 23, h, m, 0, 0).getTime();

test('recoverable failures are retried after 1, 2, 4, 8, 10 minutes, then every 30', () => {
  const waits = [1, 2, 3, 4, 5, 6, 7, 20].map((n) => retryDelayMs(DEFAULT_RETRY_POLICY, n) / MIN);
  assert.deepEqual(waits, [1, 2, 4, 8, 10, 30, 30, 30]);
  const short = { backoffMs: parseBackoff('100ms, 2s'), thenEveryMs: 5000 };
  assert.deepEqual([1, 2, 3].map((n) => retryDelayMs(short, n)), [100, 2000, 5000]);
  assertThrowsCode(() => parseBackoff(' , '), 'CONFIG_INVALID', /lists no durations/);
  assertThrowsCode(() => parseBackoff('1m,0s'), 'CONFIG_INVALID', /longer than zero/);
  assertThrowsCode(() => parseBackoff('1m,soon'), 'INVALID_ARGUMENT', /not a duration/);
});

test('bandwidth schedules: rates with units, windows by local time of day, first match wins', () => {
  assert.equal(parseRate('10MB/s'), 10_000_000);
  assert.equal(parseRate('512KiB/s'), 512 * 1024);
  assert.equal(parseRate('2000000'), 2_000_000);
  assert.equal(parseRate('unlimited'), null);
  assertThrowsCode(() => parseRate('fast'), 'CONFIG_INVALID', /not a rate/);
  assertThrowsCode(() => parseRate('10B/s'), 'CONFIG_INVALID', /below 1 KiB/);
  assertThrowsCode(() => parseBandwidth('10MB/s@8-18'), 'CONFIG_INVALID', /HH:MM/);

  const office = parseBandwidth('10MB/s@08:00-18:00');
  assert.equal(rateAt(office, at(9)), 10_000_000);
  assert.equal(rateAt(office, at(17, 59)), 10_000_000);
  assert.equal(rateAt(office, at(18)), null, 'unlimited outside the window');
  assert.equal(rateAt(office, at(3)), null);
  const tiered = parseBandwidth('10MB/s@08:00-18:00, 50MB/s');
  assert.equal(rateAt(tiered, at(12)), 10_000_000);
  assert.equal(rateAt(tiered, at(22)), 50_000_000);
  const night = parseBandwidth('1MiB/s@22:00-06:00');
  assert.equal(rateAt(night, at(23)), 1024 * 1024);
  assert.equal(rateAt(night, at(5)), 1024 * 1024);
  assert.equal(rateAt(night, at(12)), null);
});

test('a pacer holds sends to the rate in force, and lets them through at once when unlimited', async () => {
  const clock = manualClock(at(9));
  const pacer = new Pacer(parseBandwidth('1MB/s@08:00-18:00'), clock);
  const start = clock.now();
  // 20 MB in 256 KB frames at 1 MB/s: 20 s, less the 100 ms a link may burst
  for (let i = 0; i < 80; i++) await pacer.take(250_000);
  const elapsed = clock.now() - start;
  assert.ok(elapsed >= 19_800 && elapsed <= 20_000, `20 MB took ${elapsed} ms at 1 MB/s`);
  // after hours: no waiting at all
  const evening = manualClock(at(19));
  const free = new Pacer(parseBandwidth('1MB/s@08:00-18:00'), evening);
  for (let i = 0; i < 80; i++) await free.take(250_000);
  assert.equal(evening.slept.length, 0);
  assert.equal(free.rate, null);
  // an idle link does not save up credit beyond its burst
  const idle = manualClock(at(10));
  const p = new Pacer(parseBandwidth('1MB/s'), idle);
  await p.take(1_000_000);
  await idle.sleep(60_000);
  const t0 = idle.now();
  for (let i = 0; i < 10; i++) await p.take(100_000);
  assert.ok(idle.now() - t0 >= 900, `1 MB after a pause took ${idle.now() - t0} ms`);
});

test('the time until a local time of day', () => {
  assert.equal(msUntilMinute(18 * 60, at(17, 30)), 30 * MIN);
  assert.equal(msUntilMinute(6 * 60, at(18)), 12 * 60 * MIN);
  assert.equal(msUntilMinute(18 * 60, at(18)), 24 * 60 * MIN, 'now is not "next"');
});
