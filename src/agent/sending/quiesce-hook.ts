/**
 * Quiesce hooks are the agent's configuration, never a request's: with
 * `osr agent --quiesce-hook-dir DIR`, the hook of VM X is the file DIR/X, run with
 * `freeze X` and `thaw X` around an app-consistent point (replication.ts).
 *
 * The agent runs a hook only if nobody but root and the agent's own user could have put
 * it there: DIR and DIR/X must belong to root or to the agent's user and must not be
 * writable by group or others; DIR/X must be a regular file (not a symbolic link) that
 * its owner may execute. A hook that fails these checks is not run: the point is
 * crash-consistent and the replication reports HOOK_FAILED saying why.
 */
import fs from 'node:fs';
import path from 'node:path';

export type QuiesceHook = { path: string } | { refused: string };

/** Files osr may run: owned by root or by this process's user, not writable by group or others. */
function unsafeOwnership(st: fs.Stats): string | undefined {
  const me = typeof process.getuid === 'function' ? process.getuid() : 0;
  if (st.uid !== 0 && st.uid !== me) return `belongs to user ${st.uid}, neither root nor the agent's user`;
  if ((st.mode & 0o022) !== 0) return `is writable by ${st.mode & 0o002 ? 'others' : 'its group'} (mode ${(st.mode & 0o777).toString(8)})`;
  return undefined;
}

/** The hook of `vm` in `dir`, if one is there; `refused` when it may not be run. */
export function findQuiesceHook(dir: string | undefined, vm: string): QuiesceHook | undefined {
  if (!dir) return undefined;
  // VM names are [A-Za-z0-9][A-Za-z0-9._-]*; anything else never names a file in DIR
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$/.test(vm)) return undefined;
  const file = path.join(dir, vm);
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    return { refused: `cannot read ${file}: ${(e as Error).message}` };
  }
  if (!st.isFile()) return { refused: `${file} is not a regular file${st.isSymbolicLink() ? ' (symbolic links are not followed)' : ''}` };
  const fileProblem = unsafeOwnership(st);
  if (fileProblem) return { refused: `${file} ${fileProblem}; it is not run` };
  const dirProblem = unsafeOwnership(fs.statSync(dir));
  if (dirProblem) return { refused: `the hook directory ${dir} ${dirProblem}; no hook in it is run` };
  if ((st.mode & 0o100) === 0) return { refused: `${file} is not executable by its owner (chmod u+x)` };
  return { path: file };
}

/** Check the directory at start-up so a mistake is reported at once, not at the first app-consistent point. */
export function checkQuiesceHookDir(dir: string): string | undefined {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch (e) {
    return `the quiesce hook directory ${dir} cannot be read: ${(e as Error).message}`;
  }
  if (!st.isDirectory()) return `the quiesce hook directory ${dir} is not a directory`;
  const problem = unsafeOwnership(st);
  return problem ? `the quiesce hook directory ${dir} ${problem}; no hook in it will run` : undefined;
}
