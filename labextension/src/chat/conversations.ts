/**
 * The chat's conversations: a pure module (no JupyterLab at run time), unit-tested in Node.
 * `ConversationStore` holds several conversations and the active one. With `{ server: true }`
 * (the chat panel) the conversations are the Jupyter server's (sync.ts keeps this copy in step
 * with /llamalab/conversations) and the `KeyValueStorage` (localStorage) keeps only which one is
 * shown and the picked model; without it, everything is kept in the storage as versioned JSON
 * that is validated when read back (what earlier versions did: sync.ts moves such conversations
 * to the server once). The text sent to the model is built in prompts.ts.
 */
import type { DoneMessage, Usage } from '../wire';

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
  /** The server's revision of it; undefined: not on the server yet (server mode). */
  revision?: number;
  /** false: only its summary is here yet (server mode); its entries come with a GET. */
  loaded?: boolean;
}

export interface StoreOptions {
  /** The conversations live on the server; the storage keeps only the active one and the model. */
  server?: boolean;
}

/** The part of `Storage` the store needs (localStorage in the browser, a Map in tests). */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
}

export const STORAGE_KEY = 'llamalab-chat:conversations';
/** Server mode: which conversation is shown and the picked model. */
export const PREFS_KEY = 'llamalab-chat:prefs';
export const STORAGE_VERSION = 1;
export const MAX_CONVERSATIONS = 30;
export const MAX_ENTRIES = 400;
export const UNTITLED = 'New conversation';

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

function sortByUpdated(conversations: Conversation[]): Conversation[] {
  return [...conversations].sort((a, b) => b.updated - a.updated);
}

export function isObject(value: unknown): value is Record<string, unknown> {
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
  private _wanted: string | null = null;
  readonly server: boolean;

  constructor(
    private readonly _storage: KeyValueStorage | null = null,
    private readonly _key = STORAGE_KEY,
    options: StoreOptions = {}
  ) {
    this.server = !!options.server;
    let stored: Stored | null = null;
    try {
      stored = deserialize(_storage?.getItem(this.server ? PREFS_KEY : _key) ?? null);
    } catch {
      stored = null; // storage forbidden (private mode): start empty
    }
    this._conversations = stored?.conversations ?? [];
    this._wanted = this.server ? stored?.active ?? null : null;
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
      this._storage.setItem(this.server ? PREFS_KEY : this._key, this.serialize());
    } catch {
      // full or forbidden storage: the conversations live on for this page
    }
  }

  serialize(): string {
    const data: Stored = {
      version: STORAGE_VERSION,
      active: this._active,
      model: this._model,
      conversations: this.server ? [] : this._conversations.slice(0, MAX_CONVERSATIONS)
    };
    return JSON.stringify(data);
  }

  /** Server mode: sets a conversation as the server has it (added when new here), keeping it in place. */
  upsert(conversation: Conversation): void {
    const index = this._conversations.findIndex(c => c.id === conversation.id);
    if (index >= 0) {
      this._conversations = this._conversations.map(c => (c.id === conversation.id ? conversation : c));
    } else {
      this._conversations = sortByUpdated([...this._conversations, conversation]);
    }
    this._pickWanted();
    this._changed();
  }

  /** Records the server's revision of a conversation (after a write of this page's own). */
  setRevision(id: string, revision: number): void {
    this._conversations = this._conversations.map(c => (c.id === id ? { ...c, revision } : c));
  }

  /**
   * Server mode: takes the server's list. Conversations it does not list go, except those never
   * sent to it that have something in them (an empty new one gives way when the server has any);
   * listed ones whose revision moved on lose their entries until read again.
   */
  merge(listed: readonly Conversation[]): void {
    const here = new Map(this._conversations.map(c => [c.id, c]));
    const ids = new Set(listed.map(c => c.id));
    const kept = listed.map(c => {
      const mine = here.get(c.id);
      return mine && mine.loaded !== false && mine.revision === c.revision ? mine : c;
    });
    const blank = (c: Conversation) => c.entries.length === 0 && c.system === null && c.title === UNTITLED;
    // An empty conversation made here (the one a page starts with) gives way to the server's.
    const local = this._conversations.filter(c => c.revision === undefined && !ids.has(c.id) && !(listed.length && blank(c)));
    this._conversations = [...local, ...sortByUpdated(kept)];
    if (!this.get(this._active)) {
      this._active = this._conversations.length ? this._conversations[0].id : this._make().id;
    }
    this._pickWanted();
    this._changed();
  }

  /** Server mode: a conversation deleted elsewhere goes without a trace here. */
  forget(id: string): void {
    if (this.get(id)) {
      this.remove(id);
    }
  }

  private _pickWanted(): void {
    if (this._wanted && this.get(this._wanted)) {
      const current = this.get(this._active);
      if (!current || (current.entries.length === 0 && current.revision === undefined)) {
        this._active = this._wanted;
      }
      this._wanted = null;
    }
  }

  private _make(): Conversation {
    const now = Date.now();
    const conversation: Conversation = { id: newId('c-'), title: UNTITLED, system: null, entries: [], created: now, updated: now };
    const all = [conversation, ...this._conversations];
    this._conversations = this.server ? all : all.slice(0, MAX_CONVERSATIONS);
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
