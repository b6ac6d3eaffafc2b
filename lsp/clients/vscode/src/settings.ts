// The extension's settings (package.json's "contributes.configuration") turned into what the
// language server and the language client need. Pure functions: no 'vscode' import, so they
// can be checked with plain Node.

/** Reads one setting of the "llamalab" section (vscode.WorkspaceConfiguration.get). */
export type Get = <T>(key: string) => T | undefined;

/** The keys of llamalab's initializationOptions that plain settings map onto. */
const SERVER_KEYS: Array<[setting: string, option: string]> = [
  ['model', 'model'],
  ['serverUrl', 'remoteUrl'],
  ['remoteModel', 'remoteModel'],
  ['maxTokens', 'maxTokens'],
  ['debounceMs', 'debounceMs'],
  ['timeBudgetMs', 'timeBudgetMs'],
  ['contextTokens', 'contextTokens'],
];

/** Settings whose change needs the server started again (the others are sent to it). */
export const RESTART_KEYS = ['command', 'args', 'env', 'languages'];

function isEmpty(value: unknown): boolean {
  return value === undefined || value === null || (typeof value === 'string' && value.trim() === '');
}

/** languageIds to complete; [] means all. */
export function languages(get: Get): string[] {
  const value = get<string[]>('languages') ?? [];
  return value.includes('*') ? [] : value.filter((id) => typeof id === 'string' && id !== '');
}

/**
 * The server's initializationOptions. With `change` (for workspace/didChangeConfiguration), an
 * emptied setting is sent as null, which sets the server's option back to none.
 */
export function serverOptions(get: Get, change = false): Record<string, unknown> {
  const options: Record<string, unknown> = {};
  for (const [setting, option] of SERVER_KEYS) {
    const value = get<unknown>(setting);
    if (!isEmpty(value)) {
      options[option] = typeof value === 'string' ? value.trim() : value;
    } else if (change) {
      options[option] = null;
    }
  }
  const ids = languages(get);
  if (ids.length > 0) {
    options.languages = ids;
  }
  const extra = get<Record<string, unknown>>('initializationOptions');
  if (extra && typeof extra === 'object') {
    Object.assign(options, extra);
  }
  return options;
}

/** The language client's document selector: the languages setting, or every file. */
export function documentSelector(get: Get): Array<{ scheme: string; language?: string }> {
  const ids = languages(get);
  const schemes = ['file', 'untitled'];
  if (ids.length === 0) {
    return schemes.map((scheme) => ({ scheme }));
  }
  return ids.flatMap((language) => schemes.map((scheme) => ({ scheme, language })));
}

/** The command that starts the server: [executable, ...arguments]. */
export function serverCommand(get: Get): [string, string[]] {
  const command = get<string>('command');
  const args = get<string[]>('args');
  return [isEmpty(command) ? 'llamalab' : (command as string).trim(), Array.isArray(args) ? args : ['lsp']];
}
