/**
 * llamalab's inline completion provider: ghost text from the server's model in notebook cells,
 * consoles and files. It reads the editor's surroundings from JupyterLab (a notebook's cells,
 * ids and kinds, its kernel, a file's path) into a `DocumentSnapshot` and leaves the rest to the
 * `Suggester`: automatic triggers answer from the suggestion cache or one plain request
 * (debounced by JupyterLab, the superseded one aborted); an explicit invoke streams. The plugin
 * also tells it when a notebook cell is entered (a warm-up request) and when a suggestion was
 * accepted (the next one is asked for ahead of time).
 */
import {
  CompletionHandler,
  IInlineCompletionContext,
  IInlineCompletionItem,
  IInlineCompletionList,
  IInlineCompletionProvider,
  InlineCompletionTriggerKind
} from '@jupyterlab/completer';
import type { CodeEditor } from '@jupyterlab/codeeditor';
import { Text } from '@jupyterlab/coreutils';
import { Notebook, NotebookPanel } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import type { ISettingRegistry } from '@jupyterlab/settingregistry';
import type { JSONValue } from '@lumino/coreutils';
import type { Widget } from '@lumino/widgets';

import { apiUrl } from '../api';
import { llamaIcon } from '../icons';
import { CompletionError } from './client';
import {
  CellKind,
  DEFAULT_SETTINGS,
  DocumentSnapshot,
  languageOf,
  NotebookSnapshot,
  readSettings,
  replyToItems,
  shouldRequest
} from './logic';
import { Suggester, SuggesterEvent } from './suggester';

/** The provider's identifier, also set on the ghost text as `data-provider`. */
export const PROVIDER_ID = 'llamalab';

/** The notebook's cells, read only where a request needs them. */
function notebookSnapshot(panel: NotebookPanel): NotebookSnapshot | null {
  const cells = panel.model?.cells;
  const index = panel.content.activeCellIndex;
  if (!cells || index < 0 || index >= cells.length) {
    return null;
  }
  return {
    count: cells.length,
    index,
    cellAt: (i: number) => {
      const cell = cells.get(i);
      return { id: cell.id, source: cell.sharedModel.getSource(), kind: cell.type as CellKind };
    }
  };
}

/** The highest execution count among a notebook's cells. */
function highestExecutionCount(notebook: Notebook): number {
  const cells = notebook.model?.cells;
  let highest = 0;
  for (let i = 0; cells && i < cells.length; i++) {
    const cell = cells.get(i) as { executionCount?: number | null };
    if (typeof cell.executionCount === 'number' && cell.executionCount > highest) {
      highest = cell.executionCount;
    }
  }
  return highest;
}

/** The editor with the cursor in a notebook, file editor or console, or null. */
function activeEditor(widget: Widget | null): CodeEditor.IEditor | null {
  if (!widget) {
    return null;
  }
  if (widget instanceof NotebookPanel) {
    return widget.content.activeCell?.editor ?? null;
  }
  const any = widget as Partial<{
    content: { editor?: CodeEditor.IEditor };
    console: { promptCell?: { editor?: CodeEditor.IEditor | null } | null };
  }>;
  return any.content?.editor ?? any.console?.promptCell?.editor ?? null;
}

export class LlamalabInlineProvider implements IInlineCompletionProvider {
  readonly identifier = PROVIDER_ID;
  readonly name = 'llamalab';
  readonly icon = llamaIcon.bindprops({ width: 16, height: 16 });

  /** Settings JupyterLab shows under the inline completer, with defaults that turn it on. */
  readonly schema: ISettingRegistry.IProperty = {
    default: {
      debouncerDelay: 250,
      timeout: 15000,
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
        description:
          "How much text above the cursor is sent: in a notebook, the whole cells above the cursor's cell that fit " +
          "(and as much of the cursor's cell); in a file, the text above the cursor.",
        type: 'number',
        minimum: 0
      },
      maxSuffixChars: {
        title: 'Context after the cursor (characters)',
        description: 'How much text below the cursor (whole cells below it, in a notebook) is sent.',
        type: 'number',
        minimum: 0
      }
    }
  };

  constructor(serverSettings: ServerConnection.ISettings = ServerConnection.makeSettings()) {
    this._suggester = new Suggester(
      (path, init) => ServerConnection.makeRequest(apiUrl(path, serverSettings), init, serverSettings),
      { onEvent: event => this._log(event) }
    );
  }

  configure(settings: { [property: string]: JSONValue }): void {
    this._suggester.configure(readSettings(settings));
  }

  async fetch(request: CompletionHandler.IRequest, context: IInlineCompletionContext): Promise<IInlineCompletionList> {
    const invoked = context.triggerKind === InlineCompletionTriggerKind.Invoke;
    let doc: DocumentSnapshot;
    try {
      // JupyterLab counts the cursor in characters (code points); the snapshot in JS indices
      const offset = Text.charIndexToJsIndex(request.offset, request.text);
      doc = this._snapshot(context.widget, request.text, offset, request.mimeType);
    } catch (err) {
      console.warn('llamalab inline completion: cannot read the editor:', (err as Error).message);
      return { items: [] };
    }
    if (!shouldRequest(doc, invoked)) {
      return { items: [] };
    }
    if (invoked) {
      const token = `llamalab-${++this._counter}`;
      this._pending.clear();
      this._pending.set(token, doc);
      return { items: [{ insertText: '', isIncomplete: true, token }] };
    }
    try {
      return { items: replyToItems(await this._suggester.suggest(doc)) };
    } catch (err) {
      console.warn('llamalab inline completion failed:', (err as Error).message);
      return { items: [] };
    }
  }

  async *stream(token: string): AsyncGenerator<{ response: IInlineCompletionItem }> {
    const doc = this._pending.get(token);
    this._pending.delete(token);
    if (!doc) {
      return;
    }
    let text = '';
    try {
      for await (const part of this._suggester.stream(doc)) {
        text = part.text;
        yield { response: { insertText: text, isIncomplete: !part.final, token } };
      }
    } catch (err) {
      const message = err instanceof CompletionError ? err.message : String(err);
      yield { response: { insertText: text, isIncomplete: false, error: { message } } };
    }
  }

  /** A notebook's active cell changed: warm the server's cache for its cursor (code cells);
   * a notebook still opening is warmed when its document and kernel session are ready. */
  cellEntered(panel: NotebookPanel): void {
    try {
      if (!panel.context.isReady || !panel.sessionContext.isReady) {
        // a notebook being opened: warm once its kernel is known (its names lead the prompt)
        void Promise.all([panel.context.ready, panel.sessionContext.ready])
          .then(() => this.cellEntered(panel))
          .catch(() => undefined);
        return;
      }
      const cell = panel.content.activeCell;
      if (!cell || cell.model.type !== 'code') {
        return;
      }
      const text = cell.model.sharedModel.getSource();
      const editor = cell.editor;
      const offset = editor ? editor.getOffsetAt(editor.getCursorPosition()) : text.length;
      this._suggester.warm(this._snapshot(panel, text, offset, cell.model.mimeType));
    } catch (err) {
      console.warn('llamalab inline completion: no warm-up:', (err as Error).message);
    }
  }

  /** A cell of `notebook` ran: the kernel's names may have changed. */
  cellExecuted(notebook: Notebook, executionCount: number | null | undefined): void {
    const seen = this._executions.get(notebook) ?? highestExecutionCount(notebook);
    this._executions.set(notebook, Math.max(seen + 1, executionCount ?? 0));
  }

  /** JupyterLab's inline completer accepted a suggestion in `widget` (Tab): when the editor now
   * holds the shown suggestion, the next one is asked for ahead of time. */
  suggestionAccepted(widget: Widget | null): void {
    try {
      const editor = activeEditor(widget);
      if (!widget || !editor) {
        return;
      }
      const text = editor.model.sharedModel.getSource();
      const offset = editor.getOffsetAt(editor.getCursorPosition());
      this._suggester.accepted(this._snapshot(widget, text, offset, editor.model.mimeType));
    } catch (err) {
      console.warn('llamalab inline completion: no prefetch:', (err as Error).message);
    }
  }

  /** The cursor and what JupyterLab knows around it. */
  private _snapshot(widget: Widget, text: string, offset: number, mimeType?: string): DocumentSnapshot {
    if (widget instanceof NotebookPanel) {
      const languageInfo = widget.model?.getMetadata('language_info') as { name?: string } | undefined;
      const kernel = widget.sessionContext.session?.kernel;
      return {
        text,
        offset,
        path: widget.context.path,
        language: languageOf(mimeType, languageInfo?.name ?? widget.model?.defaultKernelLanguage ?? null),
        notebook: notebookSnapshot(widget),
        kernel: kernel ? { id: kernel.id, execution_count: this._executionCount(widget.content) } : null
      };
    }
    // a file editor (any document widget) has a path; a console only an id
    const path = (widget as Partial<{ context: { path?: unknown } }>).context?.path;
    return {
      text,
      offset,
      path: typeof path === 'string' ? path : null,
      docId: widget.id,
      language: languageOf(mimeType)
    };
  }

  private _executionCount(notebook: Notebook): number {
    let count = this._executions.get(notebook);
    if (count === undefined) {
      count = highestExecutionCount(notebook);
      this._executions.set(notebook, count);
    }
    return count;
  }

  private _log(event: SuggesterEvent): void {
    // at debug level: hidden in the browser's console unless asked for (the UI tests read it)
    if (event.kind === 'suggestion') {
      console.debug(`llamalab inline: ${event.source} suggestion (${event.chars} chars) for ${event.doc}`);
    } else {
      console.debug(`llamalab inline: ${event.kind} for ${event.doc}`);
    }
  }

  private readonly _suggester: Suggester;
  private readonly _pending = new Map<string, DocumentSnapshot>();
  private readonly _executions = new WeakMap<Notebook, number>();
  private _counter = 0;
}
