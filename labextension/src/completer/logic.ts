/**
 * The inline completer's pure logic: what context to send (prefix and suffix around the cursor,
 * with the neighbouring notebook cells, bounded in characters), when to ask at all, how a reply
 * becomes inline items, and a small client that dedups identical requests, aborts superseded
 * ones and reads streamed chunks. No JupyterLab imports at run time, so jest loads it in Node;
 * the network comes in through an injected `Fetcher`.
 */
import { parseEventStream } from '../sse';
import type { CompletionChunk, CompletionReply, CompletionRequest, ErrorMessage } from '../wire';

/** The request body of `POST /llamalab/complete`. */
export type CompletionRequestBody = CompletionRequest;

export type CompletionMode = NonNullable<CompletionRequest['mode']>;

/** The provider's settings (JupyterLab's inline completer passes them per provider). */
export interface CompleterSettings {
  maxTokens: number;
  mode: CompletionMode;
  maxPrefixChars: number;
  maxSuffixChars: number;
}

export const DEFAULT_SETTINGS: CompleterSettings = {
  maxTokens: 64,
  mode: 'auto',
  maxPrefixChars: 6000,
  maxSuffixChars: 1500
};

/** Reads the provider's settings from what JupyterLab hands `configure`, keeping sane values. */
export function readSettings(raw: { [key: string]: unknown }): CompleterSettings {
  const int = (value: unknown, fallback: number, min: number, max: number): number =>
    typeof value === 'number' && Number.isFinite(value) ? Math.min(max, Math.max(min, Math.round(value))) : fallback;
  const mode = raw.mode === 'single' || raw.mode === 'multi' || raw.mode === 'auto' ? raw.mode : DEFAULT_SETTINGS.mode;
  return {
    maxTokens: int(raw.maxTokens, DEFAULT_SETTINGS.maxTokens, 1, 4096),
    mode,
    maxPrefixChars: int(raw.maxPrefixChars, DEFAULT_SETTINGS.maxPrefixChars, 0, 200000),
    maxSuffixChars: int(raw.maxSuffixChars, DEFAULT_SETTINGS.maxSuffixChars, 0, 200000)
  };
}

/** Separates cells from each other (and from the current cell) in the context. */
export const CELL_SEPARATOR = '\n\n';

/** What the editor knows about the cursor: its cell's text and the offset in it, and for a
 * notebook the other code cells' sources before and after it. */
export interface EditorContext {
  text: string;
  offset: number;
  cellsBefore?: string[];
  cellsAfter?: string[];
}

/** Keeps the last `max` characters of `text`, starting at a line start when one is in reach. */
export function keepTail(text: string, max: number): string {
  if (text.length <= max) {
    return text;
  }
  const cut = text.length - max;
  const newline = text.indexOf('\n', cut);
  return newline >= 0 ? text.slice(newline + 1) : text.slice(cut);
}

/** Keeps the first `max` characters of `text`, ending at a line end when one is in reach. */
export function keepHead(text: string, max: number): string {
  if (text.length <= max) {
    return text;
  }
  const newline = text.lastIndexOf('\n', max);
  return newline > 0 ? text.slice(0, newline) : text.slice(0, max);
}

/** The prefix and suffix sent to the server: the text before the cursor with the preceding
 * cells above it, the text after it with the following cells below, each bounded. */
export function assembleContext(
  editor: EditorContext,
  bounds: Pick<CompleterSettings, 'maxPrefixChars' | 'maxSuffixChars'> = DEFAULT_SETTINGS
): { prefix: string; suffix: string } {
  const offset = Math.max(0, Math.min(editor.offset, editor.text.length));
  const before = (editor.cellsBefore ?? []).map(source => source.replace(/\s+$/, '')).filter(source => source !== '');
  const after = (editor.cellsAfter ?? []).filter(source => source.trim() !== '');
  const prefix = [...before, editor.text.slice(0, offset)].join(CELL_SEPARATOR);
  const suffix = [editor.text.slice(offset), ...after].join(CELL_SEPARATOR);
  return { prefix: keepTail(prefix, bounds.maxPrefixChars), suffix: keepHead(suffix, bounds.maxSuffixChars) };
}

/** Whether to ask the server at all. An explicit invoke always asks; an automatic trigger
 * does not when the cell holds nothing but whitespace before the cursor. */
export function shouldRequest(editor: EditorContext, invoked: boolean): boolean {
  if (invoked) {
    return true;
  }
  const beforeCursor = editor.text.slice(0, Math.max(0, editor.offset));
  return beforeCursor.trim() !== '';
}

/** The current line's text before the cursor. */
export function linePrefix(text: string, offset: number): string {
  const before = text.slice(0, Math.max(0, offset));
  return before.slice(before.lastIndexOf('\n') + 1);
}

/**
 * Fits a suggestion to a cursor on a blank (or indented, empty) line: a model that starts
 * with a line break there would leave an empty line behind, so leading blank lines go, and
 * with them the indentation the cursor already stands on.
 */
export function fitToCursor(suggestion: string, lineBefore: string): string {
  if (lineBefore.trim() !== '' || !/^[ \t]*\r?\n/.test(suggestion)) {
    return suggestion;
  }
  let text = suggestion.replace(/^(?:[ \t]*\r?\n)+/, '');
  if (lineBefore && text.startsWith(lineBefore)) {
    text = text.slice(lineBefore.length);
  }
  return text;
}

/** The inline items for a reply: none for an empty suggestion. */
export function replyToItems(reply: Pick<CompletionReply, 'text'> | null): { insertText: string }[] {
  if (!reply || !reply.text || reply.text.trim() === '') {
    return [];
  }
  return [{ insertText: reply.text }];
}

/** Language names the server understands, from the editor's MIME type. */
const MIME_LANGUAGES: { [mime: string]: string } = {
  'text/x-python': 'python',
  'text/x-ipython': 'python',
  'text/x-cython': 'python',
  'text/x-rsrc': 'r',
  'text/x-julia': 'julia',
  'text/javascript': 'javascript',
  'application/javascript': 'javascript',
  'text/typescript': 'typescript',
  'application/typescript': 'typescript',
  'text/x-typescript': 'typescript',
  'text/x-sh': 'bash',
  'application/x-sh': 'bash',
  'text/x-sql': 'sql',
  'text/x-csrc': 'c',
  'text/x-c++src': 'cpp',
  'text/x-java': 'java',
  'text/x-go': 'go',
  'text/x-rustsrc': 'rust',
  'text/x-rust': 'rust',
  'text/markdown': 'markdown',
  'text/x-markdown': 'markdown',
  'text/x-ipythongfm': 'markdown',
  'text/html': 'html',
  'text/css': 'css',
  'application/json': 'json',
  'text/x-yaml': 'yaml',
  'text/x-toml': 'toml'
};

/** The language of the text being edited: the notebook's kernel language when known, else
 * the editor's MIME type; null when neither says. */
export function languageOf(mimeType: string | undefined, kernelLanguage?: string | null): string | null {
  if (kernelLanguage) {
    return kernelLanguage.toLowerCase();
  }
  if (!mimeType) {
    return null;
  }
  return MIME_LANGUAGES[mimeType.toLowerCase()] ?? null;
}

/** The request key used to dedup identical requests. */
export function requestKey(body: CompletionRequestBody): string {
  return JSON.stringify([body.prefix, body.suffix, body.language ?? null, body.model ?? null, body.max_tokens ?? null, body.mode ?? 'auto']);
}

/** Issues an HTTP request for a path under `/llamalab/` (the plugin passes ServerConnection's). */
export type Fetcher = (path: string, init: RequestInit) => Promise<Response>;

/** A failed completion request, in one line. */
export class CompletionError extends Error {
  constructor(
    message: string,
    readonly code: string = 'internal'
  ) {
    super(message);
    this.name = 'CompletionError';
  }
}

async function errorOf(response: Response): Promise<CompletionError> {
  try {
    const body = JSON.parse(await response.text());
    if (body && body.type === 'error' && typeof body.message === 'string') {
      return new CompletionError(body.message, body.code);
    }
  } catch {
    // not JSON
  }
  return new CompletionError(`The llamalab server answered ${response.status} ${response.statusText}`.trim());
}

function isAbort(err: unknown): boolean {
  return !!err && typeof err === 'object' && (err as Error).name === 'AbortError';
}

/**
 * Talks to `POST /llamalab/complete`. One request runs at a time: starting a different one
 * aborts the one in flight (the server then cancels its generation); asking again for the
 * same context while it runs shares its answer, and recent answers are remembered.
 */
export class CompletionClient {
  constructor(
    private readonly fetcher: Fetcher,
    private readonly cacheSize = 16
  ) {}

  /** How many requests reached the network (for tests and diagnostics). */
  requestsSent = 0;

  /** The plain request: the reply, or null when it was superseded or cancelled. */
  complete(body: CompletionRequestBody): Promise<CompletionReply | null> {
    const plain = { ...body, stream: false };
    const key = requestKey(plain);
    const cached = this._cache.get(key);
    if (cached) {
      this._cache.delete(key);
      this._cache.set(key, cached);
      return Promise.resolve(cached);
    }
    if (this._inFlight && this._inFlight.key === key) {
      return this._inFlight.promise;
    }
    const controller = this._supersede(key);
    const promise = this._post(plain, controller.signal)
      .then(async response => {
        const reply = (await response.json()) as CompletionReply;
        if (reply.finish_reason !== 'cancelled') {
          this._remember(key, reply);
        }
        return reply;
      })
      .catch(err => {
        if (isAbort(err)) {
          return null;
        }
        throw err;
      })
      .finally(() => this._done(controller));
    this._inFlight = { key, controller, promise };
    return promise;
  }

  /** The streamed request: yields the whole suggestion so far after each chunk, then the
   * final reply's text. Ends quietly when superseded or cancelled. */
  async *stream(body: CompletionRequestBody): AsyncGenerator<{ text: string; final: boolean }> {
    const streamed = { ...body, stream: true };
    const key = requestKey(streamed);
    const controller = this._supersede(key);
    this._inFlight = { key: `stream:${key}`, controller, promise: Promise.resolve(null) };
    try {
      const response = await this._post(streamed, controller.signal);
      if (!response.body) {
        throw new CompletionError('The llamalab server sent no stream.');
      }
      for await (const event of parseEventStream<CompletionChunk | CompletionReply | ErrorMessage>(
        response.body
      )) {
        if (event.type === 'completion_chunk') {
          yield { text: event.text, final: false };
        } else if (event.type === 'completion') {
          if (event.finish_reason !== 'cancelled') {
            this._remember(requestKey({ ...body, stream: false }), event);
          }
          yield { text: event.text, final: true };
          return;
        } else if (event.type === 'error') {
          throw new CompletionError(event.message, event.code);
        }
      }
    } catch (err) {
      if (isAbort(err)) {
        return;
      }
      throw err;
    } finally {
      this._done(controller);
    }
  }

  /** Aborts whatever runs. */
  cancel(): void {
    this._inFlight?.controller.abort();
    this._inFlight = null;
  }

  private _supersede(key: string): AbortController {
    if (this._inFlight && this._inFlight.key !== key) {
      this._inFlight.controller.abort();
    }
    return new AbortController();
  }

  private _done(controller: AbortController): void {
    if (this._inFlight && this._inFlight.controller === controller) {
      this._inFlight = null;
    }
  }

  private async _post(body: CompletionRequestBody, signal: AbortSignal): Promise<Response> {
    this.requestsSent += 1;
    const response = await this.fetcher('complete', {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'Content-Type': 'application/json' },
      signal
    });
    if (!response.ok) {
      throw await errorOf(response);
    }
    return response;
  }

  private _remember(key: string, reply: CompletionReply): void {
    this._cache.set(key, reply);
    while (this._cache.size > this.cacheSize) {
      this._cache.delete(this._cache.keys().next().value as string);
    }
  }

  private _inFlight: { key: string; controller: AbortController; promise: Promise<CompletionReply | null> } | null = null;
  private readonly _cache = new Map<string, CompletionReply>();
}
