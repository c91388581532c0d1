/** The lab's emulated Resource Manager (src/lab/fake-arm.ts), every body checked against the REST specifications' schemas. */
import { startFakeArm as start, type FakeArm, type FakeArmOptions } from '../../src/lab/fake-arm.js';
import { checkArmBody } from './arm-spec.js';

export type { FakeArm };

export function startFakeArm(o: Omit<FakeArmOptions, 'check'>): Promise<FakeArm> {
  return start({ ...o, check: checkArmBody });
}
