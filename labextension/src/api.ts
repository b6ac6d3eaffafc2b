/**
 * How the front end talks to the llamalab server extension: REST calls under `/llamalab/`,
 * server-sent event streams, and the chat WebSocket's URL. Every call goes through
 * JupyterLab's ServerConnection, so the server's token, XSRF cookie and base URL apply.
 * Failures become `LlamalabApiError`, whose `message` is the server's one line for a person
 * and whose `detail` holds the rest.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { parseEventStream } from './sse';
import type { ErrorMessage } from './wire';

export { parseEventStream };

/** An error answered by the server (or the network), ready to show in one line. */
export class LlamalabApiError extends Error {
  constructor(
    message: string,
    readonly code: ErrorMessage['code'] | 'network',
    readonly status: number,
    readonly detail: unknown = null
  ) {
    super(message);
    this.name = 'LlamalabApiError';
  }

  /** Builds the error from a failed response's body (an ErrorMessage when the server wrote it). */
  static async fromResponse(response: Response): Promise<LlamalabApiError> {
    let text = '';
    try {
      text = await response.text();
      const body = JSON.parse(text) as Partial<ErrorMessage>;
      if (body && body.type === 'error' && typeof body.message === 'string') {
        return new LlamalabApiError(body.message, body.code ?? 'internal', response.status, body.detail ?? null);
      }
    } catch {
      // not JSON: fall through to the status line
    }
    const line = `${response.status} ${response.statusText}`.trim();
    return new LlamalabApiError(`The llamalab server answered ${line}.`, 'internal', response.status, text || null);
  }
}

function settings(): ServerConnection.ISettings {
  return ServerConnection.makeSettings();
}

/** The full URL of a route under `/llamalab/`, e.g. `apiUrl('models')`. */
export function apiUrl(path: string, serverSettings: ServerConnection.ISettings = settings()): string {
  return URLExt.join(serverSettings.baseUrl, 'llamalab', path);
}

/** The chat WebSocket's URL (`ws(s)://.../llamalab/chat`); ServerConnection adds no token to
 * WebSockets, so it is appended here when the page has one. */
export function chatSocketUrl(serverSettings: ServerConnection.ISettings = settings()): string {
  const url = URLExt.join(serverSettings.wsUrl, 'llamalab', 'chat');
  const token = serverSettings.token;
  return token && serverSettings.appendToken ? `${url}?token=${encodeURIComponent(token)}` : url;
}

/** Calls a REST route and returns its JSON body; throws LlamalabApiError on failure. */
export async function requestAPI<T>(
  path: string,
  init: RequestInit = {},
  serverSettings: ServerConnection.ISettings = settings()
): Promise<T> {
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(apiUrl(path, serverSettings), init, serverSettings);
  } catch (err) {
    if ((err as Error).name === 'AbortError') {
      throw err;
    }
    throw new LlamalabApiError('Cannot reach the Jupyter server: is it still running?', 'network', 0, String(err));
  }
  if (!response.ok) {
    throw await LlamalabApiError.fromResponse(response);
  }
  const text = await response.text();
  return (text ? JSON.parse(text) : null) as T;
}

/** POSTs (or PATCHes) a JSON body to a route. */
export function sendJSON<T>(path: string, body: unknown, method: 'POST' | 'PATCH' = 'POST', signal?: AbortSignal): Promise<T> {
  return requestAPI<T>(path, {
    method,
    body: JSON.stringify(body),
    headers: { 'Content-Type': 'application/json' },
    signal
  });
}

/**
 * Reads a `text/event-stream` response (the pull jobs' `/events` routes and streamed
 * completions) and yields each event's parsed `data`. Ends when the server closes the stream
 * or `signal` aborts.
 */
export async function* readEvents<T>(
  path: string,
  init: RequestInit = {},
  serverSettings: ServerConnection.ISettings = settings()
): AsyncGenerator<T> {
  const response = await ServerConnection.makeRequest(apiUrl(path, serverSettings), init, serverSettings);
  if (!response.ok || !response.body) {
    throw await LlamalabApiError.fromResponse(response);
  }
  yield* parseEventStream<T>(response.body);
}
