// Lint: typescript-eslint's recommended rules, plus the import direction of
// docs/design/layout.md: domain ← pki/store/jobs/fabric ← workflows ← agent/provider/vault ← cli/lab,
// with drivers (the fabric drivers' shared, agent-backed part) on fabric and below, and
// inside src/agent between its folders (layout.md, "Inside the agent").
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

const layers = {
  domain: [],
  pki: ['domain'],
  store: ['domain'],
  jobs: ['domain', 'store'],
  fabric: ['domain'],
  workflows: ['domain', 'store', 'jobs', 'fabric'],
  agent: ['domain', 'pki', 'store', 'jobs', 'fabric'],
  provider: ['domain', 'pki', 'store', 'jobs', 'fabric', 'workflows'],
  vault: ['domain', 'pki', 'store', 'jobs', 'fabric', 'workflows'],
  // the agent-backed replication every fabric driver shares: it reaches agents through an
  // interface it declares, so it needs neither src/agent nor the client in src/cli
  drivers: ['domain', 'pki', 'fabric'],
};
const all = ['domain', 'pki', 'store', 'jobs', 'fabric', 'workflows', 'agent', 'provider', 'vault', 'drivers', 'cli', 'lab'];

const layerPatterns = (layer) =>
  all
    .filter((l) => l !== layer && !layers[layer].includes(l))
    .map((l) => ({ group: [`**/${l}/*`, `**/${l}/**`], message: `src/${layer} may not import src/${l}: imports flow one way (docs/design/layout.md)` }));

const layerRules = Object.keys(layers).map((layer) => ({
  files: [`src/${layer}/**/*.ts`],
  rules: { 'no-restricted-imports': ['error', { patterns: layerPatterns(layer) }] },
}));

// Inside src/agent: io ← ports ← wire ← sending; io ← nbd ← libvirt ← hosts; ports ←
// tracking ← libvirt, hosts; ports ← libvirt (a libvirt host's promotions implement the port); tracking, wire ← replica; io, ports, tracking ← azure; and the agent's own files at the root (agent.ts, local-api.ts,
// api-access.ts) on top, which no folder imports. Nothing in src/agent imports hosts: the
// agent reaches its host through the Host port (ports/host.ts), and the CLI chooses it.
const agentZones = {
  io: [],
  nbd: ['io'],
  ports: ['io'],
  wire: ['io', 'ports'],
  tracking: ['io', 'ports'],
  sending: ['io', 'ports', 'wire'],
  replica: ['io', 'ports', 'wire', 'tracking'],
  libvirt: ['io', 'nbd', 'ports', 'tracking'],
  hosts: ['io', 'ports', 'tracking', 'nbd', 'libvirt'],
  azure: ['io', 'ports', 'tracking'],
};
const agentRootAllowed = ['io', 'nbd', 'ports', 'wire', 'sending', 'replica', 'azure'];
const agentFolders = Object.keys(agentZones);
const zonePatterns = (from, allowed) =>
  agentFolders
    .filter((z) => z !== from && !allowed.includes(z))
    .map((z) => ({ group: [`**/${z}/*`, `**/${z}/**`], message: `${from === '.' ? 'src/agent' : `src/agent/${from}`} may not import src/agent/${z}: imports inside the agent flow one way (docs/design/layout.md)` }));

const agentZoneRules = [
  {
    files: ['src/agent/*.ts'],
    rules: { 'no-restricted-imports': ['error', { patterns: [...layerPatterns('agent'), ...zonePatterns('.', agentRootAllowed)] }] },
  },
  ...Object.entries(agentZones).map(([zone, allowed]) => ({
    files: [`src/agent/${zone}/**/*.ts`],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            ...layerPatterns('agent'),
            ...zonePatterns(zone, allowed),
            { group: ['../*.js'], message: `src/agent/${zone} may not import the agent's root files (agent.ts, local-api.ts, api-access.ts): they sit on top (docs/design/layout.md)` },
          ],
        },
      ],
    },
  })),
];

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', 'native/build/**', 'portal/dist/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { console: 'readonly', process: 'readonly', Buffer: 'readonly', URL: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly', performance: 'readonly', fetch: 'readonly', AbortController: 'readonly', AbortSignal: 'readonly' } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-non-null-assertion': 'off',
    },
  },
  ...layerRules,
  ...agentZoneRules,
  {
    // the portal talks to the vault through the REST API only; of the server's code it may use the domain's types
    files: ['portal/**/*.ts', 'portal/**/*.tsx'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: all
            .filter((l) => l !== 'domain')
            .map((l) => ({ group: [`**/src/${l}/*`, `**/src/${l}/**`], message: `the portal may not import src/${l}: it uses the REST API, and only the domain's types (docs/design/portal.md)` })),
        },
      ],
    },
  },
);
