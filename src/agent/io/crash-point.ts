/**
 * Crash points: named steps of multi-step operations (promote, demote) where a test can
 * have the agent killed, as by kill -9, to prove that a restart finishes or undoes the
 * operation. Set OSR_TEST_CRASH_AT=<name> in the agent's environment; without it a crash
 * point does nothing. The names are listed in docs/design/failover.md.
 */
export function crashPoint(name: string): void {
  if (process.env.OSR_TEST_CRASH_AT !== name) return;
  process.stderr.write(`crash point ${name}: the agent kills itself (OSR_TEST_CRASH_AT)\n`);
  process.kill(process.pid, 'SIGKILL');
}
