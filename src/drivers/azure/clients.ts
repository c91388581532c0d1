/**
 * The Azure clients of a site: the service principal's credential (its secret or
 * certificate read from the files the site file names), Resource Manager's compute and
 * network clients, and the storage account's Blob service. Throttling (429, honouring
 * Retry-After) and server errors are retried by the SDKs' pipeline.
 */
import fs from 'node:fs';
import { ComputeManagementClient } from '@azure/arm-compute';
import { NetworkManagementClient } from '@azure/arm-network';
import { ClientCertificateCredential, ClientSecretCredential, type TokenCredential } from '@azure/identity';
import { BlobServiceClient, StorageSharedKeyCredential } from '@azure/storage-blob';
import { LOOPBACK_HOSTS } from '../../domain/azure-layout.js';
import { readOwnerOnlyFile } from '../site-fields.js';
import type { AzureSiteConfig } from './site.js';

export interface AzureClients {
  credential: TokenCredential;
  compute: ComputeManagementClient;
  network: NetworkManagementClient;
  blobs: BlobServiceClient;
}


/** The clients of a site; `credential` replaces the service principal's (a test's, or a managed identity's). */
export function azureClients(site: AzureSiteConfig, o: { credential?: TokenCredential; retryDelayMs?: number } = {}): AzureClients {
  const authorityHost = site.endpoints?.authorityHost;
  const c = site.credential;
  const ca = site.endpoints?.caFile !== undefined ? fs.readFileSync(site.endpoints.caFile, 'utf8') : undefined;
  // an emulator on this machine (the lab's) has no instance discovery, and its certificate is from caFile
  const emulated = authorityHost !== undefined && LOOPBACK_HOSTS.has(new URL(authorityHost).hostname);
  const idOptions = { authorityHost, ...(emulated ? { disableInstanceDiscovery: true } : {}), ...(ca !== undefined ? { tlsOptions: { ca } } : {}) };
  const credential =
    o.credential ??
    (c.clientSecretFile !== undefined
      ? new ClientSecretCredential(c.tenantId, c.clientId, readOwnerOnlyFile(c.clientSecretFile, 'the client secret'), idOptions)
      : new ClientCertificateCredential(c.tenantId, c.clientId, { certificate: readOwnerOnlyFile(c.certificateFile!, 'the client certificate') }, idOptions));
  const arm = {
    ...(site.endpoints?.resourceManager !== undefined ? { endpoint: site.endpoints.resourceManager } : {}),
    ...(ca !== undefined ? { tlsOptions: { ca } } : {}),
    retryOptions: { maxRetries: 6, ...(o.retryDelayMs !== undefined ? { retryDelayInMs: o.retryDelayMs, maxRetryDelayInMs: o.retryDelayMs * 10 } : {}) },
  };
  const sa = site.storageAccount;
  const blobs = new BlobServiceClient(sa.blobEndpoint, sa.keyFile !== undefined ? new StorageSharedKeyCredential(sa.name, readOwnerOnlyFile(sa.keyFile, 'the storage account key')) : credential);
  return { credential, compute: new ComputeManagementClient(credential, site.subscriptionId, arm), network: new NetworkManagementClient(credential, site.subscriptionId, arm), blobs };
}
