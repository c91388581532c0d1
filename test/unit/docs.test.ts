import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { renderCliReference, renderErrorsPage } from '../../src/cli/reference.js';
import { ERROR_CODES } from '../../src/domain/errors.js';

test('docs/errors.md lists every error code of the registry, as generated', () => {
  const page = fs.readFileSync('docs/errors.md', 'utf8');
  for (const code of Object.keys(ERROR_CODES)) assert.match(page, new RegExp(`\\| \`${code}\` \\|`), `${code} is missing from docs/errors.md`);
  assert.equal(page, renderErrorsPage(), 'docs/errors.md is out of date: run `npm run docs`');
});

test('docs/cli.md is the current --help of every command', () => {
  assert.equal(fs.readFileSync('docs/cli.md', 'utf8'), renderCliReference(), 'docs/cli.md is out of date: run `npm run docs`');
});

test('every error code in the source is in the registry', () => {
  const codes = new Set(Object.keys(ERROR_CODES));
  const used = new Set<string>();
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory()) walk(p);
      else if (p.endsWith('.ts')) for (const m of fs.readFileSync(p, 'utf8').matchAll(/new OsrError\('([A-Z_]+)'/g)) used.add(m[1]);
    }
  };
  walk('src');
  for (const c of used) assert.ok(codes.has(c), `${c} is used but not registered`);
});
