/** Generated reference pages: the error registry and the CLI's --help, as Markdown. */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ERROR_CODES } from '../domain/errors.js';

const OSR = path.join(path.dirname(fileURLToPath(import.meta.url)), 'osr.js');

export function renderErrorsPage(): string {
  const rows = Object.entries(ERROR_CODES).map(([code, d]) => `| \`${code}\` | ${d.class} | ${d.meaning} | ${d.fix} |`);
  return [
    '# Error codes',
    '',
    'Every error osr reports carries one of these codes, in API answers (`{code, message, details}`),',
    'in health facts (`lastError.code`), in logs and in the CLI (`error CODE: message`).',
    '**recoverable** errors are retried on their own (after 1, 2, 4, 8 and 10 minutes, then every 30 minutes);',
    '**non-recoverable** ones stop the work until someone acts (health turns Critical; `osr replication retry`',
    'or a resync); **usage** errors are answered at once and change nothing.',
    '',
    'This page is generated from `src/domain/errors.ts` by `npm run docs`; a test keeps the two in step.',
    '',
    '| Code | Class | Meaning | How to fix |',
    '|---|---|---|---|',
    ...rows,
    '',
  ].join('\n');
}

/** each command's help, asked once: the walk of the groups and the page read the same ones */
const helps = new Map<string, string>();

function help(args: string[]): string {
  const key = args.join(' ');
  let text = helps.get(key);
  if (text === undefined) {
    const env = { ...process.env };
    delete env.OSR_AGENT; // the help shows defaults, not this shell's settings
    text = execFileSync(process.execPath, [OSR, ...args, '--help'], { encoding: 'utf8', env }).trimEnd();
    helps.set(key, text);
  }
  return text;
}

/** Every command path, found by reading the help of each group. */
function commandPaths(prefix: string[] = []): string[][] {
  const text = help(prefix);
  const section = text.split('\nCommands:\n')[1];
  if (!section) return [];
  const names = section
    .split('\n')
    .map((l) => /^ {2}(\S+)/.exec(l)?.[1])
    .filter((n): n is string => n !== undefined && n !== 'help');
  const out: string[][] = [];
  for (const n of names) {
    out.push([...prefix, n]);
    out.push(...commandPaths([...prefix, n]));
  }
  return out;
}

export function renderCliReference(): string {
  const parts = ['# `osr` command reference', '', 'Generated from `osr --help` by `npm run docs`; a test keeps it in step with the code.', '', '```text', help([]), '```'];
  for (const p of commandPaths()) parts.push('', `## osr ${p.join(' ')}`, '', '```text', help(p), '```');
  return parts.join('\n') + '\n';
}
