/**
 * Azurite, the Azure Storage emulator (the `azurite` package), started by a test on a free
 * loopback port with its data in a temporary directory. Its well-known development
 * account and key are public (they are Azurite's defaults, not a secret).
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnAzurite } from '../../src/lab/azure-emulator.js';
import { after, before } from 'node:test';
import { BlobServiceClient, StorageSharedKeyCredential } from '@azure/storage-blob';

export const AZURITE_ACCOUNT = 'devstoreaccount1';
export const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==';

export interface Azurite {
  /** the blob service's URL for the development account */
  url: string;
  credential: StorageSharedKeyCredential;
  service: BlobServiceClient;
  child: ChildProcess;
  stop(): Promise<void>;
}

export async function startAzurite(): Promise<Azurite> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'osr-azurite-'));
  const { child, port } = await spawnAzurite(dir, 0);
  const url = `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
  const credential = new StorageSharedKeyCredential(AZURITE_ACCOUNT, AZURITE_KEY);
  return {
    url,
    credential,
    service: new BlobServiceClient(url, credential),
    child,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGKILL');
        await exited;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Azurite for the tests of one file: started before them, stopped after; the getter gives it. */
export function useAzurite(): () => Azurite {
  let az: Azurite | undefined;
  before(async () => {
    az = await startAzurite();
  });
  after(async () => {
    await az?.stop();
  });
  return () => {
    if (!az) throw new Error('Azurite is not started yet (useAzurite\'s before hook runs first)');
    return az;
  };
}
