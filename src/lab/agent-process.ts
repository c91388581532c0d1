/**
 * Start and stop `osr agent` processes on this machine: used by the demo, the tests and
 * the benchmarks, which all need real processes (kill -9 included).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { AgentClient, readAgentToken } from '../cli/agent-client.js';
import { createCa, issueCertificate, type CaMaterial } from '../pki/index.js';

export const OSR_BIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'cli', 'osr.js');

export interface AgentProcessOptions {
  name: string;
  dataDir: string;
  pkiDir: string;
  /** accept replication (replica role) on 127.0.0.1, port 0 = any free port */
  listenPort?: number;
  nbdTcpPort?: number;
  /** retry back-off (default short, for a lab: 250ms,500ms, then every 500ms) */
  retryBackoff?: string;
  retryEvery?: string;
  extraArgs?: string[];
  /** options for node itself, e.g. ['--cpu-prof'] */
  nodeArgs?: string[];
  logFile?: string;
  /** variables added to the agent's environment (e.g. OSR_TEST_CRASH_AT) */
  env?: Record<string, string>;
}

export interface RunningAgent {
  name: string;
  child: ChildProcess;
  api: AgentClient;
  /** the local API's address: `unix:PATH` of its socket, or `http://HOST:PORT` (with extraArgs ['--api', …]) */
  apiUrl: string;
  /** the TCP API's token file */
  apiTokenFile?: string | undefined;
  replicationPort: number | null;
  /** the provider channel's address (`https://HOST:PORT`), when the agent serves one (--provider-api) */
  providerApi?: string | undefined;
  nbdSocket: string;
  nbdTcpPort: number | null;
  options: AgentProcessOptions;
}

/** Create a CA and agent certificates in dir (once). */
export async function ensurePki(dir: string, agentNames: string[]): Promise<void> {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const caCrt = path.join(dir, 'ca.crt');
  const caKey = path.join(dir, 'ca.key');
  let ca: CaMaterial;
  if (fs.existsSync(caKey)) ca = { certPem: fs.readFileSync(caCrt, 'utf8'), keyPem: fs.readFileSync(caKey, 'utf8') };
  else {
    ca = await createCa({ commonName: 'osr lab CA' });
    fs.writeFileSync(caCrt, ca.certPem);
    fs.writeFileSync(caKey, ca.keyPem, { mode: 0o600 });
  }
  for (const name of agentNames) {
    if (fs.existsSync(path.join(dir, `${name}.crt`))) continue;
    const issued = await issueCertificate(ca, { commonName: name, role: 'agent' });
    fs.writeFileSync(path.join(dir, `${name}.crt`), issued.certPem);
    fs.writeFileSync(path.join(dir, `${name}.key`), issued.keyPem, { mode: 0o600 });
  }
}

/** Spawn an agent and wait until it reports its endpoints. */
export async function startAgentProcess(o: AgentProcessOptions): Promise<RunningAgent> {
  const args = [OSR_BIN, 'agent', '--name', o.name, '--data-dir', o.dataDir, '--pki-dir', o.pkiDir, '--retry-backoff', o.retryBackoff ?? '250ms,500ms', '--retry-every', o.retryEvery ?? '500ms'];
  if (o.listenPort !== undefined) args.push('--listen', `127.0.0.1:${o.listenPort}`);
  if (o.nbdTcpPort !== undefined) args.push('--nbd-tcp', String(o.nbdTcpPort));
  args.push(...(o.extraArgs ?? []));
  const logFd = fs.openSync(o.logFile ?? path.join(path.dirname(o.dataDir), `${o.name}.log`), 'a');
  const child = spawn(process.execPath, [...(o.nodeArgs ?? []), ...args], { stdio: ['ignore', 'pipe', logFd], env: o.env ? { ...process.env, ...o.env } : process.env });
  fs.closeSync(logFd);
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    const onData = (b: Buffer) => {
      out += b.toString();
      const nl = out.indexOf('\n');
      if (nl >= 0) {
        child.stdout!.off('data', onData);
        resolve(out.slice(0, nl));
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`agent ${o.name} exited with code ${code} before it started (see its log)`)));
  });
  child.stdout!.resume();
  const ep = JSON.parse(line) as { api: string; apiTokenFile?: string; replicationPort: number | null; nbdSocket: string; nbdTcpPort: number | null; providerApi?: string };
  const token = ep.apiTokenFile !== undefined ? readAgentToken(ep.apiTokenFile) : undefined;
  return { name: o.name, child, api: new AgentClient(ep.api, { token }), apiUrl: ep.api, apiTokenFile: ep.apiTokenFile, replicationPort: ep.replicationPort, nbdSocket: ep.nbdSocket, nbdTcpPort: ep.nbdTcpPort, providerApi: ep.providerApi, options: o };
}

/** SIGTERM (clean stop) or SIGKILL (crash), and wait for the exit. */
export async function stopAgentProcess(a: RunningAgent, signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> {
  if (a.child.exitCode !== null || a.child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => a.child.once('exit', () => resolve()));
  a.child.kill(signal);
  await exited;
}

/** Start the same agent again (same data directory, same ports where fixed), with `changes` to its options. */
export function restartAgentProcess(a: RunningAgent, changes: Partial<AgentProcessOptions> = {}): Promise<RunningAgent> {
  return startAgentProcess({ ...a.options, listenPort: a.replicationPort ?? a.options.listenPort, ...changes });
}
