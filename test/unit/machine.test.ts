/**
 * A VM's machine crosses trust boundaries (provider → agent, vault → provider):
 * checkMachine keeps what is within bounds and refuses anything else with
 * INVALID_ARGUMENT naming the field.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { checkMachine } from '../../src/domain/machine.js';
import { OsrError } from '../../src/domain/errors.js';

const good = () => ({ vcpus: 2, memoryMiB: 512, firmware: 'bios', machineType: 'pc-i440fx-7.2', kernelBoot: { kernel: '/boot/vmlinuz', initrd: '/boot/initrd.img', cmdline: 'console=ttyS0' }, nics: [{ network: 'default', mac: '52:54:00:AA:bb:01', model: 'virtio' }, { network: null }] });

function refused(change: (m: Record<string, unknown>) => void, field: string): void {
  const m: Record<string, unknown> = good();
  change(m);
  assert.throws(() => checkMachine(m), (e: unknown) => e instanceof OsrError && e.code === 'INVALID_ARGUMENT' && e.details?.field === field, `a machine with a wrong ${field} is refused naming it`);
}

describe('checkMachine', () => {
  test('a machine within bounds is kept, MACs in lower case', () => {
    const m = checkMachine(good());
    assert.equal(m.nics[0]!.mac, '52:54:00:aa:bb:01');
    assert.equal(m.nics[1]!.network, null);
    assert.equal(m.kernelBoot!.cmdline, 'console=ttyS0');
    assert.equal(m.guestAgent, undefined);
    assert.equal(checkMachine({ ...good(), guestAgent: true }).guestAgent, true, 'a guest agent channel travels with the machine');
  });

  test('every field out of bounds is refused, naming it', () => {
    assert.throws(() => checkMachine(null), (e: unknown) => e instanceof OsrError && e.code === 'INVALID_ARGUMENT');
    refused((m) => (m.vcpus = 0), 'machine.vcpus');
    refused((m) => (m.vcpus = 1.5), 'machine.vcpus');
    refused((m) => (m.memoryMiB = 8), 'machine.memoryMiB');
    refused((m) => (m.firmware = 'coreboot'), 'machine.firmware');
    refused((m) => (m.guestAgent = 'yes'), 'machine.guestAgent');
    refused((m) => (m.accel = 'hvf'), 'machine.accel');
    refused((m) => (m.machineType = "pc'/><x"), 'machine.machineType');
    refused((m) => (m.kernelBoot = { kernel: 'vmlinuz' }), 'machine.kernelBoot.kernel');
    refused((m) => (m.kernelBoot = { kernel: '/boot/../etc/shadow' }), 'machine.kernelBoot.kernel');
    refused((m) => (m.kernelBoot = { kernel: '/boot/vmlinuz', initrd: 'x' }), 'machine.kernelBoot.initrd');
    refused((m) => (m.kernelBoot = { kernel: '/boot/vmlinuz', cmdline: 'a\nb' }), 'machine.kernelBoot.cmdline');
    refused((m) => (m.kernelBoot = 'x'), 'machine.kernelBoot');
    refused((m) => (m.nics = 'x'), 'machine.nics');
    refused((m) => (m.nics = Array.from({ length: 33 }, () => ({ network: null }))), 'machine.nics');
    refused((m) => (m.nics = [{ network: 'a b' }]), 'machine.nics[0].network');
    refused((m) => (m.nics = [{ network: null, mac: '52:54:00' }]), 'machine.nics[0].mac');
    refused((m) => (m.nics = [{ network: null, model: '<e1000>' }]), 'machine.nics[0].model');
  });
});
