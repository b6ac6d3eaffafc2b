import { titleFrom } from '../chat/conversations';
import {
  fitContext,
  historyOf,
  MAX_HISTORY_TURNS,
  shortenedNote,
  explainErrorRequest,
  fenceFor,
  findError,
  notebookAsScript,
  stripAnsi,
  truncate,
  turnsOf,
  withContext
} from '../chat/prompts';

describe('context blocks', () => {
  it('fences code with more backticks than it contains', () => {
    expect(fenceFor('plain')).toBe('```');
    expect(fenceFor('a ```py``` b')).toBe('````');
  });

  it('prepends labelled fences to the message, skipping empty blocks', () => {
    const text = withContext('What does it do?', [
      { label: 'Active cell (2) of a.ipynb', language: 'python', text: 'x = 1' },
      { label: 'Selection', language: 'python', text: '   ' }
    ]);
    expect(text).toBe('Active cell (2) of a.ipynb:\n```python\nx = 1\n```\n\nWhat does it do?');
    expect(withContext('hi', [])).toBe('hi');
  });

  it('writes a notebook in the percent format', () => {
    const script = notebookAsScript([
      { cell_type: 'markdown', source: ['# Title\n', '\n', 'text'] },
      { cell_type: 'code', source: 'import os\n' },
      { cell_type: 'raw', source: 'ignored' },
      { cell_type: 'code', source: '' }
    ]);
    expect(script).toBe('# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nimport os\n\n# %%\n');
    expect(notebookAsScript([{ cell_type: 'code', source: 'let x' }], 'javascript')).toBe('// %%\nlet x');
  });

  it('truncates long text, keeping the start or the end', () => {
    expect(truncate('abcdef', 10)).toBe('abcdef');
    expect(truncate('abcdef', 3)).toBe('abc\n… (3 more characters left out)');
    expect(truncate('abcdef', 3, 'end')).toBe('… (3 earlier characters left out)\ndef');
  });

  it('makes short titles', () => {
    expect(titleFrom('  ')).toBe('New conversation');
    expect(titleFrom('x'.repeat(100), 10)).toBe('xxxxxxxxx…');
  });
});

describe('errors', () => {
  const traceback = [
    '\u001b[0;31m---------------------------------------------------------------------------\u001b[0m',
    '\u001b[0;31mNameError\u001b[0m                                 Traceback (most recent call last)',
    'Cell \u001b[0;32mIn[1], line 1\u001b[0m\n\u001b[0;32m----> 1\u001b[0m \u001b[38;5;28mprint\u001b[39m(x)',
    "\u001b[0;31mNameError\u001b[0m: name 'x' is not defined"
  ];

  it('strips ANSI colour, cursor and OSC sequences', () => {
    expect(stripAnsi('\u001b[1;31mred\u001b[0m \u001b[2Kline \u001b]8;;http://x\u0007link\u001b]8;;\u0007')).toBe('red line link');
    expect(stripAnsi('\u001b[38;5;28mprint\u001b[39m')).toBe('print');
  });

  it('finds the last error output and its plain traceback', () => {
    const error = findError([
      { output_type: 'stream', name: 'stdout', text: 'hi' },
      { output_type: 'error', ename: 'NameError', evalue: "name 'x' is not defined", traceback }
    ]);
    expect(error?.ename).toBe('NameError');
    expect(error?.traceback).not.toMatch(/\u001b/);
    expect(error?.traceback).toContain('----> 1 print(x)');
    expect(error?.traceback.endsWith("NameError: name 'x' is not defined")).toBe(true);
    expect(findError([{ output_type: 'stream', text: 'x' }])).toBeNull();
    expect(findError(undefined)).toBeNull();
    expect(findError([{ output_type: 'error' }])).toEqual({ ename: 'Error', evalue: '', traceback: 'Error: ' });
  });

  it('builds the explain request with the code and the traceback', () => {
    const error = findError([{ output_type: 'error', ename: 'NameError', evalue: "name 'x' is not defined", traceback }])!;
    const request = explainErrorRequest('print(x)', error, 'python', 'cell [1]');
    expect(request.display).toBe("Explain this error and how to fix it: NameError: name 'x' is not defined");
    expect(request.content).toContain('The code of cell [1]:\n```python\nprint(x)\n```');
    expect(request.content).toContain('The error it raised:\n```\n');
    expect(request.content.endsWith('show the corrected code in one code block.')).toBe(true);
    expect(request.context).toEqual(['The code of cell [1]', 'The error it raised']);
  });
});

describe('history', () => {
  it('turns entries into the turns the model saw, leaving out unanswered questions', () => {
    const turns = turnsOf([
      { id: '1', role: 'user', content: 'shown', sent: 'sent with context', time: 1 },
      { id: '1', role: 'assistant', content: 'answer', time: 1 },
      { id: '2', role: 'user', content: 'lost', time: 2 },
      { id: 'e', role: 'error', content: 'dropped', time: 2 },
      { id: '3', role: 'user', content: 'q3', time: 3 },
      { id: '3', role: 'assistant', content: 'a3', time: 3 }
    ]);
    expect(turns).toEqual([
      { role: 'user', content: 'sent with context' },
      { role: 'assistant', content: 'answer' },
      { role: 'user', content: 'q3' },
      { role: 'assistant', content: 'a3' }
    ]);
  });

  it('keeps the newest whole pairs that fit the budget', () => {
    const earlier = [
      { role: 'user' as const, content: 'old question '.repeat(10) },
      { role: 'assistant' as const, content: 'old answer' },
      { role: 'user' as const, content: 'q' },
      { role: 'assistant' as const, content: 'a' }
    ];
    expect(historyOf([], 1000)).toEqual([]);
    expect(historyOf(earlier, 1000)).toEqual(earlier);
    expect(historyOf(earlier, 50)).toEqual(earlier.slice(2));
    expect(historyOf(earlier, 1)).toEqual([]);
    expect(historyOf(earlier, 1000, 2)).toEqual(earlier.slice(2));
    const many = Array.from({ length: 500 }, (_, i) => ({ role: i % 2 ? ('assistant' as const) : ('user' as const), content: 'x' }));
    expect(historyOf(many, 1e6)).toHaveLength(MAX_HISTORY_TURNS);
  });
});

describe('the server limits', () => {
  const blocks = [
    { label: 'Big', language: 'python', text: 'a'.repeat(3000) },
    { label: 'Small', language: '', text: 'short' },
    { label: 'Tail', language: '', text: 'b'.repeat(1000) + 'END', keep: 'end' as const }
  ];

  it('sends blocks as they are within the limit or without one', () => {
    expect(fitContext('Why?', blocks, null)).toEqual({ content: withContext('Why?', blocks), context: ['Big', 'Small', 'Tail'], shortened: false });
    expect(fitContext('Why?', blocks, 10000).shortened).toBe(false);
  });

  it('cuts the longest blocks first, keeping the chosen end, within the limit', () => {
    const fitted = fitContext('Why?', blocks, 1500);
    expect(fitted.shortened).toBe(true);
    expect(fitted.content.length).toBeLessThanOrEqual(1500);
    expect(fitted.content.length).toBeGreaterThan(1300);
    expect(fitted.content).toContain('Small:\n```\nshort\n```');
    expect(fitted.content).toContain('END\n```');
    expect(fitted.content.endsWith('\n\nWhy?')).toBe(true);
    const note = shortenedNote(1500);
    expect(fitted.context).toEqual([`Big${note}`, 'Small', `Tail${note}`]);
  });

  it('never cuts the message itself', () => {
    const fitted = fitContext('m'.repeat(200), blocks, 100);
    expect(fitted.content.endsWith('m'.repeat(200))).toBe(true);
    expect(fitted.shortened).toBe(true);
  });
});
