/** Request schemas shared by several routes (TypeBox: validated by Fastify, listed in the OpenAPI document). */
import { Type } from '@fastify/type-provider-typebox';

export const Name = Type.String({ minLength: 1, maxLength: 200 });
export const Id = Type.String({ minLength: 1, maxLength: 300 });
export const IdParam = Type.Object({ id: Id });
const LocalId = Type.String({ minLength: 1, maxLength: 128, pattern: '^[A-Za-z0-9_-][A-Za-z0-9._-]*$' });
const Ids = Type.Array(LocalId, { maxItems: 10_000 });

export const PageQuery = {
  after: Type.Optional(Type.String({ maxLength: 300 })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
};

const MachineWord = Type.String({ minLength: 1, maxLength: 64, pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$' });
const BootPath = Type.String({ minLength: 1, maxLength: 1024, pattern: '^/' });
/** A VM's machine (src/domain/machine.ts): bounded here, checked field by field where it is used (checkMachine). */
const MachineSchema = Type.Object(
  {
    vcpus: Type.Integer({ minimum: 1, maximum: 512 }),
    memoryMiB: Type.Integer({ minimum: 16, maximum: 16 * 1024 * 1024 }),
    firmware: Type.Optional(Type.Union([Type.Literal('bios'), Type.Literal('uefi')])),
    accel: Type.Optional(Type.Union([Type.Literal('kvm'), Type.Literal('qemu')])),
    guestAgent: Type.Optional(Type.Boolean()),
    machineType: Type.Optional(MachineWord),
    kernelBoot: Type.Optional(Type.Object({ kernel: BootPath, initrd: Type.Optional(BootPath), cmdline: Type.Optional(Type.String({ maxLength: 2048 })) }, { additionalProperties: false })),
    nics: Type.Array(Type.Object({ network: Type.Union([MachineWord, Type.Null()]), mac: Type.Optional(Type.String({ maxLength: 17 })), model: Type.Optional(MachineWord) }, { additionalProperties: false }), { maxItems: 32 }),
  },
  { additionalProperties: false },
);

export const InventoryDocumentSchema = Type.Object(
  {
    clouds: Type.Array(Type.Object({ id: LocalId, name: Name, hostGroups: Ids }), { maxItems: 10_000 }),
    hostGroups: Type.Array(Type.Object({ id: LocalId, name: Name, hosts: Ids }), { maxItems: 10_000 }),
    hosts: Type.Array(
      Type.Object({
        id: LocalId,
        name: Name,
        osVersion: Type.String({ minLength: 1, maxLength: 100 }),
        logicalNetworks: Ids,
        storageLocations: Ids,
        agent: Type.Optional(Type.Object({ address: Type.String({ minLength: 1, maxLength: 255 }), replicationPort: Type.Integer({ minimum: 1, maximum: 65535 }) })),
        addresses: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 253 }), { maxItems: 20 })),
      }),
      { maxItems: 10_000 },
    ),
    logicalNetworks: Type.Array(Type.Object({ id: LocalId, name: Name }), { maxItems: 10_000 }),
    vmNetworks: Type.Array(
      Type.Object({ id: LocalId, name: Name, logicalNetwork: LocalId, subnets: Type.Array(Type.Object({ name: Name, cidr: Type.String({ minLength: 1, maxLength: 50 }) }), { maxItems: 1000 }) }),
      { maxItems: 10_000 },
    ),
    ipPools: Type.Array(Type.Object({ id: LocalId, name: Name, vmNetwork: LocalId, subnet: Name, start: Type.String({ maxLength: 50 }), end: Type.String({ maxLength: 50 }) }), { maxItems: 10_000 }),
    storageClassifications: Type.Array(Type.Object({ id: LocalId, name: Name }), { maxItems: 1000 }),
    storageLocations: Type.Array(
      Type.Object({
        id: LocalId,
        name: Name,
        classification: LocalId,
        kind: Type.Union([Type.Literal('share'), Type.Literal('volume')]),
        path: Type.String({ minLength: 1, maxLength: 1000 }),
        freeBytes: Type.Optional(Type.Integer({ minimum: 0 })),
      }),
      { maxItems: 10_000 },
    ),
    vms: Type.Array(
      Type.Object({
        id: LocalId,
        name: Name,
        cloud: LocalId,
        host: LocalId,
        powerState: Type.String({ maxLength: 50 }),
        disks: Type.Array(Type.Object({ id: LocalId, name: Name, sizeBytes: Type.Integer({ minimum: 0 }), storageLocation: Type.Optional(LocalId), format: Type.Optional(Type.String({ minLength: 1, maxLength: 50 })) }), { maxItems: 64 }),
        nics: Type.Array(Type.Object({ id: LocalId, vmNetwork: Type.Optional(LocalId), ip: Type.Optional(Type.String({ maxLength: 50 })) }), { maxItems: 64 }),
        replicaOf: Type.Optional(Type.String({ minLength: 1, maxLength: 300 })),
        testFailoverOf: Type.Optional(Type.String({ minLength: 1, maxLength: 300 })),
        replicationId: Type.Optional(LocalId),
        machine: Type.Optional(MachineSchema),
      }),
      { maxItems: 100_000 },
    ),
  },
  { additionalProperties: false },
);

export const InitialReplicationSchema = Type.Union([
  Type.Object({ method: Type.Literal('now') }, { additionalProperties: false }),
  Type.Object({ method: Type.Literal('scheduled'), startAt: Type.String({ minLength: 1, maxLength: 40 }) }, { additionalProperties: false }),
  Type.Object({ method: Type.Literal('offline'), exportPath: Type.String({ minLength: 1, maxLength: 1000 }), importPath: Type.String({ minLength: 1, maxLength: 1000 }) }, { additionalProperties: false }),
]);

/**
 * What a fabric can do, as its provider reports it (src/domain/capabilities.ts). Fields a
 * newer provider adds are let through and not kept, so its heartbeats are not refused.
 */
export const FabricCapabilitiesSchema = Type.Object({
  initialReplication: Type.Array(Type.Union([Type.Literal('now'), Type.Literal('scheduled'), Type.Literal('offline')]), { maxItems: 3, uniqueItems: true }),
  appConsistentPoints: Type.Boolean(),
  copyFrequenciesSeconds: Type.Array(Type.Integer({ minimum: 1, maximum: 86_400 }), { maxItems: 20, uniqueItems: true }),
  continuousReplication: Type.Optional(Type.Array(Type.Union([Type.Literal('source'), Type.Literal('target')]), { maxItems: 2, uniqueItems: true })),
  consistencyGroups: Type.Optional(Type.Array(Type.Union([Type.Literal('source'), Type.Literal('target')]), { maxItems: 2, uniqueItems: true })),
  testFailover: Type.Boolean(),
  rawDisks: Type.Boolean(),
  changedBlockTracking: Type.Boolean(),
  nbdExport: Type.Boolean(),
  resyncOnRequest: Type.Boolean(),
  recoveryVmSizes: Type.Optional(Type.Array(Type.String({ pattern: '^[A-Za-z0-9_]{1,64}$' }), { maxItems: 500, uniqueItems: true })),
  recoveryDiskTypes: Type.Optional(Type.Array(Type.String({ pattern: '^[A-Za-z0-9_]{1,64}$' }), { maxItems: 50, uniqueItems: true })),
});

/** Policy fields: types only; the rules (validatePolicy) answer with POLICY_INVALID and the field. */
export const PolicySettingsSchema = Type.Object(
  {
    copyFrequencySeconds: Type.Optional(Type.Integer()),
    copyMode: Type.Optional(Type.String({ maxLength: 20 })),
    pointIntervalSeconds: Type.Optional(Type.Integer()),
    retentionHours: Type.Optional(Type.Integer()),
    appConsistentFrequencyHours: Type.Optional(Type.Integer()),
    authentication: Type.Optional(Type.String({ maxLength: 50 })),
    port: Type.Optional(Type.Integer()),
    compression: Type.Optional(Type.Boolean()),
    initialReplication: Type.Optional(Type.Object({ method: Type.String({ maxLength: 20 }), startAt: Type.Optional(Type.String({ maxLength: 40 })), exportPath: Type.Optional(Type.String({ maxLength: 1000 })), importPath: Type.Optional(Type.String({ maxLength: 1000 })) }, { additionalProperties: false })),
    deleteReplicaOnDisable: Type.Optional(Type.Boolean()),
    hostOsVersion: Type.Optional(Type.String({ minLength: 1, maxLength: 100 })),
  },
  { additionalProperties: false },
);

const PlanAction = Type.Object(
  {
    name: Name,
    kind: Type.Union([Type.Literal('script'), Type.Literal('manual'), Type.Literal('webhook')]),
    target: Type.String({ minLength: 1, maxLength: 2000 }),
    failoverTypes: Type.Optional(Type.Array(Type.Union([Type.Literal('test'), Type.Literal('planned'), Type.Literal('unplanned')]), { maxItems: 3, uniqueItems: true })),
    directions: Type.Optional(Type.Array(Type.Union([Type.Literal('primary-to-recovery'), Type.Literal('recovery-to-primary')]), { maxItems: 2, uniqueItems: true })),
    timeoutSeconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400 })),
    retries: Type.Optional(Type.Integer({ minimum: 0, maximum: 10 })),
  },
  { additionalProperties: false },
);

export const RecoveryPlanSchema = Type.Object(
  {
    name: Name,
    description: Type.Optional(Type.String({ maxLength: 2000 })),
    shutdownGroup: Type.Optional(Type.Boolean()),
    groups: Type.Array(
      Type.Object(
        { name: Name, items: Type.Array(Id, { maxItems: 10_000 }), pre: Type.Optional(Type.Array(PlanAction, { maxItems: 50 })), post: Type.Optional(Type.Array(PlanAction, { maxItems: 50 })) },
        { additionalProperties: false },
      ),
      { minItems: 1, maxItems: 1000 },
    ),
    dependencies: Type.Optional(Type.Record(Type.String(), Type.Array(Id, { maxItems: 1000 }))),
  },
  { additionalProperties: false },
);
