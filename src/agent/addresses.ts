/** Where an agent listens when not told otherwise: light enough for the osr command to read without loading the agent. */
import path from 'node:path';

export { DEFAULT_REPLICATION_PORT } from './wire/port.js';

/** the local API's TCP port (`--api`) and the provider channel's (`--provider-api`) */
export const DEFAULT_AGENT_API_PORT = 8085;

/** Where the local API listens when not told otherwise (relative to the data directory). */
export const API_SOCKET = path.join('run', 'api.sock');
