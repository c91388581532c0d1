/**
 * Recovery plan scripts, run by the provider at its fabric: a script action of a plan names
 * a file under the provider's scripts directory. It runs with the plan run's JSON context
 * on its standard input and in the file $OSR_CONTEXT_FILE, in its own process group, which
 * is killed when the action's timeout passes. A non-zero exit fails the action; the end of
 * its output goes back to the vault either way. A command may be delivered twice (a vault
 * taken over), so a script should be safe to run again.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { ScriptResult } from '../domain/commands.js';
import { OsrError } from '../domain/errors.js';

/** How much of a script's output is kept (the end of it). */
const OUTPUT_TAIL = 8 * 1024;

export interface ScriptRequest {
  /** the script's path under the scripts directory */
  script: string;
  context: unknown;
  timeoutSeconds: number;
}

/** What a script did: the plan.script command's answer (src/domain/commands.ts). */
export type { ScriptResult } from '../domain/commands.js';

/** The script's file: a relative path that stays inside the scripts directory, an executable file. */
export function resolveScript(dir: string, script: string): string {
  if (typeof script !== 'string' || script === '' || path.isAbsolute(script) || script.split(/[\\/]/).includes('..')) {
    throw new OsrError('INVALID_ARGUMENT', `script "${script}" must be a path under the provider's scripts directory (${dir}), without ".."`);
  }
  const file = path.join(dir, script);
  let st: fs.Stats;
  try {
    st = fs.statSync(file);
  } catch {
    throw new OsrError('NOT_FOUND', `script ${script} is not in the provider's scripts directory ${dir}; put it there (executable) or fix the plan's action`);
  }
  if (!st.isFile()) throw new OsrError('INVALID_ARGUMENT', `${file} is not a file`);
  try {
    fs.accessSync(file, fs.constants.X_OK);
  } catch {
    throw new OsrError('INVALID_ARGUMENT', `${file} is not executable; chmod +x it`);
  }
  return file;
}

const tail = (chunks: Buffer[]): string => {
  const all = Buffer.concat(chunks);
  return all.subarray(Math.max(0, all.length - OUTPUT_TAIL)).toString('utf8');
};

export async function runScript(dir: string, r: ScriptRequest, signal?: AbortSignal): Promise<ScriptResult> {
  const file = resolveScript(dir, r.script);
  const contextJson = `${JSON.stringify(r.context, null, 2)}\n`;
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-script-'));
  const contextFile = path.join(tmp, 'context.json');
  fs.writeFileSync(contextFile, contextJson, { mode: 0o600 });
  const started = Date.now();
  try {
    const child = spawn(file, [], { cwd: dir, detached: true, stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, OSR_CONTEXT_FILE: contextFile } });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let outBytes = 0;
    let errBytes = 0;
    // only the end is kept: drop what falls out of the tail as it comes
    const keep = (list: Buffer[], b: Buffer, size: number): number => {
      list.push(b);
      let n = size + b.length;
      while (list.length > 1 && n - list[0]!.length >= OUTPUT_TAIL) n -= list.shift()!.length;
      return n;
    };
    child.stdout.on('data', (b: Buffer) => (outBytes = keep(out, b, outBytes)));
    child.stderr.on('data', (b: Buffer) => (errBytes = keep(err, b, errBytes)));
    child.stdin.on('error', () => undefined); // a script that does not read its input
    child.stdin.end(contextJson);
    let timedOut = false;
    const killGroup = () => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // gone already
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
    }, r.timeoutSeconds * 1000);
    const onAbort = () => killGroup();
    signal?.addEventListener('abort', onAbort, { once: true });
    const code = await new Promise<number | null>((resolve, reject) => {
      child.once('error', reject);
      child.once('close', (c) => resolve(c));
      // a script may leave a process running that holds its output open: its own exit ends the action
      child.once('exit', (c) => {
        setTimeout(() => {
          child.stdout.destroy();
          child.stderr.destroy();
          resolve(c);
        }, 1000).unref();
      });
    }).finally(() => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    });
    const result: ScriptResult = { exitCode: code ?? -1, stdout: tail(out), stderr: tail(err), durationMs: Date.now() - started };
    if (timedOut) throw new OsrError('ACTION_FAILED', `script ${r.script} did not finish within ${r.timeoutSeconds} s; it was killed`, { ...result });
    if (result.exitCode !== 0) {
      const last = result.stderr.trim().split('\n').pop() ?? '';
      throw new OsrError('ACTION_FAILED', `script ${r.script} exited with ${code === null ? 'a signal' : `code ${code}`}${last ? `: ${last.slice(0, 300)}` : ''}`, { ...result });
    }
    return result;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
