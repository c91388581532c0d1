/**
 * A disaster drill of the whole primary site, vault included, on a postgres vault
 * (test/support/site-loss.ts): kill -9 of the site, the vault taken over at the recovery
 * site, an unplanned failover of a recovery plan from there, the old site back with its
 * vault stale, then reprotect and failback from the new vault.
 */
import { after, before, test } from 'node:test';
import { siteLossDrill } from '../support/site-loss.js';

const d = siteLossDrill('postgres');
before(() => d.setUp());
after(() => d.tearDown());

test('the primary site, vault included, is lost and the recovery site carries on; the old vault comes back stale', () => d.drill());
