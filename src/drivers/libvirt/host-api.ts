/**
 * What the libvirt driver reads from and asks of a KVM host's agent beyond replication
 * (docs/agent-api.md, "Host" and "Enrolment"): the shapes of the answers it reads, and the
 * calls, over the AgentApi the CLI hands in.
 */
import type { MachineSpec } from '../../domain/machine.js';
import type { AgentApi } from '../agent-replication.js';

/** GET /v1/host/inventory */
export interface AgentHostInventory {
  domains: {
    name: string;
    uuid: string;
    state: string;
    running: boolean;
    disks: { target: string; device: string; file?: string; format?: string; sizeBytes: number | null }[];
    nics: { mac?: string; network?: string; bridge?: string; model?: string }[];
    machine: MachineSpec;
  }[];
  networks: { name: string; bridge?: string; forward?: string; active: boolean }[];
  pools: { name: string; type: string; path?: string; capacityBytes: number; availableBytes: number; active: boolean }[];
}

export interface AgentTestDomain {
  name: string;
  uuid: string;
  running: boolean;
  network: string | null;
}

export interface AgentEvidence {
  name: string;
  running: boolean;
  console: string;
  guestPing: unknown;
}

export const hostInventory = (api: AgentApi): Promise<AgentHostInventory> => api.get<AgentHostInventory>('/v1/host/inventory');

/** Define and start a drill's test domain from an overlay (the agent puts every NIC on the drill network). */
export const startTestDomain = (api: AgentApi, name: string, body: { replica: string; overlay: string; machine: MachineSpec; network: string | null }): Promise<AgentTestDomain> =>
  api.call<AgentTestDomain>('PUT', `/v1/host/test-domains/${encodeURIComponent(name)}`, body);

export const testDomainEvidence = (api: AgentApi, name: string): Promise<AgentEvidence> => api.get<AgentEvidence>(`/v1/host/test-domains/${encodeURIComponent(name)}`);

export const removeTestDomain = async (api: AgentApi, name: string): Promise<void> => {
  await api.delete(`/v1/host/test-domains/${encodeURIComponent(name)}`);
};

export const removeDrillNetwork = async (api: AgentApi, name: string): Promise<void> => {
  await api.delete(`/v1/host/networks/${encodeURIComponent(name)}`);
};

export { agentCertificateSerial, enrolAgent, handRevocationList } from '../agent-enrolment.js';
