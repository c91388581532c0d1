/**
 * The portal in a real browser: Debian's Chromium driven by playwright-core against a lab
 * of real processes (vault, two providers, their agents). Through the pages only: sign in
 * with the lab's Owner token (keyboard only), create a policy (the API's validation message
 * shown under its field first) and a cloud pairing, enable protection of two VMs, run a
 * recovery plan's test failover and clean it up; the drill is then on record. Every page
 * visited has a label for each control and fits a narrow screen. Screenshots are kept in
 * test-artifacts/portal/.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { chromium, type Browser, type Page } from 'playwright-core';
import YAML from 'yaml';
import type { ProtectedItem } from '../../src/domain/resources.js';
import { labDown } from '../../src/lab/launcher.js';
import { OSR_BIN } from '../../src/lab/agent-process.js';
import type { TopologySpec } from '../../src/lab/topology.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import { freePort, tempDir, waitFor } from '../support/lab.js';

const run = promisify(execFile);
const CHROMIUM = process.env.OSR_CHROMIUM ?? '/usr/bin/chromium';
// without the browser the suite is skipped, as the NBD peers' are; CI installs it and fails without it
const SKIP = !fs.existsSync(CHROMIUM) && process.env.CI !== 'true' ? `not installed: ${CHROMIUM} (package chromium)` : false;
const ARTIFACTS = path.resolve('test-artifacts', 'portal');
const dir = tempDir('osr-portal-');
const vms = ['app', 'db'];
const id = (vm: string) => `vmm-newyork.${vm}`;

const topology: TopologySpec = {
  name: 'portal-sites',
  vault: { name: 'portal-vault' },
  fabrics: [
    {
      name: 'VMM-NewYork',
      logicalNetworks: ['LN1-NY'],
      vmNetworks: [{ name: 'VMNetwork1-NY', logicalNetwork: 'LN1-NY', subnets: [{ name: 'Subnet1', cidr: '10.1.1.0/24', pool: { start: '10.1.1.10', end: '10.1.1.20' } }] }],
      storage: { classifications: ['GOLD'], locations: [{ name: 'ny-gold', classification: 'GOLD', kind: 'share' }] },
      clouds: [{ name: 'Cloud1', hostGroups: [{ name: 'NY', hosts: [{ name: 'ny-h1', logicalNetworks: ['LN1-NY'], storageLocations: ['ny-gold'] }] }] }],
      vms: vms.map((name) => ({ name, host: 'ny-h1', disks: [{ name: 'system', size: '8M', storage: 'ny-gold' }], nics: [{ network: 'VMNetwork1-NY' }], workload: { bytesPerSecond: 16 * 1024 } })),
    },
    {
      name: 'VMM-Chicago',
      logicalNetworks: ['LN1-CHI'],
      vmNetworks: [{ name: 'VMNetwork1-CHI', logicalNetwork: 'LN1-CHI', subnets: [{ name: 'Subnet1', cidr: '10.2.1.0/24', pool: { start: '10.2.1.10', end: '10.2.1.20' } }] }],
      storage: { classifications: ['GOLD_TARGET'], locations: [{ name: 'chi-gold', classification: 'GOLD_TARGET', kind: 'share' }] },
      clouds: [{ name: 'Cloud2', hostGroups: [{ name: 'CHI', hosts: [{ name: 'chi-h1', logicalNetworks: ['LN1-CHI'], storageLocations: ['chi-gold'] }] }] }],
      vms: [],
    },
  ],
};

let api: VaultClient;
let cfg: { vault: string; token: string; ca: string };
let browser: Browser;
let page: Page;
const pageErrors: string[] = [];

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Every control on the page has an accessible name, and the page fits the window's width. */
async function checkPage(what: string): Promise<void> {
  // run in the page (a string: this file is compiled without the DOM's types)
  const unlabelled = (await page.evaluate(`Array.from(document.querySelectorAll('button, input, select, textarea, a[href]'))
    .filter((el) => {
      if (el.closest('dialog:not([open])') || el.offsetParent === null) return false;
      const named = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || (el.textContent || '').trim() || el.getAttribute('title') || (el.labels && el.labels.length > 0);
      return !named;
    })
    .map((el) => el.outerHTML.slice(0, 120))`)) as string[];
  assert.deepEqual(unlabelled, [], `${what}: controls without a label`);
  const overflow = (await page.evaluate('document.documentElement.scrollWidth - window.innerWidth')) as number;
  assert.ok(overflow <= 1, `${what}: the page is ${overflow}px wider than the window`);
}

const item = (vm: string) => api.request<ProtectedItem>('GET', `/api/v1/protected-items/${id(vm)}`);

before(async () => {
  if (SKIP) return;
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const port = await freePort();
  const file = path.join(dir, 'topology.in.yaml');
  fs.writeFileSync(file, YAML.stringify(topology));
  await run(process.execPath, [OSR_BIN, 'lab', 'up', '--dir', dir, '--topology', file, '--port', String(port), '--detach', '--status-interval', '1s'], { timeout: 180_000 });
  cfg = YAML.parse(fs.readFileSync(path.join(dir, 'osr.yaml'), 'utf8')) as typeof cfg;
  api = new VaultClient(cfg.vault, { ca: fs.readFileSync(cfg.ca, 'utf8'), token: cfg.token });
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-quic', '--no-first-run'],
  });
  // the lab's vault has a certificate from its own CA, which this browser does not know
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  page = await context.newPage();
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.setDefaultTimeout(20_000);
});

after(async () => {
  if (SKIP) return;
  await browser?.close();
  api?.close();
  await labDown(dir, () => undefined);
  fs.rmSync(dir, { recursive: true, force: true });
});

describe('the portal', { skip: SKIP }, () => {
  test('the vault serves it with a content security policy; a wrong token is refused with the reason', async () => {
    const res = await page.goto(cfg.vault);
    assert.equal(res?.status(), 200);
    assert.match(res?.headers()['content-security-policy'] ?? '', /default-src 'self'/);
    await page.getByLabel('API token').fill('osr_000000000000_not-a-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByRole('alert').filter({ hasText: 'does not know this token' }).waitFor();
    await checkPage('sign-in');
    await shot('01-sign-in-refused');
  });

  test('sign in with the keyboard alone', async () => {
    await page.goto(cfg.vault);
    await page.getByLabel('API token').waitFor();
    // the token field has the focus on arrival; Enter sends the form
    await page.keyboard.type(cfg.token);
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
    await page.getByRole('navigation', { name: 'Main' }).waitFor();
    await checkPage('dashboard');
    await shot('02-dashboard-empty');
  });

  test('create a policy: the API\'s validation message under the field, then the policy', async () => {
    await page.goto(`${cfg.vault}/#/infrastructure/policies`);
    await page.getByRole('button', { name: 'Create policy' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByLabel('Name').fill('gold');
    await dialog.getByLabel(/retention/i).fill('99');
    await dialog.getByRole('button', { name: 'Create' }).click();
    await dialog.getByText('recovery points can be kept for 0 to 24 whole hours, not 99').waitFor();
    await shot('03-policy-invalid');
    await dialog.getByLabel(/retention/i).fill('1');
    await dialog.getByLabel(/copy frequency/i).selectOption('30');
    await dialog.getByRole('button', { name: 'Create' }).click();
    await page.getByRole('cell', { name: 'gold', exact: true }).waitFor();
    const policies = await api.request<{ items: { name: string; settings: { copyFrequencySeconds: number; retentionHours: number } }[] }>('GET', '/api/v1/policies');
    const gold = policies.items.find((p) => p.name === 'gold');
    assert.ok(gold, 'the policy exists');
    assert.equal(gold.settings.copyFrequencySeconds, 30);
    assert.equal(gold.settings.retentionHours, 1);
    // a continuous policy: the point interval's field appears with the choice, and the vault's rule stands under it
    await page.getByRole('button', { name: 'Create policy' }).click();
    await dialog.getByLabel('Name').fill('live');
    await dialog.getByLabel(/copy frequency/i).selectOption('continuous');
    await dialog.getByLabel(/point interval/i).fill('90');
    await dialog.getByRole('button', { name: 'Create' }).click();
    await dialog.getByText('continuous replication keeps a point every 1 to 60 whole seconds, not 90').waitFor();
    await dialog.getByLabel(/point interval/i).fill('2');
    await dialog.getByRole('button', { name: 'Create' }).click();
    await page.getByRole('cell', { name: 'continuous, a point every 2 s' }).waitFor();
    const live = (await api.request<{ items: { name: string; settings: { copyMode?: string; pointIntervalSeconds?: number } }[] }>('GET', '/api/v1/policies')).items.find((p) => p.name === 'live');
    assert.deepEqual([live?.settings.copyMode, live?.settings.pointIntervalSeconds], ['continuous', 2]);
    await checkPage('policies');
    await shot('04-policies');
  });

  test('pair the clouds and map the networks and storage; enable protection of two VMs', async () => {
    await page.goto(`${cfg.vault}/#/infrastructure/pairings`);
    await page.getByRole('button', { name: 'Create cloud pairing' }).click();
    const dialog = page.getByRole('dialog');
    await dialog.getByLabel('Source cloud').selectOption(id('cloud1'));
    await dialog.getByLabel('Target cloud').selectOption('vmm-chicago.cloud2');
    await dialog.getByLabel('Policy').selectOption({ label: 'gold' });
    await dialog.getByRole('button', { name: 'Create' }).click();
    await waitFor('the pairing', async () => (await api.request<{ items: unknown[] }>('GET', '/api/v1/cloud-pairings')).items.length === 1 || undefined);
    await shot('05-pairings');
    // the mappings through the API: the portal's mapping pages are checked for labels only
    await api.request('POST', '/api/v1/network-mappings', { sourceId: 'vmm-newyork.vmnetwork1-ny', targetId: 'vmm-chicago.vmnetwork1-chi' });
    await api.request('POST', '/api/v1/storage-mappings', { sourceId: 'vmm-newyork.gold', targetId: 'vmm-chicago.gold_target' });
    for (const tab of ['fabrics', 'mappings']) {
      await page.goto(`${cfg.vault}/#/infrastructure/${tab}`);
      await page.getByRole('heading', { level: 1 }).waitFor();
      await page.waitForLoadState('networkidle');
      await checkPage(`infrastructure ${tab}`);
      await shot(`06-infrastructure-${tab}`);
    }

    await page.goto(`${cfg.vault}/#/items`);
    for (const vm of vms) {
      await page.getByRole('button', { name: 'Enable protection' }).click();
      const d = page.getByRole('dialog');
      await d.getByLabel('VM').selectOption(id(vm));
      // a replication group is optional: left empty, the VM replicates on its own
      assert.equal(await d.getByLabel(/replication group/i).inputValue(), '');
      await d.getByRole('button', { name: 'Enable' }).click();
      await page.getByRole('status').filter({ hasText: 'Protection is being enabled' }).waitFor();
    }
    for (const vm of vms) await waitFor(`${vm} protected with a point`, async () => ((await item(vm)).readiness.ready ? true : undefined), 120_000, 500);
    await page.getByRole('link', { name: 'app', exact: true }).waitFor();
    await waitFor('the list shows both Protected', async () => (await page.getByRole('cell').filter({ hasText: /^Protected$/ }).count()) === 2 || undefined, 20_000, 250);
    await checkPage('items');
    await shot('07-items');
    // the vault filters and pages the list: a name's start, one page here
    const filter = page.getByRole('search', { name: 'Filter protected items' });
    await filter.getByLabel('Name').fill('ap');
    await waitFor('the list filtered by the vault', async () => (await page.getByRole('link', { name: 'db', exact: true }).count()) === 0 || undefined, 10_000, 100);
    assert.equal(await page.getByRole('link', { name: 'app', exact: true }).count(), 1);
    const pager = page.getByRole('navigation', { name: 'Pages of protected items' });
    assert.equal(await pager.getByRole('button', { name: 'Next page' }).isDisabled(), true);
    assert.equal(await pager.getByRole('button', { name: 'Previous page' }).isDisabled(), true);
    await filter.getByLabel('Name').fill('');
    await page.getByRole('link', { name: 'db', exact: true }).waitFor();
    await page.getByRole('link', { name: 'app', exact: true }).click();
    await page.getByRole('heading', { name: 'app', level: 1 }).waitFor();
    await page.getByRole('region', { name: /Recovery points/ }).getByRole('img').waitFor();
    await checkPage('item page');
    await shot('08-item');
  });

  test('a recovery plan\'s test failover from its page, then its cleanup: the drill is on record', async () => {
    const plan = await api.request<{ id: string }>('POST', '/api/v1/recovery-plans', { name: 'portal-plan', groups: [{ name: 'data', items: [id('db')] }, { name: 'apps', items: [] }] });
    await page.goto(`${cfg.vault}/#/plans/${plan.id}`);
    const groups = page.getByRole('region', { name: 'Groups', exact: true });
    // a VM to add is found by the start of its name (the vault searches); one in the plan is not offered
    await groups.getByLabel('Find protected items to add to group apps').fill('a');
    const pick = groups.getByLabel('Protected item to add to group apps');
    await waitFor('app offered', async () => (await pick.locator('option', { hasText: /^app$/ }).count()) === 1 || undefined, 10_000, 100);
    await groups.getByLabel('Find protected items to add to group apps').fill('d');
    await waitFor('db not offered: it is in the plan', async () => (await pick.locator('option').count()) === 1 || undefined, 10_000, 100);
    await groups.getByLabel('Find protected items to add to group apps').fill('ap');
    await waitFor('app offered again', async () => (await pick.locator('option', { hasText: /^app$/ }).count()) === 1 || undefined, 10_000, 100);
    await pick.selectOption({ label: 'app' });
    await groups.getByRole('listitem', { name: 'Group 2: apps' }).getByRole('button', { name: 'Add VM' }).click();
    await groups.getByRole('link', { name: 'app', exact: true }).waitFor();
    // the editor: drag the second group above the first, then move it back with its button
    await groups.locator('.group-head').nth(1).dragTo(groups.locator('.group-head').nth(0));
    await waitFor('the dragged group first', async () => ((await groups.getByLabel('Name of group 1').inputValue()) === 'apps' ? true : undefined), 10_000, 100);
    await groups.getByRole('button', { name: 'Move group apps down' }).click();
    assert.equal(await groups.getByLabel('Name of group 1').inputValue(), 'data');
    // a manual pre action for the apps group, in test failovers only
    await groups.getByRole('listitem', { name: 'Group 2: apps' }).getByRole('button', { name: 'Add pre action' }).click();
    await groups.getByLabel('Name of pre action 1 of group apps').fill('confirm');
    await groups.getByLabel('Instruction').fill('Check that the database answers');
    await groups.getByRole('group', { name: /Failover types of pre action 1 of group apps/ }).getByLabel('test', { exact: true }).check();
    await groups.getByRole('button', { name: 'Save plan' }).click();
    await groups.getByRole('status').filter({ hasText: 'Saved.' }).waitFor();
    const saved = await api.request<{ groups: { name: string; pre?: { name: string; kind: string; target: string; failoverTypes?: string[] }[] }[] }>('GET', `/api/v1/recovery-plans/${plan.id}`);
    assert.deepEqual(saved.groups.map((g) => g.name), ['data', 'apps']);
    assert.deepEqual((saved.groups as unknown as { items: string[] }[]).map((g) => g.items), [[id('db')], [id('app')]]);
    assert.deepEqual(saved.groups[1]!.pre, [{ name: 'confirm', kind: 'manual', target: 'Check that the database answers', failoverTypes: ['test'] }]);
    await checkPage('plan editor');
    await shot('09-plan-editor');

    await page.getByRole('button', { name: 'Test failover', exact: true }).click();
    let d = page.getByRole('dialog');
    assert.equal(await d.getByLabel('Network').inputValue(), 'none');
    await d.getByLabel('Network').selectOption('temporary');
    await d.getByRole('button', { name: 'Start test failover' }).click();
    const runView = page.getByLabel('Plan run');
    // the run waits at the manual action; it is resumed from the page with a comment
    await runView.getByText('Check that the database answers').waitFor({ timeout: 120_000 });
    await shot('09-plan-waiting');
    await runView.getByLabel('Comment').fill('the database answers');
    await runView.getByRole('button', { name: 'Resume' }).click();
    await runView.getByText('Succeeded', { exact: true }).first().waitFor({ timeout: 120_000 });
    await checkPage('plan run');
    await shot('09-plan-test-failover');
    const runs = await api.request<{ items: { output: { actions: { name: string; comment?: string }[] } | null }[] }>('GET', `/api/v1/jobs?kind=plan-run&target=${plan.id}&limit=1`);
    assert.equal(runs.items[0]!.output?.actions.find((a) => a.name === 'confirm')?.comment, 'the database answers');
    for (const vm of vms) assert.equal((await item(vm)).state, 'TestFailoverComplete');

    await page.getByRole('button', { name: 'Clean up test failover' }).click();
    d = page.getByRole('dialog');
    await d.getByLabel('Notes').fill('drill from the portal');
    await d.getByRole('button', { name: 'Clean up' }).click();
    await waitFor('both items back to Protected', async () => {
      const states = await Promise.all(vms.map(async (vm) => (await item(vm)).state));
      return states.every((s) => s === 'Protected') || undefined;
    }, 120_000, 500);
    await runView.getByText('Succeeded', { exact: true }).first().waitFor({ timeout: 60_000 });
    const drills = await api.request<{ items: { succeeded: boolean; notes: string | null; vms: { item: string; rtoSeconds: number | null }[] }[] }>('GET', `/api/v1/recovery-plans/${plan.id}/drills`);
    assert.equal(drills.items.length, 1);
    assert.equal(drills.items[0]!.succeeded, true);
    assert.equal(drills.items[0]!.notes, 'drill from the portal');
    assert.deepEqual(drills.items[0]!.vms.map((v) => v.item).sort(), vms.map(id).sort());
    await shot('10-plan-cleaned-up');
  });

  test('the other views: jobs, events and alerts, capacity, dashboard; and a narrow screen', async () => {
    for (const [route, heading] of [['jobs', 'Jobs'], ['events', 'Events and alerts'], ['capacity', 'Capacity planner'], ['plans', 'Recovery plans'], ['dashboard', 'Dashboard']] as const) {
      await page.goto(`${cfg.vault}/#/${route}`);
      await page.getByRole('heading', { name: heading, level: 1 }).waitFor();
      await page.waitForLoadState('networkidle');
      await checkPage(route);
      await shot(`11-${route}`);
    }
    const jobs = await api.request<{ items: { id: string }[] }>('GET', '/api/v1/jobs', undefined);
    await page.goto(`${cfg.vault}/#/jobs/${jobs.items[0]!.id}`);
    await page.getByRole('table').first().waitFor();
    await checkPage('job page');
    await shot('12-job');

    await page.setViewportSize({ width: 390, height: 844 });
    const plans = await api.request<{ items: { id: string }[] }>('GET', '/api/v1/recovery-plans');
    for (const route of ['dashboard', `items/${id('app')}`, 'items', 'jobs', 'capacity', `plans/${plans.items[0]!.id}`, 'infrastructure/policies']) {
      await page.goto(`${cfg.vault}/#/${route}`);
      await page.getByRole('heading', { level: 1 }).first().waitFor();
      await page.waitForLoadState('networkidle');
      await checkPage(`${route} on a narrow screen`);
      await shot(`13-narrow-${route.replace(/[^a-z]+/g, '-')}`);
    }
    assert.deepEqual(pageErrors, [], 'no script errors in the pages');
  });
});
