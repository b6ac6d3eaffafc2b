/** Names shared by the plugins: plugin ids, command ids and the settings they read. */

export const PACKAGE = '@llamalab/labextension';

export const PLUGIN_IDS = {
  chat: `${PACKAGE}:chat`,
  completer: `${PACKAGE}:completer`,
  manager: `${PACKAGE}:manager`
} as const;

export const COMMANDS = {
  openChat: 'llamalab:open-chat',
  explainError: 'llamalab:explain-error',
  openManager: 'llamalab:open-model-manager'
} as const;
