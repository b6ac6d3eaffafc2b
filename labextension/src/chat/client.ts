/**
 * The chat WebSocket's client side (`/llamalab/chat`, see extension/messages.py): a pure
 * module over a minimal WebSocket-like interface, unit-tested with a fake socket.
 *
 * Every request gets an id; the server repeats it in each reply (`token`... `done` or
 * `error` for a chat, `ack` for cancel and reset, `history`), and the client routes replies
 * to the request's handlers by that id. When the connection drops, the client reconnects with
 * exponential backoff (and jitter), reporting its state; chats that were answering get a
 * `disconnected` error (the server stops them when the socket closes), frames sent while
 * disconnected wait in an outbox until the next connection opens. Each connection is an
 * `epoch`. `conversation_changed` events (a stored conversation was written, from any tab) are
 * passed on to the listeners. The `hello` that opens
 * a connection also tells the server's limits (`limits`), so that callers can trim what they send.
 */
import type {
  AckMessage,
  ChatRequest,
  ConversationChangedMessage,
  DoneMessage,
  ErrorMessage,
  HelloMessage,
  HistoryMessage,
  LoadedModel,
  JobProgressMessage,
  ServerMessage,
  TokenMessage
} from '../wire';

/** The part of the browser's WebSocket the client uses. */
export interface SocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code?: number; reason?: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type SocketFactory = (url: string) => SocketLike;

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** The server's limits on what a chat request sends, from its `hello`. */
export interface ServerLimits {
  /** The longest message (and, apart, history) in characters. */
  maxPromptChars: number;
  maxTokensLimit: number;
}

/** An error for a request: the server's ErrorMessage, or one the client made. */
export interface ChatError {
  code: ErrorMessage['code'] | 'disconnected' | 'protocol';
  message: string;
  detail?: unknown;
}

export interface ChatHandlers {
  onToken?(text: string, message: TokenMessage): void;
  onDone?(message: DoneMessage): void;
  onError?(error: ChatError): void;
}

export interface Backoff {
  /** The first retry's delay. */
  initialMs: number;
  maxMs: number;
  factor: number;
  /** 0..1: the delay varies by up to this fraction either way. */
  jitter: number;
}

export const DEFAULT_BACKOFF: Backoff = { initialMs: 500, maxMs: 15000, factor: 2, jitter: 0.2 };

export interface Timers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  now(): number;
}

export interface ChatClientOptions {
  /** The socket URL, read at each connection (the token may change). */
  url: string | (() => string);
  createSocket: SocketFactory;
  backoff?: Partial<Backoff>;
  timers?: Timers;
  random?: () => number;
  newId?: () => string;
}

/** What the client announces to its listeners. */
export type ClientEvent =
  | { kind: 'state'; state: ConnectionState }
  | { kind: 'hello'; message: HelloMessage }
  | { kind: 'model'; model: LoadedModel | null }
  | { kind: 'job'; message: JobProgressMessage }
  | { kind: 'conversation'; message: ConversationChangedMessage }
  | { kind: 'error'; error: ChatError };

/** The delay before retry number `attempt` (0-based). */
export function backoffDelay(attempt: number, backoff: Backoff = DEFAULT_BACKOFF, random: () => number = Math.random): number {
  const base = Math.min(backoff.maxMs, backoff.initialMs * Math.pow(backoff.factor, attempt));
  const spread = base * backoff.jitter * (2 * random() - 1);
  return Math.max(0, Math.round(Math.min(backoff.maxMs, base + spread)));
}

type Pending =
  | { kind: 'chat'; conversationId: string; handlers: ChatHandlers; sent: boolean }
  | {
      kind: 'cancel' | 'reset' | 'history';
      resolve: (message: AckMessage | HistoryMessage) => void;
      reject: (error: ChatError) => void;
    };

const OPEN = 1;

const defaultTimers: Timers = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: handle => clearTimeout(handle as ReturnType<typeof setTimeout>),
  now: () => Date.now()
};

let counter = 0;
function defaultId(): string {
  counter += 1;
  return `r-${Date.now().toString(36)}-${counter}-${Math.random().toString(36).slice(2, 8)}`;
}

export class ChatClient {
  private _socket: SocketLike | null = null;
  private _state: ConnectionState = 'closed';
  private _attempt = 0;
  private _retryTimer: unknown = null;
  private _retryAt: number | null = null;
  private _disposed = false;
  private _pending = new Map<string, Pending>();
  private _outbox: { id: string; frame: string }[] = [];
  private _listeners = new Set<(event: ClientEvent) => void>();
  private _epoch = 0;
  private _model: LoadedModel | null = null;
  private _defaultModel = '';
  private _limits: ServerLimits | null = null;
  private readonly _backoff: Backoff;
  private readonly _timers: Timers;
  private readonly _random: () => number;
  private readonly _newId: () => string;

  constructor(private readonly _options: ChatClientOptions) {
    this._backoff = { ...DEFAULT_BACKOFF, ..._options.backoff };
    this._timers = _options.timers ?? defaultTimers;
    this._random = _options.random ?? Math.random;
    this._newId = _options.newId ?? defaultId;
  }

  get state(): ConnectionState {
    return this._state;
  }

  /** Counts the connections opened; the server's histories belong to one epoch. */
  get epoch(): number {
    return this._epoch;
  }

  /** The model the server has loaded, from `hello` and `model_changed`. */
  get model(): LoadedModel | null {
    return this._model;
  }

  get defaultModel(): string {
    return this._defaultModel;
  }

  /** The server's limits, from the last `hello` (null before the first; older servers send none). */
  get limits(): ServerLimits | null {
    return this._limits;
  }

  /** When the next reconnection attempt starts (ms since the epoch), while reconnecting. */
  get retryAt(): number | null {
    return this._retryAt;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  subscribe(listener: (event: ClientEvent) => void): () => void {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  /** Opens the connection (again, at once, when waiting to reconnect). */
  connect(): void {
    if (this._disposed || this._state === 'open' || this._state === 'connecting') {
      return;
    }
    this._clearRetry();
    this._open();
  }

  /** Closes the connection for good; pending requests fail. */
  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    this._clearRetry();
    const socket = this._socket;
    this._socket = null;
    if (socket) {
      this._detach(socket);
      socket.close(1000, 'closed by the client');
    }
    this._failPending({ code: 'disconnected', message: 'The chat was closed.' }, true);
    this._setState('closed');
    this._listeners.clear();
  }

  /**
   * Sends a chat request; replies go to `handlers`. Returns the request's id (the `target`
   * of a cancel). Sent at once when connected, else when the next connection opens.
   */
  chat(request: Omit<ChatRequest, 'type' | 'id'> & { id?: string }, handlers: ChatHandlers): string {
    const id = request.id ?? this._newId();
    const message: ChatRequest = { ...request, type: 'chat', id };
    const pending: Pending = { kind: 'chat', conversationId: request.conversation_id ?? 'default', handlers, sent: false };
    this._pending.set(id, pending);
    this._send(id, JSON.stringify(message));
    return id;
  }

  /** Whether a chat request is still waiting for its `done` or `error`. */
  isRunning(id: string): boolean {
    return this._pending.get(id)?.kind === 'chat';
  }

  /**
   * Stops the chat `target` (or every chat of `conversationId`, or all of them). A chat still
   * in the outbox is dropped here and ends with a local `done` (finish_reason "cancelled").
   */
  cancel(target?: string, conversationId?: string): Promise<AckMessage> {
    const dropped: string[] = [];
    for (const { id } of [...this._outbox]) {
      const pending = this._pending.get(id);
      if (pending?.kind !== 'chat') {
        continue;
      }
      if ((target && id !== target) || (conversationId && pending.conversationId !== conversationId)) {
        continue;
      }
      this._outbox = this._outbox.filter(o => o.id !== id);
      this._pending.delete(id);
      dropped.push(id);
      pending.handlers.onDone?.(localDone(id, pending.conversationId));
    }
    if (target && dropped.includes(target)) {
      return Promise.resolve({ type: 'ack', id: this._newId(), of: 'cancel', cancelled: dropped });
    }
    return this._request<AckMessage>('cancel', { target: target ?? null, conversation_id: conversationId ?? null });
  }

  /** Makes the server forget a conversation (stopping its answer, if any). */
  reset(conversationId: string): Promise<AckMessage> {
    return this._request<AckMessage>('reset', { conversation_id: conversationId });
  }

  /** The server's history of a conversation on this connection. */
  history(conversationId: string): Promise<HistoryMessage> {
    return this._request<HistoryMessage>('history', { conversation_id: conversationId });
  }

  // -- internals -------------------------------------------------------------------------------

  private _request<T extends AckMessage | HistoryMessage>(
    kind: 'cancel' | 'reset' | 'history',
    fields: Record<string, unknown>
  ): Promise<T> {
    const id = this._newId();
    return new Promise<T>((resolve, reject) => {
      if (this._disposed) {
        reject({ code: 'disconnected', message: 'The chat was closed.' });
        return;
      }
      this._pending.set(id, { kind, resolve: resolve as (m: AckMessage | HistoryMessage) => void, reject });
      this._send(id, JSON.stringify({ type: kind, id, ...fields }));
    });
  }

  private _send(id: string, frame: string): void {
    const socket = this._socket;
    if (socket && this._state === 'open' && socket.readyState === OPEN) {
      try {
        socket.send(frame);
        this._markSent(id);
        return;
      } catch {
        // closing under us: keep it for the next connection
      }
    }
    this._outbox.push({ id, frame });
    if (this._state === 'closed' && !this._disposed) {
      this.connect();
    }
  }

  private _markSent(id: string): void {
    const pending = this._pending.get(id);
    if (pending?.kind === 'chat') {
      pending.sent = true;
    }
  }

  private _open(): void {
    const url = typeof this._options.url === 'function' ? this._options.url() : this._options.url;
    this._setState(this._epoch === 0 && this._attempt === 0 ? 'connecting' : 'reconnecting');
    let socket: SocketLike;
    try {
      socket = this._options.createSocket(url);
    } catch (err) {
      this._emit({ kind: 'error', error: { code: 'disconnected', message: 'Cannot open the chat connection.', detail: String(err) } });
      this._scheduleRetry();
      return;
    }
    this._socket = socket;
    socket.onopen = () => this._onOpen(socket);
    socket.onmessage = event => this._onMessage(event.data);
    socket.onclose = () => this._onClose(socket);
    socket.onerror = () => {
      // always followed by close, which reconnects
    };
  }

  private _onOpen(socket: SocketLike): void {
    if (socket !== this._socket) {
      return;
    }
    this._attempt = 0;
    this._epoch += 1;
    this._setState('open');
    const outbox = this._outbox;
    this._outbox = [];
    for (const { id, frame } of outbox) {
      this._send(id, frame);
    }
  }

  private _onClose(socket: SocketLike): void {
    if (socket !== this._socket) {
      return;
    }
    this._detach(socket);
    this._socket = null;
    this._failPending(
      {
        code: 'disconnected',
        message: 'The connection to the server dropped; the answer stopped.',
        detail: 'The chat reconnects by itself; send the message again when it is back.'
      },
      false
    );
    if (this._disposed) {
      this._setState('closed');
      return;
    }
    this._scheduleRetry();
  }

  private _detach(socket: SocketLike): void {
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
  }

  /** Fails what the server was answering; requests still in the outbox wait unless `all`. */
  private _failPending(error: ChatError, all: boolean): void {
    const waiting = new Set(this._outbox.map(o => o.id));
    for (const [id, pending] of [...this._pending]) {
      if (!all && waiting.has(id)) {
        continue;
      }
      this._pending.delete(id);
      if (pending.kind === 'chat') {
        pending.handlers.onError?.(error);
      } else {
        pending.reject(error);
      }
    }
    if (all) {
      this._outbox = [];
    }
  }

  private _scheduleRetry(): void {
    const delay = backoffDelay(this._attempt, this._backoff, this._random);
    this._attempt += 1;
    this._retryAt = this._timers.now() + delay;
    this._setState('reconnecting', true);
    this._retryTimer = this._timers.setTimeout(() => {
      this._retryTimer = null;
      this._retryAt = null;
      if (!this._disposed) {
        this._open();
      }
    }, delay);
  }

  private _clearRetry(): void {
    if (this._retryTimer !== null) {
      this._timers.clearTimeout(this._retryTimer);
      this._retryTimer = null;
    }
    this._retryAt = null;
  }

  private _onMessage(data: unknown): void {
    let message: ServerMessage;
    try {
      message = JSON.parse(String(data)) as ServerMessage;
    } catch {
      this._emit({ kind: 'error', error: { code: 'protocol', message: 'The server sent a frame that is not JSON.', detail: String(data).slice(0, 500) } });
      return;
    }
    if (!message || typeof message !== 'object' || typeof message.type !== 'string') {
      this._emit({ kind: 'error', error: { code: 'protocol', message: 'The server sent a message without a type.', detail: data } });
      return;
    }
    switch (message.type) {
      case 'hello':
        this._model = message.model;
        this._defaultModel = message.default_model;
        this._limits =
          typeof message.max_prompt_chars === 'number' && typeof message.max_tokens_limit === 'number'
            ? { maxPromptChars: message.max_prompt_chars, maxTokensLimit: message.max_tokens_limit }
            : null;
        this._emit({ kind: 'hello', message });
        break;
      case 'model_changed':
        this._model = message.model;
        this._emit({ kind: 'model', model: message.model });
        break;
      case 'job_progress':
        this._emit({ kind: 'job', message });
        break;
      case 'conversation_changed':
        this._emit({ kind: 'conversation', message });
        break;
      case 'token': {
        const pending = this._pending.get(message.id);
        if (pending?.kind === 'chat') {
          pending.handlers.onToken?.(message.text, message);
        }
        break;
      }
      case 'done': {
        const pending = this._pending.get(message.id);
        if (pending?.kind === 'chat') {
          this._pending.delete(message.id);
          pending.handlers.onDone?.(message);
        }
        break;
      }
      case 'ack':
      case 'history': {
        const pending = this._pending.get(message.id);
        if (pending && pending.kind !== 'chat') {
          this._pending.delete(message.id);
          pending.resolve(message);
        }
        break;
      }
      case 'error':
        this._onError(message);
        break;
      default:
        this._emit({
          kind: 'error',
          error: { code: 'protocol', message: `The server sent an unknown message type '${(message as { type: string }).type}'.`, detail: message }
        });
    }
  }

  private _onError(message: ErrorMessage): void {
    const error: ChatError = { code: message.code, message: message.message, detail: message.detail };
    const pending = message.id ? this._pending.get(message.id) : undefined;
    if (!pending || !message.id) {
      this._emit({ kind: 'error', error });
      return;
    }
    this._pending.delete(message.id);
    if (pending.kind === 'chat') {
      pending.handlers.onError?.(error);
    } else {
      pending.reject(error);
    }
  }

  private _setState(state: ConnectionState, force = false): void {
    if (state !== this._state || force) {
      this._state = state;
      this._emit({ kind: 'state', state });
    }
  }

  private _emit(event: ClientEvent): void {
    for (const listener of [...this._listeners]) {
      listener(event);
    }
  }
}

function localDone(id: string, conversationId: string): DoneMessage {
  return {
    type: 'done',
    id,
    conversation_id: conversationId,
    model: '',
    text: '',
    finish_reason: 'cancelled',
    usage: { prompt_tokens: 0, completion_tokens: 0, dropped_messages: 0, time_to_first_token_s: null, duration_s: 0, reused_prompt_tokens: null },
    notice: null
  };
}
