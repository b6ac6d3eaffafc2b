/**
 * The text the chat sends to the model: a pure module, unit-tested in Node.
 *
 * - context blocks: the active cell, the selection or the whole notebook, prepended to the
 *   user's message as fenced blocks with a short label.
 * - errors: ANSI codes stripped from tracebacks, the error of a cell's outputs found, and
 *   the "explain this error" request built from them.
 * - carry-over: the server keeps a conversation's history only for the life of one
 *   WebSocket connection, so the first message after a reconnect carries the earlier turns.
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
): { display: string; content: string; context: string[] } {
  const display = `Explain this error and how to fix it: ${titleFrom(errorLine(error), 160)}`;
  const blocks: ContextBlock[] = [
    { label: `The code of ${where}`, language, text: truncate(source, 12000) },
    { label: 'The error it raised', language: '', text: truncate(error.traceback, 8000, 'end') }
  ];
  const ask =
    'Explain what caused this error in a few sentences, then show the corrected code in one code block.';
  return { display, content: withContext(ask, blocks), context: blocks.map(b => b.label) };
}

// -- carry-over after a reconnect ---------------------------------------------------------------

/** The turns of a conversation the model saw: user messages as sent, answers as received. */
export function turnsOf(entries: readonly ChatEntry[]): ChatTurn[] {
  const turns: ChatTurn[] = [];
  for (const entry of entries) {
    if (entry.role === 'user') {
      turns.push({ role: 'user', content: entry.sent ?? entry.content });
    } else if (entry.role === 'assistant' && entry.content) {
      turns.push({ role: 'assistant', content: entry.content });
    }
  }
  // A question without an answer (an error, a dropped connection) is left out.
  return turns.filter((turn, i) => turn.role === 'assistant' || turns[i + 1]?.role === 'assistant');
}

/**
 * The first message of a conversation on a new connection, when the conversation already has
 * turns the server no longer knows: the newest earlier turns (as many as fit `maxChars`) as a
 * transcript, then the new message. Without earlier turns, the message itself.
 */
export function carryOver(earlier: readonly ChatTurn[], content: string, maxChars = 12000): string {
  const lines: string[] = [];
  let used = 0;
  for (let i = earlier.length - 1; i >= 0; i--) {
    const turn = earlier[i];
    const line = `${turn.role === 'user' ? 'User' : 'Assistant'}: ${turn.content.trim()}`;
    if (used + line.length > maxChars) {
      break;
    }
    lines.unshift(line);
    used += line.length + 2;
  }
  if (!lines.length) {
    return content;
  }
  return `Our conversation so far:\n\n${lines.join('\n\n')}\n\n---\n\n${content}`;
}
