/**
 * The text the chat sends to the model: a pure module, unit-tested in Node.
 *
 * - context blocks: the active cell, the selection or the whole notebook, prepended to the
 *   user's message as fenced blocks with a short label.
 * - errors: ANSI codes stripped from tracebacks, the error of a cell's outputs found, and
 *   the "explain this error" request built from them.
 * - history: the server keeps a conversation's turns only for the life of one WebSocket
 *   connection, so the first message on a new connection sends the earlier turns it should
 *   know (`ChatRequest.history`), the newest that fit a budget.
 * - limits: context blocks cut so that a message fits the server's `max_prompt_chars`.
 */
import type { ChatTurn } from '../wire';
import { ChatEntry, isObject, titleFrom } from './conversations';

// -- context blocks ------------------------------------------------------------------------

/** A piece of the notebook sent along with a message. */
export interface ContextBlock {
  /** Shown to the model and, short, on the message: "Active cell (3) of analysis.ipynb". */
  label: string;
  /** The fence's info string ("python", "" for plain text). */
  language: string;
  text: string;
  /** Which end of `text` to keep when it must be shortened (the start by default). */
  keep?: 'start' | 'end';
}

/** A code fence longer than any run of backticks in `text` (at least three). */
export function fenceFor(text: string): string {
  let longest = 0;
  for (const match of text.matchAll(/`+/g)) {
    longest = Math.max(longest, match[0].length);
  }
  return '`'.repeat(Math.max(3, longest + 1));
}

export function fenced(text: string, language = ''): string {
  const fence = fenceFor(text);
  const body = text.endsWith('\n') ? text : `${text}\n`;
  return `${fence}${language}\n${body}${fence}`;
}

/** `text` cut to at most `max` characters, keeping the start, with a marked cut. */
export function truncate(text: string, max: number, keep: 'start' | 'end' = 'start'): string {
  if (text.length <= max) {
    return text;
  }
  const cut = text.length - max;
  return keep === 'start'
    ? `${text.slice(0, max)}\n… (${cut} more characters left out)`
    : `… (${cut} earlier characters left out)\n${text.slice(text.length - max)}`;
}

/** The message sent to the model: each block as a labelled fence, then the user's text. */
export function withContext(message: string, blocks: readonly ContextBlock[]): string {
  const parts = blocks.filter(b => b.text.trim()).map(b => `${b.label}:\n${fenced(b.text, b.language)}`);
  return parts.length ? `${parts.join('\n\n')}\n\n${message}` : message;
}

/** A notebook cell as the context builders see it (a slice of nbformat's cell). */
export interface CellLike {
  cell_type: string;
  source: string | string[];
  outputs?: unknown[];
}

function sourceOf(cell: CellLike): string {
  return Array.isArray(cell.source) ? cell.source.join('') : cell.source;
}

/**
 * A whole notebook in the "percent" script format (`# %%` before each code cell, markdown
 * cells as comments), one fence the model reads as a script.
 */
export function notebookAsScript(cells: readonly CellLike[], language = 'python', maxChars = 24000): string {
  const comment = ['python', 'r', 'julia', 'bash', 'sh', 'ruby', 'perl'].includes(language.toLowerCase()) ? '#' : '//';
  const parts: string[] = [];
  for (const cell of cells) {
    const source = sourceOf(cell).replace(/\s+$/, '');
    if (cell.cell_type === 'code') {
      parts.push(`${comment} %%\n${source}`);
    } else if (cell.cell_type === 'markdown' && source) {
      const lines = source.split('\n').map(line => (line ? `${comment} ${line}` : comment));
      parts.push(`${comment} %% [markdown]\n${lines.join('\n')}`);
    }
  }
  return truncate(parts.join('\n\n'), maxChars);
}

// -- errors ----------------------------------------------------------------------------------

// CSI sequences (colours, cursor moves), OSC sequences (titles, links) and lone escapes.
// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-?]*[ -/]*[@-~]|\u001b\][^\u0007\u001b]*(?:\u0007|\u001b\\)|\u001b[@-Z\\-_]|\u009b[0-?]*[ -/]*[@-~]/g;

export function stripAnsi(text: string): string {
  return text.replace(ANSI, '');
}

export interface CellError {
  ename: string;
  evalue: string;
  /** The traceback as plain text (ANSI codes stripped). */
  traceback: string;
}

/** The (last) error among a cell's outputs, in nbformat's JSON shape; null if none. */
export function findError(outputs: readonly unknown[] | undefined): CellError | null {
  let found: CellError | null = null;
  for (const output of outputs ?? []) {
    if (!isObject(output) || output.output_type !== 'error') {
      continue;
    }
    const ename = typeof output.ename === 'string' ? output.ename : 'Error';
    const evalue = typeof output.evalue === 'string' ? output.evalue : '';
    const lines = Array.isArray(output.traceback) ? output.traceback.filter((l): l is string => typeof l === 'string') : [];
    const traceback = stripAnsi(lines.join('\n')).replace(/[ \t]+$/gm, '').trim();
    found = { ename, evalue, traceback: traceback || `${ename}: ${evalue}` };
  }
  return found;
}

/** The one line of an error: "NameError: name 'x' is not defined". */
export function errorLine(error: CellError): string {
  return error.evalue ? `${error.ename}: ${error.evalue}` : error.ename;
}

/** The "explain this error" request: what the panel shows, and what is sent. */
export function explainErrorRequest(
  source: string,
  error: CellError,
  language = 'python',
  where = 'the cell'
): { display: string; ask: string; blocks: ContextBlock[]; content: string; context: string[] } {
  const display = `Explain this error and how to fix it: ${titleFrom(errorLine(error), 160)}`;
  const blocks: ContextBlock[] = [
    { label: `The code of ${where}`, language, text: truncate(source, 12000) },
    { label: 'The error it raised', language: '', text: truncate(error.traceback, 8000, 'end'), keep: 'end' }
  ];
  const ask =
    'Explain what caused this error in a few sentences, then show the corrected code in one code block.';
  return { display, ask, blocks, content: withContext(ask, blocks), context: blocks.map(b => b.label) };
}

// -- the server's limits ----------------------------------------------------------------------

/** What `fitContext` sends: the message with its blocks, and the labels to show on it. */
export interface FittedMessage {
  content: string;
  /** The blocks' labels, those that were cut marked so. */
  context: string[];
  /** Whether any block was cut. */
  shortened: boolean;
}

/** The note added to the label of a block cut to fit. */
export function shortenedNote(maxChars: number): string {
  return ` (shortened to fit the server's limit of ${maxChars} characters)`;
}

/**
 * `withContext(message, blocks)`, its blocks cut (the longest first, each with a marked cut) so
 * that the whole stays within `maxChars` (the server's `max_prompt_chars`); the message itself
 * is never cut. Without a limit, or within it, the blocks go as they are.
 */
export function fitContext(message: string, blocks: readonly ContextBlock[], maxChars: number | null | undefined): FittedMessage {
  const kept = blocks.filter(b => b.text.trim());
  const labels = kept.map(b => b.label);
  let content = withContext(message, kept);
  if (!maxChars || content.length <= maxChars || !kept.length) {
    return { content, context: labels, shortened: false };
  }
  const MARK = 64; // room for truncate's "… (N more characters left out)" and a longer fence
  let excess = content.length - maxChars;
  let sizes = kept.map(b => b.text.length);
  for (let round = 0; round < 4 && excess > 0; round++) {
    sizes = shrink(sizes, sizes.reduce((a, b) => a + b, 0) - excess - MARK * kept.length);
    const cut = kept.map((b, i) => ({ ...b, text: b.text.length > sizes[i] ? truncate(b.text, sizes[i], b.keep) : b.text }));
    content = withContext(message, cut);
    excess = content.length - maxChars;
  }
  const note = shortenedNote(maxChars);
  const context = kept.map((b, i) => (b.text.length > sizes[i] ? `${b.label}${note}` : b.label));
  return { content, context, shortened: true };
}

/** `sizes` lowered, the largest first, so that they add up to at most `total` (never below 0). */
function shrink(sizes: readonly number[], total: number): number[] {
  const budget = Math.max(0, total);
  const order = sizes.map((size, i) => ({ size, i })).sort((a, b) => a.size - b.size);
  const out = [...sizes];
  let left = budget;
  order.forEach(({ size, i }, k) => {
    const share = Math.floor(left / (order.length - k));
    out[i] = Math.min(size, share);
    left -= out[i];
  });
  return out;
}

// -- history for a new connection -------------------------------------------------------------

/** The most turns a chat request may carry as `history` (the server's MAX_HISTORY_TURNS). */
export const MAX_HISTORY_TURNS = 200;

/**
 * The turns of a conversation the model saw, as user/assistant pairs: user messages as sent,
 * answers as received. A question without an answer (an error, a dropped connection) is left out.
 */
export function turnsOf(entries: readonly ChatEntry[]): ChatTurn[] {
  const turns: ChatTurn[] = [];
  let question: ChatEntry | null = null;
  for (const entry of entries) {
    if (entry.role === 'user') {
      question = entry;
    } else if (entry.role === 'assistant' && entry.content && question) {
      turns.push({ role: 'user', content: question.sent ?? question.content }, { role: 'assistant', content: entry.content });
      question = null;
    }
  }
  return turns;
}

/**
 * The `history` of the first message of a conversation on a new connection: the newest whole
 * user/assistant pairs of `turns` (as `turnsOf` gives them) whose characters add up to at most
 * `maxChars`, oldest first, at most `maxTurns` turns. Empty when none fits.
 */
export function historyOf(turns: readonly ChatTurn[], maxChars: number, maxTurns = MAX_HISTORY_TURNS): ChatTurn[] {
  let used = 0;
  let start = turns.length - (turns.length % 2);
  while (start >= 2 && turns.length - start + 2 <= maxTurns) {
    const size = turns[start - 2].content.length + turns[start - 1].content.length;
    if (used + size > maxChars) {
      break;
    }
    used += size;
    start -= 2;
  }
  return turns.slice(start, turns.length - (turns.length % 2));
}
