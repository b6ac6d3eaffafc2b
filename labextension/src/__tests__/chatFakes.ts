/** Test doubles for the chat's pure modules: a scripted WebSocket, manual timers, a Map storage. */
import { ChatClient } from '../chat/client';
import type { SocketLike, Timers } from '../chat/client';
import type { KeyValueStorage } from '../chat/conversations';

export class FakeSocket implements SocketLike {
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code?: number; reason?: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  sent: Record<string, unknown>[] = [];
  closed = false;

  constructor(readonly url: string) {}

  send(data: string): void {
    if (this.readyState !== 1) {
      throw new Error('not open');
    }
    this.sent.push(JSON.parse(data));
  }

  close(): void {
    this.closed = true;
    this.readyState = 3;
  }

  /** The server accepts the connection and says hello. */
  open(model: string | null = 'demo', hello: Record<string, unknown> = {}): void {
    this.readyState = 1;
    this.onopen?.({});
    this.receive({
      type: 'hello',
      protocol: 1,
      model: model ? loaded(model) : null,
      default_model: 'demo',
      ...hello
    });
  }

  receive(message: unknown): void {
    this.onmessage?.({ data: typeof message === 'string' ? message : JSON.stringify(message) });
  }

  /** The connection drops. */
  drop(): void {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006 });
  }

  last(): Record<string, any> {
    return this.sent[this.sent.length - 1] as Record<string, any>;
  }
}

export function loaded(name: string) {
  return {
    name,
    backend: 'local' as const,
    location: `/models/${name}.gguf`,
    architecture: 'llama',
    quantization: 'Q4_1',
    context_length: 2048,
    n_gpu_layers: 0,
    total_layers: 30,
    chat_format: 'chatml',
    notices: []
  };
}

export function done(id: string, text: string, extra: Record<string, unknown> = {}) {
  return {
    type: 'done',
    id,
    conversation_id: 'c',
    model: 'demo',
    text,
    finish_reason: 'stop',
    usage: { prompt_tokens: 5, completion_tokens: 3, dropped_messages: 0, time_to_first_token_s: 0.1, duration_s: 0.5 },
    notice: null,
    ...extra
  };
}

export class ManualTimers implements Timers {
  time = 1000;
  private _next = 1;
  tasks = new Map<number, { at: number; fn: () => void }>();

  setTimeout(fn: () => void, ms: number): unknown {
    const id = this._next++;
    this.tasks.set(id, { at: this.time + ms, fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.tasks.delete(handle as number);
  }

  now(): number {
    return this.time;
  }

  /** Moves the clock on, running what falls due. */
  advance(ms: number): void {
    this.time += ms;
    for (const [id, task] of [...this.tasks].sort((a, b) => a[1].at - b[1].at)) {
      if (task.at <= this.time) {
        this.tasks.delete(id);
        task.fn();
      }
    }
  }

  get pending(): number[] {
    return [...this.tasks.values()].map(t => t.at - this.time);
  }
}

export class MapStorage implements KeyValueStorage {
  data = new Map<string, string>();
  writes = 0;

  getItem(key: string): string | null {
    return this.data.get(key) ?? null;
  }

  setItem(key: string, value: string): void {
    this.writes += 1;
    this.data.set(key, value);
  }
}

/** A ChatClient on fake sockets (every socket it opened, newest last) and manual timers. */
export function fakeClient(timers: Timers = new ManualTimers()): { client: ChatClient; sockets: FakeSocket[] } {
  const sockets: FakeSocket[] = [];
  const client = new ChatClient({
    url: 'ws://x/llamalab/chat',
    createSocket: url => {
      const s = new FakeSocket(url);
      sockets.push(s);
      return s;
    },
    timers,
    random: () => 0.5
  });
  return { client, sockets };
}
