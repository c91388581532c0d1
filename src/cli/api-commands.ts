/**
 * The client commands of the vault's REST API (/api/v1), in the domain's words: fabrics and
 * their inventory, policies, pairings, mappings, protected items, recovery plans, jobs,
 * events and alerts, tokens, registration keys and the audit trail. Where they find the
 * vault and its token: vault-client-config.ts.
 */
import type { Command } from 'commander';
import { toOsrError } from '../domain/errors.js';
import { CliApi, connection, fields, print } from './api-common.js';
import { addConfigurationCommands } from './api-config-commands.js';
import { addCapacityCommand } from './api-capacity-command.js';
import { addOperationsCommands } from './api-operations-commands.js';
import { addProtectionCommands } from './api-protection-commands.js';
import { maskToken } from './vault-client-config.js';

export function addApiCommands(program: Command): void {
  program
    .command('connection')
    .description('the vault connection in effect (vault URL, token, CA, config file) and where each setting comes from; checks that the vault answers')
    .option('--offline', 'show the settings without calling the vault', false)
    .action(async (o: { offline: boolean }) => {
      const c = connection(program);
      let health: unknown = null;
      let error: { code: string; message: string } | null = null;
      if (!o.offline) {
        const api = new CliApi(c);
        try {
          health = await api.get('/health');
        } catch (e) {
          const err = toOsrError(e, 'NETWORK_ERROR');
          error = { code: err.code, message: err.message };
        } finally {
          api.close();
        }
      }
      const view = {
        vault: c.url,
        vaultFrom: c.sources.url,
        token: maskToken(c.token),
        tokenFrom: c.sources.token,
        ca: c.ca ? (c.caFile ?? 'inline PEM') : null,
        caFrom: c.sources.ca,
        configFile: c.configFile ?? null,
        searched: c.searched,
        health,
        error,
      };
      const from = (s: string | null) => (s ? ` (from ${s === 'flag' ? 'the flag' : s === 'env' ? 'the environment' : s === 'file' ? 'the config file' : 'the default'})` : '');
      print(program, view, () =>
        fields([
          ['vault', `${view.vault}${from(view.vaultFrom)}`],
          ['token', view.token ? `${view.token}${from(view.tokenFrom)}` : 'none: give --token, set OSR_TOKEN, or put "token:" in a config file'],
          ['CA', view.ca ? `${view.ca}${from(view.caFrom)}` : "the system's CAs (give --vault-ca to trust the vault's own)"],
          ['config file', view.configFile ?? `none (looked for ${view.searched.join(', ')})`],
          ...(o.offline ? [] : ([['vault answers', health ? `yes: ${JSON.stringify(health)}` : `no: ${error?.code}: ${error?.message}`]] as [string, unknown][])),
        ]),
      );
      if (error) process.exitCode = 1;
    });
  addProtectionCommands(program);
  addConfigurationCommands(program);
  addOperationsCommands(program);
  addCapacityCommand(program);
}
