/**
 * Plan runs against a real vault over HTTPS with test providers that answer failover
 * commands and fail them where a test says: a plan that cannot run is refused with every
 * problem; a planned run stops at the first error, and its restart goes on with what did
 * not succeed without running the rest again; an unplanned run carries on and reports per
 * VM; a VM waits for the VMs it depends on; a webhook action is retried, then fails the
 * run with ACTION_FAILED.
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import type { ProtectedItem } from '../../src/domain/resources.js';
import type { PlanRunOutput } from '../../src/workflows/plan-run.js';
import { waitFor } from '../support/lab.js';
import { assertRejectsCode } from '../support/unit.js';
import { siteInventory, startVault, TestProvider, type TestVault } from '../support/vault.js';

type Obj = Record<string, unknown>;
interface Job {
  id: string;
  kind: string;
  state: string;
  createdAt: string;
  endedAt: string | null;
  createdBy: string | null;
  error: { code: string; message: string; task?: string } | null;
  output: PlanRunOutput | null;
}

let v: TestVault;
const providers: TestProvider[] = [];
/** items whose promotion the recovery site fails */
const failPromote = new Set<string>();
let webhookAnswers: number[] = [];
const webhookCalls: Obj[] = [];
let hook: http.Server;

const item = (n: number) => `site-a.cloud1-vm${n}`;
const job = (id: string) => v.api.request<Job>('GET', `/api/v1/jobs/${id}`);
const ended = (id: string) =>
  waitFor(`job ${id} ended`, async () => {
    const j = await job(id);
    return ['Succeeded', 'Failed', 'Cancelled'].includes(j.state) ? j : undefined;
  }, 30_000, 50);
const itemJobs = async (kind: string, target: string) => (await v.api.request<{ items: Job[] }>('GET', `/api/v1/jobs?kind=${kind}&target=${target}&limit=100`)).items;
const run = async (plan: string, op: string, body: Obj = {}) => (await v.api.request<{ jobId: string }>('POST', `/api/v1/recovery-plans/${plan}/${op}`, body)).jobId;

before(async () => {
  v = await startVault({ name: 'plans' });
  // the webhook receiver is on the loopback address: an Owner allows it
  await v.api.request('PUT', '/api/v1/webhook-settings', { allow: ['127.0.0.1'] });
  hook = http.createServer((req, res) => {
    let t = '';
    req.on('data', (c: Buffer) => (t += c));
    req.on('end', () => {
      webhookCalls.push(JSON.parse(t) as Obj);
      // a negative answer: 503 after that many milliseconds
      if (req.url === '/big') return void res.writeHead(200, { 'content-type': 'text/plain' }).end('x'.repeat(100_000));
      const answer = webhookAnswers.shift() ?? 204;
      setTimeout(() => res.writeHead(answer < 0 ? 503 : answer).end(), answer < 0 ? -answer : 0);
    });
  });
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
  const key = async () => (await v.api.request<Obj>('POST', '/api/v1/registration-keys')).key as string;
  let epoch = 1;
  providers.push(
    await TestProvider.start(v.url, await key(), {
      fabric: 'Site-A',
      inventory: siteInventory('a', ['Cloud1'], 13),
      handlers: { 'failover.prepare': async () => ({ point: { id: 'p-final', at: new Date().toISOString(), consistency: 'crash' } }), 'failover.fence': async () => ({}) },
    }),
    await TestProvider.start(v.url, await key(), {
      fabric: 'Site-B',
      inventory: siteInventory('b', ['Cloud2'], 0),
      handlers: {
        'failover.promote': async ({ body: b }) => {
          await new Promise((r) => setTimeout(r, 50));
          if (failPromote.has(b.item)) throw Object.assign(new Error(`the recovery host of ${b.item} has no room`), { code: 'DISK_IO_ERROR' });
          const point = { id: b.point ?? 'p1', at: new Date().toISOString(), consistency: 'crash' as const };
          return { vmId: `site-b.${b.item.split('.')[1]}-replica`, epoch: ++epoch, point, points: point.id === 'p1' ? [point] : [{ id: 'p1', at: new Date(Date.now() - 60_000).toISOString(), consistency: 'crash' }, point] };
        },
        'failover.change-point': async ({ body: b }) => {
          if (b.point !== 'p1' && b.point !== 'p-final') throw Object.assign(new Error(`no point ${b.point}`), { code: 'POINT_NOT_FOUND' });
          return { point: { id: b.point, at: new Date().toISOString(), consistency: 'crash' } };
        },
        'failover.commit': async () => ({ point: { id: 'p1', at: new Date().toISOString(), consistency: 'crash' } }),
      },
    }),
  );
  const policy = await v.api.request<Obj>('POST', '/api/v1/policies', { name: 'p', settings: { copyFrequencySeconds: 300 } });
  await v.api.request('POST', '/api/v1/cloud-pairings', { policyId: policy.id, sourceCloudId: 'site-a.cloud1', targetCloudId: 'site-b.cloud2' });
  await v.api.request('POST', '/api/v1/network-mappings', { sourceId: 'site-a.vmnet1', targetId: 'site-b.vmnet1' });
  for (let i = 0; i < 13; i++) await v.api.request('POST', '/api/v1/protected-items', { vmId: item(i) });
  await waitFor('thirteen items ready', async () => {
    const r = await v.api.request<{ items: { readiness: { ready: boolean } }[] }>('GET', '/api/v1/protected-items?limit=100');
    return r.items.length === 13 && r.items.every((i) => i.readiness.ready);
  }, 30_000, 100);
});

after(async () => {
  for (const p of providers) await p.stop().catch(() => undefined);
  hook?.close();
  await v.close();
});

describe('plan runs', () => {
  test('a plan that cannot run is refused with every problem, warnings too', async () => {
    const plan = await v.api.request<{ id: string }>('POST', '/api/v1/recovery-plans', { name: 'broken', groups: [{ name: 'g', items: [item(0), 'site-a.nope'] }] });
    const e = await assertRejectsCode(v.api.request('POST', '/api/v1/recovery-plans/broken/planned-failover', {}), 'NOT_FOUND', /plan broken cannot run planned-failover: site-a\.nope \(group g\) is not a protected item/);
    const problems = (e.details as { problems: { severity: string; item: string; message: string }[] }).problems;
    assert.deepEqual(problems.filter((p) => p.severity === 'error').map((p) => p.item), ['site-a.nope']);
    assert.match(problems.find((p) => p.severity === 'warning')!.message, /storage classification site-a\.gold, which has no storage mapping/);
    await assertRejectsCode(v.api.request('POST', '/api/v1/recovery-plans/broken/commit', {}), 'NOT_FOUND', /is not a protected item/);
    // the plan's VMs alone, as its page in the portal reads them: the protected ones
    const members = await v.api.request<{ items: { id: string }[] }>('GET', `/api/v1/protected-items?plan=${plan.id}&limit=100`);
    assert.deepEqual(members.items.map((i) => i.id), [item(0)]);
    assert.deepEqual((await v.api.request<{ items: { id: string }[] }>('GET', '/api/v1/protected-items?plan=broken&name=nomatch')).items, []);
    await assertRejectsCode(v.api.request('GET', '/api/v1/protected-items?plan=no-such-plan'), 'NOT_FOUND');
    await v.api.request('PUT', `/api/v1/recovery-plans/${plan.id}`, { name: 'broken', groups: [{ name: 'g', items: [item(0)] }] });
    await assertRejectsCode(v.api.request('POST', '/api/v1/recovery-plans/broken/commit', {}), 'INVALID_STATE', /no item of plan broken is FailedOver, so there is nothing to commit/);
    await v.api.request('DELETE', `/api/v1/recovery-plans/${plan.id}`);
  });

  test('a planned run stops at the first error; its restart goes on with what did not succeed, and nothing runs twice', async () => {
    await v.api.request('POST', '/api/v1/recovery-plans', {
      name: 'planned',
      groups: [
        { name: 'first', items: [item(0)] },
        { name: 'second', items: [item(1), item(2)] },
        { name: 'third', items: [item(3)] },
      ],
      dependencies: { [item(2)]: [item(1)] },
    });
    failPromote.add(item(1));
    const id = await run('planned', 'planned-failover');
    const failed = await ended(id);
    assert.equal(failed.state, 'Failed');
    assert.equal(failed.error!.task, 'Group 2 (second): planned-failover of 2 VMs');
    assert.match(failed.error!.message, /Cloud1-VM1 failed \(the recovery host of site-a\.cloud1-vm1 has no room\); Cloud1-VM2 skipped \(it depends on site-a\.cloud1-vm1/);
    assert.equal((await itemJobs('planned-failover', item(2))).length, 0, 'a VM whose dependency failed is not started');
    assert.equal((await itemJobs('planned-failover', item(3))).length, 0, 'the next group is not started');
    await assertRejectsCode(run('planned', 'planned-failover'), 'INVALID_STATE', /not ready for failover|has job|cannot run/);

    failPromote.delete(item(1));
    await v.api.request('POST', `/api/v1/jobs/${id}/restart`, {});
    const done = await ended(id);
    assert.equal(done.state, 'Succeeded', JSON.stringify(done.error));
    assert.deepEqual(done.output!.vms.map((x) => [x.item, x.state]), [0, 1, 2, 3].map((n) => [item(n), 'Succeeded']));
    assert.equal((await itemJobs('planned-failover', item(0))).length, 1, 'the first group is not run again');
    assert.equal((await itemJobs('planned-failover', item(1))).length, 2, 'the failed VM got a new job');
    // item 2 waited for item 1 (its dependency) within the group
    const [j1] = (await itemJobs('planned-failover', item(1))).filter((j) => j.state === 'Succeeded');
    const [j2] = await itemJobs('planned-failover', item(2));
    assert.ok(Date.parse(j2!.createdAt) >= Date.parse(j1!.endedAt!), 'a VM starts after the VMs it depends on');
    for (const n of [0, 1, 2, 3]) assert.equal(((await v.api.request<Obj>('GET', `/api/v1/protected-items/${item(n)}`)).state), 'FailedOver');
  });

  test('before the commit the point of a failed-over item changes among the points it kept; the commit drops them; neither runs from another state', async () => {
    const path = (n: number, op: string) => `/api/v1/protected-items/${item(n)}/${op}`;
    const get = (n: number) => v.api.request<ProtectedItem>('GET', `/api/v1/protected-items/${item(n)}`);
    const points = await v.api.request<{ items: { id: string }[] }>('GET', `${path(0, 'recovery-points')}`);
    assert.deepEqual(points.items.map((p) => p.id), ['p-final', 'p1'], 'the recovery site told the points it keeps until the commit');
    await assertRejectsCode(v.api.request('POST', path(8, 'change-recovery-point'), { recoveryPoint: 'p1' }), 'INVALID_STATE', /is Protected; change-recovery-point starts from FailedOver/);
    await assertRejectsCode(v.api.request('POST', path(0, 'change-recovery-point'), {}), 'INVALID_ARGUMENT', /recoveryPoint/);

    const sent = providers[1]!.received.length;
    const changed = await ended((await v.api.request<{ jobId: string }>('POST', path(0, 'change-recovery-point'), { recoveryPoint: 'p1' })).jobId);
    assert.equal(changed.state, 'Succeeded', JSON.stringify(changed.error));
    const cmd = providers[1]!.received.slice(sent).find((c) => c.kind === 'failover.change-point');
    assert.deepEqual(cmd?.body, { item: item(0), vmId: 'site-b.cloud1-vm0-replica', point: 'p1' });
    const f = (await get(0)).replication.failover!;
    assert.equal(f.point.id, 'p1');
    assert.deepEqual(f.pointChanges?.map((c) => [c.from.id, c.to.id, c.jobId]), [['p-final', 'p1', changed.id]]);
    assert.equal((await get(0)).state, 'FailedOver');

    // a point the item does not have: the job fails with the points it has, and the item stays as it was
    const bad = await ended((await v.api.request<{ jobId: string }>('POST', path(0, 'change-recovery-point'), { recoveryPoint: 'p-gone' })).jobId);
    assert.equal(bad.state, 'Failed');
    assert.equal(bad.error!.code, 'POINT_NOT_FOUND');
    assert.match(bad.error!.message, /no recovery point p-gone at the recovery site; its points: p-final/);
    assert.equal((await get(0)).state, 'FailedOver');
    assert.equal((await get(0)).replication.failover!.point.id, 'p1');

    const commit = await ended((await v.api.request<{ jobId: string }>('POST', path(0, 'commit'), {})).jobId);
    assert.equal(commit.state, 'Succeeded', JSON.stringify(commit.error));
    assert.ok(providers[1]!.received.some((c) => c.kind === 'failover.commit' && (c.body as { vmId: string }).vmId === 'site-b.cloud1-vm0-replica'), 'the recovery site commits');
    assert.equal((await get(0)).state, 'Committed');
    assert.deepEqual((await v.api.request<{ items: unknown[] }>('GET', path(0, 'recovery-points'))).items, []);
    await assertRejectsCode(v.api.request('POST', path(0, 'change-recovery-point'), { recoveryPoint: 'p1' }), 'INVALID_STATE', /is Committed; change-recovery-point starts from FailedOver/);
  });

  test('a replication group\'s members fail over at the newest cut all of them hold, across plan groups; members the shutdown group shut down keep their final writes', async () => {
    const store = v.vault.ctx.store;
    for (const [n, group] of [[9, 'pair'], [10, 'pair'], [11, 'shut'], [12, 'shut']] as const) {
      const i = await store.items.get(item(n));
      await store.items.update(item(n), { replication: { ...i.replication, group } });
    }
    const now = Date.now();
    const at = (s: number) => new Date(now - s * 1000).toISOString();
    type Point = { id: string; at: string; consistency: 'crash'; cut?: string };
    const point = (id: string, ago: number, cut?: string): Point => ({ id, at: at(ago), consistency: 'crash', ...(cut ? { cut } : {}) });
    // as the recovery site reports them: cut-b is the newest cut both members hold; the second holds a newer one the first lacks
    const report = (n: number, points: Point[]) => providers[1]!.runtime.channel.itemStatus(item(n), { recoveryPoints: points });
    for (const [a, b] of [[9, 10], [11, 12]] as const) {
      await report(a, [point(`${a}-1`, 90, `cut-a${a}`), point(`${a}-2`, 60, `cut-b${a}`), point(`${a}-3`, 5)]);
      await report(b, [point(`${b}-1`, 91, `cut-a${a}`), point(`${b}-2`, 61, `cut-b${a}`), point(`${b}-3`, 30, `cut-c${a}`)]);
    }
    const failedOverAt = async (n: number) => (await store.items.get(item(n))).replication.failover!.point.id;

    const plan = await v.api.request<{ id: string }>('POST', '/api/v1/recovery-plans', { name: 'grouped', groups: [{ name: 'one', items: [item(9)] }, { name: 'two', items: [item(10)] }] });
    const done = await ended(await run('grouped', 'unplanned-failover'));
    assert.equal(done.state, 'Succeeded', JSON.stringify(done.error));
    assert.deepEqual([await failedOverAt(9), await failedOverAt(10)], ['9-2', '10-2'], 'both at cut-b9, in different plan groups');
    const events = (await v.api.request<{ items: { kind: string; message: string }[] }>('GET', `/api/v1/events?target=${plan.id}&kind=plan.group-point`)).items;
    assert.match(events[0]!.message, /replication group pair \(2 VMs\) fails over at cut cut-b9/);

    // the shutdown group shuts both sources down first: each fails over at the final state its shutdown shipped
    await v.api.request('POST', '/api/v1/recovery-plans', { name: 'grouped-shut', shutdownGroup: true, groups: [{ name: 'one', items: [item(11), item(12)] }] });
    const shut = await ended(await run('grouped-shut', 'unplanned-failover'));
    assert.equal(shut.state, 'Succeeded', JSON.stringify(shut.error));
    assert.deepEqual([await failedOverAt(11), await failedOverAt(12)], ['p-final', 'p-final']);
  });

  test('an unplanned run carries on past a VM that fails and reports per VM; a webhook is retried, then fails the run', async () => {
    const url = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/hook`;
    await v.api.request('POST', '/api/v1/recovery-plans', {
      name: 'unplanned',
      groups: [
        { name: 'a', items: [item(4), item(5)], post: [{ name: 'tell', kind: 'webhook', target: url, retries: 2, timeoutSeconds: 5 }] },
        { name: 'b', items: [item(6)] },
      ],
    });
    failPromote.add(item(5));
    webhookAnswers = [500, 204];
    const id = await run('unplanned', 'unplanned-failover', { recoveryPoint: 'latest' });
    const done = await ended(id);
    assert.equal(done.state, 'Succeeded', JSON.stringify(done.error));
    const out = done.output!;
    assert.equal(out.failed, 1);
    assert.deepEqual(out.vms.map((x) => [x.item, x.state]), [[item(4), 'Succeeded'], [item(5), 'Failed'], [item(6), 'Succeeded']]);
    assert.match(out.vms[1]!.error!.message, /has no room/);
    assert.equal(out.actions[0]!.attempts, 2, 'the webhook answered 500 first, then 204');
    assert.equal(webhookCalls.length, 2);
    assert.equal((webhookCalls[0] as { failoverType: string }).failoverType, 'unplanned');
    failPromote.delete(item(5));

    // a webhook that keeps failing: the run fails with ACTION_FAILED at that action
    await v.api.request('POST', '/api/v1/recovery-plans', { name: 'hooked', groups: [{ name: 'only', items: [item(7)], pre: [{ name: 'gate', kind: 'webhook', target: url, retries: 1, timeoutSeconds: 5 }] }] });
    webhookAnswers = [503, 503];
    const bad = await ended(await run('hooked', 'test-failover'));
    assert.equal(bad.state, 'Failed');
    assert.equal(bad.error!.code, 'ACTION_FAILED');
    assert.match(bad.error!.message, /action gate \(webhook .*\) failed after 2 tries: webhook .* answered 503/);
    assert.equal((await itemJobs('test-failover', item(7))).length, 0, 'the group after a failed pre action does not start');

    // one run of a plan at a time: restarting the failed run while another runs is refused
    webhookAnswers = [-1500, -1500];
    const second = await run('hooked', 'test-failover');
    await waitFor('the second run calling its webhook', async () => (await job(second)).state === 'Running', 10_000, 20);
    await assertRejectsCode(v.api.request('POST', `/api/v1/jobs/${bad.id}/restart`, {}), 'INVALID_STATE', new RegExp(`plan hooked has run ${second} Running`));
    assert.equal((await ended(second)).error!.code, 'ACTION_FAILED');
  });

  test('a webhook action to a loopback address is refused (not tried again) until an Owner allow-lists it; the answer kept is bounded and shown to the roles that configure plans', async () => {
    const url = `http://127.0.0.1:${(hook.address() as AddressInfo).port}/big`;
    await v.api.request('PUT', '/api/v1/webhook-settings', { allow: [] });
    await v.api.request('POST', '/api/v1/recovery-plans', { name: 'guarded', groups: [{ name: 'g', items: [item(8)], pre: [{ name: 'hook', kind: 'webhook', target: url, retries: 2, timeoutSeconds: 5 }] }] });
    const calls = webhookCalls.length;
    const refused = await ended(await run('guarded', 'unplanned-failover', { recoveryPoint: 'latest' }));
    assert.equal(refused.state, 'Failed');
    assert.equal(refused.error!.code, 'WEBHOOK_REFUSED');
    assert.match(refused.error!.message, /action hook: webhook http:\/\/127\.0\.0\.1:\d+ is refused: its address is loopback/);
    assert.equal(webhookCalls.length, calls, 'the webhook was not called, nor tried again');

    await v.api.request('PUT', '/api/v1/webhook-settings', { allow: ['127.0.0.1'] });
    await v.api.request('POST', `/api/v1/jobs/${refused.id}/restart`, {});
    const done = await ended(refused.id);
    assert.equal(done.state, 'Succeeded', JSON.stringify(done.error));
    const action = done.output!.actions[0]! as { output?: string; outputTruncated?: boolean; outputHidden?: boolean; status?: number };
    assert.equal(action.status, 200);
    assert.equal(action.output!.length, 4096, 'at most 4 KiB of the answer is kept');
    assert.equal(action.outputTruncated, true);
    // a Reader or an Operator sees that there was an answer, not what it said
    for (const role of ['Reader', 'Operator']) {
      const t = await v.api.request<{ secret: string }>('POST', '/api/v1/tokens', { name: `${role.toLowerCase()}-plans`, role });
      const seen = await v.as(t.secret).request<Job>('GET', `/api/v1/jobs/${done.id}`);
      const a = seen.output!.actions[0]! as { output?: string; outputHidden?: boolean };
      assert.equal(a.output, undefined, role);
      assert.equal(a.outputHidden, true, role);
    }
  });
});
