/**
 * The chat side panel plugin: the panel in the right sidebar, its commands (open and focus
 * it, explain a cell's error), the "Explain this error" buttons under failed cells, and the
 * settings of schema/chat.json.
 */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Clipboard, ICommandPalette } from '@jupyterlab/apputils';
import { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { chatSocketUrl, requestAPI, sendJSON } from '../api';
import { llamaIcon } from '../icons';
import { COMMANDS, PLUGIN_IDS } from '../tokens';
import type { ConversationList, ImportReply, LoadedModel, ModelsReply, StoredConversation } from '../wire';
import { ChatClient, SocketLike } from './client';
import { ConversationStore, KeyValueStorage } from './conversations';
import { explainErrorRequest } from './prompts';
import { ChatModel, DEFAULT_SETTINGS, ModelsApi, toChatError } from './model';
import { ErrorButtons, Workspace } from './notebook';
import { ChatPanel } from './panel';
import { ConversationSync, ConversationsApi } from './sync';

const CATEGORY = 'llamalab';

function browserStorage(): KeyValueStorage | null {
  try {
    return window.localStorage;
  } catch {
    return null;
  }
}

/** /llamalab/conversations over JupyterLab's ServerConnection (token, XSRF, base URL). */
function conversationsApi(): ConversationsApi {
  const one = (id: string) => `conversations/${encodeURIComponent(id)}`;
  const json = (method: string, body: unknown): RequestInit => ({
    method,
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' }
  });
  return {
    list: () => requestAPI<ConversationList>('conversations'),
    get: id => requestAPI<StoredConversation>(one(id)),
    create: body => sendJSON<StoredConversation>('conversations', body),
    update: (id, body) => requestAPI<StoredConversation>(one(id), json('PUT', body)),
    patch: (id, body) => sendJSON<StoredConversation>(one(id), body, 'PATCH'),
    remove: async id => {
      await requestAPI<null>(one(id), { method: 'DELETE' });
    },
    importMany: body => sendJSON<ImportReply>('conversations/import', body)
  };
}

function readSettings(model: ChatModel, settings: ISettingRegistry.ISettings): void {
  const get = <T>(key: string, fallback: T): T => {
    const value = settings.get(key).composite;
    return (value === undefined ? fallback : value) as T;
  };
  model.settings = {
    maxTokens: get<number | null>('maxTokens', DEFAULT_SETTINGS.maxTokens),
    temperature: get<number | null>('temperature', DEFAULT_SETTINGS.temperature),
    carryOverChars: get<number>('carryOverChars', DEFAULT_SETTINGS.carryOverChars)
  };
}

export const chatPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.chat,
  description: 'A chat with the local model, in the side panel.',
  autoStart: true,
  requires: [ILabShell, IRenderMimeRegistry],
  optional: [INotebookTracker, IEditorTracker, ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    rendermime: IRenderMimeRegistry,
    notebooks: INotebookTracker | null,
    editors: IEditorTracker | null,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null
  ) => {
    const api: ModelsApi = {
      list: () => requestAPI<ModelsReply>('models'),
      load: model => sendJSON<LoadedModel>('models/load', { model })
    };
    const client = new ChatClient({ url: () => chatSocketUrl(), createSocket: url => new WebSocket(url) as unknown as SocketLike });
    const storage = browserStorage();
    const store = new ConversationStore(storage, undefined, { server: true });
    const reporter: { model?: ChatModel } = {};
    const sync = new ConversationSync(store, conversationsApi(), storage, (err, what) =>
      reporter.model?.reportError(toChatError(err, what))
    );
    const model = new ChatModel(store, client, api, sync);
    reporter.model = model;
    const workspace = new Workspace(shell, notebooks, editors, text => Clipboard.copyToSystem(text));
    const panel = new ChatPanel(model, workspace, rendermime);
    panel.title.icon = llamaIcon;
    panel.title.caption = 'llamalab chat (Ctrl/Cmd+Shift+Y)';
    shell.add(panel, 'right', { rank: 1000 });
    client.connect();
    void model.start();

    // The context toggles follow the document and cell in use (and whether its kernel runs).
    const refresh = () => panel.update();
    shell.currentChanged.connect(refresh);
    notebooks?.activeCellChanged.connect(refresh);
    notebooks?.currentChanged.connect((_, current) => current?.sessionContext.kernelChanged.connect(refresh));
    NotebookActions.executed.connect(refresh);

    const open = () => {
      shell.activateById(panel.id);
      panel.focusInput();
    };

    app.commands.addCommand(COMMANDS.openChat, {
      label: 'Open llamalab Chat',
      caption: 'Open the chat with the local model and put the cursor in its message box',
      icon: llamaIcon,
      execute: open
    });

    const target = (args: Record<string, unknown>) => {
      const hit = args.fromContextMenu ? app.contextMenuHitTest(node => node.classList.contains('jp-Cell')) : undefined;
      const cellId = typeof args.cellId === 'string' ? args.cellId : undefined;
      return workspace.errorTarget(workspace.findCell(cellId, hit));
    };

    const explain = (args: Record<string, unknown>) => {
      const error = target(args);
      open();
      if (!error) {
        model.reportError({ code: 'not_found', message: 'The active cell has no error to explain.', detail: 'Run the cell first; its error output is what gets explained.' });
        return;
      }
      if (model.isGenerating()) {
        model.newConversation();
      }
      const request = explainErrorRequest(error.source, error.error, error.language, error.where);
      model.sendWithContext(request.ask, request.blocks, { display: request.display });
    };

    app.commands.addCommand(COMMANDS.explainError, {
      label: 'Explain This Error',
      caption: "Ask the model to explain the cell's error and fix the code",
      icon: llamaIcon,
      isEnabled: args => !args.fromContextMenu || target(args) !== null,
      isVisible: args => !args.fromContextMenu || target(args) !== null,
      execute: args => explain(args)
    });

    if (notebooks) {
      new ErrorButtons(notebooks, (_, cell) => explain({ cellId: cell.model.id }));
    }

    palette?.addItem({ command: COMMANDS.openChat, category: CATEGORY });
    palette?.addItem({ command: COMMANDS.explainError, category: CATEGORY });

    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_IDS.chat)
        .then(settings => {
          readSettings(model, settings);
          settings.changed.connect(() => readSettings(model, settings));
        })
        .catch(reason => console.warn('llamalab: could not read the chat settings', reason));
    }
  }
};
