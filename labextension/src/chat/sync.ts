/**
 * Keeps the chat's conversations in step with the Jupyter server, which owns them
 * (/llamalab/conversations, extension/conversation_routes.py): a pure module over an injected
 * `ConversationsApi`, unit-tested with a fake one.
 *
 * - `start()` moves the conversations an earlier version kept in localStorage to the server once
 *   (POST .../import; the server skips ids it has, so a retry is harmless), marks them moved
 *   (they stay in the storage, untouched, until the server confirmed and after), then lists the
 *   server's conversations and reads the one shown. It runs again at each reconnection.
 * - The chat WebSocket says `conversation_changed` after every write, from this tab or another:
 *   a conversation whose revision moved on is read again (after this tab's own answer ends, when
 *   one streams into it), a deleted one goes.
 * - A finished turn is written by the server itself; renames and system prompts are PATCHed,
 *   deletions DELETEd, a conversation cleared while disconnected is PUT empty (a 409 from a stale
 *   revision reads it again and retries once). A new conversation reaches the server with its
 *   first message (or rename, or system prompt).
 */
import type {
  ConversationCreate,
  ConversationEntryInput,
  ConversationEntryOutput,
  ConversationChangedMessage,
  ConversationImport,
  ConversationList,
  ConversationPatch,
  ConversationProblem,
  ConversationUpdate,
  ImportReply,
  StoredConversation
} from '../wire';
import {
  ChatEntry,
  Conversation,
  ConversationStore,
  deserialize,
  KeyValueStorage,
  MAX_ENTRIES,
  STORAGE_KEY,
  UNTITLED
} from './conversations';

/** The REST calls of /llamalab/conversations. Errors are thrown with the server's `code`. */
export interface ConversationsApi {
  list(): Promise<ConversationList>;
  get(id: string): Promise<StoredConversation>;
  create(body: ConversationCreate): Promise<StoredConversation>;
  update(id: string, body: ConversationUpdate): Promise<StoredConversation>;
  patch(id: string, body: ConversationPatch): Promise<StoredConversation>;
  remove(id: string): Promise<void>;
  importMany(body: ConversationImport): Promise<ImportReply>;
}

/** Set once the browser's earlier conversations are on the server (what was imported or skipped). */
export const MOVED_KEY = 'llamalab-chat:conversations-moved';
const IMPORT_BATCH = 50;

export function entryToWire(e: ChatEntry): ConversationEntryInput {
  const u = e.usage;
  return {
    id: e.id,
    role: e.role,
    content: e.content,
    sent: e.sent ?? null,
    context: e.context ?? null,
    finish_reason: e.finishReason ?? (e.streaming ? 'cancelled' : null),
    notice: e.notice ?? null,
    model: e.model ?? null,
    usage: u
      ? {
          prompt_tokens: u.prompt_tokens ?? 0,
          completion_tokens: u.completion_tokens ?? 0,
          dropped_messages: u.dropped_messages ?? 0,
          time_to_first_token_s: u.time_to_first_token_s ?? null,
          duration_s: u.duration_s ?? 0,
          reused_prompt_tokens: u.reused_prompt_tokens ?? null
        }
      : null,
    code: e.code ?? null,
    detail: e.detail ?? null,
    time: e.time
  };
}

export function entryFromWire(w: ConversationEntryOutput): ChatEntry {
  const entry: ChatEntry = { id: w.id, role: w.role, content: w.content, time: w.time };
  if (w.sent !== null && w.sent !== undefined) {
    entry.sent = w.sent;
  }
  if (w.context) {
    entry.context = [...w.context];
  }
  if (w.finish_reason) {
    entry.finishReason = w.finish_reason;
  }
  if (w.notice) {
    entry.notice = w.notice;
  }
  if (w.model) {
    entry.model = w.model;
  }
  if (w.usage) {
    entry.usage = { ...w.usage };
  }
  if (w.code) {
    entry.code = w.code;
  }
  if (w.detail !== null && w.detail !== undefined) {
    entry.detail = w.detail;
  }
  return entry;
}

export function fromWire(s: StoredConversation): Conversation {
  return {
    id: s.id,
    title: s.name,
    system: s.system,
    entries: s.entries.map(entryFromWire),
    created: s.created,
    updated: s.updated,
    revision: s.revision,
    loaded: true
  };
}

function toCreate(c: Conversation): ConversationCreate {
  return {
    id: c.id,
    name: c.title || UNTITLED,
    system: c.system,
    entries: c.entries.filter(e => !e.streaming || e.content).slice(-MAX_ENTRIES).map(entryToWire),
    created: c.created,
    updated: c.updated
  };
}

function codeOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown })?.code;
  return typeof code === 'string' ? code : undefined;
}

export class ConversationSync {
  /** Files the server could not read (set aside), from the last listing. */
  problems: ConversationProblem[] = [];
  private _stale = new Set<string>();
  private _busy: (id: string) => boolean = () => false;
  private _writes: Promise<unknown> = Promise.resolve();

  constructor(
    readonly store: ConversationStore,
    private readonly _api: ConversationsApi,
    private readonly _storage: KeyValueStorage | null,
    private readonly _report: (err: unknown, what: string) => void
  ) {}

  /** Tells the sync which conversations are answering in this tab (not to be read again meanwhile). */
  setBusy(busy: (id: string) => boolean): void {
    this._busy = busy;
  }

  /** Moves the browser's earlier conversations once, then reads the server's. */
  async start(): Promise<void> {
    await this.migrate();
    await this.refresh();
  }

  /** Imports what an earlier version kept in localStorage; true when there is nothing (more) to move. */
  async migrate(): Promise<boolean> {
    let legacy: string | null = null;
    try {
      if (!this._storage || this._storage.getItem(MOVED_KEY)) {
        return true;
      }
      legacy = this._storage.getItem(STORAGE_KEY);
    } catch {
      return true; // storage forbidden: nothing to move
    }
    const conversations = deserialize(legacy).conversations.filter(c => c.entries.length > 0 || c.system);
    const imported: string[] = [];
    const skipped: ImportReply['skipped'] = [];
    try {
      for (let i = 0; i < conversations.length; i += IMPORT_BATCH) {
        const reply = await this._api.importMany({ conversations: conversations.slice(i, i + IMPORT_BATCH).map(toCreate) });
        imported.push(...reply.imported);
        skipped.push(...reply.skipped);
      }
    } catch (err) {
      this._report(err, 'Could not move the conversations of this browser to the server; they stay here and moving is tried again later.');
      return false;
    }
    try {
      this._storage.setItem(MOVED_KEY, JSON.stringify({ time: Date.now(), imported, skipped }));
    } catch {
      // the server skips what it has, so a second import is harmless
    }
    return true;
  }

  /** Lists the server's conversations and reads the one shown. */
  async refresh(): Promise<void> {
    let listing: ConversationList;
    try {
      listing = await this._api.list();
    } catch (err) {
      this._report(err, 'Could not list the conversations.');
      return;
    }
    this.problems = listing.problems;
    this.store.merge(
      listing.conversations.map(s => ({
        id: s.id,
        title: s.name,
        system: null,
        entries: [],
        created: s.created,
        updated: s.updated,
        revision: s.revision,
        loaded: false
      }))
    );
    await this.ensureLoaded(this.store.active.id);
  }

  /** Reads a conversation whose entries are not here yet. */
  async ensureLoaded(id: string): Promise<void> {
    const conversation = this.store.get(id);
    if (conversation && conversation.loaded === false) {
      await this.load(id);
    }
  }

  /** Reads a conversation again (unless it answers in this tab: then once the answer ends). */
  async load(id: string): Promise<void> {
    if (this._busy(id)) {
      this._stale.add(id);
      return;
    }
    this._stale.delete(id);
    try {
      const stored = await this._api.get(id);
      if (this._busy(id)) {
        this._stale.add(id);
        return;
      }
      this.store.upsert(fromWire(stored));
    } catch (err) {
      if (codeOf(err) === 'not_found') {
        this.store.forget(id);
      } else {
        this._report(err, 'Could not read the conversation.');
      }
    }
  }

  /** A conversation_changed event from the chat WebSocket. */
  onChanged(message: ConversationChangedMessage): void {
    const id = message.conversation_id;
    if (message.deleted) {
      this.store.forget(id);
      return;
    }
    const here = this.store.get(id);
    if (here && here.revision === message.revision) {
      return; // this tab's own write, already here
    }
    void this.load(id);
  }

  /** This tab's answer in `id` ended: reads it again if the server wrote it meanwhile. */
  settled(id: string): void {
    if (this._stale.has(id)) {
      void this.load(id);
    }
  }

  async rename(id: string, title: string): Promise<void> {
    this.store.rename(id, title);
    const name = this.store.get(id)?.title ?? title;
    await this._write(id, c => (c.revision === undefined ? this._create(c) : this._api.patch(id, { name })), 'Could not rename the conversation.');
  }

  async setSystem(id: string, system: string | null): Promise<void> {
    this.store.setSystem(id, system);
    const body: ConversationPatch = system === null ? { clear_system: true } : { system };
    await this._write(id, c => (c.revision === undefined ? this._create(c) : this._api.patch(id, body)), 'Could not save the system prompt.');
  }

  /** Empties a conversation on the server by a PUT from its revision (read again and retried once on 409). */
  async clear(id: string): Promise<void> {
    this.store.clear(id);
    const put = (c: Conversation) => this._api.update(id, { revision: c.revision ?? 0, name: UNTITLED, system: c.system, entries: [] });
    await this._write(
      id,
      async c => {
        if (c.revision === undefined) {
          return null;
        }
        try {
          return await put(c);
        } catch (err) {
          if (codeOf(err) !== 'conflict') {
            throw err;
          }
          const fresh = await this._api.get(id);
          return put({ ...c, revision: fresh.revision, system: fresh.system });
        }
      },
      'Could not clear the conversation on the server.'
    );
  }

  async remove(id: string): Promise<void> {
    const conversation = this.store.get(id);
    this.store.remove(id);
    if (!conversation || conversation.revision === undefined) {
      return;
    }
    try {
      await this._api.remove(id);
    } catch (err) {
      if (codeOf(err) !== 'not_found') {
        this._report(err, 'Could not delete the conversation on the server.');
      }
    }
  }

  private _create(c: Conversation): Promise<StoredConversation> {
    return this._api.create({ id: c.id, name: c.title, system: c.system, entries: [] });
  }

  /** Runs writes one after another (their order is the user's), recording the revision each returns. */
  private _write(
    id: string,
    write: (c: Conversation) => Promise<StoredConversation | null>,
    failure: string
  ): Promise<void> {
    const next = this._writes.then(async () => {
      const conversation = this.store.get(id);
      if (!conversation) {
        return;
      }
      try {
        const stored = await write(conversation);
        if (stored) {
          this.store.setRevision(id, stored.revision);
        }
      } catch (err) {
        if (codeOf(err) === 'conflict' && conversation.revision === undefined) {
          await this.load(id); // made meanwhile by another tab
          return;
        }
        this._report(err, failure);
      }
    });
    this._writes = next;
    return next;
  }
}
