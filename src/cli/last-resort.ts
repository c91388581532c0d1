/**
 * The last resort of a long-running osr process (agent, vault, provider): a promise that
 * fails with nothing waiting for it is a bug, but it must not take down every guest's disks
 * or the control plane with it. It is logged as an error, with the code
 * UNHANDLED_REJECTION and its stack, and the process goes on serving. Code paths handle
 * their own rejections; tests look for this code in logs to prove they do.
 */
import { ERROR_CODES } from '../domain/errors.js';

let installed = false;

export function installLastResortHandler(processName: string): void {
  if (installed) return;
  installed = true;
  process.on('unhandledRejection', (reason) => {
    const err = reason instanceof Error ? { message: reason.message, stack: reason.stack, code: (reason as { code?: unknown }).code } : { message: String(reason) };
    // one JSON line on stderr, like the processes' own logs (pino: level 50 is error)
    process.stderr.write(
      `${JSON.stringify({ level: 50, time: Date.now(), process: processName, code: 'UNHANDLED_REJECTION', err, msg: `unhandled promise rejection in the ${processName}: ${err.message}; ${ERROR_CODES.UNHANDLED_REJECTION.fix}` })}\n`,
    );
  });
}
