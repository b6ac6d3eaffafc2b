import {
  assembleContext,
  CompletionClient,
  CompletionError,
  CompletionRequestBody,
  DEFAULT_SETTINGS,
  fitToCursor,
  keepHead,
  keepTail,
  languageOf,
  linePrefix,
  readSettings,
  replyToItems,
  shouldRequest
} from '../completer/logic';
import type { CompletionReply } from '../wire';

function body(prefix: string, extra: Partial<CompletionRequestBody> = {}): CompletionRequestBody {
  return { prefix, suffix: '', mode: 'auto', stream: false, max_tokens: 32, ...extra };
}

function reply(text: string, finish_reason: CompletionReply['finish_reason'] = 'stop'): CompletionReply {
  const usage = { prompt_tokens: 3, completion_tokens: 2, dropped_messages: 0, time_to_first_token_s: null, duration_s: 0 };
  return { type: 'completion', text, fim: false, model: 'demo', finish_reason, usage };
}

function jsonResponse(value: unknown, status = 200): Response {
  return new Response(JSON.stringify(value), { status, headers: { 'Content-Type': 'application/json' } });
}

function sseResponse(events: unknown[]): Response {
  const text = events.map(e => `data: ${JSON.stringify(e)}\n\n`).join('');
  return new Response(text, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
}

/** A fake fetch: records calls, answers from `answer`, honours the abort signal. */
function fakeFetch(answer: (body: CompletionRequestBody) => Response | Promise<Response>) {
  const calls: { path: string; body: CompletionRequestBody; signal: AbortSignal }[] = [];
  const fetcher = (path: string, init: RequestInit) => {
    const parsed = JSON.parse(init.body as string) as CompletionRequestBody;
    const signal = init.signal as AbortSignal;
    calls.push({ path, body: parsed, signal });
    return new Promise<Response>((resolve, reject) => {
      const abort = () => reject(Object.assign(new Error('aborted'), { name: 'AbortError' }));
      if (signal.aborted) {
        return abort();
      }
      signal.addEventListener('abort', abort);
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

describe('assembleContext', () => {
  it('puts earlier code cells above the cursor and later ones below, separated by blank lines', () => {
    const ctx = assembleContext({
      text: 'x = 1\ny = x +\nprint(y)',
      offset: 'x = 1\ny = x +'.length,
      cellsBefore: ['import os\n\n', '', '   ', 'def f():\n    return 2'],
      cellsAfter: ['z = 3']
    });
    expect(ctx.prefix).toBe('import os\n\ndef f():\n    return 2\n\nx = 1\ny = x +');
    expect(ctx.suffix).toBe('\nprint(y)\n\nz = 3');
  });

  it('works for a plain file (no cells)', () => {
    expect(assembleContext({ text: 'abc', offset: 1 })).toEqual({ prefix: 'a', suffix: 'bc' });
  });

  it('clamps an offset outside the text', () => {
    expect(assembleContext({ text: 'abc', offset: 99 })).toEqual({ prefix: 'abc', suffix: '' });
  });

  it('bounds the prefix from the start and the suffix from the end, at line boundaries', () => {
    const before = Array.from({ length: 100 }, (_, i) => `line_${i} = ${i}`).join('\n');
    const ctx = assembleContext(
      { text: 'cur', offset: 3, cellsBefore: [before], cellsAfter: [before] },
      { maxPrefixChars: 50, maxSuffixChars: 40 }
    );
    expect(ctx.prefix.length).toBeLessThanOrEqual(50);
    expect(ctx.prefix.endsWith('\n\ncur')).toBe(true);
    expect(ctx.prefix.startsWith('line_')).toBe(true);
    expect(ctx.suffix.length).toBeLessThanOrEqual(40);
    expect(ctx.suffix.startsWith('\n\nline_0 = 0')).toBe(true);
    expect(ctx.suffix.endsWith('\n')).toBe(false);
  });
});

describe('keepTail / keepHead', () => {
  it('cut inside one long line when no newline is in reach', () => {
    expect(keepTail('abcdefghij', 4)).toBe('ghij');
    expect(keepHead('abcdefghij', 4)).toBe('abcd');
  });
  it('leave short text alone', () => {
    expect(keepTail('abc', 10)).toBe('abc');
    expect(keepHead('abc', 10)).toBe('abc');
  });
  it('a zero bound sends nothing', () => {
    expect(keepTail('ab\ncd', 0)).toBe('');
    expect(keepHead('ab\ncd', 0)).toBe('');
  });
});

describe('shouldRequest', () => {
  it('skips automatic triggers in an empty or whitespace-only cell', () => {
    expect(shouldRequest({ text: '', offset: 0 }, false)).toBe(false);
    expect(shouldRequest({ text: '   \n  ', offset: 6 }, false)).toBe(false);
    expect(shouldRequest({ text: '\n\nfoo', offset: 1, cellsBefore: ['import os'] }, false)).toBe(false);
  });
  it('asks on automatic triggers once the cell has text before the cursor', () => {
    expect(shouldRequest({ text: 'def f', offset: 5 }, false)).toBe(true);
    expect(shouldRequest({ text: 'x = 1\n', offset: 6 }, false)).toBe(true);
  });
  it('always asks when invoked', () => {
    expect(shouldRequest({ text: '', offset: 0 }, true)).toBe(true);
  });
});

describe('fitToCursor', () => {
  it('drops a leading line break and the indentation the cursor stands on, on a blank line', () => {
    expect(fitToCursor('\n    area = 1\n    return area', '    ')).toBe('area = 1\n    return area');
    expect(fitToCursor('\n\nx = 1', '')).toBe('x = 1');
    expect(fitToCursor('  \n        y', '    ')).toBe('    y');
  });
  it('leaves suggestions alone elsewhere', () => {
    expect(fitToCursor('\n    return 1', 'def f():')).toBe('\n    return 1');
    expect(fitToCursor('area = 1', '    ')).toBe('area = 1');
  });
  it('reads the line before the cursor', () => {
    expect(linePrefix('a\n    b', 6)).toBe('    ');
    expect(linePrefix('abc', 2)).toBe('ab');
  });
});

describe('replyToItems', () => {
  it('turns a suggestion into one item and an empty one into none', () => {
    expect(replyToItems(reply('return 1'))).toEqual([{ insertText: 'return 1' }]);
    expect(replyToItems(reply(''))).toEqual([]);
    expect(replyToItems(reply('  \n'))).toEqual([]);
    expect(replyToItems(null)).toEqual([]);
  });
});

describe('languageOf and readSettings', () => {
  it('prefers the kernel language, then the MIME type', () => {
    expect(languageOf('text/x-ipython', 'Python')).toBe('python');
    expect(languageOf('text/x-ipython')).toBe('python');
    expect(languageOf('text/x-rsrc', null)).toBe('r');
    expect(languageOf('text/x-unknown')).toBeNull();
    expect(languageOf(undefined)).toBeNull();
  });
  it('keeps valid settings and falls back on bad ones', () => {
    expect(readSettings({})).toEqual(DEFAULT_SETTINGS);
    expect(readSettings({ maxTokens: 10.4, mode: 'multi', maxPrefixChars: -5, maxSuffixChars: 'x' })).toEqual({
      maxTokens: 10,
      mode: 'multi',
      maxPrefixChars: 0,
      maxSuffixChars: DEFAULT_SETTINGS.maxSuffixChars
    });
    expect(readSettings({ mode: 'bogus', maxTokens: 1e9 }).maxTokens).toBe(4096);
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

  it('shares one request between identical asks in flight, and remembers answers', async () => {
    const gate = deferred<Response>();
    const { calls, fetcher } = fakeFetch(() => gate.promise);
    const client = new CompletionClient(fetcher);
    const p1 = client.complete(body('same'));
    const p2 = client.complete(body('same'));
    gate.resolve(jsonResponse(reply('S')));
    expect(await p1).toEqual(reply('S'));
    expect(await p2).toEqual(reply('S'));
    expect(await client.complete(body('same'))).toEqual(reply('S'));
    expect(calls).toHaveLength(1);
    expect(client.requestsSent).toBe(1);
  });

  it('does not remember cancelled answers, and forgets the oldest past its size', async () => {
    const { calls, fetcher } = fakeFetch(b => jsonResponse(reply(b.prefix.toUpperCase(), b.prefix === 'c' ? 'cancelled' : 'stop')));
    const client = new CompletionClient(fetcher, 2);
    await client.complete(body('c'));
    await client.complete(body('c'));
    expect(calls).toHaveLength(2);
    await client.complete(body('p'));
    await client.complete(body('q'));
    await client.complete(body('r'));
    await client.complete(body('p')); // evicted: asks again
    await client.complete(body('r')); // still there
    expect(calls.map(c => c.body.prefix)).toEqual(['c', 'c', 'p', 'q', 'r', 'p']);
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
      { text: 'return x + 1', final: true }
    ]);
    // the streamed answer serves a later plain request for the same context
    expect(await client.complete(body('def f(x):\n    '))).toEqual(reply('return x + 1'));
    expect(calls).toHaveLength(1);
  });

  it('ends a stream quietly when a newer request supersedes it', async () => {
    const { calls, fetcher } = fakeFetch(b => (b.prefix === 'a' ? new Promise<Response>(() => undefined) : jsonResponse(reply('B'))));
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
      sseResponse([{ type: 'completion_chunk', text: 'x' }, { type: 'error', code: 'engine_error', message: 'boom', detail: null }])
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
