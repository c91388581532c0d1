/** The vault's store port: every table behind one object, on SQLite or PostgreSQL. */
import { ActivityStore } from './activity.js';
import { CertificateStore } from './certificates.js';
import { CommandStore } from './commands.js';
import { ConfigStore } from './config.js';
import { openDatabase, type OpenDatabaseOptions, type VaultDatabase } from './database.js';
import { HostAdmissionStore } from './host-admissions.js';
import { FabricStore } from './inventory.js';
import { ItemStore } from './items.js';
import { JobStore } from './jobs.js';
import { VaultRoleStore } from './vault-role.js';

export interface VaultStore {
  database: VaultDatabase;
  jobs: JobStore;
  commands: CommandStore;
  fabrics: FabricStore;
  config: ConfigStore;
  items: ItemStore;
  activity: ActivityStore;
  certificates: CertificateStore;
  hostAdmissions: HostAdmissionStore;
  role: VaultRoleStore;
  close(): Promise<void>;
}

export function storeOn(database: VaultDatabase, now: () => number = Date.now): VaultStore {
  const { db, dialect } = database;
  return {
    database,
    jobs: new JobStore(db, dialect, now),
    commands: new CommandStore(db, now),
    fabrics: new FabricStore(db, now),
    config: new ConfigStore(db, now),
    items: new ItemStore(db, now, dialect),
    activity: new ActivityStore(db, now),
    certificates: new CertificateStore(db, now),
    hostAdmissions: new HostAdmissionStore(db, now),
    role: new VaultRoleStore(db, dialect, now),
    close: () => database.close(),
  };
}

export async function openStore(o: OpenDatabaseOptions, now: () => number = Date.now): Promise<VaultStore> {
  return storeOn(await openDatabase(o), now);
}
