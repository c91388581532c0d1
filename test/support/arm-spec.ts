/**
 * The parts of the Azure Resource Manager REST API that osr calls, as JSON Schemas of the
 * request bodies, written from the published specifications (the azure-rest-api-specs
 * repository: Microsoft.Compute `DiskRP` disk.json and `ComputeRP` virtualMachine.json,
 * Microsoft.Network networkInterface.json and virtualNetwork.json, at the API versions
 * the SDKs osr uses call). The fake Resource Manager (fake-arm.ts) checks every request it
 * receives against them, so that it cannot drift from Azure silently: a request the real
 * service would refuse is refused here too, and the test that sent it fails.
 *
 * Kept: each body's required properties, the enumerations osr's values must come from, the
 * types, and `additionalProperties: false` where osr must not invent a property (the real
 * service ignores or refuses unknown ones; a typo would go unnoticed). Read-only properties
 * (id, name, type, provisioningState) are allowed, as the SDKs send what they were given.
 */
import { Ajv, type ValidateFunction } from 'ajv';
import { API_VERSIONS, type BodyCheck } from '../../src/lab/fake-arm.js';

export { API_VERSIONS };

const str = { type: 'string' } as const;
const tags = { type: 'object', additionalProperties: { type: 'string', maxLength: 256 }, maxProperties: 50 } as const;
const subResource = { type: 'object', required: ['id'], properties: { id: str } } as const;
const resourceBase = { id: str, name: str, type: str, location: str, tags } as const;

/** Disk (disk.json, definitions Disk, DiskProperties, CreationData, DiskSku). */
const disk = {
  type: 'object',
  required: ['location', 'properties'],
  additionalProperties: false,
  properties: {
    ...resourceBase,
    sku: { type: 'object', properties: { name: { enum: ['Standard_LRS', 'Premium_LRS', 'StandardSSD_LRS', 'UltraSSD_LRS', 'Premium_ZRS', 'StandardSSD_ZRS', 'PremiumV2_LRS'] } } },
    zones: { type: 'array', items: str },
    properties: {
      type: 'object',
      required: ['creationData'],
      properties: {
        osType: { enum: ['Windows', 'Linux'] },
        hyperVGeneration: { enum: ['V1', 'V2'] },
        diskSizeGB: { type: 'integer' },
        creationData: {
          type: 'object',
          required: ['createOption'],
          properties: {
            createOption: { enum: ['Empty', 'Attach', 'FromImage', 'Import', 'Copy', 'Restore', 'Upload', 'CopyStart', 'ImportSecure', 'UploadPreparedSecure', 'CopyFromSanSnapshot'] },
            storageAccountId: str,
            sourceUri: str,
            sourceResourceId: str,
          },
          // Import: sourceUri is the blob to import; storageAccountId is "required if createOption is Import"
          if: { properties: { createOption: { const: 'Import' } } },
          then: { required: ['sourceUri', 'storageAccountId'] },
        },
        provisioningState: str,
      },
    },
  },
} as const;

/** NetworkInterface (networkInterface.json: NetworkInterface, NetworkInterfacePropertiesFormat, NetworkInterfaceIPConfiguration). */
const networkInterface = {
  type: 'object',
  required: ['location', 'properties'],
  additionalProperties: false,
  properties: {
    ...resourceBase,
    properties: {
      type: 'object',
      required: ['ipConfigurations'],
      properties: {
        ipConfigurations: {
          type: 'array',
          minItems: 1,
          items: {
            type: 'object',
            required: ['name', 'properties'],
            properties: {
              name: str,
              id: str,
              properties: {
                type: 'object',
                required: ['subnet'],
                properties: {
                  subnet: subResource,
                  privateIPAllocationMethod: { enum: ['Static', 'Dynamic'] },
                  privateIPAddress: { type: 'string', format: 'ipv4' },
                  primary: { type: 'boolean' },
                },
                if: { properties: { privateIPAllocationMethod: { const: 'Static' } }, required: ['privateIPAllocationMethod'] },
                then: { required: ['privateIPAddress'] },
              },
            },
          },
        },
        provisioningState: str,
      },
    },
  },
} as const;

/** VirtualNetwork (virtualNetwork.json: VirtualNetwork, AddressSpace, Subnet). */
const virtualNetwork = {
  type: 'object',
  required: ['location', 'properties'],
  additionalProperties: false,
  properties: {
    ...resourceBase,
    properties: {
      type: 'object',
      required: ['addressSpace'],
      properties: {
        addressSpace: { type: 'object', required: ['addressPrefixes'], properties: { addressPrefixes: { type: 'array', minItems: 1, items: str } } },
        subnets: { type: 'array', items: { type: 'object', required: ['name', 'properties'], properties: { name: str, id: str, properties: { type: 'object', required: ['addressPrefix'], properties: { addressPrefix: str } } } } },
        provisioningState: str,
      },
    },
  },
} as const;

const attachedDisk = { type: 'object', required: ['id'], properties: { id: str, storageAccountType: str } } as const;

/** VirtualMachine (virtualMachine.json: VirtualMachine, HardwareProfile, StorageProfile, OSDisk, DataDisk, NetworkProfile). */
const virtualMachine = {
  type: 'object',
  required: ['location', 'properties'],
  additionalProperties: false,
  properties: {
    ...resourceBase,
    properties: {
      type: 'object',
      required: ['hardwareProfile', 'storageProfile', 'networkProfile'],
      properties: {
        hardwareProfile: { type: 'object', required: ['vmSize'], properties: { vmSize: str } },
        storageProfile: {
          type: 'object',
          required: ['osDisk'],
          properties: {
            osDisk: {
              type: 'object',
              required: ['createOption'],
              properties: { osType: { enum: ['Windows', 'Linux'] }, name: str, createOption: { enum: ['FromImage', 'Empty', 'Attach', 'Copy', 'Restore'] }, managedDisk: attachedDisk, vhd: { type: 'object', properties: { uri: str } } },
              // an attached disk is a managed disk or a VHD blob: the service needs one of them
              if: { properties: { createOption: { const: 'Attach' } } },
              then: { anyOf: [{ required: ['managedDisk'] }, { required: ['vhd'] }] },
            },
            dataDisks: {
              type: 'array',
              items: { type: 'object', required: ['lun', 'createOption'], properties: { lun: { type: 'integer', minimum: 0, maximum: 63 }, name: str, createOption: { enum: ['FromImage', 'Empty', 'Attach', 'Copy', 'Restore'] }, managedDisk: attachedDisk } },
            },
          },
        },
        networkProfile: { type: 'object', properties: { networkInterfaces: { type: 'array', minItems: 1, items: { type: 'object', required: ['id'], properties: { id: str, properties: { type: 'object', properties: { primary: { type: 'boolean' } } } } } } } },
        diagnosticsProfile: { type: 'object', properties: { bootDiagnostics: { type: 'object', properties: { enabled: { type: 'boolean' }, storageUri: str } } } },
        provisioningState: str,
      },
    },
  },
} as const;

/** GrantAccessData (disk.json: the body of Disks_GrantAccess, POST …/disks/{diskName}/beginGetAccess). */
const grantAccessData = {
  type: 'object',
  required: ['access', 'durationInSeconds'],
  additionalProperties: false,
  properties: {
    access: { enum: ['None', 'Read', 'Write'] },
    durationInSeconds: { type: 'integer' },
    getSecureVMGuestStateSAS: { type: 'boolean' },
    fileFormat: { enum: ['VHD', 'VHDX'] },
  },
} as const;

const ajv = new Ajv({ allErrors: true, strict: false });
ajv.addFormat('ipv4', /^(\d{1,3}\.){3}\d{1,3}$/);

/** A request body's validator per resource type. */
export const BODY_SCHEMAS: Record<string, ValidateFunction> = {
  'Microsoft.Compute/disks': ajv.compile(disk),
  'Microsoft.Compute/virtualMachines': ajv.compile(virtualMachine),
  'Microsoft.Network/networkInterfaces': ajv.compile(networkInterface),
  'Microsoft.Network/virtualNetworks': ajv.compile(virtualNetwork),
  'Microsoft.Compute/disks/beginGetAccess': ajv.compile(grantAccessData),
};

/** The fake Resource Manager's check of a body against these schemas. */
export const checkArmBody: BodyCheck = (type, body) => {
  const validate = BODY_SCHEMAS[type];
  if (!validate) return `no schema for ${type}`;
  if (validate(body)) return undefined;
  return (validate.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message ?? ''}`).join('; ');
};
