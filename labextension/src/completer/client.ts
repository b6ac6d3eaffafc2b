/**
 * The network side of inline completions: `POST /llamalab/complete` through an injected
 * `Fetcher` (the plugin passes ServerConnection's), one request at a time. Starting a different
 * request aborts the one in flight (the server then cancels its generation); asking again for
 * the same body while it runs shares its answer; an explicit invoke reads streamed chunks.
 * Remembering answers is the suggestion cache's job (`cache.ts`), not this one's.
 */
import { parseEventStream } from '../sse';
import type { CompletionChunk, CompletionReply, ErrorMessage } from '../wire';
import type { CompletionRequestBody } from './logic';

/** Issues an HTTP request for a path under `/llamalab/`. */
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

/** The key under which identical requests are shared: the whole body. */
export function requestKey(body: CompletionRequestBody): string {
  return JSON.stringify(body);
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

/** An abort, as fetch reports it or as ServerConnection wraps it (a NetworkError). */
function isAbort(err: unknown, signal: AbortSignal): boolean {
  return signal.aborted || (!!err && typeof err === 'object' && (err as Error).name === 'AbortError');
}

/** Posts `body` to `complete` with `signal`; rejects with a CompletionError on an error status. */
export async function postCompletion(
  fetcher: Fetcher,
  body: CompletionRequestBody,
  signal: AbortSignal
): Promise<Response> {
  const response = await fetcher('complete', {
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

/** One streamed step: the whole suggestion so far; `final` with the reply's finish reason. */
export interface StreamPart {
  text: string;
  final: boolean;
  finishReason?: CompletionReply['finish_reason'];
}

interface InFlight {
  key: string;
  controller: AbortController;
  promise: Promise<CompletionReply | null>;
}

export class CompletionClient {
  constructor(private readonly fetcher: Fetcher) {}

  /** How many requests reached the network (for tests and diagnostics). */
  requestsSent = 0;

  /** The plain request: the reply, or null when it was superseded or cancelled. */
  complete(body: CompletionRequestBody): Promise<CompletionReply | null> {
    const plain = { ...body, stream: false };
    const key = requestKey(plain);
    if (this._inFlight && this._inFlight.key === key) {
      return this._inFlight.promise;
    }
    const controller = this._supersede(key);
    const promise = this._post(plain, controller.signal)
      .then(async response => (await response.json()) as CompletionReply)
      .catch(err => {
        if (isAbort(err, controller.signal)) {
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
  async *stream(body: CompletionRequestBody): AsyncGenerator<StreamPart> {
    const streamed = { ...body, stream: true };
    const key = `stream:${requestKey(streamed)}`;
    const controller = this._supersede(key);
    this._inFlight = { key, controller, promise: Promise.resolve(null) };
    try {
      const response = await this._post(streamed, controller.signal);
      if (!response.body) {
        throw new CompletionError('The llamalab server sent no stream.');
      }
      for await (const event of parseEventStream<CompletionChunk | CompletionReply | ErrorMessage>(response.body)) {
        if (event.type === 'completion_chunk') {
          yield { text: event.text, final: false };
        } else if (event.type === 'completion') {
          yield { text: event.text, final: true, finishReason: event.finish_reason };
          return;
        } else if (event.type === 'error') {
          throw new CompletionError(event.message, event.code);
        }
      }
    } catch (err) {
      if (isAbort(err, controller.signal)) {
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
    return postCompletion(this.fetcher, body, signal);
  }

  private _inFlight: InFlight | null = null;
}
