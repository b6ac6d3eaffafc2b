/**
 * The chat's reach into the documents: what "the active cell", "the selection", "the
 * notebook" and "the kernel" are when a message is sent, where a code block goes when inserted,
 * and the "Explain this error" buttons under cells whose output is an error.
 *
 * "The kernel" is a reference the server reads the kernel's names with (its id and the
 * notebook's latest execution count, so the server reads again after each execution): the
 * notebook's running Python kernel, if any.
 */
import type { ILabShell } from '@jupyterlab/application';
import type { Cell, ICodeCellModel } from '@jupyterlab/cells';
import type { CodeEditor } from '@jupyterlab/codeeditor';
import type { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import type { Widget } from '@lumino/widgets';

import type { KernelRef } from '../wire';

import { CellError, CellLike, ContextBlock, findError, notebookAsScript, truncate } from './prompts';
import type { CodeActions } from './markdown';

export interface ContextChoice {
  cell: boolean;
  selection: boolean;
  notebook: boolean;
  /** The names the notebook's kernel defines (read by the server). */
  kernel: boolean;
}

/** Which context toggles can be used now: a label for each, or null. */
export interface ContextPlaces {
  cell: string | null;
  notebook: string | null;
  /** The kernel's name, when the notebook has a running Python kernel. */
  kernel: string | null;
}

/** The notebook's latest execution count: the highest a cell shows (0 before any ran). */
export function latestExecutionCount(counts: Iterable<number | null | undefined>): number {
  let latest = 0;
  for (const count of counts) {
    if (typeof count === 'number' && count > latest) {
      latest = count;
    }
  }
  return latest;
}

/** A cell's error, ready for the "explain this error" request. */
export interface ErrorTarget {
  source: string;
  error: CellError;
  language: string;
  where: string;
}

const MAX_CELL_CHARS = 16000;

const EXTENSIONS: Record<string, string> = {
  py: 'python', js: 'javascript', ts: 'typescript', tsx: 'tsx', jsx: 'jsx', r: 'r', jl: 'julia', sh: 'bash',
  md: 'markdown', json: 'json', yml: 'yaml', yaml: 'yaml', toml: 'toml', sql: 'sql', c: 'c', cpp: 'cpp', h: 'c',
  rs: 'rust', go: 'go', java: 'java', html: 'html', css: 'css'
};

function basename(path: string): string {
  return path.split('/').pop() || path;
}

function selectedText(editor: CodeEditor.IEditor | null | undefined): string {
  if (!editor) {
    return '';
  }
  const source = editor.model.sharedModel.getSource();
  const range = editor.getSelection();
  const a = editor.getOffsetAt(range.start);
  const b = editor.getOffsetAt(range.end);
  return source.slice(Math.min(a, b), Math.max(a, b));
}

function insertAtCursor(editor: CodeEditor.IEditor, text: string): void {
  if (editor.replaceSelection) {
    editor.replaceSelection(text);
  } else {
    const offset = editor.getOffsetAt(editor.getCursorPosition());
    editor.model.sharedModel.updateSource(offset, offset, text);
  }
}

/** The notebook's kernel language ("python" when it cannot tell). */
export function notebookLanguage(panel: NotebookPanel | null): string {
  const model = panel?.content.model;
  const info = model?.getMetadata('language_info') as { name?: string } | undefined;
  const spec = model?.getMetadata('kernelspec') as { language?: string } | undefined;
  return (info?.name || spec?.language || 'python').toLowerCase();
}

function errorOf(cell: Cell | null | undefined): CellError | null {
  if (!cell || cell.model.type !== 'code') {
    return null;
  }
  return findError((cell.model as ICodeCellModel).outputs.toJSON());
}

function cellLabel(panel: NotebookPanel, cell: Cell): string {
  const index = panel.content.widgets.indexOf(cell);
  const count = cell.model.type === 'code' ? (cell.model as ICodeCellModel).executionCount : null;
  const number = count ? ` [${count}]` : index >= 0 ? ` ${index + 1}` : '';
  return `cell${number} of ${basename(panel.context.path)}`;
}

export class Workspace implements CodeActions {
  /** Notebook widget -> the execution count its last run cell got (0 after a kernel restart). */
  private _counts = new WeakMap<object, number>();
  private _watched = new WeakSet<object>();

  constructor(
    private readonly _shell: ILabShell,
    private readonly _notebooks: INotebookTracker | null,
    private readonly _editors: IEditorTracker | null,
    private readonly _copy: (text: string) => void
  ) {
    NotebookActions.executed.connect((_, args) => {
      const count = args.cell.model.type === 'code' ? (args.cell.model as ICodeCellModel).executionCount : null;
      if (typeof count === 'number') {
        this._counts.set(args.notebook, count);
      }
    });
  }

  /** The document the user works in: the main area's notebook or file editor. */
  target(): { notebook: NotebookPanel } | { editor: CodeEditor.IEditor; path: string } | null {
    const current: Widget | null = this._shell.currentWidget;
    const notebook = this._notebooks?.currentWidget ?? null;
    const file = this._editors?.currentWidget ?? null;
    if (file && current === file) {
      return { editor: file.content.editor, path: file.context.path };
    }
    if (notebook && (current === notebook || !file)) {
      return { notebook };
    }
    return file ? { editor: file.content.editor, path: file.context.path } : null;
  }

  /** Which context toggles can be used now (a label for each, or null). */
  describe(): ContextPlaces {
    const target = this.target();
    if (!target) {
      return { cell: null, notebook: null, kernel: null };
    }
    if ('editor' in target) {
      return { cell: basename(target.path), notebook: null, kernel: null };
    }
    const panel = target.notebook;
    const cell = panel.content.activeCell;
    return {
      cell: cell ? cellLabel(panel, cell) : null,
      notebook: basename(panel.context.path),
      kernel: this._kernelOf(panel) ? panel.sessionContext.kernelDisplayName || 'the kernel' : null
    };
  }

  /** The current notebook's running Python kernel, for the server to read its names; null without one. */
  kernel(): KernelRef | null {
    const target = this.target();
    if (!target || 'editor' in target) {
      return null;
    }
    const panel = target.notebook;
    const kernel = this._kernelOf(panel);
    if (!kernel) {
      return null;
    }
    this._watch(panel);
    let count = this._counts.get(panel.content);
    if (count === undefined) {
      const cells = panel.content.widgets.map(c => (c.model.type === 'code' ? (c.model as ICodeCellModel).executionCount : null));
      count = latestExecutionCount(cells);
    }
    return { id: kernel.id, execution_count: count };
  }

  private _kernelOf(panel: NotebookPanel): { id: string } | null {
    const kernel = panel.sessionContext.session?.kernel;
    if (!kernel || kernel.status === 'dead' || notebookLanguage(panel) !== 'python') {
      return null;
    }
    return kernel;
  }

  /** A restarted or changed kernel has run nothing yet: its count starts again at 0. */
  private _watch(panel: NotebookPanel): void {
    if (this._watched.has(panel)) {
      return;
    }
    this._watched.add(panel);
    panel.sessionContext.statusChanged.connect((_, status) => {
      if (status === 'restarting' || status === 'autorestarting' || status === 'starting') {
        this._counts.set(panel.content, 0);
      }
    });
    panel.sessionContext.kernelChanged.connect(() => this._counts.set(panel.content, 0));
  }

  /** The context blocks the toggles ask for; empty ones are left out. */
  contextBlocks(choice: ContextChoice): ContextBlock[] {
    const target = this.target();
    const blocks: ContextBlock[] = [];
    if (!target) {
      return blocks;
    }
    if ('editor' in target) {
      const language = EXTENSIONS[target.path.split('.').pop()?.toLowerCase() ?? ''] ?? '';
      const name = basename(target.path);
      if (choice.selection) {
        blocks.push({ label: `Selected code in ${name}`, language, text: truncate(selectedText(target.editor), MAX_CELL_CHARS) });
      }
      if (choice.cell || choice.notebook) {
        blocks.push({ label: `The file ${name}`, language, text: truncate(target.editor.model.sharedModel.getSource(), MAX_CELL_CHARS * 2) });
      }
      return blocks.filter(b => b.text.trim());
    }
    const panel = target.notebook;
    const language = notebookLanguage(panel);
    const cell = panel.content.activeCell;
    if (choice.notebook && panel.content.model) {
      const cells = (panel.content.model.toJSON() as unknown as { cells: CellLike[] }).cells;
      blocks.push({ label: `The notebook ${basename(panel.context.path)} (percent format)`, language, text: notebookAsScript(cells, language) });
    }
    if (choice.cell && cell) {
      const lang = cell.model.type === 'code' ? language : cell.model.type === 'markdown' ? 'markdown' : '';
      blocks.push({ label: `The active ${cellLabel(panel, cell)}`, language: lang, text: truncate(cell.model.sharedModel.getSource(), MAX_CELL_CHARS) });
    }
    if (choice.selection && cell) {
      blocks.push({ label: `Selected code in ${cellLabel(panel, cell)}`, language, text: truncate(selectedText(cell.editor), MAX_CELL_CHARS) });
    }
    return blocks.filter(b => b.text.trim());
  }

  copy(code: string): void {
    this._copy(code);
  }

  insert(code: string): boolean {
    const target = this.target();
    if (!target) {
      return false;
    }
    const editor = 'editor' in target ? target.editor : target.notebook.content.activeCell?.editor;
    if (!editor) {
      return false;
    }
    insertAtCursor(editor, code);
    return true;
  }

  newCell(code: string): boolean {
    const panel = this._notebooks?.currentWidget;
    if (!panel || !panel.content.model) {
      return false;
    }
    const notebook = panel.content;
    NotebookActions.insertBelow(notebook);
    if (notebook.activeCell?.model.type !== 'code') {
      NotebookActions.changeCellType(notebook, 'code');
    }
    notebook.activeCell?.model.sharedModel.setSource(code);
    return true;
  }

  /** The cell a command or context menu means: by id, under the context menu, or the active one. */
  findCell(cellId?: string, hit?: HTMLElement): { panel: NotebookPanel; cell: Cell } | null {
    const panels: NotebookPanel[] = [];
    this._notebooks?.forEach(p => {
      panels.push(p);
    });
    for (const panel of panels) {
      for (const cell of panel.content.widgets) {
        if ((cellId && cell.model.id === cellId) || (hit && cell.node === hit)) {
          return { panel, cell };
        }
      }
    }
    const panel = this._notebooks?.currentWidget;
    const cell = panel?.content.activeCell;
    return panel && cell && !cellId && !hit ? { panel, cell } : null;
  }

  /** The error of a cell, with what the "explain" request needs; null without one. */
  errorTarget(found: { panel: NotebookPanel; cell: Cell } | null): ErrorTarget | null {
    const error = errorOf(found?.cell);
    if (!found || !error) {
      return null;
    }
    return {
      source: found.cell.model.sharedModel.getSource(),
      error,
      language: notebookLanguage(found.panel),
      where: cellLabel(found.panel, found.cell)
    };
  }
}

/**
 * Puts an "Explain this error" button under every code cell whose outputs hold an error,
 * and takes it away when the error is cleared.
 */
export class ErrorButtons {
  private _watched = new WeakSet<object>();
  private _disposed = false;

  constructor(
    private readonly _tracker: INotebookTracker,
    private readonly _onExplain: (panel: NotebookPanel, cell: Cell) => void
  ) {
    _tracker.widgetAdded.connect(this._onPanel, this);
    _tracker.forEach(panel => this._onPanel(_tracker, panel));
    NotebookActions.executed.connect(this._onExecuted, this);
  }

  dispose(): void {
    this._disposed = true;
    this._tracker.widgetAdded.disconnect(this._onPanel, this);
    NotebookActions.executed.disconnect(this._onExecuted, this);
    document.querySelectorAll('.llamalab-explain-error').forEach(n => n.remove());
  }

  private _onExecuted(_: unknown, args: { notebook: { parent: Widget | null }; cell: Cell }): void {
    const panel = args.notebook.parent;
    if (panel instanceof NotebookPanel) {
      this._update(panel, args.cell);
    }
  }

  private _onPanel(_: unknown, panel: NotebookPanel): void {
    void panel.context.ready.then(() => {
      if (this._disposed || panel.isDisposed) {
        return;
      }
      this._scan(panel);
      panel.content.model?.cells.changed.connect(() => this._scan(panel));
    });
  }

  private _scan(panel: NotebookPanel): void {
    for (const cell of panel.content.widgets) {
      if (cell.model.type !== 'code') {
        continue;
      }
      const model = cell.model as ICodeCellModel;
      if (!this._watched.has(model)) {
        this._watched.add(model);
        model.outputs.changed.connect(() => {
          // the output widgets are replaced after the change: look once they are
          requestAnimationFrame(() => {
            const widget = panel.content.widgets.find(w => w.model === model);
            if (widget && !this._disposed) {
              this._update(panel, widget);
            }
          });
        });
      }
      this._update(panel, cell);
    }
  }

  private _update(panel: NotebookPanel, cell: Cell): void {
    const area = (cell as Cell & { outputArea?: { node: HTMLElement } }).outputArea?.node;
    if (!area) {
      return;
    }
    const existing = area.querySelector(':scope > .llamalab-explain-error');
    const error = errorOf(cell);
    if (!error) {
      existing?.remove();
      return;
    }
    const b = (existing as HTMLButtonElement | null) ?? document.createElement('button');
    if (!existing) {
      b.type = 'button';
      b.className = 'llamalab-explain-error jp-mod-styled';
      b.dataset.testid = 'llamalab-explain-error';
      b.textContent = 'Explain this error';
      b.addEventListener('click', () => this._onExplain(panel, cell));
    }
    b.title = `Ask the model to explain ${error.ename} and fix the cell`;
    area.appendChild(b); // last, after the outputs
  }
}
