import { ConversationStore, STORAGE_KEY, deserialize } from '../chat/conversations';
import { MapStorage } from './chatFakes';

describe('ConversationStore', () => {
  it('starts with one empty conversation and reuses it for "new"', () => {
    const store = new ConversationStore();
    expect(store.conversations).toHaveLength(1);
    const first = store.active;
    expect(store.create()).toBe(first);
    expect(store.conversations).toHaveLength(1);
  });

  it('names a conversation from its first message and keeps the newest first', () => {
    const store = new ConversationStore();
    const a = store.active.id;
    store.append(a, { id: '1', role: 'user', content: 'How do I  read\na CSV file?', time: 1 });
    expect(store.active.title).toBe('How do I read a CSV file?');
    const b = store.create().id;
    expect(store.active.id).toBe(b);
    store.append(b, { id: '2', role: 'user', content: 'second', time: 2 });
    store.append(a, { id: '3', role: 'user', content: 'again', time: 3 });
    expect(store.conversations.map(c => c.id)).toEqual([a, b]);
    expect(store.get(a)?.title).toBe('How do I read a CSV file?');
  });

  it('saves and reads back its conversations, the active one and the model', () => {
    const storage = new MapStorage();
    const store = new ConversationStore(storage);
    const id = store.active.id;
    store.append(id, { id: 'q', role: 'user', content: 'hi', time: 1 }, { id: 'q', role: 'assistant', content: 'hello', finishReason: 'stop', time: 2 });
    store.setSystem(id, 'Be brief.');
    store.model = 'smol';
    const again = new ConversationStore(storage);
    expect(again.active.id).toBe(id);
    expect(again.active.system).toBe('Be brief.');
    expect(again.active.entries.map(e => e.content)).toEqual(['hi', 'hello']);
    expect(again.model).toBe('smol');
  });

  it('does not write while an answer streams, and writes when it ends', () => {
    const storage = new MapStorage();
    const store = new ConversationStore(storage);
    const id = store.active.id;
    store.append(id, { id: 'q', role: 'assistant', content: '', streaming: true, time: 1 });
    const writes = storage.writes;
    store.patch(id, 'q', 'assistant', e => ({ ...e, content: 'tok' }));
    expect(storage.writes).toBe(writes);
    store.patch(id, 'q', 'assistant', e => ({ ...e, streaming: undefined, finishReason: 'stop' }));
    expect(storage.writes).toBe(writes + 1);
  });

  it('marks an answer that was streaming when the page closed as cut short', () => {
    const storage = new MapStorage();
    storage.setItem(
      STORAGE_KEY,
      JSON.stringify({
        version: 1,
        active: 'c1',
        model: '',
        conversations: [{ id: 'c1', title: 't', system: null, entries: [{ id: 'x', role: 'assistant', content: 'half', streaming: true, time: 1 }] }]
      })
    );
    const store = new ConversationStore(storage);
    expect(store.active.entries[0]).toMatchObject({ content: 'half', finishReason: 'cancelled' });
    expect(store.active.entries[0].streaming).toBeUndefined();
  });

  it('ignores storage it cannot read and entries that are malformed', () => {
    expect(deserialize('{not json').conversations).toEqual([]);
    expect(deserialize(JSON.stringify({ version: 99, conversations: [] })).conversations).toEqual([]);
    const data = deserialize(
      JSON.stringify({
        version: 1,
        conversations: [
          { id: 'a', entries: [{ id: '1', role: 'user', content: 'ok' }, { id: '2', role: 'hacker', content: 'x' }, 'junk'] },
          { id: '', entries: [] },
          null
        ]
      })
    );
    expect(data.conversations).toHaveLength(1);
    expect(data.conversations[0].entries.map(e => e.id)).toEqual(['1']);
    expect(data.conversations[0].title).toBe('New conversation');
  });

  it('survives a storage that throws', () => {
    const storage = {
      getItem: () => {
        throw new Error('denied');
      },
      setItem: () => {
        throw new Error('full');
      }
    };
    const store = new ConversationStore(storage);
    store.append(store.active.id, { id: '1', role: 'user', content: 'x', time: 1 });
    expect(store.active.entries).toHaveLength(1);
  });

  it('removes, clears and announces changes', () => {
    const store = new ConversationStore();
    let calls = 0;
    store.subscribe(() => calls++);
    const a = store.active.id;
    store.append(a, { id: '1', role: 'user', content: 'x', time: 1 });
    const b = store.create().id;
    store.select(a);
    store.clear(a);
    expect(store.active.entries).toEqual([]);
    expect(store.active.title).toBe('New conversation');
    store.remove(a);
    expect(store.active.id).toBe(b);
    store.remove(b);
    expect(store.conversations).toHaveLength(1);
    expect(store.active.id).not.toBe(b);
    expect(calls).toBeGreaterThanOrEqual(5);
  });

  it('drops and patches entries by id and role', () => {
    const store = new ConversationStore();
    const id = store.active.id;
    store.append(id, { id: 'q', role: 'user', content: 'u', time: 1 }, { id: 'q', role: 'assistant', content: '', time: 1 });
    store.patch(id, 'q', 'assistant', e => ({ ...e, content: 'a' }));
    expect(store.active.entries.map(e => e.content)).toEqual(['u', 'a']);
    store.drop(id, 'q', 'assistant');
    expect(store.active.entries.map(e => e.role)).toEqual(['user']);
  });
});
