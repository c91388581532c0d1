/** The replication listener's port when not told otherwise (light: the osr command reads it without loading the wire). */
export const DEFAULT_REPLICATION_PORT = 8084;
