// llamalab for VS Code: inline code completions (ghost text) from `llamalab lsp`.
//
// The language client starts the server over stdio and, since the server announces
// textDocument/inlineCompletion, registers VS Code's inline completion provider for it
// (vscode-languageclient's LSP 3.18 inline completion feature). VS Code cancels a request
// when you type on; the client sends $/cancelRequest and the server stops that generation.
// A status bar item shows the state and turns suggestions on and off.

import * as vscode from 'vscode';
import {
  CloseAction,
  DidChangeConfigurationNotification,
  ErrorAction,
  LanguageClient,
  type LanguageClientOptions,
  type ServerOptions,
  State,
  TransportKind,
} from 'vscode-languageclient/node';

import { RESTART_KEYS, documentSelector, serverCommand, serverOptions, type Get } from './settings';

const SECTION = 'llamalab';

class Llamalab implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private readonly output = vscode.window.createOutputChannel('llamalab', { log: true });
  private readonly status = vscode.window.createStatusBarItem(vscode.StatusBarAlignment.Right, 100);
  private enabled: boolean;
  private pending = 0;
  private failure: string | undefined;

  constructor() {
    this.enabled = this.get<boolean>('enable') ?? true;
    this.status.command = 'llamalab.toggle';
    this.status.name = 'llamalab';
    this.status.show();
    this.render();
  }

  private get: Get = <T>(key: string) => vscode.workspace.getConfiguration(SECTION).get<T>(key);

  private render(): void {
    const s = this.status;
    const state = this.client?.state;
    const model = String(serverOptions(this.get).model ?? serverOptions(this.get).remoteUrl ?? 'the default model');
    s.backgroundColor = undefined;
    if (this.failure) {
      s.text = '$(error) llamalab';
      s.tooltip = `llamalab: ${this.failure}\nClick to turn suggestions off; "llamalab: Restart" to try again.`;
      s.backgroundColor = new vscode.ThemeColor('statusBarItem.errorBackground');
    } else if (!this.enabled) {
      s.text = '$(circle-slash) llamalab';
      s.tooltip = 'llamalab: suggestions off. Click to turn them on.';
    } else if (state !== State.Running) {
      s.text = '$(loading~spin) llamalab';
      s.tooltip = 'llamalab: starting the language server...';
    } else if (this.pending > 0) {
      s.text = '$(loading~spin) llamalab';
      s.tooltip = `llamalab: generating with ${model}...`;
    } else {
      s.text = '$(sparkle) llamalab';
      s.tooltip = `llamalab: suggestions on (${model}). Click to turn them off.`;
    }
  }

  async start(): Promise<void> {
    const [command, args] = serverCommand(this.get);
    const env = { ...process.env, ...(this.get<Record<string, string>>('env') ?? {}) };
    const run = { command, args, transport: TransportKind.stdio, options: { env } };
    const server: ServerOptions = { run, debug: run };
    const options: LanguageClientOptions = {
      documentSelector: documentSelector(this.get),
      initializationOptions: serverOptions(this.get),
      outputChannel: this.output,
      traceOutputChannel: this.output,
      errorHandler: {
        error: () => ({ action: ErrorAction.Continue }),
        closed: () => {
          this.failure = 'the language server stopped (see the llamalab output)';
          this.render();
          return { action: CloseAction.DoNotRestart };
        },
      },
      middleware: {
        provideInlineCompletionItems: async (document, position, context, token, next) => {
          if (!this.enabled) {
            return null;
          }
          this.pending += 1;
          this.render();
          try {
            return await next(document, position, context, token);
          } finally {
            this.pending -= 1;
            this.render();
          }
        },
        // Ghost text is how VS Code shows llamalab's suggestions: completion requests would
        // only supersede the inline ones on the server.
        provideCompletionItem: () => undefined,
      },
    };
    this.failure = undefined;
    this.client = new LanguageClient('llamalab', 'llamalab', server, options);
    this.client.onDidChangeState(() => this.render());
    this.output.info(`starting ${command} ${args.join(' ')}`);
    this.render();
    try {
      await this.client.start();
    } catch (error) {
      this.failure = `could not start "${command} ${args.join(' ')}": ${String(error)}`;
      this.output.error(this.failure);
      this.render();
      const choice = await vscode.window.showErrorMessage(
        `llamalab: ${this.failure}. Install llamalab with its lsp extra, or set llamalab.command.`,
        'Open Settings', 'Show Output');
      if (choice === 'Open Settings') {
        await vscode.commands.executeCommand('workbench.action.openSettings', 'llamalab.command');
      } else if (choice === 'Show Output') {
        this.output.show();
      }
    }
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client) {
      try {
        await client.stop();
      } catch (error) {
        this.output.warn(`stopping the server: ${String(error)}`);
      }
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  toggle(enable?: boolean): void {
    this.enabled = enable ?? !this.enabled;
    this.output.info(`suggestions ${this.enabled ? 'on' : 'off'}`);
    this.render();
  }

  async configurationChanged(event: vscode.ConfigurationChangeEvent): Promise<void> {
    if (!event.affectsConfiguration(SECTION)) {
      return;
    }
    if (event.affectsConfiguration(`${SECTION}.enable`)) {
      this.toggle(this.get<boolean>('enable') ?? true);
    }
    if (RESTART_KEYS.some((key) => event.affectsConfiguration(`${SECTION}.${key}`)) || this.failure) {
      await this.restart();
    } else if (this.client?.state === State.Running) {
      // The server applies them at once (and loads another model when that changed).
      await this.client.sendNotification(DidChangeConfigurationNotification.type,
        { settings: { llamalab: serverOptions(this.get, true) } });
    }
    this.render();
  }

  dispose(): void {
    void this.stop();
    this.status.dispose();
    this.output.dispose();
  }

  showOutput(): void {
    this.output.show();
  }
}

let instance: Llamalab | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const llamalab = (instance = new Llamalab());
  context.subscriptions.push(
    llamalab,
    vscode.commands.registerCommand('llamalab.toggle', () => llamalab.toggle()),
    vscode.commands.registerCommand('llamalab.restart', () => llamalab.restart()),
    vscode.commands.registerCommand('llamalab.showOutput', () => llamalab.showOutput()),
    vscode.workspace.onDidChangeConfiguration((event) => llamalab.configurationChanged(event)),
  );
  await llamalab.start();
}

export async function deactivate(): Promise<void> {
  await instance?.stop();
  instance = undefined;
}
