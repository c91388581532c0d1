// Lint: typescript-eslint's recommended rules, plus the import direction of
// docs/design/layout.md: domain ← pki/store/jobs ← workflows/fabric ← agent/provider/vault ← cli/lab.
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
};
const all = ['domain', 'pki', 'store', 'jobs', 'fabric', 'workflows', 'agent', 'provider', 'vault', 'cli', 'lab'];

const layerRules = Object.entries(layers).map(([layer, allowed]) => ({
  files: [`src/${layer}/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      {
        patterns: all
          .filter((l) => l !== layer && !allowed.includes(l))
          .map((l) => ({ group: [`**/${l}/*`, `**/${l}/**`], message: `src/${layer} may not import src/${l}: imports flow one way (docs/design/layout.md)` })),
      },
    ],
  },
}));

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
