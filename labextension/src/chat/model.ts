/**
 * The chat panel's state and actions, without any UI: a pure module joining the
 * conversation store, the WebSocket client, the REST calls for models and, in the panel, the
 * server's stored conversations (`ConversationSync`; all injected, so that the tests can fake
 * them). The React view renders from it and calls its methods.
 *
 * With a sync, the server keeps each conversation's history (it appends every finished turn) and
 * reads it from there; the first message of a conversation on each connection still carries the
 * turns shown here as `history`, which the server uses only when its copy has none (a file set
 * aside as unreadable, a server that lost its data folder).
 */
import type { KernelRef, LoadedModel, ModelsReply, RemoteModelInfo, SamplingParams, StoredModelInfo } from '../wire';
import { ChatClient, ChatError, ConnectionState } from './client';
import { ChatEntry, ConversationStore, newId } from './conversations';
import { ContextBlock, fitContext, historyOf, turnsOf } from './prompts';
import type { ConversationSync } from './sync';

/** The REST calls the chat needs (GET /llamalab/models, POST /llamalab/models/load). */
export interface ModelsApi {
  list(): Promise<ModelsReply>;
  load(model: string | null): Promise<LoadedModel>;
}

export interface ChatSettings {
  /** null: the server's default. */
  maxTokens: number | null;
  temperature: number | null;
  /**
   * How much of a conversation (characters of its newest turns) the first message on a new
   * connection sends as `history`, so the server knows the earlier turns; 0 sends none.
   */
  carryOverChars: number;
}

export const DEFAULT_SETTINGS: ChatSettings = { maxTokens: null, temperature: null, carryOverChars: 12000 };

export interface SendOptions {
  /** What the panel shows for the message, when it differs from what is sent. */
  display?: string;
  /** Labels of the context blocks sent with it. */
  context?: string[];
  /** The conversation (the active one by default). */
  conversationId?: string;
  /**
   * The notebook's kernel, whose names (variables, functions, DataFrame columns) the server
   * puts into this turn's system prompt (the "Kernel" context).
   */
  kernel?: KernelRef | null;
}

/** The label a message sent with the kernel's names shows among its context. */
export const KERNEL_CONTEXT_LABEL = 'Variables in the kernel';

/** Turns an exception from the REST calls (LlamalabApiError or anything) into a ChatError. */
export function toChatError(err: unknown, fallback: string): ChatError {
  const e = err as { message?: unknown; code?: unknown; detail?: unknown };
  return {
    code: (typeof e?.code === 'string' ? e.code : 'internal') as ChatError['code'],
    message: typeof e?.message === 'string' && e.message ? e.message : fallback,
    detail: e?.detail ?? null
  };
}

/** One choice of the model picker: a model of the store, or (with a team server) one it lists. */
export interface PickerChoice {
  name: string;
  allowed: boolean;
  note: string;
}

export class ChatModel {
  settings: ChatSettings = { ...DEFAULT_SETTINGS };
  /** The stored models (GET /llamalab/models), null until listed. */
  models: StoredModelInfo[] | null = null;
  /** With a team server (`remote_url`): the models it lists, which the picker offers instead. */
  remoteModels: RemoteModelInfo[] | null = null;
  defaultModel = '';
  /** A model being loaded through the picker. */
  loading: string | null = null;

  private _running = new Map<string, string>(); // conversation id -> request id
  private _synced = new Map<string, number>(); // conversation id -> epoch whose server history has it
  private _listeners = new Set<() => void>();
  private _version = 0;
  private _listings = 0;
  private _unsubscribe: (() => void)[] = [];

  constructor(
    readonly store: ConversationStore,
    readonly client: ChatClient,
    private readonly _api: ModelsApi,
    readonly sync: ConversationSync | null = null
  ) {
    sync?.setBusy(id => this._running.has(id));
    this._unsubscribe.push(
      store.subscribe(() => this._changed()),
      client.subscribe(event => {
        if (event.kind === 'error') {
          this.reportError(event.error);
        } else if (event.kind === 'hello') {
          this.defaultModel = event.message.default_model;
          if (this.client.epoch > 1) {
            void sync?.refresh(); // events may have been missed while disconnected
          }
        } else if (event.kind === 'conversation') {
          sync?.onChanged(event.message);
        }
        // A finished pull, conversion or quantization (in the model manager, or anywhere
        // else on this server) may have added a model: list the store again.
        if (event.kind === 'hello' || event.kind === 'model' || (event.kind === 'job' && event.message.job.state === 'done')) {
          void this.refreshModels();
        }
        this._changed();
      })
    );
  }

  /** Grows at each change: what a view compares to know it must render. */
  get version(): number {
    return this._version;
  }

  get state(): ConnectionState {
    return this.client.state;
  }

  get loaded(): LoadedModel | null {
    return this.client.model;
  }

  subscribe(listener: () => void): () => void {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  dispose(): void {
    this._unsubscribe.forEach(u => u());
    this._listeners.clear();
    this.client.dispose();
  }

  /** Moves the browser's earlier conversations to the server (once) and reads the server's. */
  async start(): Promise<void> {
    await this.sync?.start();
  }

  /** The request answering in a conversation (the active one by default), if any. */
  runningRequest(conversationId = this.store.active.id): string | undefined {
    return this._running.get(conversationId);
  }

  isGenerating(conversationId = this.store.active.id): boolean {
    return this._running.has(conversationId);
  }

  /**
   * Sends `content` as the user's next message; the answer streams into a new assistant
   * entry. Returns the request id, or null when the conversation is still answering.
   */
  send(content: string, options: SendOptions = {}): string | null {
    const conversation = (options.conversationId && this.store.get(options.conversationId)) || this.store.active;
    const cid = conversation.id;
    if (!content.trim() || this._running.has(cid)) {
      return null;
    }
    const id = newId('q-');
    const now = Date.now();
    const user: ChatEntry = { id, role: 'user', content: options.display ?? content, time: now };
    if (options.display !== undefined && options.display !== content) {
      user.sent = content;
    }
    const context = [...(options.context ?? []), ...(options.kernel ? [KERNEL_CONTEXT_LABEL] : [])];
    if (context.length) {
      user.context = context;
    }
    // The server knows this conversation's earlier turns only if they were answered on the
    // connection the request will go out on; else they go with it as `history`.
    const epoch = this.client.state === 'open' ? this.client.epoch : this.client.epoch + 1;
    const history = this._synced.get(cid) === epoch ? [] : this._history(conversation.entries);

    this.store.append(cid, user, { id, role: 'assistant', content: '', streaming: true, time: now });
    this._running.set(cid, id);
    let text = '';
    const params: SamplingParams = {};
    if (this.settings.maxTokens) {
      params.max_tokens = this.settings.maxTokens;
    }
    if (this.settings.temperature !== null && this.settings.temperature !== undefined) {
      params.temperature = this.settings.temperature;
    }
    this.client.chat(
      {
        id,
        conversation_id: cid,
        content,
        system: conversation.system,
        model: this.store.model || null,
        params,
        ...(history.length ? { history } : {}),
        ...(options.kernel ? { kernel: options.kernel } : {}),
        ...(this.sync && user.sent !== undefined ? { display: user.content } : {}),
        ...(this.sync && context.length ? { context } : {})
      },
      {
        onToken: piece => {
          text += piece;
          this.store.patch(cid, id, 'assistant', e => ({ ...e, content: text }));
        },
        onDone: done => {
          this._finished(cid, id);
          if (done.model) {
            this._synced.set(cid, this.client.epoch);
          }
          this.store.patch(cid, id, 'assistant', e => ({
            ...e,
            content: done.text || text,
            streaming: undefined,
            finishReason: done.finish_reason,
            notice: done.notice,
            model: done.model || undefined,
            usage: done.model ? done.usage : undefined
          }));
        },
        onError: error => {
          this._finished(cid, id);
          if (text) {
            this.store.patch(cid, id, 'assistant', e => ({ ...e, content: text, streaming: undefined, finishReason: 'cancelled' }));
          } else {
            this.store.drop(cid, id, 'assistant');
          }
          this._appendError(cid, error);
        }
      }
    );
    return id;
  }

  /**
   * Sends `message` with context blocks, the blocks cut to fit the server's `max_prompt_chars`
   * (the labels shown on the message say which were shortened). Returns as `send`.
   */
  sendWithContext(message: string, blocks: readonly ContextBlock[], options: SendOptions = {}): string | null {
    const fitted = fitContext(message, blocks, this.client.limits?.maxPromptChars);
    return this.send(fitted.content, {
      ...options,
      display: options.display ?? message,
      context: fitted.context.length ? fitted.context : options.context
    });
  }

  /** Stops the answer of a conversation (the active one by default). */
  async stop(conversationId = this.store.active.id): Promise<void> {
    const target = this._running.get(conversationId);
    if (!target) {
      return;
    }
    try {
      await this.client.cancel(target);
    } catch (err) {
      this.reportError(toChatError(err, 'Could not stop the answer.'), conversationId);
    }
  }

  newConversation(): void {
    this.store.create();
  }

  select(conversationId: string): void {
    this.store.select(conversationId);
    void this.sync?.ensureLoaded(conversationId);
  }

  /** Empties a conversation here and on the server (a `reset` when connected: it also stops its answer). */
  clear(conversationId = this.store.active.id): void {
    const open = this.client.state === 'open';
    this._forget(conversationId);
    if (this.sync && !open) {
      void this.sync.clear(conversationId);
    } else {
      this.store.clear(conversationId);
    }
  }

  /** Deletes a conversation here and on the server. */
  remove(conversationId = this.store.active.id): void {
    if (!this.sync) {
      this._forget(conversationId);
      this.store.remove(conversationId);
      return;
    }
    const running = this._running.get(conversationId);
    this._running.delete(conversationId);
    if (running) {
      this.client.cancel(running).catch(() => undefined);
    }
    void this.sync.remove(conversationId);
  }

  /** Renames a conversation (the active one by default), here and on the server. */
  rename(title: string, conversationId = this.store.active.id): void {
    if (this.sync) {
      void this.sync.rename(conversationId, title);
    } else {
      this.store.rename(conversationId, title);
    }
  }

  setSystem(system: string | null, conversationId = this.store.active.id): void {
    if (this.sync) {
      void this.sync.setSystem(conversationId, system);
    } else {
      this.store.setSystem(conversationId, system);
    }
  }

  /** Shows an error as one line (details on demand) in a conversation. */
  reportError(error: ChatError, conversationId = this.store.active.id): void {
    this._appendError(conversationId, error);
  }

  /** The picker's choices: the team server's models when there is one (the store is not loaded
   * then), else the store's, with what to show after each name. */
  pickerChoices(): PickerChoice[] {
    if (this.remoteModels) {
      return this.remoteModels.map(m => ({ name: m.id, allowed: m.allowed, note: m.in_use ? ' · in use' : '' }));
    }
    const loadedName = this.loaded?.name;
    return (this.models ?? []).map(m => ({
      name: m.name,
      allowed: m.allowed,
      note: (m.quantization ? ` · ${m.quantization}` : '') + (m.name === loadedName ? ' · loaded' : '')
    }));
  }

  /** Lists the stored models for the picker; when listings overlap, the newest one's answer counts. */
  async refreshModels(): Promise<void> {
    const listing = ++this._listings;
    try {
      const reply = await this._api.list();
      if (listing !== this._listings) {
        return; // a later listing (after a job or a model change) is under way
      }
      this.models = reply.stored;
      this.remoteModels = reply.remote ? reply.remote.models : null;
      this.defaultModel = reply.default_model;
    } catch (err) {
      if (listing !== this._listings) {
        return;
      }
      if (this.models === null) {
        this.models = [];
      }
      this.reportError(toChatError(err, 'Could not list the models.'));
    }
    this._changed();
  }

  /** Picks the model chats ask for ('' : the server's default) and loads it now. */
  async pickModel(name: string): Promise<void> {
    const previous = this.store.model;
    this.store.model = name;
    const current = this.client.model?.name;
    const wanted = name || this.defaultModel;
    if (wanted && current === wanted) {
      return;
    }
    this.loading = wanted || 'the default model';
    this._changed();
    try {
      await this._api.load(name || null);
    } catch (err) {
      this.store.model = previous;
      this.reportError(toChatError(err, `Could not load ${wanted}.`));
    } finally {
      this.loading = null;
      this._changed();
    }
  }

  /** The earlier turns sent to a server that does not know the conversation: as many as the budget allows. */
  private _history(entries: readonly ChatEntry[]): ReturnType<typeof turnsOf> {
    const limit = this.client.limits?.maxPromptChars;
    const budget = Math.min(Math.max(0, this.settings.carryOverChars), limit ?? Infinity);
    return budget > 0 ? historyOf(turnsOf(entries), budget) : [];
  }

  private _finished(conversationId: string, requestId: string): void {
    if (this._running.get(conversationId) === requestId) {
      this._running.delete(conversationId);
      this.sync?.settled(conversationId);
    }
  }

  private _forget(conversationId: string): void {
    this._synced.delete(conversationId);
    this._running.delete(conversationId);
    if (this.client.state === 'open') {
      this.client.reset(conversationId).catch(() => undefined);
    }
  }

  private _appendError(conversationId: string, error: ChatError): void {
    this.store.append(conversationId, {
      id: newId('e-'),
      role: 'error',
      content: error.message,
      code: error.code,
      detail: error.detail ?? null,
      time: Date.now()
    });
  }

  private _changed(): void {
    this._version += 1;
    for (const listener of [...this._listeners]) {
      listener();
    }
  }
}
