/**
 * The local API's routes of a hypervisor host's management (docs/agent-api.md, "Host"):
 * the host's inventory, isolated drill networks, and drill test domains booted from a
 * test overlay's NBD disks, with their evidence. They need the Host port's `drills`
 * capability (ports/host-drills.ts); a host without it answers NOT_SUPPORTED.
 *
 * Every name a caller gives is checked (a safe name) and prefixed: the agent makes and
 * removes only networks named `osr-net-…` and domains named `osr-test-…`, each after the
 * agent's own prefix (--libvirt-prefix) where it has one. A machine is
 * checked field by field (checkMachine); its NICs all go on the drill network.
 */
import type { FastifyInstance } from 'fastify';
import fs from 'node:fs';
import path from 'node:path';
import { OsrError } from '../domain/errors.js';
import { checkMachine } from '../domain/machine.js';
import { MAX_NAME_LENGTH, SAFE_NAME_PATTERN, safeName } from '../domain/names.js';
import type { Agent } from './agent.js';
import { DRILL_NETWORK_PREFIX, TEST_DOMAIN_PREFIX, type HostDrills } from './ports/host-drills.js';

/** Names given to these routes stay short enough for libvirt and file names. */
const MAX_DRILL_NAME = 64;

const nameOf = (v: unknown, what: string): string => {
  const n = safeName(v, what, 'INVALID_ARGUMENT');
  if (n.length > MAX_DRILL_NAME) throw new OsrError('INVALID_ARGUMENT', `${what} is longer than ${MAX_DRILL_NAME} characters`, { field: what });
  return n;
};

export function addDrillRoutes(app: FastifyInstance, agent: Agent): void {
  const drills = (): HostDrills => {
    const d = agent.host.drills;
    if (!d) throw new OsrError('NOT_SUPPORTED', `this agent's host has no hypervisor inventory, drill networks or test domains (they are a libvirt host's: osr agent --host libvirt)`);
    return d;
  };
  /** a drill network's or test domain's libvirt name: the host's prefix, osr's kind, the caller's name */
  const networkName = (d: HostDrills, name: unknown) => `${d.namePrefix}${DRILL_NETWORK_PREFIX}${nameOf(name, 'network name')}`;
  const domainName = (d: HostDrills, name: unknown) => `${d.namePrefix}${TEST_DOMAIN_PREFIX}${nameOf(name, 'test domain name')}`;
  const consoleDir = path.join(agent.config.dataDir, 'drills');
  const consoleOf = (domain: string) => path.join(consoleDir, `${domain}.console`);

  app.get('/v1/host/inventory', async () => drills().inventory());

  app.put<{ Params: { name: string } }>('/v1/host/networks/:name', async (req) => {
    const d = drills();
    return d.ensureNetwork(networkName(d, req.params.name));
  });
  app.delete<{ Params: { name: string } }>('/v1/host/networks/:name', async (req, reply) => {
    const d = drills();
    await d.removeNetwork(networkName(d, req.params.name));
    return reply.status(204).send();
  });

  app.get('/v1/host/test-domains', async () => {
    const d = drills();
    return d.listDomains(`${d.namePrefix}${TEST_DOMAIN_PREFIX}`);
  });

  app.put<{ Params: { name: string }; Body: { replica: string; overlay: string; machine: unknown; network: string | null } }>(
    '/v1/host/test-domains/:name',
    {
      schema: {
        body: {
          type: 'object',
          required: ['replica', 'overlay', 'machine', 'network'],
          additionalProperties: false,
          properties: {
            replica: { type: 'string', pattern: SAFE_NAME_PATTERN, maxLength: MAX_NAME_LENGTH },
            overlay: { type: 'string', pattern: SAFE_NAME_PATTERN, maxLength: MAX_NAME_LENGTH },
            machine: { type: 'object' },
            network: { type: ['string', 'null'], pattern: SAFE_NAME_PATTERN, maxLength: MAX_DRILL_NAME },
          },
        },
      },
    },
    async (req) => {
      const d = drills();
      const name = domainName(d, req.params.name);
      const machine = checkMachine(req.body.machine);
      const store = agent.replicas.get(req.body.replica);
      const overlay = store.getOverlay(req.body.overlay);
      const network = req.body.network === null ? null : networkName(d, req.body.network);
      if (network !== null) await d.ensureNetwork(network);
      fs.mkdirSync(consoleDir, { recursive: true, mode: 0o700 });
      const info = await d.startTestDomain({
        name,
        machine,
        network,
        disks: overlay.disks.map((k) => ({ socket: agent.nbdSocket, exportName: `replica/${store.vmName}/${overlay.id}/${k.name}` })),
        consoleLog: consoleOf(name),
      });
      agent.log.info({ domain: name, replica: store.vmName, overlay: overlay.id, network }, `test domain ${name} runs point ${overlay.pointSeq} of ${store.vmName}`);
      return { ...info, console: consoleOf(name) };
    },
  );

  app.get<{ Params: { name: string } }>('/v1/host/test-domains/:name', async (req) => {
    const d = drills();
    const name = domainName(d, req.params.name);
    return d.evidence(name, consoleOf(name));
  });

  app.delete<{ Params: { name: string } }>('/v1/host/test-domains/:name', async (req, reply) => {
    const d = drills();
    const name = domainName(d, req.params.name);
    await d.removeTestDomain(name);
    fs.rmSync(consoleOf(name), { force: true });
    return reply.status(204).send();
  });
}
