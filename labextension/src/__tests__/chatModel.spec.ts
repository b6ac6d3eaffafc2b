import { ConversationStore } from '../chat/conversations';
import { ChatModel, KERNEL_CONTEXT_LABEL, ModelsApi } from '../chat/model';
import { ManualTimers, done, fakeClient, loaded } from './chatFakes';
import type { ModelsReply } from '../wire';

function setup(api: Partial<ModelsApi> = {}) {
  const timers = new ManualTimers();
  const { client, sockets } = fakeClient(timers);
  const loads: (string | null)[] = [];
  const models: ModelsApi = {
    list: async () => ({
      type: 'models',
      remote: null,
      default_model: 'demo',
      loaded: null,
      catalog: [],
      stored: [
        {
          name: 'demo',
          path: '/m/demo.gguf',
          size_bytes: 1,
          architecture: 'llama',
          quantization: 'Q4_1',
          context_length: 2048,
          license: null,
          source: 'x',
          loaded: true,
          allowed: true
        }
      ]
    }),
    load: async name => {
      loads.push(name);
      return loaded(name ?? 'demo');
    },
    ...api
  };
  const store = new ConversationStore();
  const model = new ChatModel(store, client, models);
  client.connect();
  const socket = () => sockets[sockets.length - 1];
  socket().open();
  return { model, store, client, socket, timers, loads };
}

const flush = () => new Promise(resolve => setTimeout(resolve, 0));

describe('ChatModel', () => {
  it('streams an answer into the conversation', () => {
    const { model, store, socket } = setup();
    const id = model.send('Hi there')!;
    const frame = socket().last();
    expect(frame).toMatchObject({ type: 'chat', id, conversation_id: store.active.id, content: 'Hi there', system: null, model: null, params: {} });
    expect(model.isGenerating()).toBe(true);
    expect(model.runningRequest()).toBe(id);
    expect(model.send('again')).toBeNull();
    socket().receive({ type: 'token', id, conversation_id: store.active.id, text: 'Hel' });
    expect(store.active.entries.map(e => [e.role, e.content, e.streaming])).toEqual([
      ['user', 'Hi there', undefined],
      ['assistant', 'Hel', true]
    ]);
    socket().receive(done(id, 'Hello', { notice: '2 earlier messages were left out.' }));
    const answer = store.active.entries[1];
    expect(answer).toMatchObject({ content: 'Hello', finishReason: 'stop', notice: '2 earlier messages were left out.', model: 'demo' });
    expect(answer.streaming).toBeUndefined();
    expect(model.isGenerating()).toBe(false);
    expect(store.active.title).toBe('Hi there');
  });

  it('shows the message but sends it with its context, system prompt, model and params', () => {
    const { model, store, socket } = setup();
    model.setSystem('Be brief.');
    store.model = 'demo';
    model.settings = { maxTokens: 64, temperature: 0.2, carryOverChars: 1000 };
    model.send('ctx\n\nWhat?', { display: 'What?', context: ['Active cell'] });
    expect(socket().last()).toMatchObject({ content: 'ctx\n\nWhat?', system: 'Be brief.', model: 'demo', params: { max_tokens: 64, temperature: 0.2 } });
    expect(store.active.entries[0]).toMatchObject({ content: 'What?', sent: 'ctx\n\nWhat?', context: ['Active cell'] });
  });

  it("sends the notebook's kernel with a message that asks for the kernel's names (the Kernel option)", () => {
    const { model, store, socket } = setup();
    const blocks = [{ label: 'The active cell [3] of a.ipynb', language: 'python', text: 'df.head()' }];
    model.sendWithContext('What columns has df?', blocks, { kernel: { id: 'k-1', execution_count: 7 } });
    expect(socket().last()).toMatchObject({ type: 'chat', kernel: { id: 'k-1', execution_count: 7 } });
    expect(store.active.entries[0].context).toEqual(['The active cell [3] of a.ipynb', KERNEL_CONTEXT_LABEL]);
    socket().receive(done(socket().last().id, 'price and qty'));
    model.send('And without?', { kernel: null });
    expect(socket().last()).not.toHaveProperty('kernel');
    expect(store.active.entries[2].context).toBeUndefined();
  });

  it('stops an answer with a cancel naming it', async () => {
    const { model, store, socket } = setup();
    const id = model.send('long story')!;
    const stopping = model.stop();
    expect(socket().last()).toMatchObject({ type: 'cancel', target: id });
    socket().receive({ type: 'ack', id: socket().last().id, of: 'cancel', cancelled: [id] });
    await stopping;
    socket().receive(done(id, 'Once', { finish_reason: 'cancelled' }));
    expect(store.active.entries[1].finishReason).toBe('cancelled');
    expect(model.isGenerating()).toBe(false);
  });

  it('shows an error reply as an error entry and drops the empty answer', () => {
    const { model, store, socket } = setup();
    const id = model.send('x'.repeat(10))!;
    socket().receive({ type: 'error', id, code: 'prompt_too_long', message: 'The message is too long.', detail: { limit: 5 } });
    expect(store.active.entries.map(e => e.role)).toEqual(['user', 'error']);
    expect(store.active.entries[1]).toMatchObject({ content: 'The message is too long.', code: 'prompt_too_long', detail: { limit: 5 } });
    expect(model.isGenerating()).toBe(false);
  });

  it('keeps a partial answer when the connection drops, then sends the earlier turns as history', () => {
    const { model, store, socket, timers } = setup();
    const first = model.send('q1')!;
    expect(socket().last().history).toBeUndefined(); // nothing earlier
    socket().receive(done(first, 'a1'));
    const second = model.send('q2')!;
    expect(socket().last()).toMatchObject({ content: 'q2' }); // the server has q1/a1 on this connection
    expect(socket().last().history).toBeUndefined();
    socket().receive({ type: 'token', id: second, conversation_id: 'c', text: 'part' });
    socket().drop();
    expect(store.active.entries.map(e => [e.role, e.content])).toEqual([
      ['user', 'q1'],
      ['assistant', 'a1'],
      ['user', 'q2'],
      ['assistant', 'part'],
      ['error', 'The connection to the server dropped; the answer stopped.']
    ]);
    timers.advance(500);
    socket().open();
    model.send('q3');
    expect(socket().last().content).toBe('q3');
    expect(socket().last().history).toEqual([
      { role: 'user', content: 'q1' },
      { role: 'assistant', content: 'a1' },
      { role: 'user', content: 'q2' },
      { role: 'assistant', content: 'part' }
    ]);
  });

  it('sends the history exactly once per conversation per connection', () => {
    const { model, store, socket, timers } = setup();
    const a = store.active.id;
    store.append(a, { id: 'o', role: 'user', content: 'old', sent: 'ctx\n\nold', time: 1 }, { id: 'o', role: 'assistant', content: 'reply', time: 1 });
    const b = store.create().id;
    store.append(b, { id: 'p', role: 'user', content: 'other', time: 1 }, { id: 'p', role: 'assistant', content: 'answer', time: 1 });
    const seeded = { a: [{ role: 'user', content: 'ctx\n\nold' }, { role: 'assistant', content: 'reply' }], b: [{ role: 'user', content: 'other' }, { role: 'assistant', content: 'answer' }] };
    const histories = () => socket().sent.filter(f => f.type === 'chat').map(f => [f.conversation_id, f.content, f.history ?? null]);

    for (const [cid, turns] of [[a, seeded.a], [b, seeded.b]] as const) {
      const id = model.send('new', { conversationId: cid })!;
      socket().receive(done(id, 'ok'));
      const next = model.send('next', { conversationId: cid })!;
      socket().receive(done(next, 'ok'));
      expect(histories().slice(-2)).toEqual([[cid, 'new', turns], [cid, 'next', null]]);
    }
    // A new connection: each conversation sends its (longer) history once more.
    socket().drop();
    timers.advance(500);
    socket().open();
    const id = model.send('again', { conversationId: a })!;
    expect(histories().slice(-1)[0][2]).toHaveLength(6);
    socket().receive(done(id, 'ok'));
    model.send('and again', { conversationId: a });
    expect(histories().slice(-1)[0][2]).toBeNull();
    expect(socket().sent.filter(f => f.type === 'chat' && f.history).length).toBe(1);
  });

  it('sends the history again when the message that carried it failed', () => {
    const { model, store, socket } = setup();
    store.append(store.active.id, { id: 'o', role: 'user', content: 'old', time: 1 }, { id: 'o', role: 'assistant', content: 'reply', time: 1 });
    const id = model.send('new')!;
    expect(socket().last().history).toHaveLength(2);
    socket().receive({ type: 'error', id, code: 'engine_error', message: 'failed' });
    model.send('retry');
    expect(socket().last().history).toHaveLength(2);
  });

  it("keeps the history within the setting's and the server's character budgets", () => {
    const { model, store, socket, timers } = setup();
    const cid = store.active.id;
    for (let i = 0; i < 5; i++) {
      store.append(cid, { id: `q${i}`, role: 'user', content: `q${i}`.padEnd(100, '.'), time: i }, { id: `q${i}`, role: 'assistant', content: `a${i}`.padEnd(100, '.'), time: i });
    }
    model.settings = { ...model.settings, carryOverChars: 450 };
    let id = model.send('new')!;
    expect((socket().last().history as { content: string }[]).map(t => t.content.slice(0, 2))).toEqual(['q3', 'a3', 'q4', 'a4']);
    socket().receive({ type: 'error', id, code: 'engine_error', message: 'failed' });

    socket().drop(); // the next server allows less than the setting
    timers.advance(500);
    socket().open('demo', { max_prompt_chars: 250, max_tokens_limit: 4096 });
    id = model.send('new')!;
    expect((socket().last().history as { content: string }[]).map(t => t.content.slice(0, 2))).toEqual(['q4', 'a4']);
    socket().receive({ type: 'error', id, code: 'engine_error', message: 'failed' });

    model.settings = { ...model.settings, carryOverChars: 0 };
    model.send('new');
    expect(socket().last().history).toBeUndefined();
  });

  it("cuts context blocks to the server's max_prompt_chars and says so on the message", () => {
    const { model, store, socket, timers } = setup();
    const blocks = [
      { label: 'The active cell', language: 'python', text: 'x = 1\n'.repeat(200) },
      { label: 'Selected code', language: 'python', text: 'y = 2' }
    ];
    model.sendWithContext('What does it do?', blocks);
    expect(socket().last().content.length).toBeGreaterThan(1200); // no limit known: sent whole
    socket().receive(done(socket().last().id, 'ok'));

    socket().drop();
    timers.advance(500);
    socket().open('demo', { max_prompt_chars: 500, max_tokens_limit: 4096 });
    model.sendWithContext('What does it do?', blocks);
    const sent = socket().last().content as string;
    expect(sent.length).toBeLessThanOrEqual(500);
    expect(sent).toContain('more characters left out');
    expect(sent).toContain('y = 2');
    expect(sent.endsWith('What does it do?')).toBe(true);
    const entry = store.active.entries[store.active.entries.length - 2];
    expect(entry).toMatchObject({ role: 'user', content: 'What does it do?', sent });
    expect(entry.context).toEqual(["The active cell (shortened to fit the server's limit of 500 characters)", 'Selected code']);
  });

  it('resets the server conversation when cleared or deleted', () => {
    const { model, store, socket } = setup();
    const cid = store.active.id;
    const id = model.send('q')!;
    socket().receive(done(id, 'a'));
    model.clear();
    expect(socket().last()).toMatchObject({ type: 'reset', conversation_id: cid });
    expect(store.active.entries).toEqual([]);
    model.send('fresh');
    expect(socket().last().content).toBe('fresh');
    model.remove(cid);
    expect(socket().last()).toMatchObject({ type: 'reset', conversation_id: cid });
    expect(store.get(cid)).toBeUndefined();
  });

  it('shows errors the server sends without an id in the active conversation', () => {
    const { store, socket } = setup();
    socket().receive({ type: 'error', id: null, code: 'bad_request', message: 'bad frame', detail: 'x' });
    expect(store.active.entries[0]).toMatchObject({ role: 'error', content: 'bad frame', code: 'bad_request' });
  });

  it('lists the models on hello and loads the picked one', async () => {
    const { model, store, loads } = setup();
    await flush();
    expect(model.models?.map(m => m.name)).toEqual(['demo']);
    expect(model.loaded?.name).toBe('demo');
    await model.pickModel('demo'); // already loaded
    expect(loads).toEqual([]);
    await model.pickModel('other');
    expect(loads).toEqual(['other']);
    expect(store.model).toBe('other');
    expect(model.loading).toBeNull();
  });

  it('lists the models again when a job is done or the loaded model changes, not while a job runs', async () => {
    let listings = 0;
    const stored = (name: string) => ({
      name,
      path: `/m/${name}.gguf`,
      size_bytes: 1,
      architecture: 'llama',
      quantization: 'Q8_0',
      context_length: 2048,
      license: null,
      source: 'x',
      loaded: false,
      allowed: true
    });
    const names = ['demo'];
    const { model, socket } = setup({
      list: async () => {
        listings++;
        return { type: 'models', default_model: 'demo', loaded: null, catalog: [], remote: null, stored: names.map(stored) };
      }
    });
    await flush();
    expect(listings).toBe(1); // on hello
    const job = (state: string) => ({
      type: 'job_progress',
      job: { type: 'job', id: 'j1', kind: 'pull', model: 'new', state, stage: state, done: 5, total: 10, unit: 'B', started_at: 1 }
    });
    socket().receive(job('running'));
    await flush();
    expect(listings).toBe(1);
    names.push('new');
    socket().receive(job('done'));
    await flush();
    expect(listings).toBe(2);
    expect(model.models?.map(m => m.name)).toEqual(['demo', 'new']);
    socket().receive(job('failed'));
    socket().receive(job('cancelled'));
    await flush();
    expect(listings).toBe(2);
    socket().receive({ type: 'model_changed', model: loaded('new') });
    await flush();
    expect(listings).toBe(3);
  });

  it("offers the team server's models, not the store's, when there is a team server", async () => {
    const storedModel = { name: 'local', path: '/m/local.gguf', size_bytes: 1, architecture: 'llama', quantization: 'Q8_0', context_length: 2048, license: null, source: 'x', loaded: false, allowed: true };
    let remote: ModelsReply['remote'] = {
      url: 'http://gpu-box:8080',
      kind: 'llamalab serve',
      error: null,
      models: [
        { id: 'team-chat', in_use: true, allowed: true },
        { id: 'team-code', in_use: false, allowed: false }
      ]
    };
    const { model } = setup({
      list: async () => ({ type: 'models', default_model: 'team-chat', loaded: null, catalog: [], remote, stored: [storedModel] })
    });
    await flush();
    expect(model.pickerChoices()).toEqual([
      { name: 'team-chat', allowed: true, note: ' · in use' },
      { name: 'team-code', allowed: false, note: '' }
    ]);
    remote = null; // remote_url removed: the store again
    await model.refreshModels();
    expect(model.remoteModels).toBeNull();
    expect(model.pickerChoices()).toEqual([{ name: 'local', allowed: true, note: ' · Q8_0' }]);
  });

  it('keeps the newest listing when an older one answers last', async () => {
    const replies: ((names: string[]) => void)[] = [];
    const { model } = setup({
      list: () =>
        new Promise(resolve =>
          replies.push(names =>
            resolve({
              type: 'models',
              remote: null,
              default_model: 'demo',
              loaded: null,
              catalog: [],
              stored: names.map(name => ({ name, path: `/m/${name}.gguf`, size_bytes: 1, architecture: 'llama', quantization: 'Q8_0', context_length: 2048, license: null, source: 'x', loaded: false, allowed: true }))
            })
          )
        )
    });
    void model.refreshModels(); // after a job is done: the store has 'new'
    expect(replies).toHaveLength(2); // the listing on hello, then this one
    replies[1](['demo', 'new']);
    await flush();
    replies[0](['demo']); // the listing on hello answers last, with the older store
    await flush();
    expect(model.models?.map(m => m.name)).toEqual(['demo', 'new']);
  });

  it('reports a failed load and a failed listing in one line', async () => {
    const fail = (message: string) => async () => {
      throw Object.assign(new Error(message), { code: 'model_not_found', detail: 'more' });
    };
    const { model, store } = setup({ list: fail('no list'), load: fail('no such model') });
    await flush();
    expect(model.models).toEqual([]);
    await model.pickModel('ghost');
    const errors = store.active.entries.filter(e => e.role === 'error').map(e => [e.content, e.code, e.detail]);
    expect(errors).toEqual([
      ['no list', 'model_not_found', 'more'],
      ['no such model', 'model_not_found', 'more']
    ]);
  });

  it('notifies its listeners on every change', () => {
    const { model, socket } = setup();
    let calls = 0;
    model.subscribe(() => calls++);
    const before = model.version;
    const id = model.send('q')!;
    socket().receive({ type: 'token', id, conversation_id: 'c', text: 't' });
    expect(calls).toBeGreaterThanOrEqual(2);
    expect(model.version).toBeGreaterThan(before);
  });
});

describe('ChatModel model picking', () => {
  it('goes back to the previous pick when the load fails', async () => {
    const { model, store } = setup({
      load: async () => {
        throw Object.assign(new Error('not allowed'), { code: 'model_not_allowed' });
      }
    });
    store.model = 'demo';
    await model.pickModel('forbidden');
    expect(store.model).toBe('demo');
    expect(store.active.entries[store.active.entries.length - 1]).toMatchObject({ role: 'error', code: 'model_not_allowed' });
  });
});
