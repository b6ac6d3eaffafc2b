/**
 * The inline completer's pure logic: what to send for a cursor (the cursor's cell or file text
 * around it, a notebook's neighbouring cells as structure, bounded in characters and cells),
 * when to ask at all and how a suggestion is fitted to the cursor. No JupyterLab imports at run
 * time, so jest loads it in Node.
 *
 * A notebook's request keeps its start while the user types: the cells around the cursor's
 * are whole cells chosen by their own budgets (typing in the cursor's cell never changes which
 * ones are sent), and a cursor cell or file too long for the budget is cut at a point that
 * moves only every quarter of the budget (`stableTail`), so the server's cached prompt stays
 * valid between keystrokes.
 */
import type { CompletionRequest, KernelRef, NotebookCell } from '../wire';

/** The request body of `POST /llamalab/complete`. */
export type CompletionRequestBody = CompletionRequest;

export type CompletionMode = NonNullable<CompletionRequest['mode']>;
export type CellKind = NonNullable<NotebookCell['kind']>;

/** The provider's settings (JupyterLab's inline completer passes them per provider). */
export interface CompleterSettings {
  enabled: boolean;
  autoFillInMiddle: boolean;
  maxTokens: number;
  mode: CompletionMode;
  maxPrefixChars: number;
  maxSuffixChars: number;
}

export const DEFAULT_SETTINGS: CompleterSettings = {
  enabled: true,
  autoFillInMiddle: false,
  maxTokens: 64,
  mode: 'auto',
  maxPrefixChars: 32000,
  maxSuffixChars: 1500
};

/** The most cells a request carries above the cursor's, and below it (with it: 400). */
export const MAX_CELLS_ABOVE = 300;
export const MAX_CELLS_BELOW = 99;
/** The server keeps the notebook's first cells up to this many characters as the prompt's head
 * (`llamalab.suggest.notebook.HEAD_CHARS`); a long notebook sends them ahead of the cells near
 * the cursor. */
export const HEAD_CHARS = 2048;
export const MAX_HEAD_CELLS = 64;
/** The server's limit on a cell id's length. */
export const MAX_CELL_ID = 128;

/** Reads the provider's settings from what JupyterLab hands `configure`, keeping sane values. */
export function readSettings(raw: { [key: string]: unknown }): CompleterSettings {
  const int = (value: unknown, fallback: number, min: number, max: number): number =>
    typeof value === 'number' && Number.isFinite(value) ? Math.min(max, Math.max(min, Math.round(value))) : fallback;
  const bool = (value: unknown, fallback: boolean): boolean => (typeof value === 'boolean' ? value : fallback);
  const mode = raw.mode === 'single' || raw.mode === 'multi' || raw.mode === 'auto' ? raw.mode : DEFAULT_SETTINGS.mode;
  return {
    enabled: bool(raw.enabled, DEFAULT_SETTINGS.enabled),
    autoFillInMiddle: bool(raw.autoFillInMiddle, DEFAULT_SETTINGS.autoFillInMiddle),
    maxTokens: int(raw.maxTokens, DEFAULT_SETTINGS.maxTokens, 1, 4096),
    mode,
    maxPrefixChars: int(raw.maxPrefixChars, DEFAULT_SETTINGS.maxPrefixChars, 0, 200000),
    maxSuffixChars: int(raw.maxSuffixChars, DEFAULT_SETTINGS.maxSuffixChars, 0, 200000)
  };
}

// -- bounding text -----------------------------------------------------------------------

/** How far past a cut a line start is looked for. */
const LINE_REACH = 1000;

function isLowSurrogate(code: number): boolean {
  return code >= 0xdc00 && code <= 0xdfff;
}

/** `cut` moved off the middle of a surrogate pair (forwards), so no half character is sent. */
function safeStart(text: string, cut: number): number {
  return cut > 0 && cut < text.length && isLowSurrogate(text.charCodeAt(cut)) ? cut + 1 : cut;
}

/** `end` moved off the middle of a surrogate pair (backwards). */
function safeEnd(text: string, end: number): number {
  return end > 0 && end < text.length && isLowSurrogate(text.charCodeAt(end)) ? end - 1 : end;
}

/** Keeps the last `max` characters of `text`, starting at a line start when one is in reach. */
export function keepTail(text: string, max: number): string {
  if (text.length <= max) {
    return text;
  }
  const cut = text.length - max;
  const newline = text.indexOf('\n', cut);
  return newline >= 0 ? text.slice(newline + 1) : text.slice(safeStart(text, cut));
}

/** Keeps the first `max` characters of `text`, ending at a line end when one is in reach. */
export function keepHead(text: string, max: number): string {
  if (text.length <= max) {
    return text;
  }
  const newline = text.lastIndexOf('\n', max);
  return newline > 0 ? text.slice(0, newline) : text.slice(0, safeEnd(text, max));
}

/**
 * Keeps at most the last `max` characters of `text` (the text before a cursor), cut where the
 * cut stays put while text is appended: at a multiple of `quantum` characters from the start,
 * then at the next line start within reach. Typing moves the cut once every `quantum`
 * characters, not on every keystroke.
 */
export function stableTail(text: string, max: number, quantum = Math.max(1, Math.floor(max / 4))): string {
  if (text.length <= max) {
    return text;
  }
  if (max <= 0) {
    return '';
  }
  const step = Math.max(1, Math.floor(quantum));
  const cut = Math.ceil((text.length - max) / step) * step;
  const newline = text.indexOf('\n', cut);
  if (newline >= 0 && newline - cut < LINE_REACH) {
    return text.slice(newline + 1);
  }
  return text.slice(safeStart(text, cut));
}

// -- the document around the cursor ------------------------------------------------------

/** One notebook cell as the provider reads it. */
export interface CellSnapshot {
  id: string;
  source: string;
  kind: CellKind;
}

/** A notebook, read lazily: only the cells a request sends are ever read. */
export interface NotebookSnapshot {
  /** How many cells the notebook has. */
  count: number;
  /** The cursor's cell. */
  index: number;
  /** Reads cell `i` (0 <= i < count). */
  cellAt(i: number): CellSnapshot;
}

/** What the provider knows about the cursor. */
export interface DocumentSnapshot {
  /** The text of the cursor's cell (a notebook) or of the whole document. */
  text: string;
  /** The cursor, as an index into `text`. */
  offset: number;
  /** The document's path (the notebook's, for a cell); the server keys its cache on it. */
  path?: string | null;
  /** Names the document in the suggestion cache when it has no path (a console). */
  docId?: string | null;
  language?: string | null;
  notebook?: NotebookSnapshot | null;
  kernel?: KernelRef | null;
}

/** The cursor clamped into its text. */
export function cursorOf(doc: Pick<DocumentSnapshot, 'text' | 'offset'>): number {
  const offset = Number.isFinite(doc.offset) ? Math.floor(doc.offset) : doc.text.length;
  return Math.max(0, Math.min(offset, doc.text.length));
}

const KINDS: ReadonlySet<string> = new Set(['code', 'markdown', 'raw']);

function wireCell(cell: CellSnapshot, index: number): NotebookCell {
  const id = typeof cell.id === 'string' && cell.id ? cell.id.slice(0, MAX_CELL_ID) : `cell-${index}`;
  const kind = KINDS.has(cell.kind) ? cell.kind : 'code';
  return { id, source: typeof cell.source === 'string' ? cell.source : '', kind };
}

/**
 * The cells to send around the cursor's: walking out from it, whole cells while their sources
 * fit `maxPrefixChars` above and `maxSuffixChars` below (at most MAX_CELLS_ABOVE and
 * MAX_CELLS_BELOW of them), the first that does not fit ending the walk. The cursor's cell is
 * sent with an empty source (the server reads it from prefix and suffix). Never throws: a cell
 * that cannot be read ends the walk on its side.
 */
export function cellWindow(
  notebook: NotebookSnapshot,
  bounds: Pick<CompleterSettings, 'maxPrefixChars' | 'maxSuffixChars'>
): { cells: NotebookCell[]; cellIndex: number } {
  const count = Math.max(0, Math.floor(notebook.count));
  const index = Math.max(0, Math.min(Math.floor(notebook.index), count - 1));
  const read = (i: number): NotebookCell | null => {
    try {
      return wireCell(notebook.cellAt(i), i);
    } catch {
      return null;
    }
  };
  const walk = (from: number, step: 1 | -1, budget: number, most: number): NotebookCell[] => {
    const taken: NotebookCell[] = [];
    let used = 0;
    for (let i = from; i >= 0 && i < count && taken.length < most; i += step) {
      const cell = read(i);
      if (!cell || used + (cell.source ?? '').length > budget) {
        break;
      }
      used += (cell.source ?? '').length;
      taken.push(cell);
    }
    return taken;
  };
  const current = read(index) ?? { id: `cell-${index}`, source: '', kind: 'code' as const };
  let above = walk(index - 1, -1, bounds.maxPrefixChars, MAX_CELLS_ABOVE).reverse();
  const firstAbove = index - above.length;
  if (firstAbove > 0) {
    // the notebook's head (imports, data loading): its first cells up to HEAD_CHARS, before a gap
    const head = walk(0, 1, HEAD_CHARS, MAX_HEAD_CELLS).filter((_, i) => i < firstAbove);
    above = [...head, ...above];
  }
  const below = walk(index + 1, 1, bounds.maxSuffixChars, MAX_CELLS_BELOW);
  return { cells: [...above, { ...current, source: '' }, ...below], cellIndex: above.length };
}

/** The request for a cursor: the text before and after it (bounded), a notebook's cells around
 * its cell, the path, the language and the kernel; `warm` for a cache warm-up. */
export function buildRequest(
  doc: DocumentSnapshot,
  settings: CompleterSettings,
  options: { stream?: boolean; warm?: boolean } = {}
): CompletionRequestBody {
  const offset = cursorOf(doc);
  const body: CompletionRequestBody = {
    prefix: stableTail(doc.text.slice(0, offset), settings.maxPrefixChars),
    suffix: keepHead(doc.text.slice(offset), settings.maxSuffixChars)
  };
  if (doc.notebook && doc.notebook.count > 0) {
    const { cells, cellIndex } = cellWindow(doc.notebook, settings);
    body.cells = cells;
    body.cell_index = cellIndex;
  }
  body.path = doc.path ?? null;
  body.language = doc.language ?? null;
  if (doc.kernel && doc.kernel.id) {
    body.kernel = { id: doc.kernel.id.slice(0, 128), execution_count: Math.max(0, doc.kernel.execution_count ?? 0) };
  }
  body.max_tokens = settings.maxTokens;
  body.mode = settings.mode;
  body.stream = !!options.stream;
  if (options.warm) {
    body.warm = true;
  }
  return body;
}

/** Whether to ask the server at all. An explicit invoke always asks; an automatic trigger
 * does not when the cell holds nothing but whitespace before the cursor. */
export function shouldRequest(doc: Pick<DocumentSnapshot, 'text' | 'offset'>, invoked: boolean): boolean {
  if (invoked) {
    return true;
  }
  return doc.text.slice(0, cursorOf(doc)).trim() !== '';
}

/** Whether JupyterLab asks on its own at this cursor (so a request made ahead of time will be
 * used): the line before the cursor is not blank, and the cursor ends its line unless
 * fill-in-the-middle is on for automatic requests. */
export function asksAutomatically(
  doc: Pick<DocumentSnapshot, 'text' | 'offset'>,
  settings: Pick<CompleterSettings, 'autoFillInMiddle'>
): boolean {
  const offset = cursorOf(doc);
  if (linePrefix(doc.text, offset).trim() === '') {
    return false;
  }
  const lineEnd = doc.text.indexOf('\n', offset);
  const atEnd = (lineEnd < 0 ? doc.text.length : lineEnd) === offset;
  return atEnd || settings.autoFillInMiddle;
}

/** The current line's text before the cursor. */
export function linePrefix(text: string, offset: number): string {
  const end = Math.max(0, Math.min(offset, text.length));
  const start = text.lastIndexOf('\n', end - 1) + 1;
  return text.slice(start, end);
}

/**
 * Fits a suggestion to a cursor on a blank (or indented, empty) line: a model that starts
 * with a line break there would leave an empty line behind, so leading blank lines go, and
 * with them the indentation the cursor already stands on.
 */
export function fitToCursor(suggestion: string, lineBefore: string): string {
  if (lineBefore.trim() !== '' || !/^[ \t]*\r?\n/.test(suggestion)) {
    return suggestion;
  }
  let text = suggestion.replace(/^(?:[ \t]*\r?\n)+/, '');
  if (lineBefore && text.startsWith(lineBefore)) {
    text = text.slice(lineBefore.length);
  }
  return text;
}

/** The inline items for a suggestion: none for an empty one. */
export function replyToItems(reply: { text: string } | null): { insertText: string }[] {
  if (!reply || !reply.text || reply.text.trim() === '') {
    return [];
  }
  return [{ insertText: reply.text }];
}

/** Language names the server understands, from the editor's MIME type. */
const MIME_LANGUAGES: { [mime: string]: string } = {
  'text/x-python': 'python',
  'text/x-ipython': 'python',
  'text/x-cython': 'python',
  'text/x-rsrc': 'r',
  'text/x-julia': 'julia',
  'text/javascript': 'javascript',
  'application/javascript': 'javascript',
  'text/typescript': 'typescript',
  'application/typescript': 'typescript',
  'text/x-typescript': 'typescript',
  'text/x-sh': 'bash',
  'application/x-sh': 'bash',
  'text/x-sql': 'sql',
  'text/x-csrc': 'c',
  'text/x-c++src': 'cpp',
  'text/x-java': 'java',
  'text/x-go': 'go',
  'text/x-rustsrc': 'rust',
  'text/x-rust': 'rust',
  'text/markdown': 'markdown',
  'text/x-markdown': 'markdown',
  'text/x-ipythongfm': 'markdown',
  'text/html': 'html',
  'text/css': 'css',
  'application/json': 'json',
  'text/x-yaml': 'yaml',
  'text/x-toml': 'toml'
};

/** The language of the text being edited: the notebook's kernel language when known, else
 * the editor's MIME type; null when neither says. */
export function languageOf(mimeType: string | undefined, kernelLanguage?: string | null): string | null {
  if (kernelLanguage) {
    return kernelLanguage.toLowerCase();
  }
  if (!mimeType) {
    return null;
  }
  return MIME_LANGUAGES[mimeType.toLowerCase()] ?? null;
}
