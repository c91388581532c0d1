#!/usr/bin/env node
// Writes the generated reference pages from the code: docs/errors.md from the error
// registry and docs/cli.md from `osr --help`. `npm run docs` runs it; a test fails when a
// page is out of date.
import fs from 'node:fs';
import { renderCliReference, renderErrorsPage } from '../dist/src/cli/reference.js';

fs.writeFileSync('docs/errors.md', renderErrorsPage());
fs.writeFileSync('docs/cli.md', renderCliReference());
console.log('wrote docs/errors.md and docs/cli.md');
