/**
 * Providers and the CLI talk only to a vault: a server whose certificate comes from the
 * same CA but carries another role (an agent's) is refused, before any request is sent.
 */
import assert from 'node:assert/strict';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { createCa, issueCertificate } from '../../src/pki/index.js';
import { VaultClient } from '../../src/provider/vault-client.js';
import { assertRejectsCode } from '../support/unit.js';

async function serve(role: 'vault' | 'agent', ca: Awaited<ReturnType<typeof createCa>>): Promise<{ url: string; requests: number; close(): void }> {
  const issued = await issueCertificate(ca, { commonName: `${role}-server`, role });
  const state = { requests: 0 };
  const server = https.createServer({ key: issued.keyPem, cert: issued.certPem }, (_req, res) => {
    state.requests++;
    res.setHeader('content-type', 'application/json');
    res.end('{"ok":true}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    get requests() {
      return state.requests;
    },
    close: () => server.close(),
  };
}

test('a vault client refuses a server whose certificate is not a vault\'s', async () => {
  const ca = await createCa({ commonName: 'test CA' });
  const vault = await serve('vault', ca);
  const agent = await serve('agent', ca);
  try {
    const good = new VaultClient(vault.url, { ca: ca.certPem });
    assert.deepEqual(await good.request('GET', '/api/v1/version'), { ok: true });
    good.close();
    const bad = new VaultClient(agent.url, { ca: ca.certPem });
    await assertRejectsCode(bad.request('GET', '/api/v1/version'), 'AUTH_FAILED', /not a vault's/);
    bad.close();
    assert.equal(agent.requests, 0, 'a request reached the impostor');
  } finally {
    vault.close();
    agent.close();
  }
});
