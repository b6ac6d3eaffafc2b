import { contextOf, isAcceptance, SuggestionCache, SuggestionContext, typedAhead } from '../completer/cache';
import { CompletionClient, CompletionError } from '../completer/client';
import {
  asksAutomatically,
  buildRequest,
  CellSnapshot,
  cellWindow,
  CompletionRequestBody,
  CompleterSettings,
  DEFAULT_SETTINGS,
  DocumentSnapshot,
  fitToCursor,
  keepHead,
  keepTail,
  languageOf,
  linePrefix,
  MAX_CELLS_ABOVE,
  MAX_CELLS_BELOW,
  MAX_HEAD_CELLS,
  NotebookSnapshot,
  readSettings,
  replyToItems,
  shouldRequest,
  stableTail
} from '../completer/logic';
import { Suggester, SuggesterEvent } from '../completer/suggester';
import type { CompletionReply } from '../wire';

function body(prefix: string, extra: Partial<CompletionRequestBody> = {}): CompletionRequestBody {
  return { prefix, suffix: '', mode: 'auto', stream: false, max_tokens: 32, ...extra };
}

function reply(text: string, finish_reason: CompletionReply['finish_reason'] = 'stop'): CompletionReply {
  const usage = {
    prompt_tokens: 3,
    completion_tokens: 2,
    dropped_messages: 0,
    time_to_first_token_s: null,
    duration_s: 0,
    reused_prompt_tokens: null
  };
  return { type: 'completion', text, fim: false, model: 'demo', finish_reason, usage, prompt: null };
}

function jsonResponse(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value), { status, headers: { 'Content-Type': 'application/json' } });
}

function sseResponse(events: unknown[]): Response {
  const text = events.map(e => `data: ${JSON.stringify(e)}\n\n`).join('');
  return new Response(text, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
}

function abortError(): Error {
  return Object.assign(new Error('aborted'), { name: 'AbortError' });
}

/** A fake fetch: records calls, answers from `answer`, honours the abort signal. */
function fakeFetch(answer: (body: CompletionRequestBody) => Response | Promise<Response>) {
  const calls: { path: string; body: CompletionRequestBody; signal: AbortSignal }[] = [];
  const fetcher = (path: string, init: RequestInit) => {
    const parsed = JSON.parse(init.body as string) as CompletionRequestBody;
    const signal = init.signal as AbortSignal;
    calls.push({ path, body: parsed, signal });
    return new Promise<Response>((resolve, reject) => {
      if (signal.aborted) {
        return reject(abortError());
      }
      signal.addEventListener('abort', () => reject(abortError()));
      Promise.resolve(answer(parsed)).then(resolve, reject);
    });
  };
  return { calls, fetcher };
}

/** A promise the test resolves by hand. */
function deferred<T>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>(r => (resolve = r));
  return { promise, resolve };
}

/** Lets pending promise callbacks run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) {
    await Promise.resolve();
  }
}

/** A notebook snapshot over plain cells, counting the cells read. */
function notebookOf(cells: CellSnapshot[], index: number) {
  const reads: number[] = [];
  const snapshot: NotebookSnapshot = {
    count: cells.length,
    index,
    cellAt: i => {
      reads.push(i);
      return cells[i];
    }
  };
  return { snapshot, reads };
}

function code(id: string, source: string): CellSnapshot {
  return { id, source, kind: 'code' };
}

/** A cursor in cell `index` of `cells`, `offset` into its text (default: its end). */
function cellDoc(
  cells: CellSnapshot[],
  index: number,
  offset?: number,
  extra: Partial<DocumentSnapshot> = {}
): DocumentSnapshot {
  const text = cells[index].source;
  return {
    text,
    offset: offset ?? text.length,
    path: 'work/analysis.ipynb',
    language: 'python',
    notebook: notebookOf(cells, index).snapshot,
    ...extra
  };
}

const SETTINGS: CompleterSettings = { ...DEFAULT_SETTINGS, maxTokens: 32 };

describe('readSettings', () => {
  it('defaults to 32,000 characters above the cursor', () => {
    expect(DEFAULT_SETTINGS.maxPrefixChars).toBe(32000);
    expect(readSettings({})).toEqual(DEFAULT_SETTINGS);
  });
  it('keeps valid settings and falls back on bad ones', () => {
    expect(
      readSettings({
        maxTokens: 10.4,
        mode: 'multi',
        maxPrefixChars: -5,
        maxSuffixChars: 'x',
        enabled: false,
        autoFillInMiddle: 1
      })
    ).toEqual({
      enabled: false,
      autoFillInMiddle: false,
      maxTokens: 10,
      mode: 'multi',
      maxPrefixChars: 0,
      maxSuffixChars: DEFAULT_SETTINGS.maxSuffixChars
    });
    expect(readSettings({ mode: 'bogus', maxTokens: 1e9 }).maxTokens).toBe(4096);
  });
});

describe('keepTail / keepHead / stableTail', () => {
  it('cut inside one long line when no newline is in reach', () => {
    expect(keepTail('abcdefghij', 4)).toBe('ghij');
    expect(keepHead('abcdefghij', 4)).toBe('abcd');
  });
  it('leave short text alone', () => {
    expect(keepTail('abc', 10)).toBe('abc');
    expect(keepHead('abc', 10)).toBe('abc');
    expect(stableTail('abc', 10)).toBe('abc');
  });
  it('a zero bound sends nothing', () => {
    expect(keepTail('ab\ncd', 0)).toBe('');
    expect(keepHead('ab\ncd', 0)).toBe('');
    expect(stableTail('ab\ncd', 0)).toBe('');
  });
  it('never splits a surrogate pair', () => {
    const text = '😀'.repeat(10); // 20 UTF-16 units
    expect(keepTail(text, 5)).toBe('😀😀');
    expect(keepHead(text, 5)).toBe('😀😀');
    expect(stableTail(text, 5, 1)).toBe('😀😀');
  });
  it('stableTail stays within the bound and keeps its start while text is appended', () => {
    const lines = Array.from({ length: 400 }, (_, i) => `value_${i} = compute(${i})`).join('\n');
    const first = stableTail(lines, 2000);
    expect(first.length).toBeLessThanOrEqual(2000);
    expect(first.length).toBeGreaterThan(1000);
    expect(lines.endsWith(first)).toBe(true);
    expect(first.startsWith('value_')).toBe(true); // at a line start
    let typed = lines;
    for (const ch of '\nresult = value_1 + value_2') {
      typed += ch;
      const now = stableTail(typed, 2000);
      expect(now.length).toBeLessThanOrEqual(2000);
      expect(now.startsWith(first)).toBe(true); // only appended to: the server's cache holds
    }
  });
  it('stableTail of a 5 MB line is bounded', () => {
    const huge = 'x'.repeat(5_000_100);
    const cut = stableTail(huge, 32000);
    expect(cut.length).toBeLessThanOrEqual(32000);
    expect(cut.length).toBeGreaterThan(24000);
    expect(stableTail(huge + 'y', 32000) === cut + 'y').toBe(true); // the cut stays put
  });
});

describe('buildRequest for a notebook', () => {
  const cells: CellSnapshot[] = [
    code('c0', 'import pandas as pd'),
    { id: 'm1', source: '# Load the data', kind: 'markdown' },
    code('c2', "df = pd.read_csv('sales.csv')"),
    code('c3', 'total = df.price.sum()\nprint(tot'),
    { id: 'r4', source: 'raw text', kind: 'raw' },
    code('c5', 'df.head()')
  ];

  it('sends the cursor cell as prefix/suffix and the cells around it, in order, with ids and kinds', () => {
    const doc = cellDoc(cells, 3, 'total = df.price.sum()\nprint(t'.length, {
      kernel: { id: 'k-1', execution_count: 7 }
    });
    expect(buildRequest(doc, SETTINGS)).toEqual({
      prefix: 'total = df.price.sum()\nprint(t',
      suffix: 'ot',
      cells: [
        { id: 'c0', source: 'import pandas as pd', kind: 'code' },
        { id: 'm1', source: '# Load the data', kind: 'markdown' },
        { id: 'c2', source: "df = pd.read_csv('sales.csv')", kind: 'code' },
        { id: 'c3', source: '', kind: 'code' },
        { id: 'r4', source: 'raw text', kind: 'raw' },
        { id: 'c5', source: 'df.head()', kind: 'code' }
      ],
      cell_index: 3,
      path: 'work/analysis.ipynb',
      language: 'python',
      kernel: { id: 'k-1', execution_count: 7 },
      max_tokens: 32,
      mode: 'auto',
      stream: false
    });
  });

  it('leaves the kernel out without one, and marks a warm-up', () => {
    const warm = buildRequest(cellDoc(cells, 0), SETTINGS, { warm: true });
    expect(warm.kernel).toBeUndefined();
    expect(warm.warm).toBe(true);
    expect(warm.cell_index).toBe(0);
    expect(buildRequest(cellDoc(cells, 0), SETTINGS).warm).toBeUndefined();
  });

  it('sends whole cells only, nearest first, within the bounds above and below', () => {
    const many = Array.from({ length: 20 }, (_, i) => code(`id${i}`, `x${i} = ${'1'.repeat(90)}`)); // 95 chars each
    const bounds = { ...SETTINGS, maxPrefixChars: 300, maxSuffixChars: 200 };
    const request = buildRequest(cellDoc(many, 10), bounds);
    const ids = request.cells!.map(c => c.id);
    // three cells above fit 300 characters, two below fit 200; the notebook's head (its first
    // cells up to HEAD_CHARS) then fills the rest above
    expect(ids).toEqual(['id0', 'id1', 'id2', 'id3', 'id4', 'id5', 'id6', 'id7', 'id8', 'id9', 'id10', 'id11', 'id12']);
    expect(request.cell_index).toBe(10);
    const noHead = buildRequest(cellDoc([code('top', 'z'.repeat(3000)), ...many], 11), bounds);
    expect(noHead.cells!.map(c => c.id)).toEqual(['id7', 'id8', 'id9', 'id10', 'id11', 'id12']);
    for (const cell of request.cells!) {
      expect(cell.source === '' || cell.source === many.find(c => c.id === cell.id)!.source).toBe(true);
    }
  });

  it('stops at a cell too large for the bound (no partial cell; the head before a gap)', () => {
    const withBig = [code('a', 'a = 1'), code('big', 'y'.repeat(50_000)), code('b', 'b = 2'), code('cur', 'c = ')];
    const request = buildRequest(cellDoc(withBig, 3), SETTINGS);
    expect(request.cells!.map(c => c.id)).toEqual(['a', 'b', 'cur']);
  });

  it('keeps the same cells while the user types in the cursor cell', () => {
    const many = Array.from({ length: 50 }, (_, i) => code(`id${i}`, `v${i} = ${i}\n`.repeat(40)));
    const doc = (text: string) => {
      const copy = [...many.slice(0, 49), code('id49', text)];
      return buildRequest(cellDoc(copy, 49), SETTINGS);
    };
    const first = doc('print(v');
    const later = doc('print(v1 + v2 + v3');
    expect(later.cells).toEqual(first.cells);
    expect(later.prefix.startsWith(first.prefix)).toBe(true);
  });

  it('bounds a 10,000-cell notebook, reading only the cells it sends', () => {
    const many = Array.from({ length: 10_000 }, (_, i) => code(`id${i}`, i % 3 ? `y = ${i}` : ''));
    const { snapshot, reads } = notebookOf(many, 5000);
    const request = buildRequest({ text: 'y = ', offset: 4, path: 'big.ipynb', notebook: snapshot }, SETTINGS);
    expect(request.cells!.length).toBeLessThanOrEqual(400 + MAX_HEAD_CELLS);
    expect(request.cells!.length).toBe(MAX_HEAD_CELLS + MAX_CELLS_ABOVE + 1 + MAX_CELLS_BELOW);
    expect(request.cells!.slice(0, 3).map(c => c.id)).toEqual(['id0', 'id1', 'id2']);
    expect(request.cells![request.cell_index!].id).toBe('id5000');
    expect(reads.length).toBeLessThanOrEqual(402 + MAX_HEAD_CELLS);
  });

  it('bounds a 5 MB cursor cell and never throws on odd input', () => {
    const huge = 'z = 1\n'.repeat(900_000); // 5.4 MB
    const cells = [code('a', 'import os'), code('huge', huge)];
    const request = buildRequest(cellDoc(cells, 1, huge.length - 3), SETTINGS);
    expect(request.prefix.length).toBeLessThanOrEqual(SETTINGS.maxPrefixChars);
    expect(request.suffix!.length).toBeLessThanOrEqual(SETTINGS.maxSuffixChars);
    expect(JSON.stringify(request).length).toBeLessThan(40_000);
    // a cursor cell that is the 5 MB one above: left out whole
    const above = [code('huge', huge), code('cur', 'x')];
    expect(buildRequest(cellDoc(above, 1), SETTINGS).cells!.map(c => c.id)).toEqual(['cur']);
    // cells that cannot be read, an index past the end, a NaN cursor
    const broken: NotebookSnapshot = {
      count: 3,
      index: 7,
      cellAt: i => {
        if (i !== 2) {
          throw new Error('gone');
        }
        return { id: '', source: 'q', kind: 'code' };
      }
    };
    const odd = buildRequest({ text: 'abc', offset: NaN, notebook: broken }, SETTINGS);
    expect(odd.cells).toEqual([{ id: 'cell-2', source: '', kind: 'code' }]);
    expect(odd.prefix).toBe('abc');
  });

  it('sends the notebook head ahead of the nearest cells when they do not reach the top', () => {
    const cells = Array.from({ length: 200 }, (_, i) => code(`c${i}`, `value_${i} = ${i}\n`.padEnd(300, '#')));
    cells.push(code('cur', ''));
    const request = buildRequest(cellDoc(cells, 200, 0), SETTINGS);
    const ids = request.cells!.map(c => c.id);
    // six cells of 300 characters fit HEAD_CHARS (2048); the seventh does not
    expect(ids.slice(0, 7)).toEqual(['c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c94']); // a gap, then the nearest
    expect(ids[request.cell_index!]).toBe('cur');
    expect(ids[request.cell_index! - 1]).toBe('c199');
    // a notebook whose cells all fit sends each once, in order
    const small = buildRequest(cellDoc(cells.slice(0, 20).concat([code('cur', '')]), 20, 0), SETTINGS);
    expect(small.cells!.map(c => c.id)).toEqual([...cells.slice(0, 20).map(c => c.id), 'cur']);
  });

  it('truncates cell ids to the server limit and repairs bad kinds', () => {
    const cells = [{ id: 'x'.repeat(300), source: 's', kind: 'weird' as never }, code('c', '')];
    const window = cellWindow(notebookOf(cells, 1).snapshot, SETTINGS);
    expect(window.cells[0]).toEqual({ id: 'x'.repeat(128), source: 's', kind: 'code' });
  });
});

describe('buildRequest for a file', () => {
  it('sends the text above and below the cursor, bounded, and the path', () => {
    const above = Array.from({ length: 5000 }, (_, i) => `line_${i} = ${i}`).join('\n') + '\ndef f(';
    const below = '):\n    pass\n' + 'tail = 1\n'.repeat(1000);
    const request = buildRequest(
      { text: above + below, offset: above.length, path: 'src/app.py', language: 'python' },
      SETTINGS
    );
    expect(request.cells).toBeUndefined();
    expect(request.cell_index).toBeUndefined();
    expect(request.path).toBe('src/app.py');
    expect(request.prefix.length).toBeLessThanOrEqual(32000);
    expect(request.prefix.endsWith('\ndef f(')).toBe(true);
    expect(request.suffix!.startsWith('):\n    pass\n')).toBe(true);
    expect(request.suffix!.length).toBeLessThanOrEqual(1500);
  });
});

describe('shouldRequest and asksAutomatically', () => {
  it('skips automatic triggers in an empty or whitespace-only cell', () => {
    expect(shouldRequest({ text: '', offset: 0 }, false)).toBe(false);
    expect(shouldRequest({ text: '   \n  ', offset: 6 }, false)).toBe(false);
    expect(shouldRequest({ text: '\n\nfoo', offset: 1 }, false)).toBe(false);
    expect(shouldRequest({ text: 'def f', offset: 5 }, false)).toBe(true);
    expect(shouldRequest({ text: '', offset: 0 }, true)).toBe(true);
  });
  it('asks on its own at the end of a line that is not blank', () => {
    expect(asksAutomatically({ text: 'x = 1', offset: 5 }, SETTINGS)).toBe(true);
    expect(asksAutomatically({ text: 'x = 1\n    ', offset: 10 }, SETTINGS)).toBe(false);
    expect(asksAutomatically({ text: 'f(x)', offset: 2 }, SETTINGS)).toBe(false);
    expect(asksAutomatically({ text: 'f(x)', offset: 2 }, { autoFillInMiddle: true })).toBe(true);
  });
});

describe('fitToCursor, replyToItems, languageOf', () => {
  it('drops a leading line break and the indentation the cursor stands on, on a blank line', () => {
    expect(fitToCursor('\n    area = 1\n    return area', '    ')).toBe('area = 1\n    return area');
    expect(fitToCursor('\n\nx = 1', '')).toBe('x = 1');
    expect(fitToCursor('  \n        y', '    ')).toBe('    y');
    expect(fitToCursor('\n    return 1', 'def f():')).toBe('\n    return 1');
    expect(fitToCursor('area = 1', '    ')).toBe('area = 1');
  });
  it('reads the line before the cursor', () => {
    expect(linePrefix('a\n    b', 6)).toBe('    ');
    expect(linePrefix('abc', 2)).toBe('ab');
    expect(linePrefix('ab\n', 3)).toBe('');
  });
  it('turns a suggestion into one item and an empty one into none', () => {
    expect(replyToItems(reply('return 1'))).toEqual([{ insertText: 'return 1' }]);
    expect(replyToItems(reply(''))).toEqual([]);
    expect(replyToItems(reply('  \n'))).toEqual([]);
    expect(replyToItems(null)).toEqual([]);
  });
  it('prefers the kernel language, then the MIME type', () => {
    expect(languageOf('text/x-ipython', 'Python')).toBe('python');
    expect(languageOf('text/x-ipython')).toBe('python');
    expect(languageOf('text/x-rsrc', null)).toBe('r');
    expect(languageOf('text/x-unknown')).toBeNull();
    expect(languageOf(undefined)).toBeNull();
  });
});

describe('the suggestion cache', () => {
  const at = (before: string, after = '', doc = 'nb.ipynb#c1'): SuggestionContext => ({ doc, before, after });

  it('keys a context by the document, the cursor cell and the text around the cursor', () => {
    const cells = [code('c0', 'a = 1'), code('c1', 'b = ')];
    expect(contextOf(buildRequest(cellDoc(cells, 1), SETTINGS))).toEqual({
      doc: 'work/analysis.ipynb#c1',
      before: 'b = ',
      after: ''
    });
    expect(contextOf(body('x', { path: 'f.py', suffix: 'y' }))).toEqual({ doc: 'f.py', before: 'x', after: 'y' });
    expect(contextOf(body('x'), 'console-1').doc).toBe('console-1');
  });

  it('finds what the user typed ahead of a suggestion, and only that', () => {
    const shown = { context: at('x = '), text: 'compute(1)' };
    expect(typedAhead(shown, at('x = c'))).toBe('ompute(1)');
    expect(typedAhead(shown, at('x = compute('))).toBe('1)');
    expect(typedAhead(shown, at('x = compute(1)'))).toBeNull(); // all of it: nothing left
    expect(typedAhead(shown, at('x = d'))).toBeNull();
    expect(typedAhead(shown, at('x = '))).toBeNull();
    expect(typedAhead(shown, at('x = c', ')'))).toBeNull(); // the text after changed
    expect(typedAhead(shown, at('x = c', '', 'nb.ipynb#c2'))).toBeNull(); // another cell
    expect(typedAhead({ context: at('x = '), text: 'c   ' }, at('x = c'))).toBeNull(); // only blanks left
  });

  it('tells an accepted suggestion from other edits', () => {
    const shown = { context: at('x = ', '\nprint(x)'), text: 'compute(1)' };
    expect(isAcceptance(shown, at('x = compute(1)', '\nprint(x)'))).toBe(true);
    expect(isAcceptance(shown, at('= compute(1)', '\nprint(x)'))).toBe(true); // the prefix's cut moved on
    expect(isAcceptance(shown, at('x = compute(', '\nprint(x)'))).toBe(false);
    expect(isAcceptance(shown, at('x = compute(1)', ''))).toBe(false);
    expect(isAcceptance(shown, at('y = compute(1)', '\nprint(x)'))).toBe(false);
  });

  it('answers identical and typed-ahead contexts, the newest first', () => {
    const cache = new SuggestionCache(8);
    cache.put(at('x = '), 'compute(1)');
    cache.put(at('x = '), 'compute(2)'); // replaces
    cache.put(at('y = '), '');
    expect(cache.size).toBe(2);
    expect(cache.lookup(at('x = '))).toEqual({ text: 'compute(2)', source: 'cache' });
    expect(cache.lookup(at('y = '))).toEqual({ text: '', source: 'cache' });
    expect(cache.lookup(at('x = comp'))).toEqual({ text: 'ute(2)', source: 'type-ahead' });
    expect(cache.lookup(at('z = '))).toBeNull();
  });

  it('forgets the least recently used past its capacity', () => {
    const cache = new SuggestionCache(3);
    cache.put(at('a'), '1');
    cache.put(at('b'), '2');
    cache.put(at('c'), '3');
    expect(cache.lookup(at('a'))).not.toBeNull(); // a is now the most recent
    cache.put(at('d'), '4'); // evicts b
    expect(cache.size).toBe(3);
    expect(cache.lookup(at('b'))).toBeNull();
    expect(cache.lookup(at('a'))).not.toBeNull();
    expect(cache.lookup(at('c'))).not.toBeNull();
    expect(cache.lookup(at('d'))).not.toBeNull();
    for (let i = 0; i < 100; i++) {
      cache.put(at(`k${i}`), 'v');
    }
    expect(cache.size).toBe(3);
    cache.clear();
    expect(cache.size).toBe(0);
  });
});

describe('CompletionClient', () => {
  it('posts the request to complete and returns the reply', async () => {
    const { calls, fetcher } = fakeFetch(() => jsonResponse(reply('1')));
    const client = new CompletionClient(fetcher);
    expect(await client.complete(body('x = '))).toEqual(reply('1'));
    expect(calls).toHaveLength(1);
    expect(calls[0].path).toBe('complete');
    expect(calls[0].body).toEqual(body('x = ', { stream: false }));
  });

  it('aborts the request in flight when a different one starts, and resolves it to null', async () => {
    const first = deferred<Response>();
    const { calls, fetcher } = fakeFetch(b => (b.prefix === 'a' ? first.promise : jsonResponse(reply('B'))));
    const client = new CompletionClient(fetcher);
    const pa = client.complete(body('a'));
    const pb = client.complete(body('ab'));
    expect(calls[0].signal.aborted).toBe(true);
    expect(calls[1].signal.aborted).toBe(false);
    expect(await pa).toBeNull();
    expect(await pb).toEqual(reply('B'));
  });

  it('takes an abort wrapped as another error (ServerConnection’s NetworkError) for an abort', async () => {
    const calls: AbortSignal[] = [];
    const fetcher = (_: string, init: RequestInit) =>
      new Promise<Response>((_resolve, reject) => {
        const signal = init.signal as AbortSignal;
        calls.push(signal);
        signal.addEventListener('abort', () => reject(new TypeError('Failed to fetch')));
      });
    const client = new CompletionClient(fetcher);
    const pa = client.complete(body('a'));
    client.cancel();
    expect(await pa).toBeNull();
  });

  it('shares one request between identical asks in flight', async () => {
    const gate = deferred<Response>();
    const { calls, fetcher } = fakeFetch(() => gate.promise);
    const client = new CompletionClient(fetcher);
    const p1 = client.complete(body('same'));
    const p2 = client.complete(body('same'));
    gate.resolve(jsonResponse(reply('S')));
    expect(await p1).toEqual(reply('S'));
    expect(await p2).toEqual(reply('S'));
    expect(calls).toHaveLength(1);
    expect(client.requestsSent).toBe(1);
  });

  it('turns an ErrorMessage body into a CompletionError with its line', async () => {
    const { fetcher } = fakeFetch(() =>
      jsonResponse({ type: 'error', id: null, code: 'busy', message: 'The model is busy.', detail: null }, 429)
    );
    const client = new CompletionClient(fetcher);
    await expect(client.complete(body('x'))).rejects.toEqual(new CompletionError('The model is busy.', 'busy'));
    const err = await client.complete(body('y')).catch(e => e);
    expect(err.code).toBe('busy');
  });

  it('streams the whole suggestion so far, then the final text', async () => {
    const { calls, fetcher } = fakeFetch(() =>
      sseResponse([
        { type: 'completion_chunk', text: 'ret' },
        { type: 'completion_chunk', text: 'return x' },
        reply('return x + 1')
      ])
    );
    const client = new CompletionClient(fetcher);
    const seen = [];
    for await (const part of client.stream(body('def f(x):\n    '))) {
      seen.push(part);
    }
    expect(calls[0].body.stream).toBe(true);
    expect(seen).toEqual([
      { text: 'ret', final: false },
      { text: 'return x', final: false },
      { text: 'return x + 1', final: true, finishReason: 'stop' }
    ]);
  });

  it('ends a stream quietly when a newer request supersedes it', async () => {
    const hang = () => new Promise<Response>(() => undefined);
    const { calls, fetcher } = fakeFetch(b => (b.prefix === 'a' ? hang() : jsonResponse(reply('B'))));
    const client = new CompletionClient(fetcher);
    const it = client.stream(body('a'));
    const next = it.next();
    await Promise.resolve();
    await client.complete(body('b'));
    expect(calls[0].signal.aborted).toBe(true);
    expect(await next).toEqual({ done: true, value: undefined });
  });

  it('raises a stream error event', async () => {
    const { fetcher } = fakeFetch(() =>
      sseResponse([
        { type: 'completion_chunk', text: 'x' },
        { type: 'error', code: 'engine_error', message: 'boom', detail: null }
      ])
    );
    const client = new CompletionClient(fetcher);
    const seen: string[] = [];
    await expect(
      (async () => {
        for await (const part of client.stream(body('a'))) {
          seen.push(part.text);
        }
      })()
    ).rejects.toThrow('boom');
    expect(seen).toEqual(['x']);
  });

  it('cancel() aborts what runs', async () => {
    const { calls, fetcher } = fakeFetch(() => new Promise<Response>(() => undefined));
    const client = new CompletionClient(fetcher);
    const p = client.complete(body('a'));
    client.cancel();
    expect(calls[0].signal.aborted).toBe(true);
    expect(await p).toBeNull();
  });
});

describe('Suggester', () => {
  const notebook = [code('c0', 'import math'), code('c1', 'def area(r):\n    return math.')];
  const HEADER = 'def area(r):\n    return ';

  /** The second cell with `typed` after the header. */
  const at = (typed: string, extra: Partial<DocumentSnapshot> = {}) =>
    cellDoc([notebook[0], code('c1', HEADER + typed)], 1, undefined, extra);

  function suggesterWith(answer: (b: CompletionRequestBody) => Response | Promise<Response>) {
    const fake = fakeFetch(answer);
    const events: SuggesterEvent[] = [];
    const suggester = new Suggester(fake.fetcher, { onEvent: e => events.push(e) });
    suggester.configure(SETTINGS);
    return { ...fake, suggester, events };
  }

  it('asks the server once, then answers the same context from the cache', async () => {
    const { calls, suggester } = suggesterWith(() => jsonResponse(reply('math.pi * r ** 2')));
    expect(await suggester.suggest(at('math.'))).toEqual({ text: 'math.pi * r ** 2', source: 'network' });
    expect(calls).toHaveLength(1);
    expect(calls[0].body.cells!.map(c => c.id)).toEqual(['c0', 'c1']);
    expect(calls[0].body.prefix).toBe(HEADER + 'math.');
    expect(await suggester.suggest(at('math.'))).toEqual({ text: 'math.pi * r ** 2', source: 'cache' });
    expect(calls).toHaveLength(1);
  });

  it('answers typed-ahead characters with the rest of the suggestion, with zero fetches', async () => {
    const { calls, suggester, events } = suggesterWith(() => jsonResponse(reply('pi * r ** 2')));
    await suggester.suggest(at(''));
    expect(calls).toHaveLength(1);
    expect(await suggester.suggest(at('p'))).toEqual({ text: 'i * r ** 2', source: 'type-ahead' });
    expect(await suggester.suggest(at('pi * '))).toEqual({ text: 'r ** 2', source: 'type-ahead' });
    expect(suggester.shown).toEqual({ context: expect.objectContaining({ before: HEADER + 'pi * ' }), text: 'r ** 2' });
    expect(calls).toHaveLength(1);
    expect(events.filter(e => e.kind === 'suggestion').map(e => (e as { source: string }).source)).toEqual([
      'network',
      'type-ahead',
      'type-ahead'
    ]);
    // typing something else asks again
    await suggester.suggest(at('tau'));
    expect(calls).toHaveLength(2);
  });

  it('caches an empty answer only when the model generated tokens (not when the time ran out first)', async () => {
    const empty = (generated: number) => {
      const r = reply('  ');
      r.usage.completion_tokens = generated;
      return r;
    };
    const cold = suggesterWith(() => jsonResponse(empty(0)));
    expect(await cold.suggester.suggest(at('a'))).toEqual({ text: '  ', source: 'network' });
    await cold.suggester.suggest(at('a'));
    expect(cold.calls).toHaveLength(2);
    expect(cold.suggester.cache.size).toBe(0);
    expect(cold.suggester.shown).toBeNull(); // nothing shows, so nothing can be accepted

    const nothing = suggesterWith(() => jsonResponse(empty(2)));
    await nothing.suggester.suggest(at('a'));
    expect(await nothing.suggester.suggest(at('a'))).toEqual({ text: '  ', source: 'cache' });
    expect(nothing.calls).toHaveLength(1);
  });

  it('does not cache cancelled answers, and empties the cache on new settings', async () => {
    let finish: CompletionReply['finish_reason'] = 'cancelled';
    const { calls, suggester } = suggesterWith(() => jsonResponse(reply('x', finish)));
    await suggester.suggest(at('a'));
    finish = 'stop';
    await suggester.suggest(at('a'));
    await suggester.suggest(at('a'));
    expect(calls).toHaveLength(2);
    suggester.configure({ ...SETTINGS, maxTokens: 8 });
    await suggester.suggest(at('a'));
    expect(calls).toHaveLength(3);
    expect(calls[2].body.max_tokens).toBe(8);
  });

  it('fits a suggestion to a blank line before caching it', async () => {
    const { suggester } = suggesterWith(() => jsonResponse(reply('\n    x = 1')));
    const doc = cellDoc([code('c', 'if a:\n    ')], 0);
    expect((await suggester.suggest(doc))!.text).toBe('x = 1');
    expect((await suggester.suggest(doc))!.source).toBe('cache');
  });

  it('streams an explicit invoke and caches its final text', async () => {
    const { calls, suggester } = suggesterWith(() =>
      sseResponse([{ type: 'completion_chunk', text: 'pi' }, reply('pi * r')])
    );
    const parts = [];
    for await (const part of suggester.stream(at(''))) {
      parts.push(part);
    }
    expect(calls[0].body.stream).toBe(true);
    expect(calls[0].body.cells).toHaveLength(2);
    expect(parts).toEqual([
      { text: 'pi', final: false },
      { text: 'pi * r', final: true }
    ]);
    expect(await suggester.suggest(at('pi'))).toEqual({ text: ' * r', source: 'type-ahead' });
    expect(calls).toHaveLength(1);
  });

  it('sends one warm-up for a cell entered: the notebook structure with warm: true', async () => {
    const { calls, suggester, events } = suggesterWith(() => jsonResponse(reply('')));
    suggester.warm(at('', { kernel: { id: 'k', execution_count: 3 } }));
    await settle();
    expect(calls).toHaveLength(1);
    expect(calls[0].body).toEqual({
      prefix: HEADER,
      suffix: '',
      cells: [
        { id: 'c0', source: 'import math', kind: 'code' },
        { id: 'c1', source: '', kind: 'code' }
      ],
      cell_index: 1,
      path: 'work/analysis.ipynb',
      language: 'python',
      kernel: { id: 'k', execution_count: 3 },
      max_tokens: 32,
      mode: 'auto',
      stream: false,
      warm: true
    });
    expect(events).toContainEqual({ kind: 'warm', doc: 'work/analysis.ipynb' });
    // a warm-up is not a suggestion: nothing cached, nothing shown
    expect(suggester.cache.size).toBe(0);
    expect(suggester.shown).toBeNull();
  });

  it('keeps one warm-up in flight per notebook: a newer one aborts it, an identical one is not resent', async () => {
    const { calls, suggester } = suggesterWith(() => new Promise<Response>(() => undefined));
    suggester.warm(at(''));
    suggester.warm(at(''));
    await settle();
    expect(calls).toHaveLength(1);
    suggester.warm(cellDoc(notebook, 0));
    suggester.warm({ ...at(''), path: 'other.ipynb' });
    await settle();
    expect(calls).toHaveLength(3);
    expect(calls[0].signal.aborted).toBe(true);
    expect(calls[1].signal.aborted).toBe(false);
    expect(calls[2].signal.aborted).toBe(false);
    expect(suggester.warmsSent).toBe(3);
  });

  it('ignores a failed warm-up, and sends none when the provider is off', async () => {
    const refusal = { type: 'error', code: 'no_model', message: 'No model.' };
    const { calls, suggester } = suggesterWith(() => jsonResponse(refusal, 409));
    suggester.warm(at(''));
    await settle();
    expect(calls).toHaveLength(1);
    const thrower = new Suggester(() => {
      throw new Error('offline');
    });
    thrower.warm(at(''));
    await settle();
    suggester.configure({ ...SETTINGS, enabled: false });
    suggester.warm(at('x'));
    await settle();
    expect(calls).toHaveLength(1);
  });

  it('warm-ups do not abort a suggestion in flight', async () => {
    const gate = deferred<Response>();
    const { calls, suggester } = suggesterWith(b => (b.warm ? jsonResponse(reply('')) : gate.promise));
    const pending = suggester.suggest(at('m'));
    suggester.warm(cellDoc(notebook, 0));
    await settle();
    gate.resolve(jsonResponse(reply('ath')));
    expect(await pending).toEqual({ text: 'ath', source: 'network' });
    expect(calls.map(c => !!c.body.warm)).toEqual([false, true]);
  });

  it('after an accepted suggestion, asks for the next one at once; JupyterLab’s own request joins it', async () => {
    const gate = deferred<Response>();
    const { calls, suggester, events } = suggesterWith(b =>
      b.prefix.endsWith('r ** 2') ? gate.promise : jsonResponse(reply('pi * r ** 2'))
    );
    await suggester.suggest(at(''));
    expect(calls).toHaveLength(1);
    expect(suggester.accepted(at('pi * r ** 2'))).toBe(true);
    expect(events).toContainEqual({ kind: 'prefetch', doc: 'work/analysis.ipynb#c1' });
    expect(calls).toHaveLength(2);
    expect(calls[1].body.prefix).toBe(HEADER + 'pi * r ** 2');
    expect(calls[1].body.cells).toHaveLength(2);
    // JupyterLab's own request for the same cursor joins the one in flight
    const joined = suggester.suggest(at('pi * r ** 2'));
    gate.resolve(jsonResponse(reply('  # the area')));
    expect(await joined).toEqual({ text: '  # the area', source: 'network' });
    expect(calls).toHaveLength(2);
    // and once it is answered, the cache has it
    expect(await suggester.suggest(at('pi * r ** 2'))).toEqual({ text: '  # the area', source: 'cache' });
    expect(calls).toHaveLength(2);
  });

  it('does not prefetch for other edits, twice, or where JupyterLab would not ask', async () => {
    const { calls, suggester } = suggesterWith(() => jsonResponse(reply('pi * r ** 2')));
    expect(suggester.accepted(at('pi * r ** 2'))).toBe(false); // nothing shown yet
    await suggester.suggest(at(''));
    expect(suggester.accepted(at('pi * r'))).toBe(false); // typed part of it
    expect(suggester.accepted(at('tau'))).toBe(false);
    expect(suggester.accepted(at('pi * r ** 2'))).toBe(true);
    await settle();
    expect(suggester.accepted(at('pi * r ** 2'))).toBe(false); // already taken
    expect(calls).toHaveLength(2);

    const blank = suggesterWith(() => jsonResponse(reply('return 1\n    ')));
    const before = cellDoc([code('c', 'def f():\n    ')], 0);
    await blank.suggester.suggest(before);
    // the suggestion ends on a fresh indented line: JupyterLab asks nothing there
    expect(blank.suggester.accepted(cellDoc([code('c', 'def f():\n    return 1\n    ')], 0))).toBe(false);
    expect(blank.calls).toHaveLength(1);
  });
});
