/** Unplanned failover under a policy of 30 s cycles: test/support/unplanned.ts. */
import { unplannedScenario } from '../support/unplanned.js';

// at most a copy cycle lost, and some slack
unplannedScenario({ name: 'unplanned', policyFlags: ['--copy-frequency', '30s', '--retention-hours', '1'], maxLossSeconds: 45 });
