/**
 * llamalab's inline completion provider: ghost text from the server's model in notebook cells,
 * consoles and files. Automatic triggers send one plain request (debounced by JupyterLab, the
 * superseded one aborted); an explicit invoke streams the suggestion as it is generated.
 */
import {
  CompletionHandler,
  IInlineCompletionContext,
  IInlineCompletionItem,
  IInlineCompletionList,
  IInlineCompletionProvider,
  InlineCompletionTriggerKind
} from '@jupyterlab/completer';
import { NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import type { ISettingRegistry } from '@jupyterlab/settingregistry';
import type { JSONValue } from '@lumino/coreutils';
import type { Widget } from '@lumino/widgets';

import { apiUrl } from '../api';
import { llamaIcon } from '../icons';
import {
  assembleContext,
  CompletionClient,
  CompletionError,
  CompletionRequestBody,
  CompleterSettings,
  DEFAULT_SETTINGS,
  EditorContext,
  fitToCursor,
  languageOf,
  linePrefix,
  readSettings,
  replyToItems,
  shouldRequest
} from './logic';

/** The provider's identifier, also set on the ghost text as `data-provider`. */
export const PROVIDER_ID = 'llamalab';

/** What the editor around the request knows: the neighbouring cells, the language, the path. */
interface Surroundings {
  cellsBefore?: string[];
  cellsAfter?: string[];
  kernelLanguage?: string | null;
  path?: string | null;
}

function surroundingsOf(widget: Widget): Surroundings {
  if (widget instanceof NotebookPanel) {
    const notebook = widget.content;
    const index = notebook.activeCellIndex;
    const code = (from: number, to: number) =>
      notebook.widgets
        .slice(from, to)
        .filter(cell => cell.model.type === 'code')
        .map(cell => cell.model.sharedModel.getSource());
    const languageInfo = widget.model?.getMetadata('language_info') as { name?: string } | undefined;
    // the inline completer runs in the active cell's editor
    const hasActive = index >= 0 && index < notebook.widgets.length;
    return {
      cellsBefore: hasActive ? code(0, index) : [],
      cellsAfter: hasActive ? code(index + 1, notebook.widgets.length) : [],
      kernelLanguage: languageInfo?.name ?? widget.model?.defaultKernelLanguage ?? null,
      path: widget.context.path
    };
  }
  // a file editor (any document widget): only its path
  const path = (widget as Partial<{ context: { path?: unknown } }>).context?.path;
  return typeof path === 'string' ? { path } : {};
}

export class LlamalabInlineProvider implements IInlineCompletionProvider {
  readonly identifier = PROVIDER_ID;
  readonly name = 'llamalab';
  readonly icon = llamaIcon.bindprops({ width: 16, height: 16 });

  /** Settings JupyterLab shows under the inline completer, with defaults that turn it on. */
  readonly schema: ISettingRegistry.IProperty = {
    default: {
      enabled: true,
      debouncerDelay: 250,
      timeout: 15000,
      autoFillInMiddle: false,
      ...DEFAULT_SETTINGS
    },
    properties: {
      maxTokens: {
        title: 'Maximum tokens',
        description: 'Longest suggestion, in tokens.',
        type: 'number',
        minimum: 1,
        maximum: 4096
      },
      mode: {
        title: 'Suggestion length',
        description: "'single': up to the end of the line; 'multi': a block; 'auto': the server decides from the cursor.",
        type: 'string',
        enum: ['auto', 'single', 'multi']
      },
      maxPrefixChars: {
        title: 'Context before the cursor (characters)',
        description: 'How much text above the cursor (earlier cells included) is sent.',
        type: 'number',
        minimum: 0
      },
      maxSuffixChars: {
        title: 'Context after the cursor (characters)',
        description: 'How much text below the cursor (later cells included) is sent.',
        type: 'number',
        minimum: 0
      }
    }
  };

  constructor(serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()) {
    this._client = new CompletionClient((path, init) =>
      ServerConnection.makeRequest(apiUrl(path, serverSettings), init, serverSettings)
    );
  }

  configure(settings: { [property: string]: JSONValue }): void {
    this._settings = readSettings(settings);
  }

  async fetch(request: CompletionHandler.IRequest, context: IInlineCompletionContext): Promise<IInlineCompletionList> {
    const invoked = context.triggerKind === InlineCompletionTriggerKind.Invoke;
    const around = surroundingsOf(context.widget);
    const editor: EditorContext = {
      text: request.text,
      offset: request.offset,
      cellsBefore: around.cellsBefore,
      cellsAfter: around.cellsAfter
    };
    if (!shouldRequest(editor, invoked)) {
      return { items: [] };
    }
    const { prefix, suffix } = assembleContext(editor, this._settings);
    const body: CompletionRequestBody = {
      prefix,
      suffix,
      language: languageOf(request.mimeType, around.kernelLanguage),
      path: around.path ?? null,
      max_tokens: this._settings.maxTokens,
      mode: this._settings.mode,
      stream: invoked
    };
    const lineBefore = linePrefix(request.text, request.offset);
    if (invoked) {
      const token = `llamalab-${++this._counter}`;
      this._pending.clear();
      this._pending.set(token, { body, lineBefore });
      return { items: [{ insertText: '', isIncomplete: true, token }] };
    }
    try {
      const reply = await this._client.complete(body);
      return { items: replyToItems(reply && { text: fitToCursor(reply.text, lineBefore) }) };
    } catch (err) {
      console.warn('llamalab inline completion failed:', (err as Error).message);
      return { items: [] };
    }
  }

  async *stream(token: string): AsyncGenerator<{ response: IInlineCompletionItem }> {
    const pending = this._pending.get(token);
    this._pending.delete(token);
    if (!pending) {
      return;
    }
    let text = '';
    try {
      for await (const part of this._client.stream(pending.body)) {
        text = fitToCursor(part.text, pending.lineBefore);
        yield { response: { insertText: text, isIncomplete: !part.final, token } };
      }
    } catch (err) {
      const message = err instanceof CompletionError ? err.message : String(err);
      yield { response: { insertText: text, isIncomplete: false, error: { message } } };
    }
  }

  private _settings: CompleterSettings = DEFAULT_SETTINGS;
  private readonly _client: CompletionClient;
  private readonly _pending = new Map<string, { body: CompletionRequestBody; lineBefore: string }>();
  private _counter = 0;
}
