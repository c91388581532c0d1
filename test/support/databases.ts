/**
 * Throwaway databases for the store contract suite: a SQLite file in a temporary
 * directory, and a fresh PostgreSQL database on the server at OSR_TEST_POSTGRES (default
 * postgres://postgres@127.0.0.1:5432/postgres), dropped afterwards.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { Dialect } from '../../src/store/database.js';
import { tempDir } from './lab.js';

export interface TestDatabase {
  dialect: Dialect;
  /** what openDatabase takes as `database` */
  database: string;
  dataDir: string;
  drop(): Promise<void>;
}

export const POSTGRES_ADMIN_URL = process.env.OSR_TEST_POSTGRES ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export async function createTestDatabase(dialect: Dialect): Promise<TestDatabase> {
  const dataDir = tempDir('osr-store-');
  if (dialect === Dialect.Sqlite) {
    return { dialect, database: path.join(dataDir, 'vault.db'), dataDir, drop: async () => fs.rmSync(dataDir, { recursive: true, force: true }) };
  }
  const name = `osr_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const url = new URL(POSTGRES_ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    dialect,
    database: url.toString(),
    dataDir,
    async drop() {
      const c = new pg.Client({ connectionString: POSTGRES_ADMIN_URL });
      await c.connect();
      try {
        await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await c.end();
      }
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
