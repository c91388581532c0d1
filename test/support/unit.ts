/** Helpers shared by the unit tests: a seeded PRNG, temp directories, error-code checks. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { OsrError } from '../../src/domain/errors.js';

/** mulberry32: a small seeded PRNG so a failing run reproduces. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomBytes(rnd: () => number, n: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  for (let i = 0; i < n; i++) b[i] = Math.floor(rnd() * 256);
  return b;
}

/** Run a test body in a fresh temporary directory, removed afterwards. */
export function withDir(fn: (dir: string) => Promise<void> | void): () => Promise<void> {
  return async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-'));
    try {
      await fn(dir);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  };
}

function checkCode(caught: unknown, code: string, pattern?: RegExp): OsrError {
  assert.ok(caught instanceof OsrError, `expected OsrError ${code}, got ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  if (pattern) assert.match(caught.message, pattern);
  return caught;
}

/** fn must throw an OsrError with this code (and a message matching pattern). */
export function assertThrowsCode(fn: () => unknown, code: string, pattern?: RegExp): OsrError {
  try {
    fn();
  } catch (e) {
    return checkCode(e, code, pattern);
  }
  return checkCode(undefined, code, pattern);
}

/** The promise (or function) must reject with an OsrError with this code. */
export async function assertRejectsCode(p: Promise<unknown> | (() => unknown), code: string, pattern?: RegExp): Promise<OsrError> {
  try {
    if (typeof p === 'function') await p();
    else await p;
  } catch (e) {
    return checkCode(e, code, pattern);
  }
  return checkCode(undefined, code, pattern);
}

/** Whether a program is on the PATH. */
export function onPath(tool: string): boolean {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    try {
      fs.accessSync(path.join(dir, tool), fs.constants.X_OK);
      return true;
    } catch {
      return false;
    }
  });
}

/**
 * A test's skip reason when programs it needs are missing, outside CI only: `.ci/run`
 * installs them, so there a missing program fails the test instead of skipping it.
 */
export function skipWithout(tools: string[], packages: string): string | false {
  const missing = tools.filter((t) => !onPath(t));
  return missing.length > 0 && !process.env.CI ? `not installed: ${missing.join(', ')} (packages ${packages})` : false;
}
