/** `osr lab`: start, watch and stop a whole lab (vault, providers, agents, demo VMs) on this machine. */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { OsrError, toOsrError } from '../domain/errors.js';
import type { ProtectedItem } from '../domain/resources.js';
import { DEFAULT_LAB_DIR } from '../lab/topology.js';
import { builtInTopologies, loadTopology } from '../lab/topology.js';
import { formatSeconds, table } from './format.js';
import { installLastResortHandler } from './last-resort.js';

// the lab's machinery loads with the command that runs it: a vault or an agent started by osr does not carry it
const launcher = () => import('../lab/launcher.js');
const labSites = () => import('../lab/lab-sites.js');

export function addLabCommand(program: Command, print: (data: unknown, human: () => string) => void): void {
  const lab = program.command('lab').description('a whole lab on this machine: the vault, a provider per fabric, an agent per host, demo VMs with a workload');
  lab
    .command('up')
    .description('start the lab (in the foreground unless --detach); Ctrl-C, SIGTERM or SIGHUP at any moment, start-up included, stops every process it started; a second run goes on from the lab\'s state')
    .option('--topology <name|file>', `a built-in topology (${builtInTopologies().join(', ')}) or a YAML file; fixed when the lab is first made`)
    .option('--dir <dir>', 'where the lab keeps everything', DEFAULT_LAB_DIR)
    .option('--detach', 'start the lab in the background and return', false)
    .option('--port <port>', 'the vault\'s HTTPS port on 127.0.0.1 (0: any free port)', '8443')
    .option('--status-interval <duration>', 'how often providers report replication status', '5s')
    .action(async (o: { topology?: string; dir: string; detach: boolean; port: string; statusInterval: string }) => {
      const port = Number(o.port);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new OsrError('INVALID_ARGUMENT', `--port must be a port number (0: any free port), not ${o.port}`);
      // a signal at any moment stops what has started: during start-up through the abort,
      // once up through the lab's stop (the children run in process groups of their own,
      // so the terminal's Ctrl-C reaches this process only)
      const interrupt = new AbortController();
      let stop: (() => void) | undefined = undefined;
      const onSignal = (sig: NodeJS.Signals) => {
        if (interrupt.signal.aborted) return;
        interrupt.abort();
        console.log(`\n${sig}: stopping the lab: providers (guests, hosts), then the vault…`);
        stop?.();
      };
      const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
      for (const sig of signals) process.on(sig, onSignal);
      let l;
      try {
        l = await (await launcher()).labUp({ topology: o.topology, dir: o.dir, detach: o.detach, port, statusInterval: o.statusInterval, signal: interrupt.signal });
      } catch (e) {
        if (toOsrError(e).code === 'INTERRUPTED') {
          console.log(`stopped: ${(e as Error).message}`);
          process.exit(130);
        }
        throw e;
      }
      if (o.detach) {
        for (const sig of signals) process.off(sig, onSignal);
        l.api.close();
        return;
      }
      const lab = l;
      stop = () => {
        lab.stop().then(
          () => {
            console.log(`stopped; the lab's state stays in ${lab.info.dir} (\`npm start\` or \`osr lab up\` goes on from it)`);
            process.exit(0);
          },
          (e: unknown) => {
            const err = toOsrError(e);
            console.error(`error ${err.code}: stopping the lab failed: ${err.message}\n  what to do: \`osr lab down --dir ${lab.info.dir}\` stops what is left`);
            process.exit(1);
          },
        );
      };
      // a signal that came while the last process became ready
      if (interrupt.signal.aborted) stop();
      const stopping = () => interrupt.signal.aborted;
      console.log('\nwatching protected items (Ctrl-C stops the lab)…');
      let last = '';
      let lastAt = 0;
      while (!stopping()) {
        const ended = await Promise.race([l.stopped.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 5000))]);
        if (ended) {
          if (!stopping()) process.exit(1);
          break;
        }
        try {
          const items = (await l.api.request<{ items: ProtectedItem[] }>('GET', '/api/v1/protected-items?limit=1000')).items;
          const line = summary(items);
          if (line !== last || Date.now() - lastAt > 60_000) {
            console.log(`${new Date().toISOString().slice(11, 19)}  ${line}`);
            last = line;
            lastAt = Date.now();
          }
        } catch (e) {
          if (!stopping()) console.log(`status unavailable: ${(e as Error).message}`);
        }
      }
    });
  lab
    .command('status')
    .description('what runs in the lab: processes, fabrics and their heartbeats, protected items')
    .option('--dir <dir>', 'the lab\'s directory', DEFAULT_LAB_DIR)
    .action(async (o: { dir: string }) => {
      const s = await (await launcher()).labStatus(o.dir);
      print(s, () => {
        if (!s.lab) return `no lab runs in ${s.dir} (\`osr lab up\` starts one)`;
        return [
          `lab ${s.lab.topology} in ${s.dir}: ${s.running ? 'running' : 'NOT all processes run'}; vault ${s.vaultUrl ?? s.lab.vault.url}${s.lab.failedSites?.length ? `; failed on purpose: ${s.lab.failedSites.join(', ')}` : ''}`,
          '',
          table(s.processes.map((p) => ({ role: p.role, name: p.name, site: p.site ?? '-', pid: p.pid, alive: p.alive ? 'yes' : 'NO', address: p.address ?? '' }))),
          '',
          table(s.fabrics.map((f) => ({ fabric: f.name, id: f.id, heartbeat: f.lastHeartbeatAt, lost: f.heartbeatLost ? 'LOST' : '-', inventory: f.inventoryAt }))),
          '',
          s.items.length === 0 ? 'no protected items yet' : table(s.items.map((i) => ({ item: i.name, state: i.state, health: i.health, rpo: formatSeconds(i.rpoSeconds), latestPoint: i.lastRecoveryPointAt }))),
        ].join('\n');
      });
    });
  lab
    .command('down')
    .description('stop the lab (providers and their hosts first, then the vault), also one whose start-up was cut short: each recorded process is checked to be the lab\'s before it is signalled; the lab\'s state stays')
    .option('--dir <dir>', 'the lab\'s directory', DEFAULT_LAB_DIR)
    .action(async (o: { dir: string }) => {
      await (await launcher()).labDown(o.dir);
    });
  lab
    .command('remove')
    .description('remove a lab for good: stop it if it runs, remove what it made in libvirt (a kvm lab\'s domains, networks and pools), then its directory with every VM disk and replica in it')
    .option('--dir <dir>', 'the lab\'s directory', DEFAULT_LAB_DIR)
    .action(async (o: { dir: string }) => {
      await (await launcher()).labRemove(o.dir);
    });
  const site = lab.command('site').description('lose a whole site of the lab on purpose, and bring it back (a disaster drill: docs/getting-started.md)');
  site
    .command('fail <name>')
    .description('kill -9 every process of the site: its provider and its hosts\' agents (their VMs stop), the vault if it runs there, and its PostgreSQL cluster; nothing is stopped cleanly')
    .option('--dir <dir>', 'the lab\'s directory', DEFAULT_LAB_DIR)
    .action(async (name: string, o: { dir: string }) => {
      await (await labSites()).labSiteFail(o.dir, name);
    });
  site
    .command('restore <name>')
    .description('start the site\'s processes again from their state, as after a power cut: its database, its vault (stale if another took over meanwhile), its agents, its provider')
    .option('--dir <dir>', 'the lab\'s directory', DEFAULT_LAB_DIR)
    .action(async (name: string, o: { dir: string }) => {
      await (await labSites()).labSiteRestore(o.dir, name);
    });
  lab
    .command('vault')
    .description('the lab\'s vault')
    .command('promote')
    .description('the vault at the standby site takes over (the primary vault\'s site is lost): its PostgreSQL standby is promoted, or on SQLite the newest backup there is restored and a vault started on it; the next term begins and providers follow it')
    .option('--dir <dir>', 'the lab\'s directory', DEFAULT_LAB_DIR)
    .action(async (o: { dir: string }) => {
      await (await labSites()).labVaultPromote(o.dir);
    });
  lab
    .command('nbd-uri <vm> [disk]')
    .description('the NBD URI of a running lab VM\'s disk (default its first), on whichever host runs it now: any NBD client can be its guest')
    .option('--dir <dir>', 'the lab\'s directory', DEFAULT_LAB_DIR)
    .action(async (vm: string, disk: string | undefined, o: { dir: string }) => {
      const rows = await (await launcher()).labNbdUri(o.dir, vm, disk);
      print(rows, () => rows.map((r) => r.uri).join('\n'));
    });
  lab
    .command('azure-emulator', { hidden: true })
    .description('run the lab\'s Azure recovery site (Azurite and the emulated Resource Manager); osr lab up starts it for a topology with azure')
    .requiredOption('--data-dir <dir>', 'where it keeps its state')
    .requiredOption('--topology <file>', 'the lab\'s topology (its azure part)')
    .action(async (o: { dataDir: string; topology: string }) => {
      installLastResortHandler('lab azure-emulator');
      const spec = loadTopology(o.topology).spec.azure;
      if (!spec) throw new OsrError('CONFIG_INVALID', `topology ${o.topology} has no azure part`);
      const e = await (await import('../lab/azure-emulator.js')).runAzureEmulator(path.resolve(o.dataDir), spec);
      const stop = () => void e.stop().then(() => process.exit(0), () => process.exit(1));
      process.on('SIGTERM', stop);
      process.on('SIGINT', stop);
      console.log(JSON.stringify({ azureEmulator: spec.name, blobEndpoint: e.blobEndpoint, armEndpoint: e.armEndpoint }));
    });
  lab
    .command('topologies')
    .description('the built-in topologies (copy one with --print, edit it, and give its file to lab up --topology)')
    .option('--print <name>', 'print a built-in topology\'s YAML')
    .action(async (o: { print?: string }) => {
      if (o.print) {
        const { file } = loadTopology(o.print);
        process.stdout.write(fs.readFileSync(file, 'utf8'));
        return;
      }
      const rows = builtInTopologies().map((n) => {
        const t = loadTopology(n).spec;
        return { name: n, fabrics: t.fabrics.length, vms: t.fabrics.reduce((k, f) => k + f.vms.length, 0), description: t.description ?? '' };
      });
      print(rows, () => table(rows));
    });
}

function summary(items: ProtectedItem[]): string {
  if (items.length === 0) return 'no protected items yet (osr item enable VM)';
  const by = new Map<string, number>();
  for (const i of items) by.set(`${i.state}/${i.health}`, (by.get(`${i.state}/${i.health}`) ?? 0) + 1);
  const rpos = items.map((i) => i.rpoSeconds).filter((r): r is number => r !== null);
  const progress = items.filter((i) => i.progress !== null).map((i) => `${i.name} ${Math.round((i.progress ?? 0) * 100)}%`);
  return `${items.length} item(s): ${[...by].map(([k, n]) => `${n} ${k}`).join(', ')}${rpos.length ? `; RPO max ${formatSeconds(Math.max(...rpos))}` : ''}${progress.length ? `; ${progress.join(', ')}` : ''}`;
}
