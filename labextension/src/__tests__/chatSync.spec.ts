import { ConversationStore, PREFS_KEY, STORAGE_KEY } from '../chat/conversations';
import { ChatModel, ModelsApi } from '../chat/model';
import { ConversationSync, ConversationsApi, MOVED_KEY } from '../chat/sync';
import type { ConversationCreate, ConversationEntryInput, StoredConversation } from '../wire';
import { MapStorage, done, fakeClient, loaded } from './chatFakes';

/** The server's conversation routes in memory: revisions, 404, 409 and import's skipping, as the real ones. */
class FakeServer implements ConversationsApi {
  data = new Map<string, StoredConversation>();
  calls: string[] = [];
  failImport = false;

  private _error(code: string, message: string): Error {
    return Object.assign(new Error(message), { code });
  }

  private _store(id: string, body: Partial<StoredConversation>, revision: number): StoredConversation {
    const old = this.data.get(id);
    const stored: StoredConversation = {
      type: 'conversation',
      version: 1,
      id,
      name: body.name ?? old?.name ?? 'New conversation',
      system: body.system !== undefined ? body.system : old?.system ?? null,
      created: body.created ?? old?.created ?? 1,
      updated: body.updated ?? 2,
      revision,
      entries: (body.entries ?? old?.entries ?? []).map(e => ({
        sent: null, context: null, finish_reason: null, notice: null, model: null, usage: null, code: null, detail: null, time: 0,
        ...(e as ConversationEntryInput)
      })) as StoredConversation['entries']
    };
    this.data.set(id, stored);
    return stored;
  }

  /** What the chat WebSocket does when a turn ends: appends, revision + 1. */
  appendTurn(id: string, question: string, answer: string): StoredConversation {
    const old = this.data.get(id);
    const entries = [...(old?.entries ?? []), { id: 'x', role: 'user', content: question }, { id: 'x', role: 'assistant', content: answer }];
    return this._store(id, { entries: entries as StoredConversation['entries'] }, (old?.revision ?? 0) + 1);
  }

  async list() {
    this.calls.push('list');
    const conversations = [...this.data.values()].map(c => ({ id: c.id, name: c.name, created: c.created, updated: c.updated, revision: c.revision, messages: c.entries.length }));
    return { type: 'conversations' as const, conversations, problems: [], folder: '/x', max_conversations: 1000, max_conversation_bytes: 1 << 22 };
  }

  async get(id: string) {
    this.calls.push(`get ${id}`);
    const c = this.data.get(id);
    if (!c) {
      throw this._error('not_found', `no conversation '${id}'`);
    }
    return c;
  }

  async create(body: ConversationCreate) {
    this.calls.push(`create ${body.id}`);
    if (this.data.has(body.id!)) {
      throw this._error('conflict', 'exists');
    }
    return this._store(body.id!, body as Partial<StoredConversation>, 1);
  }

  async update(id: string, body: { revision: number; name: string; system?: string | null; entries: unknown[] }) {
    this.calls.push(`put ${id}@${body.revision}`);
    const c = await this.get(id);
    if (c.revision !== body.revision) {
      throw this._error('conflict', 'changed');
    }
    return this._store(id, body as Partial<StoredConversation>, c.revision + 1);
  }

  async patch(id: string, body: { name?: string | null; system?: string | null; clear_system?: boolean }) {
    this.calls.push(`patch ${id} ${JSON.stringify(body)}`);
    const c = await this.get(id);
    const change: Partial<StoredConversation> = {};
    if (body.name) {
      change.name = body.name;
    }
    if (body.clear_system) {
      change.system = null;
    } else if (body.system !== undefined) {
      change.system = body.system;
    }
    return this._store(id, change, c.revision + 1);
  }

  async remove(id: string) {
    this.calls.push(`delete ${id}`);
    if (!this.data.delete(id)) {
      throw this._error('not_found', 'gone');
    }
  }

  async importMany(body: { conversations: ConversationCreate[] }) {
    this.calls.push(`import ${body.conversations.map(c => c.id).join(',')}`);
    if (this.failImport) {
      throw this._error('internal', 'down');
    }
    const imported: string[] = [];
    const skipped = [];
    for (const c of body.conversations) {
      if (this.data.has(c.id!)) {
        skipped.push({ id: c.id ?? null, reason: 'already there' });
      } else {
        this._store(c.id!, c as Partial<StoredConversation>, 1);
        imported.push(c.id!);
      }
    }
    return { type: 'imported' as const, imported, skipped };
  }
}

const flush = async () => {
  for (let i = 0; i < 10; i++) {
    await new Promise(resolve => setTimeout(resolve, 0));
  }
};

const models: ModelsApi = {
  list: async () => ({ type: 'models', default_model: 'demo', loaded: null, catalog: [], remote: null, stored: [] }),
  load: async name => loaded(name ?? 'demo')
};

function tab(server: FakeServer, storage = new MapStorage()) {
  const { client, sockets } = fakeClient();
  const store = new ConversationStore(storage, undefined, { server: true });
  const errors: string[] = [];
  const sync = new ConversationSync(store, server, storage, (_err, what) => errors.push(what));
  const model = new ChatModel(store, client, models, sync);
  client.connect();
  const socket = () => sockets[sockets.length - 1];
  socket().open();
  return { model, store, sync, socket, storage, errors };
}

function legacy(storage: MapStorage, ids: string[]) {
  storage.setItem(
    STORAGE_KEY,
    JSON.stringify({
      version: 1,
      active: ids[0],
      model: 'smol',
      conversations: ids.map((id, i) => ({
        id,
        title: `Old ${i}`,
        system: null,
        created: 10 + i,
        updated: 20 + i,
        entries: [
          { id: `q${i}`, role: 'user', content: `question ${i}`, sent: `ctx\n\nquestion ${i}`, time: 1 },
          { id: `q${i}`, role: 'assistant', content: `answer ${i}`, finishReason: 'stop', usage: { prompt_tokens: 3, completion_tokens: 2 }, time: 2 }
        ]
      }))
    })
  );
}

describe('ConversationSync', () => {
  it("moves the browser's conversations to the server once, marks them moved and keeps them", async () => {
    const server = new FakeServer();
    const storage = new MapStorage();
    legacy(storage, ['c-a', 'c-b']);
    const before = storage.getItem(STORAGE_KEY);
    const first = tab(server, storage);
    await first.model.start();
    expect(server.calls.filter(c => c.startsWith('import'))).toEqual(['import c-a,c-b']);
    expect(server.data.get('c-a')!.entries.map(e => [e.role, e.content, e.sent])).toEqual([
      ['user', 'question 0', 'ctx\n\nquestion 0'],
      ['assistant', 'answer 0', null]
    ]);
    expect(server.data.get('c-b')!.name).toBe('Old 1');
    expect(JSON.parse(storage.getItem(MOVED_KEY)!).imported).toEqual(['c-a', 'c-b']);
    expect(storage.getItem(STORAGE_KEY)).toBe(before); // not deleted
    expect(first.store.conversations.map(c => c.id).sort()).toEqual(['c-a', 'c-b']);
    expect(first.store.active.entries.map(e => e.content)).toEqual(['question 1', 'answer 1']); // newest, read at once

    const again = tab(server, storage); // a reload, or another tab of the same browser
    await again.model.start();
    expect(server.calls.filter(c => c.startsWith('import'))).toHaveLength(1);
    expect(again.store.conversations.map(c => c.title).sort()).toEqual(['Old 0', 'Old 1']);
  });

  it('keeps them and tries again when the import fails', async () => {
    const server = new FakeServer();
    server.failImport = true;
    const storage = new MapStorage();
    legacy(storage, ['c-a']);
    const first = tab(server, storage);
    await first.model.start();
    expect(first.errors[0]).toMatch(/Could not move the conversations/);
    expect(storage.getItem(MOVED_KEY)).toBeNull();
    server.failImport = false;
    await tab(server, storage).model.start();
    expect([...server.data.keys()]).toEqual(['c-a']);
    expect(storage.getItem(MOVED_KEY)).not.toBeNull();
  });

  it('sends what the panel shows with a message, and reads the turn back when told', async () => {
    const server = new FakeServer();
    const { model, store, socket } = tab(server);
    await model.start();
    const cid = store.active.id;
    const id = model.send('ctx\n\nhi', { display: 'hi', context: ['The active cell'] })!;
    expect(socket().last()).toMatchObject({ conversation_id: cid, content: 'ctx\n\nhi', display: 'hi', context: ['The active cell'] });
    expect(socket().last().history).toBeUndefined();
    const stored = server.appendTurn(cid, 'hi', 'hello');
    socket().receive({ type: 'conversation_changed', conversation_id: cid, revision: stored.revision, deleted: false });
    await flush();
    expect(server.calls.filter(c => c.startsWith('get'))).toEqual([]); // not while it answers here
    socket().receive(done(id, 'hello', { conversation_id: cid }));
    await flush();
    expect(server.calls.filter(c => c.startsWith('get'))).toEqual([`get ${cid}`]);
    expect(store.get(cid)).toMatchObject({ revision: 1, loaded: true });
    model.send('again');
    expect(socket().last().history).toBeUndefined(); // the server has the turns on this connection
  });

  it("shows another tab's new conversations, renames and deletions", async () => {
    const server = new FakeServer();
    const one = tab(server);
    const two = tab(server);
    await one.model.start();
    await two.model.start();
    const cid = one.store.active.id;
    one.model.rename('Llamas');
    await flush();
    expect(server.data.get(cid)!.name).toBe('Llamas');
    two.socket().receive({ type: 'conversation_changed', conversation_id: cid, revision: 1, deleted: false });
    await flush();
    expect(two.store.get(cid)?.title).toBe('Llamas');

    one.model.rename('Alpacas');
    await flush();
    expect(server.calls).toContain(`patch ${cid} {"name":"Alpacas"}`);
    two.socket().receive({ type: 'conversation_changed', conversation_id: cid, revision: 2, deleted: false });
    await flush();
    expect(two.store.get(cid)?.title).toBe('Alpacas');

    one.model.remove(cid);
    await flush();
    expect(server.data.has(cid)).toBe(false);
    two.socket().receive({ type: 'conversation_changed', conversation_id: cid, revision: null, deleted: true });
    expect(two.store.get(cid)).toBeUndefined();
  });

  it('clears a conversation while disconnected with a PUT, reading it again after a 409', async () => {
    const server = new FakeServer();
    const { model, store, sync, socket } = tab(server);
    server.appendTurn('c-x', 'q', 'a');
    await model.start();
    await sync.load('c-x');
    model.select('c-x');
    server.appendTurn('c-x', 'q2', 'a2'); // another tab wrote meanwhile: this tab's revision is stale
    socket().drop();
    model.clear('c-x');
    await flush();
    expect(server.calls.filter(c => c.startsWith('put'))).toEqual(['put c-x@1', 'put c-x@2']);
    expect(server.data.get('c-x')!.entries).toEqual([]);
    expect(store.get('c-x')!.entries).toEqual([]);
  });

  it('keeps only the shown conversation and the model in localStorage', async () => {
    const server = new FakeServer();
    server.appendTurn('c-y', 'q', 'a');
    const storage = new MapStorage();
    const { model, store } = tab(server, storage);
    await model.start();
    model.select('c-y');
    store.model = 'smol';
    const prefs = JSON.parse(storage.getItem(PREFS_KEY)!);
    expect(prefs).toMatchObject({ active: 'c-y', model: 'smol', conversations: [] });
    expect(storage.getItem(STORAGE_KEY)).toBeNull();
    const reloaded = tab(server, storage);
    await reloaded.model.start();
    expect(reloaded.store.active.id).toBe('c-y');
    expect(reloaded.store.active.entries.map(e => e.content)).toEqual(['q', 'a']);
  });
});
