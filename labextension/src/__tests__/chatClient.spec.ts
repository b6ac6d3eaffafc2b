import { ChatClient, ClientEvent, backoffDelay, DEFAULT_BACKOFF } from '../chat/client';
import { FakeSocket, ManualTimers, done } from './chatFakes';

function setup(options: { random?: () => number } = {}) {
  const sockets: FakeSocket[] = [];
  const timers = new ManualTimers();
  let n = 0;
  const client = new ChatClient({
    url: () => 'ws://host/llamalab/chat',
    createSocket: url => {
      const socket = new FakeSocket(url);
      sockets.push(socket);
      return socket;
    },
    timers,
    random: options.random ?? (() => 0.5),
    newId: () => `id${++n}`
  });
  const events: ClientEvent[] = [];
  client.subscribe(e => events.push(e));
  const socket = () => sockets[sockets.length - 1];
  return { client, sockets, socket, timers, events };
}

describe('backoffDelay', () => {
  it('grows exponentially up to the cap', () => {
    const delays = [0, 1, 2, 3, 4, 5, 6].map(a => backoffDelay(a, DEFAULT_BACKOFF, () => 0.5));
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 15000, 15000]);
  });

  it('spreads by the jitter either way and never passes the cap', () => {
    expect(backoffDelay(0, DEFAULT_BACKOFF, () => 0)).toBe(400);
    expect(backoffDelay(0, DEFAULT_BACKOFF, () => 1)).toBe(600);
    expect(backoffDelay(10, DEFAULT_BACKOFF, () => 1)).toBe(15000);
  });
});

describe('ChatClient connection', () => {
  it('connects, reads hello and reports its state', () => {
    const { client, socket, events } = setup();
    client.connect();
    expect(client.state).toBe('connecting');
    expect(socket().url).toBe('ws://host/llamalab/chat');
    socket().open('smol');
    expect(client.state).toBe('open');
    expect(client.epoch).toBe(1);
    expect(client.model?.name).toBe('smol');
    expect(client.defaultModel).toBe('demo');
    expect(events.map(e => e.kind)).toEqual(['state', 'state', 'hello']);
  });

  it("keeps the server's limits from each hello", () => {
    const { client, socket, timers } = setup();
    client.connect();
    socket().open('demo', { max_prompt_chars: 5000, max_tokens_limit: 256 });
    expect(client.limits).toEqual({ maxPromptChars: 5000, maxTokensLimit: 256 });
    socket().drop();
    timers.advance(500);
    socket().open(); // an older server: no limits
    expect(client.limits).toBeNull();
  });

  it('reconnects with growing delays and resets them once open', () => {
    const { client, sockets, socket, timers } = setup();
    client.connect();
    socket().drop();
    expect(client.state).toBe('reconnecting');
    expect(timers.pending).toEqual([500]);
    expect(client.retryAt).toBe(timers.now() + 500);
    timers.advance(500);
    expect(sockets).toHaveLength(2);
    socket().drop();
    expect(timers.pending).toEqual([1000]);
    timers.advance(1000);
    socket().open();
    expect(client.state).toBe('open');
    expect(client.epoch).toBe(1);
    socket().drop();
    expect(timers.pending).toEqual([500]);
  });

  it('connect() retries at once while waiting', () => {
    const { client, sockets, socket, timers } = setup();
    client.connect();
    socket().drop();
    client.connect();
    expect(sockets).toHaveLength(2);
    expect(timers.pending).toEqual([]);
  });

  it('stops for good when disposed', () => {
    const { client, sockets, socket, timers } = setup();
    client.connect();
    socket().open();
    client.dispose();
    expect(sockets[0].closed).toBe(true);
    expect(client.state).toBe('closed');
    timers.advance(60000);
    expect(sockets).toHaveLength(1);
  });

  it('reports a socket that cannot be created and retries', () => {
    const timers = new ManualTimers();
    let calls = 0;
    const client = new ChatClient({
      url: 'ws://x',
      createSocket: () => {
        calls += 1;
        throw new Error('blocked');
      },
      timers,
      random: () => 0.5
    });
    const errors: string[] = [];
    client.subscribe(e => e.kind === 'error' && errors.push(e.error.message));
    client.connect();
    expect(errors).toEqual(['Cannot open the chat connection.']);
    timers.advance(500);
    expect(calls).toBe(2);
  });
});

describe('ChatClient requests', () => {
  it('routes tokens and done to the chat by id', () => {
    const { client, socket } = setup();
    client.connect();
    socket().open();
    const tokens: string[] = [];
    const dones: string[] = [];
    const id = client.chat({ conversation_id: 'c', content: 'hi' }, { onToken: t => tokens.push(t), onDone: d => dones.push(d.text) });
    expect(socket().last()).toEqual({ type: 'chat', id, conversation_id: 'c', content: 'hi' });
    expect(client.isRunning(id)).toBe(true);
    socket().receive({ type: 'token', id, conversation_id: 'c', text: 'Hel' });
    socket().receive({ type: 'token', id: 'other', conversation_id: 'c', text: 'x' });
    socket().receive({ type: 'token', id, conversation_id: 'c', text: 'lo' });
    socket().receive(done(id, 'Hello'));
    expect(tokens).toEqual(['Hel', 'lo']);
    expect(dones).toEqual(['Hello']);
    expect(client.isRunning(id)).toBe(false);
  });

  it('keeps two conversations apart', () => {
    const { client, socket } = setup();
    client.connect();
    socket().open();
    const a: string[] = [];
    const b: string[] = [];
    const ia = client.chat({ conversation_id: 'a', content: '1' }, { onToken: t => a.push(t) });
    const ib = client.chat({ conversation_id: 'b', content: '2' }, { onToken: t => b.push(t) });
    socket().receive({ type: 'token', id: ib, conversation_id: 'b', text: 'B' });
    socket().receive({ type: 'token', id: ia, conversation_id: 'a', text: 'A' });
    expect(a).toEqual(['A']);
    expect(b).toEqual(['B']);
  });

  it('routes an error reply to its chat and others to the listeners', () => {
    const { client, socket, events } = setup();
    client.connect();
    socket().open();
    const errors: string[] = [];
    const id = client.chat({ conversation_id: 'c', content: 'x' }, { onError: e => errors.push(`${e.code}:${e.message}`) });
    socket().receive({ type: 'error', id, code: 'busy', message: 'still answering', detail: null });
    socket().receive({ type: 'error', id: null, code: 'bad_request', message: 'bad frame', detail: { at: 1 } });
    expect(errors).toEqual(['busy:still answering']);
    expect(client.isRunning(id)).toBe(false);
    const last = events[events.length - 1];
    expect(last).toEqual({ kind: 'error', error: { code: 'bad_request', message: 'bad frame', detail: { at: 1 } } });
  });

  it('sends cancel with the target and resolves on ack', async () => {
    const { client, socket } = setup();
    client.connect();
    socket().open();
    const id = client.chat({ conversation_id: 'c', content: 'x' }, {});
    const ack = client.cancel(id);
    const frame = socket().last();
    expect(frame).toMatchObject({ type: 'cancel', target: id, conversation_id: null });
    socket().receive({ type: 'ack', id: frame.id, of: 'cancel', cancelled: [id] });
    await expect(ack).resolves.toMatchObject({ cancelled: [id] });
    expect(client.isRunning(id)).toBe(true); // still waits for its done
    socket().receive(done(id, 'par', { finish_reason: 'cancelled' }));
    expect(client.isRunning(id)).toBe(false);
  });

  it('rejects reset and history on an error reply, resolves history', async () => {
    const { client, socket } = setup();
    client.connect();
    socket().open();
    const reset = client.reset('c');
    socket().receive({ type: 'error', id: socket().last().id, code: 'internal', message: 'boom', detail: null });
    await expect(reset).rejects.toMatchObject({ code: 'internal', message: 'boom' });
    const history = client.history('c');
    expect(socket().last()).toMatchObject({ type: 'history', conversation_id: 'c' });
    socket().receive({ type: 'history', id: socket().last().id, conversation_id: 'c', messages: [{ role: 'user', content: 'q' }] });
    await expect(history).resolves.toMatchObject({ messages: [{ role: 'user', content: 'q' }] });
  });

  it('keeps frames sent while disconnected and sends them on open', () => {
    const { client, sockets, socket } = setup();
    const id = client.chat({ conversation_id: 'c', content: 'early' }, {});
    expect(sockets).toHaveLength(1); // sending connects
    expect(socket().sent).toEqual([]);
    socket().open();
    expect(socket().sent).toEqual([{ type: 'chat', id, conversation_id: 'c', content: 'early' }]);
  });

  it('cancels a chat still in the outbox locally', async () => {
    const { client, socket } = setup();
    const finishes: string[] = [];
    const id = client.chat({ conversation_id: 'c', content: 'x' }, { onDone: d => finishes.push(d.finish_reason) });
    const ack = await client.cancel(id);
    expect(ack.cancelled).toEqual([id]);
    expect(finishes).toEqual(['cancelled']);
    socket().open();
    expect(socket().sent).toEqual([]);
  });

  it('fails the chats being answered when the connection drops', () => {
    const { client, socket, timers } = setup();
    client.connect();
    socket().open();
    const errors: string[] = [];
    const id = client.chat({ conversation_id: 'c', content: 'x' }, { onError: e => errors.push(e.code) });
    socket().receive({ type: 'token', id, conversation_id: 'c', text: 'part' });
    socket().drop();
    expect(errors).toEqual(['disconnected']);
    expect(client.isRunning(id)).toBe(false);
    timers.advance(500);
    socket().open();
    expect(client.epoch).toBe(2);
  });

  it('reports frames that are not JSON or have unknown types', () => {
    const { client, socket, events } = setup();
    client.connect();
    socket().open();
    socket().receive('{nope');
    socket().receive({ type: 'surprise' });
    socket().receive(42);
    const errors = events.filter(e => e.kind === 'error').map(e => (e.kind === 'error' ? e.error.code : ''));
    expect(errors).toEqual(['protocol', 'protocol', 'protocol']);
  });

  it('follows model_changed and job_progress', () => {
    const { client, socket, events } = setup();
    client.connect();
    socket().open('a');
    socket().receive({ type: 'model_changed', model: null });
    expect(client.model).toBeNull();
    socket().receive({ type: 'job_progress', job: { id: 'j' } });
    expect(events.slice(-2).map(e => e.kind)).toEqual(['model', 'job']);
  });

  it('fails everything when disposed', async () => {
    const { client, socket } = setup();
    client.connect();
    socket().open();
    const errors: string[] = [];
    client.chat({ conversation_id: 'c', content: 'x' }, { onError: e => errors.push(e.code) });
    const reset = client.reset('c');
    client.dispose();
    expect(errors).toEqual(['disconnected']);
    await expect(reset).rejects.toMatchObject({ code: 'disconnected' });
    await expect(client.history('c')).rejects.toMatchObject({ code: 'disconnected' });
  });
});
