/**
 * Imported first by the `osr` entry point, before any native addon is loaded: osr needs
 * Node.js 22 or newer, and the major version its native addons were built for, which
 * scripts/build-native.mjs records in native/build/node.json (the Node.js 24 that `npm ci`
 * installs as node_modules/.bin/node). An addon built for another Node.js does not load, or
 * crashes the process before any message could be printed; this says what to do instead.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const MIN_MAJOR = 22;
const majorOf = (version: string) => Number(version.replace(/^v/, '').split('.')[0]);

/** What scripts/build-native.mjs recorded: the Node.js the addons were built for. */
function builtFor(): { version: string; execPath: string } | undefined {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const file = path.join(dir, 'native', 'build', 'node.json');
    if (fs.existsSync(file)) {
      try {
        return JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string; execPath: string };
      } catch {
        return undefined;
      }
    }
    dir = path.dirname(dir);
  }
  return undefined;
}

/** Why this Node.js cannot run osr, or undefined when it can. */
export function runtimeProblem(version = process.versions.node, built = builtFor()): string | undefined {
  const run = '`node_modules/.bin/node dist/src/cli/osr.js`, `npm run osr -- …`, or node_modules/.bin first on the PATH';
  const here = `v${version} (${process.execPath})`;
  if (majorOf(version) < MIN_MAJOR) return `osr needs Node.js ${MIN_MAJOR} or newer, and this is ${here}. Run it with the Node.js 24 that \`npm ci\` installs: ${run}.`;
  if (built && majorOf(built.version) !== majorOf(version)) return `osr's native addons were built for Node.js v${built.version} (${built.execPath}), and this is ${here}. Run osr with that one (${run}), or rebuild the addons for this one: \`node scripts/build-native.mjs\`.`;
  return undefined;
}

const problem = runtimeProblem();
if (problem) {
  process.stderr.write(`${problem}\n`);
  process.exit(1);
}
