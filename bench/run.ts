/**
 * The benchmark runner: `npm run bench -- <name> [flags]` (after a build, `node
 * dist/bench/run.js <name> [flags]`). Names: replication, resync, failover, vault, libvirt, azure, group, all. Results are printed as a
 * table and written to bench/results/<name>.json. The exit code is non-zero only when a
 * benchmark could not run; a missed target is reported, never asserted.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Flags, UsageError } from './lib/args.js';
import { installSignalHandlers, runAllCleanups, wasInterrupted } from './lib/lab.js';
import { replicationOptions, runReplicationBench } from './replication.js';
import { resyncOptions, runResyncBench } from './resync.js';
import { failoverOptions, runFailoverBench } from './failover.js';
import { runVaultBench, vaultOptions } from './vault.js';
import { libvirtOptions, runLibvirtBench } from './libvirt.js';
import { azureOptions, runAzureBench } from './azure.js';
import { groupOptions, runGroupBench } from './group.js';

/** The repository root: the nearest directory above this file with a package.json. */
function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    dir = path.dirname(dir);
  }
  return process.cwd();
}

const RESULTS_DIR = path.join(repoRoot(), 'bench', 'results');

const benchmarks: Record<string, (flags: Flags) => Promise<void>> = {
  replication: async (flags) => {
    const o = replicationOptions(flags, RESULTS_DIR);
    flags.rejectUnknown();
    await runReplicationBench(o);
  },
  resync: async (flags) => {
    const o = resyncOptions(flags, RESULTS_DIR);
    flags.rejectUnknown();
    await runResyncBench(o);
  },
  failover: async (flags) => {
    const o = failoverOptions(flags, RESULTS_DIR);
    flags.rejectUnknown();
    await runFailoverBench(o);
  },
  vault: async (flags) => {
    const o = vaultOptions(flags, RESULTS_DIR);
    flags.rejectUnknown();
    await runVaultBench(o);
  },
  libvirt: async (flags) => {
    const o = libvirtOptions(flags, RESULTS_DIR);
    flags.rejectUnknown();
    await runLibvirtBench(o);
  },
  azure: async (flags) => {
    const o = azureOptions(flags, RESULTS_DIR);
    flags.rejectUnknown();
    await runAzureBench(o);
  },
  group: async (flags) => {
    const o = groupOptions(flags, RESULTS_DIR);
    flags.rejectUnknown();
    await runGroupBench(o);
  },
};

const USAGE = `usage: npm run bench -- <benchmark> [flags]

benchmarks:
  replication   initial replication vs rsync, steady-state RPO/CPU/RSS (docs/benchmarks.md)
  resync        resynchronization of a changed disk vs rsync's delta transfer, and the
                bytes of reverse replication after a failover
  failover      a recovery plan of 100 VMs in 7 groups in the lab: test failover, cleanup
                and planned failover, each timed from the API call to the job's end
  vault         the vault API under load: list and get calls at a fixed rate with 10,000
                protected items and 1,000 jobs, on SQLite and PostgreSQL
  libvirt       a real domain (tiny guest, QEMU) replicated from its dirty bitmaps by
                osr agent --host libvirt, against virtnbdbackup -l inc on the same changes
                (needs libvirtd: bash scripts/libvirt-up.sh; virtnbdbackup from Debian)
  azure         the initial copy of a disk to Azure storage (Azurite here) by osr, against a
                plain loop of 4 MiB uploadPages calls of @azure/storage-blob on the same bytes,
                the RPO of VMs replicated to it while they write, and failback: the bytes sent
                home against the bytes changed in Azure
  group         a consistency group of 20 VMs on two primary agents, cut every second while
                they write: how long the guests' writes are held per cut, against the same
                VMs replicated alone
  all           every benchmark, one after another (flags go to each)

group flags:
  --vms 20             VMs, split over two primary agents (20)
  --minutes 3          duration of each run (3)
  --interval 1s        a group cut this often (1s)
  --hold-ms 200        each agent holds the writes at most this long (200)
  --churn 2            guest writes per VM, MB/s (2)

libvirt flags:
  --runs N             rounds of changes, cycles and drill boots (3)
  --size 2G            the data disk, random bytes, for the initial copy (2G)
  --changed 1G         bytes changed before each compared cycle, 64 KiB blocks (1G)
  --rpo-guests 4       guests of the RPO run, each writing --rpo-write KiB/s (2000)
  --rpo-frequency 30s  copy frequency of the RPO run; --rpo-minutes 3 measured
  --only cycle|rpo     run one part (the other part's figures stay from the last run)
  --cpu-prof DIR       write CPU profiles of the agent processes into DIR

replication flags:
  --runs N             repetitions of the initial copy and of rsync (3)
  --size 2G            random data for the initial replication (2G)
  --no-compression-run skip the extra initial replication with compression
  --no-rsync-fsync     skip the rsync --fsync comparison
  --vms N              VMs in the steady-state phase (20)
  --minutes M          steady-state duration after the initial copies (3)
  --frequency 30s      copy frequency in the steady-state phase (30s)
  --mode continuous    steady state only: continuous replication (a cut a second), then the same
                       load in cycles of --frequency, side by side (default: cycles)
  --point-interval 5s  continuous: a recovery point kept this often (5s)
  --disk 1G            disk size of each steady-state VM (1G)
  --churn 2            guest writes per VM, MB/s (2)
  --only initial|steady   run one phase
  --cpu-prof DIR       write CPU profiles of the agent processes into DIR

resync flags:
  --runs N             repetitions (3)
  --size 2G            random data on the disk (2G)
  --changed 1          percent of the disk changed, in scattered 4 KiB blocks (1)
  --block-sizes 4096   resync block sizes to run, comma-separated; the first is the headline
  --reverse-old 1      percent of the disk the old primary writes and never ships (1)
  --reverse-new 1      percent of the disk the promoted copy writes before reversing (1)
  --only resync|reverse   run one part

failover flags:
  --vms N              VMs in the plan (100)
  --groups N           groups of the plan (7)
  --hosts N            hosts per site (4)
  --runs N             test failover + cleanup repetitions (3)
  --disk 4M            disk size of each VM
  (the 1,000-VM target: --vms 1000 --groups 10 --hosts 8)

azure flags:
  --runs N             repetitions of each upload (3)
  --size 2G            random data on the disk (2G, a multiple of 4 MiB)
  --rpo-vms 4          VMs of the RPO run, each writing --churn MB/s (2)
  --frequency 30s      copy frequency of the RPO run; --minutes 3 measured; --rpo-disk 256M each
  --failback-disk 1G   the failback run's disk; --failback-changed 0.01 of it changed in Azure
  --only upload|rpo|failback  run one part (the other parts' figures stay from the last run)

vault flags:
  --items N            protected items loaded (10000)
  --jobs N             finished jobs loaded (1000)
  --rate N             requests per second (200)
  --duration S         seconds of load per database (30)
  --connections N      HTTPS connections (10)
  --only sqlite|postgres  one database`;

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    console.log(USAGE);
    return name ? 0 : 2;
  }
  const names = name === 'all' ? Object.keys(benchmarks) : [name];
  for (const n of names) {
    if (!benchmarks[n]) {
      console.error(`unknown benchmark "${n}"\n\n${USAGE}`);
      return 2;
    }
  }
  installSignalHandlers();
  for (const n of names) {
    const flags = new Flags(rest);
    await benchmarks[n](flags);
  }
  return 0;
}

let code: number;
try {
  code = await main(process.argv.slice(2));
} catch (e) {
  if (wasInterrupted()) await new Promise(() => undefined); // the signal handler exits
  if (e instanceof UsageError) {
    console.error(`${e.message}\n\n${USAGE}`);
    code = 2;
  } else {
    console.error(`benchmark failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    code = 1;
  }
} finally {
  await runAllCleanups();
}
process.exit(code!);
