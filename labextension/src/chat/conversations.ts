/**
 * The chat's conversations and the text it builds for the model: a pure module (no
 * JupyterLab at run time), unit-tested in Node.
 *
 * - `ConversationStore`: several conversations, the active one, kept in a `KeyValueStorage`
 *   (the browser's localStorage) as versioned JSON that is validated when read back.
 * - context blocks: the active cell, the selection or the whole notebook, prepended to the
 *   user's message as fenced blocks with a short label.
 * - errors: ANSI codes stripped from tracebacks, the error of a cell's outputs found, and
 *   the "explain this error" request built from them.
 * - carry-over: the server keeps a conversation's history only for the life of one
 *   WebSocket connection, so the first message after a reconnect carries the earlier turns.
 */
import type { ChatTurn, DoneMessage, Usage } from '../wire';

export type EntryRole = 'user' | 'assistant' | 'error';
export type FinishReason = DoneMessage['finish_reason'];

/** One message in a conversation as the panel shows it. */
export interface ChatEntry {
  /** The chat request's id (a user message and its answer share it); errors get their own. */
  id: string;
  role: EntryRole;
  /** What the panel shows: the user's text, the answer's Markdown, an error's one line. */
  content: string;
  /** user: what was sent when it differs from `content` (context blocks prepended). */
  sent?: string;
  /** user: the labels of the context blocks that were sent with it. */
  context?: string[];
  /** assistant: still streaming. */
  streaming?: boolean;
  finishReason?: FinishReason;
  notice?: string | null;
  model?: string;
  usage?: Usage;
  /** error: the server's error code and details, shown on demand. */
  code?: string;
  detail?: unknown;
  time: number;
}

export interface Conversation {
  id: string;
  title: string;
  /** The system prompt; null: the server's default. */
  system: string | null;
  entries: ChatEntry[];
  created: number;
  updated: number;
}

/** The part of `Storage` the store needs (localStorage in the browser, a Map in tests). */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export const STORAGE_KEY = 'llamalab-chat:conversations';
export const STORAGE_VERSION = 1;
export const MAX_CONVERSATIONS = 30;
export const MAX_ENTRIES = 400;
const UNTITLED = 'New conversation';

interface Stored {
  version: number;
  active: string | null;
  model: string;
  conversations: Conversation[];
}

/** A random id, unique enough for conversations and request ids. */
export function newId(prefix = ''): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  const id = c?.randomUUID ? c.randomUUID() : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
  return prefix + id;
}

/** A conversation's title from its first message: one line, at most `max` characters. */
export function titleFrom(text: string, max = 48): string {
  const line = text.replace(/\s+/g, ' ').trim();
  if (!line) {
    return UNTITLED;
  }
  return line.length > max ? `${line.slice(0, max - 1).trimEnd()}…` : line;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const ROLES: readonly string[] = ['user', 'assistant', 'error'];
const FINISH: readonly string[] = ['stop', 'length', 'cancelled'];

/** A stored entry, checked field by field; null when it cannot be one. */
function readEntry(value: unknown): ChatEntry | null {
  if (!isObject(value) || typeof value.id !== 'string' || typeof value.content !== 'string') {
    return null;
  }
  if (typeof value.role !== 'string' || !ROLES.includes(value.role)) {
    return null;
  }
  const entry: ChatEntry = {
    id: value.id,
    role: value.role as EntryRole,
    content: value.content,
    time: typeof value.time === 'number' ? value.time : 0
  };
  if (typeof value.sent === 'string') {
    entry.sent = value.sent;
  }
  if (Array.isArray(value.context)) {
    entry.context = value.context.filter((c): c is string => typeof c === 'string');
  }
  if (typeof value.finishReason === 'string' && FINISH.includes(value.finishReason)) {
    entry.finishReason = value.finishReason as FinishReason;
  }
  if (typeof value.notice === 'string') {
    entry.notice = value.notice;
  }
  if (typeof value.model === 'string') {
    entry.model = value.model;
  }
  if (isObject(value.usage)) {
    entry.usage = value.usage as unknown as Usage;
  }
  if (typeof value.code === 'string') {
    entry.code = value.code;
  }
  if (value.detail !== undefined) {
    entry.detail = value.detail;
  }
  // An answer that was streaming when the page went away was cut short.
  if (entry.role === 'assistant' && value.streaming === true) {
    entry.finishReason = entry.finishReason ?? 'cancelled';
  }
  return entry;
}

function readConversation(value: unknown): Conversation | null {
  if (!isObject(value) || typeof value.id !== 'string' || !value.id || !Array.isArray(value.entries)) {
    return null;
  }
  const entries = value.entries.map(readEntry).filter((e): e is ChatEntry => e !== null);
  const now = Date.now();
  return {
    id: value.id,
    title: typeof value.title === 'string' && value.title ? value.title : UNTITLED,
    system: typeof value.system === 'string' ? value.system : null,
    entries: entries.slice(-MAX_ENTRIES),
    created: typeof value.created === 'number' ? value.created : now,
    updated: typeof value.updated === 'number' ? value.updated : now
  };
}

/** Parses what `ConversationStore.serialize` wrote; anything unreadable is left out. */
export function deserialize(text: string | null): Stored {
  const empty: Stored = { version: STORAGE_VERSION, active: null, model: '', conversations: [] };
  if (!text) {
    return empty;
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return empty;
  }
  if (!isObject(data) || data.version !== STORAGE_VERSION || !Array.isArray(data.conversations)) {
    return empty;
  }
  const conversations = data.conversations.map(readConversation).filter((c): c is Conversation => c !== null);
  return {
    version: STORAGE_VERSION,
    active: typeof data.active === 'string' ? data.active : null,
    model: typeof data.model === 'string' ? data.model : '',
    conversations
  };
}

/**
 * The conversations, newest first, and which one is shown. Every change is saved (when a
 * storage is given) and announced to the listeners; entries are replaced, never mutated, so
 * that a React view can compare them by identity.
 */
export class ConversationStore {
  private _conversations: Conversation[] = [];
  private _active = '';
  private _model = '';
  private _listeners = new Set<() => void>();

  constructor(
    private readonly _storage: KeyValueStorage | null = null,
    private readonly _key = STORAGE_KEY
  ) {
    let stored: Stored | null = null;
    try {
      stored = deserialize(_storage?.getItem(_key) ?? null);
    } catch {
      stored = null; // storage forbidden (private mode): start empty
    }
    this._conversations = stored?.conversations ?? [];
    this._model = stored?.model ?? '';
    const active = stored?.active;
    if (active && this._conversations.some(c => c.id === active)) {
      this._active = active;
    } else if (this._conversations.length) {
      this._active = this._conversations[0].id;
    } else {
      this._active = this._make().id;
    }
  }

  get conversations(): readonly Conversation[] {
    return this._conversations;
  }

  get active(): Conversation {
    return this.get(this._active) ?? this._conversations[0];
  }

  /** The model picked for chats ('' : the server's default). */
  get model(): string {
    return this._model;
  }

  set model(name: string) {
    this._model = name;
    this._changed();
  }

  get(id: string): Conversation | undefined {
    return this._conversations.find(c => c.id === id);
  }

  subscribe(listener: () => void): () => void {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  /** Starts a conversation (or shows the active one when it is still empty) and shows it. */
  create(): Conversation {
    const current = this.active;
    if (current && current.entries.length === 0) {
      return current;
    }
    const conversation = this._make();
    this._changed();
    return conversation;
  }

  select(id: string): void {
    if (this.get(id) && id !== this._active) {
      this._active = id;
      this._changed();
    }
  }

  /** Deletes a conversation; the next one (or a new, empty one) becomes active. */
  remove(id: string): void {
    const index = this._conversations.findIndex(c => c.id === id);
    if (index < 0) {
      return;
    }
    this._conversations = this._conversations.filter(c => c.id !== id);
    if (this._active === id) {
      const next = this._conversations[Math.min(index, this._conversations.length - 1)];
      this._active = next ? next.id : this._make().id;
    }
    this._changed();
  }

  /** Empties a conversation, keeping its id, title reset and system prompt. */
  clear(id: string): void {
    this._update(id, c => ({ ...c, title: UNTITLED, entries: [] }));
  }

  setSystem(id: string, system: string | null): void {
    this._update(id, c => ({ ...c, system }));
  }

  rename(id: string, title: string): void {
    this._update(id, c => ({ ...c, title: titleFrom(title, 80) }));
  }

  /** Appends entries; the first user message names an untitled conversation. */
  append(id: string, ...entries: ChatEntry[]): void {
    this._update(id, c => {
      let title = c.title;
      const first = entries.find(e => e.role === 'user');
      if (title === UNTITLED && first && !c.entries.some(e => e.role === 'user')) {
        title = titleFrom(first.content);
      }
      return { ...c, title, entries: [...c.entries, ...entries].slice(-MAX_ENTRIES) };
    });
    this._moveToTop(id);
  }

  /** Replaces the entry `entryId` (role `role`) with `change(entry)`. */
  patch(id: string, entryId: string, role: EntryRole, change: (entry: ChatEntry) => ChatEntry): void {
    this._update(id, c => ({
      ...c,
      entries: c.entries.map(e => (e.id === entryId && e.role === role ? change(e) : e))
    }));
  }

  /** Takes one entry out of a conversation. */
  drop(id: string, entryId: string, role: EntryRole): void {
    this._update(id, c => ({ ...c, entries: c.entries.filter(e => !(e.id === entryId && e.role === role)) }));
  }

  /** Writes the store now; changes to a streaming answer are saved when it ends. */
  save(): void {
    if (!this._storage) {
      return;
    }
    try {
      this._storage.setItem(this._key, this.serialize());
    } catch {
      // full or forbidden storage: the conversations live on for this page
    }
  }

  serialize(): string {
    const data: Stored = {
      version: STORAGE_VERSION,
      active: this._active,
      model: this._model,
      conversations: this._conversations.slice(0, MAX_CONVERSATIONS)
    };
    return JSON.stringify(data);
  }

  private _make(): Conversation {
    const now = Date.now();
    const conversation: Conversation = { id: newId('c-'), title: UNTITLED, system: null, entries: [], created: now, updated: now };
    this._conversations = [conversation, ...this._conversations].slice(0, MAX_CONVERSATIONS);
    this._active = conversation.id;
    return conversation;
  }

  private _moveToTop(id: string): void {
    const index = this._conversations.findIndex(c => c.id === id);
    if (index > 0) {
      const [conversation] = this._conversations.splice(index, 1);
      this._conversations = [conversation, ...this._conversations];
    }
  }

  private _update(id: string, change: (c: Conversation) => Conversation): void {
    let found = false;
    this._conversations = this._conversations.map(c => {
      if (c.id !== id) {
        return c;
      }
      found = true;
      return { ...change(c), updated: Date.now() };
    });
    if (found) {
      this._changed();
    }
  }

  private _changed(): void {
    const streaming = this._conversations.some(c => c.entries.some(e => e.streaming));
    if (!streaming) {
      this.save();
    }
    for (const listener of [...this._listeners]) {
      listener();
    }
  }
}

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
