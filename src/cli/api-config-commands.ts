/** `osr policy`, `osr pairing`, `osr mapping` and `osr plan`: the vault's configuration. */
import fs from 'node:fs';
import { Option, type Command } from 'commander';
import { stringify as toYaml } from 'yaml';
import { parseDuration } from '../agent/io/time-window.js';
import { ERROR_CODES, OsrError, type ErrorCode } from '../domain/errors.js';
import type { PlanProblem } from '../domain/plans.js';
import { isContinuous, pointSpacingSeconds, type PolicyInput } from '../domain/policy.js';
import type { CloudPairing, Mapping, Policy, RecoveryPlan, RecoveryPlanAction, RecoveryPlanGroup, RecoveryPlanSpec } from '../domain/resources.js';
import { asJson, byIdOrName, fields, int, isNotFound, print, readObject, when, withApi, type CliApi, type ListAnswer } from './api-common.js';
import { addPlanRunCommands } from './api-plan-run-commands.js';
import { formatSeconds, table } from './format.js';

// ---- policies ------------------------------------------------------------------------------

export async function resolvePolicy(api: CliApi, idOrName: string): Promise<Policy> {
  return byIdOrName('policy', idOrName, (id) => api.get<Policy>(`/policies/${encodeURIComponent(id)}`), async () => (await api.get<ListAnswer<Policy>>('/policies')).items);
}

interface PolicyFlags {
  file?: string;
  name?: string;
  copyFrequency?: string;
  pointInterval?: string;
  retentionHours?: string;
  appConsistentEvery?: string;
  port?: string;
  compression?: boolean;
  initial?: string;
  startAt?: string;
  exportPath?: string;
  importPath?: string;
  deleteReplicaOnDisable?: boolean;
  hostOsVersion?: string;
}

const POLICY_META = new Set(['id', 'name', 'createdAt', 'updatedAt']);

/** A policy file: `{name, settings: {...}}` (as `osr policy show --json` prints it) or the settings themselves. */
function policyFile(file: string): { name?: string; settings: PolicyInput } {
  const doc = readObject(file);
  const name = typeof doc.name === 'string' ? doc.name : undefined;
  if (doc.settings !== undefined) {
    if (doc.settings === null || typeof doc.settings !== 'object' || Array.isArray(doc.settings)) throw new OsrError('INVALID_ARGUMENT', `"settings" in ${file} must be a mapping`, { file });
    return { name, settings: doc.settings as PolicyInput };
  }
  return { name, settings: Object.fromEntries(Object.entries(doc).filter(([k]) => !POLICY_META.has(k))) as PolicyInput };
}

/** Settings from the flags given, over `base`. */
function policySettings(base: PolicyInput, o: PolicyFlags): PolicyInput {
  const s: PolicyInput = { ...base };
  if (o.copyFrequency === 'continuous') s.copyMode = 'continuous';
  else if (o.copyFrequency !== undefined) {
    s.copyMode = 'cycles';
    s.copyFrequencySeconds = parseDuration(o.copyFrequency) / 1000;
    delete s.pointIntervalSeconds;
  }
  if (o.pointInterval !== undefined) s.pointIntervalSeconds = parseDuration(o.pointInterval) / 1000;
  if (o.retentionHours !== undefined) s.retentionHours = int(o.retentionHours, '--retention-hours');
  if (o.appConsistentEvery !== undefined) {
    const ms = o.appConsistentEvery === '0' || o.appConsistentEvery === 'off' ? 0 : parseDuration(/^\d+$/.test(o.appConsistentEvery) ? `${o.appConsistentEvery}h` : o.appConsistentEvery);
    if (ms % 3600_000 !== 0) throw new OsrError('POLICY_INVALID', `app-consistent points come every whole number of hours, not ${o.appConsistentEvery}`, { field: 'appConsistentFrequencyHours' });
    s.appConsistentFrequencyHours = ms / 3600_000;
  }
  if (o.port !== undefined) s.port = int(o.port, '--port', 1, 65535);
  if (o.compression !== undefined) s.compression = o.compression;
  if (o.deleteReplicaOnDisable !== undefined) s.deleteReplicaOnDisable = o.deleteReplicaOnDisable;
  if (o.hostOsVersion !== undefined) s.hostOsVersion = o.hostOsVersion;
  if (o.initial !== undefined || o.startAt !== undefined || o.exportPath !== undefined || o.importPath !== undefined) {
    const method = o.initial ?? (o.startAt !== undefined ? 'scheduled' : o.exportPath !== undefined || o.importPath !== undefined ? 'offline' : (s.initialReplication?.method ?? 'now'));
    s.initialReplication =
      method === 'scheduled' ? { method, startAt: o.startAt } : method === 'offline' ? { method, exportPath: o.exportPath ?? s.initialReplication?.exportPath, importPath: o.importPath ?? s.initialReplication?.importPath } : { method };
  }
  return s;
}

function addPolicyFlags(cmd: Command): Command {
  return cmd
    .option('-f, --file <file>', 'settings from a YAML or JSON file ({name, settings} or the settings; "-" reads stdin); flags override it')
    .option('--copy-frequency <duration>', 'how often changes are copied: 30s, 5m or 15m (default 5m), or continuous (writes ship as they are made)')
    .option('--point-interval <duration>', 'continuous: how often a recovery point is kept, 1s to 60s (default 5s)')
    .option('--retention-hours <n>', 'hours of recovery points kept, 0 to 24 (default 0: the latest only)')
    .option('--app-consistent-every <hours>', 'an app-consistent point every 1 to 12 hours, fewer than the retention (0: none, the default)')
    .option('--port <port>', 'replication port of the replica hosts (default 8084)')
    .option('--compression', 'compress replication traffic (the default)')
    .option('--no-compression', 'do not compress replication traffic')
    .addOption(new Option('--initial <method>', 'initial replication: now (the default), scheduled (--start-at) or offline (--export-path, --import-path)').choices(['now', 'scheduled', 'offline']))
    .option('--start-at <time>', 'scheduled initial replication: when, ISO 8601, at most 24 h ahead')
    .option('--export-path <path>', 'offline initial replication: where the source exports')
    .option('--import-path <path>', 'offline initial replication: where the target imports from')
    .option('--delete-replica-on-disable', 'disabling protection deletes the replica VM (the default)')
    .option('--no-delete-replica-on-disable', 'disabling protection keeps the replica VM')
    .option('--host-os-version <version>', 'the host OS version the policy covers (default "any")');
}

function policyText(p: Policy): string {
  const s = p.settings;
  const init = s.initialReplication;
  return fields([
    ['id', p.id],
    ['name', p.name],
    ['copy frequency', isContinuous(s) ? `continuous, a point every ${formatSeconds(pointSpacingSeconds(s))}` : formatSeconds(s.copyFrequencySeconds)],
    ['retention', `${s.retentionHours} h`],
    ['app-consistent every', s.appConsistentFrequencyHours ? `${s.appConsistentFrequencyHours} h` : 'never'],
    ['authentication', s.authentication],
    ['port', s.port],
    ['compression', s.compression],
    ['initial replication', init.method === 'scheduled' ? `scheduled at ${init.startAt}` : init.method === 'offline' ? `offline: export ${init.exportPath}, import ${init.importPath}` : 'now'],
    ['on disable', s.deleteReplicaOnDisable ? 'delete the replica' : 'keep the replica'],
    ['host OS version', s.hostOsVersion],
    ['created', when(p.createdAt)],
    ['updated', when(p.updatedAt)],
  ]);
}

// ---- recovery plans ------------------------------------------------------------------------

function orderedAction(a: RecoveryPlanAction): RecoveryPlanAction {
  return {
    name: a.name,
    kind: a.kind,
    target: a.target,
    ...(a.failoverTypes !== undefined ? { failoverTypes: a.failoverTypes } : {}),
    ...(a.directions !== undefined ? { directions: a.directions } : {}),
    ...(a.timeoutSeconds !== undefined ? { timeoutSeconds: a.timeoutSeconds } : {}),
    ...(a.retries !== undefined ? { retries: a.retries } : {}),
  };
}

function orderedGroup(g: RecoveryPlanGroup): RecoveryPlanGroup {
  return { name: g.name, items: g.items, ...(g.pre !== undefined ? { pre: g.pre.map(orderedAction) } : {}), ...(g.post !== undefined ? { post: g.post.map(orderedAction) } : {}) };
}

/** A plan's spec with its keys in a fixed order (dependencies sorted by item), without id and times. */
export function planSpec(p: RecoveryPlanSpec): RecoveryPlanSpec {
  return {
    name: p.name,
    ...(p.description !== undefined ? { description: p.description } : {}),
    ...(p.shutdownGroup !== undefined ? { shutdownGroup: p.shutdownGroup } : {}),
    groups: p.groups.map(orderedGroup),
    ...(p.dependencies !== undefined ? { dependencies: Object.fromEntries(Object.keys(p.dependencies).sort().map((k) => [k, p.dependencies![k]!])) } : {}),
  };
}

/** The plan as stable YAML: the same plan always gives the same bytes, so exports diff cleanly. */
export function planYaml(p: RecoveryPlanSpec): string {
  return toYaml(planSpec(p), { indent: 2, lineWidth: 0, minContentWidth: 0, sortMapEntries: false });
}

function readPlan(file: string): RecoveryPlanSpec {
  const doc = readObject(file);
  // what `osr plan show --json` prints may be applied again: its id and times are not the spec
  for (const k of ['id', 'createdAt', 'updatedAt']) delete doc[k];
  if (typeof doc.name !== 'string' || doc.name === '') throw new OsrError('INVALID_ARGUMENT', `${file}: a recovery plan needs a name`, { file, field: 'name' });
  if (!Array.isArray(doc.groups)) throw new OsrError('INVALID_ARGUMENT', `${file}: a recovery plan needs groups (a list of {name, items})`, { file, field: 'groups' });
  return doc as unknown as RecoveryPlanSpec;
}

function planText(p: RecoveryPlan): string {
  const deps = Object.entries(p.dependencies ?? {});
  return [
    fields([
      ['id', p.id],
      ['name', p.name],
      ['description', p.description ?? null],
      ['shutdown group', p.shutdownGroup ?? false],
      ['created', when(p.createdAt)],
      ['updated', when(p.updatedAt)],
    ]),
    '',
    'Groups',
    table(p.groups.map((g, i) => ({ order: i + 1, group: g.name, items: g.items.join(', '), pre: (g.pre ?? []).map((a) => `${a.kind}:${a.name}`).join(', '), post: (g.post ?? []).map((a) => `${a.kind}:${a.name}`).join(', ') }))),
    ...(deps.length ? ['', 'Dependencies', table(deps.map(([item, before]) => ({ item, 'waits for': before.join(', ') })))] : []),
  ].join('\n');
}

const getPlan = (api: CliApi, idOrName: string) => api.get<RecoveryPlan>(`/recovery-plans/${encodeURIComponent(idOrName)}`);

// ---- commands ------------------------------------------------------------------------------

export function addConfigurationCommands(program: Command): void {
  const out = (data: unknown, human: () => string) => print(program, data, human);

  // policies
  const policy = program.command('policy').description("replication policies: copy frequency, retention, app-consistent points, initial replication (ASR's rules apply)");
  policy
    .command('list')
    .description('replication policies')
    .action(() =>
      withApi(program, async (api) => {
        const r = await api.get<ListAnswer<Policy>>('/policies');
        out(r, () =>
          table(
            r.items.map((p) => ({
              id: p.id,
              name: p.name,
              copy: isContinuous(p.settings) ? 'continuous' : formatSeconds(p.settings.copyFrequencySeconds),
              retention: `${p.settings.retentionHours}h`,
              'app-consistent': p.settings.appConsistentFrequencyHours ? `${p.settings.appConsistentFrequencyHours}h` : '-',
              initial: p.settings.initialReplication.method,
              compression: p.settings.compression,
              'host OS': p.settings.hostOsVersion,
            })),
          ),
        );
      }),
    );
  policy
    .command('show <policy>')
    .description('one policy (by id or name) with every setting')
    .action((idOrName: string) =>
      withApi(program, async (api) => {
        const p = await resolvePolicy(api, idOrName);
        out(p, () => policyText(p));
      }),
    );
  addPolicyFlags(
    policy
      .command('create [name]')
      .description('create a policy; settings not given take their defaults')
      .addHelpText('after', '\nExample:\n  osr policy create gold --copy-frequency 30s --retention-hours 4 --app-consistent-every 1'),
  ).action((name: string | undefined, o: PolicyFlags) =>
    withApi(program, async (api) => {
      const file = o.file !== undefined ? policyFile(o.file) : { settings: {} };
      const policyName = name ?? file.name;
      if (!policyName) throw new OsrError('INVALID_ARGUMENT', 'name the policy: osr policy create NAME, or "name:" in the file');
      const p = await api.post<Policy>('/policies', { name: policyName, settings: policySettings(file.settings, o) });
      out(p, () => `policy ${p.name} created (${p.id})\n${policyText(p)}`);
    }),
  );
  addPolicyFlags(
    policy
      .command('update <policy>')
      .description('change a policy (by id or name): the settings given replace the current ones')
      .option('--name <name>', 'rename the policy'),
  ).action((idOrName: string, o: PolicyFlags) =>
    withApi(program, async (api) => {
      const current = await resolvePolicy(api, idOrName);
      const file = o.file !== undefined ? policyFile(o.file) : { settings: {} };
      const settings = policySettings({ ...(current.settings as PolicyInput), ...file.settings }, o);
      const newName = o.name ?? file.name;
      const p = await api.put<Policy>(`/policies/${encodeURIComponent(current.id)}`, { ...(newName && newName !== current.name ? { name: newName } : {}), settings });
      out(p, () => `policy ${p.name} updated\n${policyText(p)}`);
    }),
  );
  policy
    .command('delete <policy>')
    .description('delete a policy (by id or name) that no pairing uses')
    .action((idOrName: string) =>
      withApi(program, async (api) => {
        const p = await resolvePolicy(api, idOrName);
        await api.delete(`/policies/${encodeURIComponent(p.id)}`);
        out({ deleted: p.id }, () => `policy ${p.name} deleted`);
      }),
    );

  // cloud pairings
  const pairing = program.command('pairing').description('cloud pairings: a source cloud protected to a target cloud under a policy');
  pairing
    .command('list')
    .description('cloud pairings')
    .action(() =>
      withApi(program, async (api) => {
        const r = await api.get<ListAnswer<CloudPairing>>('/cloud-pairings');
        if (asJson(program)) return out(r, () => '');
        const names = new Map((await api.get<ListAnswer<Policy>>('/policies')).items.map((p) => [p.id, p.name]));
        out(r, () => table(r.items.map((p) => ({ id: p.id, policy: names.get(p.policyId) ?? p.policyId, source: p.sourceCloudId, target: p.targetCloudId, created: when(p.createdAt) }))));
      }),
    );
  pairing
    .command('show <id>')
    .description('one cloud pairing')
    .action((id: string) =>
      withApi(program, async (api) => {
        const p = await api.get<CloudPairing>(`/cloud-pairings/${encodeURIComponent(id)}`);
        out(p, () =>
          fields([
            ['id', p.id],
            ['policy', p.policyId],
            ['source cloud', p.sourceCloudId],
            ['target cloud', p.targetCloudId],
            ['created', when(p.createdAt)],
          ]),
        );
      }),
    );
  pairing
    .command('create')
    .description('pair a source cloud with a target cloud under a policy (both clouds may be on one fabric)')
    .requiredOption('--policy <policy>', 'the policy (id or name)')
    .requiredOption('--source-cloud <id>', 'the cloud whose VMs are protected')
    .requiredOption('--target-cloud <id>', 'the cloud their replicas go to')
    .action((o: { policy: string; sourceCloud: string; targetCloud: string }) =>
      withApi(program, async (api) => {
        const pol = await resolvePolicy(api, o.policy);
        const p = await api.post<CloudPairing>('/cloud-pairings', { policyId: pol.id, sourceCloudId: o.sourceCloud, targetCloudId: o.targetCloud });
        out(p, () => `pairing ${p.id} created: ${p.sourceCloudId} → ${p.targetCloudId} under policy ${pol.name}`);
      }),
    );
  pairing
    .command('delete <id>')
    .description('remove a pairing that covers no protected item')
    .action((id: string) =>
      withApi(program, async (api) => {
        await api.delete(`/cloud-pairings/${encodeURIComponent(id)}`);
        out({ deleted: id }, () => `pairing ${id} removed`);
      }),
    );

  // network and storage mappings
  const MAPPINGS = { network: { path: '/network-mappings', what: 'VM network' }, storage: { path: '/storage-mappings', what: 'storage classification' } } as const;
  type MappingType = keyof typeof MAPPINGS;
  const typeArg = (t: string): MappingType => {
    if (t !== 'network' && t !== 'storage') throw new OsrError('INVALID_ARGUMENT', `mapping type "${t}" is unknown: network or storage`);
    return t;
  };
  const mapping = program.command('mapping').description('network mappings (VM network to VM network) and storage mappings (classification to classification) that place replicas');
  mapping
    .command('list [type]')
    .description('mappings: network, storage, or both')
    .action((type: string | undefined) =>
      withApi(program, async (api) => {
        const types: MappingType[] = type ? [typeArg(type)] : ['network', 'storage'];
        const lists = await Promise.all(types.map(async (t) => (await api.get<ListAnswer<Mapping>>(MAPPINGS[t].path)).items.map((m) => ({ type: t, ...m }))));
        const items = lists.flat();
        out({ items, next: null }, () => table(items.map((m) => ({ type: m.type, id: m.id, source: m.sourceId, target: m.targetId, created: when(m.createdAt) }))));
      }),
    );
  mapping
    .command('create <type>')
    .description('map a source VM network (type network) or storage classification (type storage) to a target one')
    .requiredOption('--source <id>', 'the source VM network or storage classification')
    .requiredOption('--target <id>', 'the target one')
    .addHelpText('after', '\nExamples:\n  osr mapping create network --source vmm-newyork.vmnet1 --target vmm-chicago.vmnet1\n  osr mapping create storage --source vmm-newyork.gold --target vmm-chicago.silver')
    .action((type: string, o: { source: string; target: string }) =>
      withApi(program, async (api) => {
        const t = typeArg(type);
        const m = await api.post<Mapping & { reconnectJobId?: string | null }>(MAPPINGS[t].path, { sourceId: o.source, targetId: o.target });
        out(m, () => `${t} mapping ${m.id} created: ${m.sourceId} → ${m.targetId}${m.reconnectJobId ? `; replicas on ${m.sourceId} are reconnected by job ${m.reconnectJobId}` : ''}`);
      }),
    );
  mapping
    .command('delete <type> <id>')
    .description('remove a network or storage mapping (replicas on a network no longer mapped are disconnected by a reconnect-replicas job)')
    .action((type: string, id: string) =>
      withApi(program, async (api) => {
        const t = typeArg(type);
        await api.delete(`${MAPPINGS[t].path}/${encodeURIComponent(id)}`);
        out({ deleted: id }, () => `${t} mapping ${id} removed`);
      }),
    );

  // recovery plans
  const plan = program.command('plan').description('recovery plans: groups of protected items failed over in order, with scripts and manual steps');
  plan
    .command('list')
    .description('recovery plans')
    .action(() =>
      withApi(program, async (api) => {
        const r = await api.get<ListAnswer<RecoveryPlan>>('/recovery-plans');
        out(r, () => table(r.items.map((p) => ({ id: p.id, name: p.name, groups: p.groups.length, items: p.groups.reduce((n, g) => n + g.items.length, 0), updated: when(p.updatedAt), description: p.description ?? null }))));
      }),
    );
  plan
    .command('show <plan>')
    .description('one recovery plan (by id or name): groups, actions, dependencies')
    .action((idOrName: string) =>
      withApi(program, async (api) => {
        const p = await getPlan(api, idOrName);
        out(p, () => planText(p));
      }),
    );
  plan
    .command('create')
    .description('create a recovery plan from a YAML or JSON file')
    .requiredOption('-f, --file <file>', 'the plan: {name, description, shutdownGroup, groups: [{name, items, pre, post}], dependencies}; "-" reads stdin')
    .action((o: { file: string }) =>
      withApi(program, async (api) => {
        const p = await api.post<RecoveryPlan>('/recovery-plans', readPlan(o.file));
        out(p, () => `recovery plan ${p.name} created (${p.id})`);
      }),
    );
  plan
    .command('update <plan>')
    .description('replace a recovery plan (by id or name) with the plan in a file (which may rename it)')
    .requiredOption('-f, --file <file>', 'the plan, YAML or JSON; "-" reads stdin')
    .action((idOrName: string, o: { file: string }) =>
      withApi(program, async (api) => {
        const spec = readPlan(o.file);
        const current = await getPlan(api, idOrName);
        const p = await api.put<RecoveryPlan>(`/recovery-plans/${encodeURIComponent(current.id)}`, spec);
        out(p, () => `recovery plan ${p.name} updated`);
      }),
    );
  plan
    .command('apply')
    .description('create the plan in a file, or replace the plan of that name')
    .requiredOption('-f, --file <file>', 'the plan, YAML or JSON (as `osr plan export` writes it); "-" reads stdin')
    .action((o: { file: string }) =>
      withApi(program, async (api) => {
        const spec = readPlan(o.file);
        const current = await getPlan(api, spec.name).catch((e: unknown) => (isNotFound(e) ? undefined : Promise.reject(e)));
        const p = current ? await api.put<RecoveryPlan>(`/recovery-plans/${encodeURIComponent(current.id)}`, spec) : await api.post<RecoveryPlan>('/recovery-plans', spec);
        out(p, () => `recovery plan ${p.name} ${current ? 'updated' : 'created'} (${p.id})`);
      }),
    );
  plan
    .command('export <plan>')
    .description('print a recovery plan (by id or name) as stable YAML, keys in a fixed order, for `osr plan apply`')
    .option('-o, --output <file>', 'write it to this file instead of stdout')
    .action((idOrName: string, o: { output?: string }) =>
      withApi(program, async (api) => {
        const p = await getPlan(api, idOrName);
        const text = asJson(program) ? `${JSON.stringify(planSpec(p), null, 2)}\n` : planYaml(p);
        if (o.output) fs.writeFileSync(o.output, text);
        else process.stdout.write(text);
      }),
    );
  plan
    .command('validate <plan>')
    .description('check a plan before a run: every item protected and ready for failover (a recovery point at the recovery site), its networks and storage mapped; exits non-zero on an error')
    .action((idOrName: string) =>
      withApi(program, async (api) => {
        const p = await getPlan(api, idOrName);
        const r = await api.get<{ plan: string; valid: boolean; problems: PlanProblem[] }>(`/recovery-plans/${encodeURIComponent(p.id)}/validation`);
        print(program, r, () => (r.problems.length === 0 ? `plan ${r.plan} is ready to run` : `${table(r.problems.map((x) => ({ severity: x.severity, code: x.code, item: x.item, message: x.message })))}\n\nplan ${r.plan} ${r.valid ? 'can run (warnings only)' : 'cannot run: fix the errors above'}`));
        if (!r.valid) {
          const first = r.problems.find((x) => x.severity === 'error')!;
          throw new OsrError(first.code in ERROR_CODES ? (first.code as ErrorCode) : 'INVALID_STATE', `plan ${r.plan} is not ready to run: ${r.problems.filter((x) => x.severity === 'error').length} error(s)`);
        }
      }),
    );
  plan
    .command('delete <plan>')
    .description('delete a recovery plan (by id or name)')
    .action((idOrName: string) =>
      withApi(program, async (api) => {
        const p = await getPlan(api, idOrName);
        await api.delete(`/recovery-plans/${encodeURIComponent(p.id)}`);
        out({ deleted: p.id }, () => `recovery plan ${p.name} deleted`);
      }),
    );
  addPlanRunCommands(program, plan);
}
