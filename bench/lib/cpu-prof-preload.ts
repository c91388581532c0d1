/**
 * Preloaded into agent processes by `npm run bench -- replication --cpu-prof DIR`
 * (NODE_OPTIONS=--import …; node refuses --cpu-prof itself in NODE_OPTIONS): profiles the
 * main thread with the inspector from start to exit and writes
 * DIR/<name>-<pid>.cpuprofile (open it in Chrome DevTools or speedscope).
 */
import fs from 'node:fs';
import { Session } from 'node:inspector';
import path from 'node:path';

const dir = process.env.OSR_BENCH_CPU_PROF_DIR;
if (dir) {
  const name = process.env.OSR_BENCH_CPU_PROF_NAME ?? 'node';
  const session = new Session();
  session.connect();
  session.post('Profiler.enable');
  session.post('Profiler.setSamplingInterval', { interval: 500 });
  session.post('Profiler.start');
  let written = false;
  const write = () => {
    if (written) return;
    written = true;
    // a session on the main thread answers synchronously, so this works in an exit handler
    session.post('Profiler.stop', (err, res) => {
      if (err || !res) return;
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(path.join(dir, `${name}-${process.pid}.cpuprofile`), JSON.stringify(res.profile));
    });
  };
  process.on('exit', write);
}
