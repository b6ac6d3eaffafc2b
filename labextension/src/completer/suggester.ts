/**
 * What the inline provider does for a cursor, without JupyterLab: builds the request
 * (`logic.ts`), answers from the suggestion cache when it can (an identical context, or the
 * user typing what the shown suggestion predicted), else asks the server through the
 * `CompletionClient`; streams an explicit invoke; warms the server's cache when a cell is
 * entered (one warm-up in flight per notebook, a newer one aborting it); and after a shown
 * suggestion was accepted asks for the next one ahead of time, into the cache.
 */
import { contextOf, isAcceptance, SuggestionCache, SuggestionContext, ShownSuggestion } from './cache';
import { CompletionClient, Fetcher, postCompletion, requestKey } from './client';
import {
  asksAutomatically,
  buildRequest,
  CompleterSettings,
  CompletionRequestBody,
  cursorOf,
  DEFAULT_SETTINGS,
  DocumentSnapshot,
  fitToCursor,
  linePrefix
} from './logic';

/** Where a suggestion came from. */
export type SuggestionSource = 'network' | 'cache' | 'type-ahead';

export interface Suggestion {
  text: string;
  source: SuggestionSource;
}

/** What the suggester did, for diagnostics (the provider logs it at debug level). */
export type SuggesterEvent =
  | { kind: 'suggestion'; source: SuggestionSource; doc: string; chars: number }
  | { kind: 'warm'; doc: string }
  | { kind: 'prefetch'; doc: string };

export interface SuggesterOptions {
  /** How many suggestions the cache keeps (default 64). */
  cacheSize?: number;
  /** Told what the suggester did. */
  onEvent?: (event: SuggesterEvent) => void;
}

/** A prepared request: its body, cache context and the line before the cursor. */
interface Prepared {
  body: CompletionRequestBody;
  context: SuggestionContext;
  lineBefore: string;
}

export class Suggester {
  constructor(fetcher: Fetcher, options: SuggesterOptions = {}) {
    this._fetcher = fetcher;
    this.client = new CompletionClient(fetcher);
    this.cache = new SuggestionCache(options.cacheSize ?? 64);
    this._onEvent = options.onEvent;
  }

  readonly client: CompletionClient;
  readonly cache: SuggestionCache;

  /** Warm-up requests sent (for tests and diagnostics). */
  warmsSent = 0;

  get settings(): CompleterSettings {
    return this._settings;
  }

  /** New settings; the cache is emptied, since they change what the server answers. */
  configure(settings: CompleterSettings): void {
    this._settings = settings;
    this.cache.clear();
  }

  /** The suggestion last handed out (what the ghost text shows), or null. */
  get shown(): ShownSuggestion | null {
    return this._shown;
  }

  /** The request body for a cursor. */
  request(doc: DocumentSnapshot, options: { stream?: boolean; warm?: boolean } = {}): CompletionRequestBody {
    return buildRequest(doc, this._settings, options);
  }

  /**
   * An automatic suggestion for a cursor: from the cache when the context was seen or the user
   * typed the start of a cached suggestion, else from the server; null when the request was
   * superseded. Rejects with the server's CompletionError.
   */
  async suggest(doc: DocumentSnapshot): Promise<Suggestion | null> {
    const prepared = this._prepare(doc);
    const hit = this.cache.lookup(prepared.context);
    if (hit) {
      this.client.cancel(); // a request for an older context is of no use now
      this._show(prepared.context, hit.text, hit.source);
      return hit;
    }
    const text = await this._fetch(prepared);
    if (text === null) {
      return null;
    }
    this._show(prepared.context, text, 'network');
    return { text, source: 'network' };
  }

  /** An explicit invoke: the whole suggestion so far after each streamed chunk, fitted to the
   * cursor; the final one goes into the cache. */
  async *stream(doc: DocumentSnapshot): AsyncGenerator<{ text: string; final: boolean }> {
    const prepared = this._prepare(doc, true);
    for await (const part of this.client.stream(prepared.body)) {
      const text = fitToCursor(part.text, prepared.lineBefore);
      this._shown = { context: prepared.context, text };
      if (part.final) {
        this._remember(prepared.context, text, part.finishReason, 0);
      }
      yield { text, final: part.final };
    }
  }

  /**
   * Loads the prompt for a cursor into the server's cache (a cell was entered): one `warm`
   * request, its answer ignored, errors too; a newer warm-up for the same notebook aborts it,
   * an identical one in flight is not sent again.
   */
  warm(doc: DocumentSnapshot): void {
    if (!this._settings.enabled) {
      return;
    }
    const body = this.request(doc, { warm: true });
    const notebook = doc.path || doc.docId || '';
    const key = requestKey(body);
    const running = this._warming.get(notebook);
    if (running) {
      if (running.key === key) {
        return;
      }
      running.controller.abort();
    }
    const entry = { key, controller: new AbortController() };
    this._warming.set(notebook, entry);
    this.warmsSent += 1;
    this._onEvent?.({ kind: 'warm', doc: notebook });
    Promise.resolve()
      .then(() => postCompletion(this._fetcher, body, entry.controller.signal))
      .then(response => response.text())
      .catch(() => undefined)
      .finally(() => {
        if (this._warming.get(notebook) === entry) {
          this._warming.delete(notebook);
        }
      });
  }

  /**
   * Tells the suggester the document may have just taken the shown suggestion (Tab). When it
   * did (the text before the cursor is the old one plus the whole suggestion, the text after
   * unchanged), the next suggestion is asked for now, into the cache, where JupyterLab's own
   * request for this cursor (after its debounce) finds it or joins it. True when it asked.
   */
  accepted(doc: DocumentSnapshot): boolean {
    const shown = this._shown;
    if (!shown || !this._settings.enabled) {
      return false;
    }
    const prepared = this._prepare(doc);
    if (!isAcceptance(shown, prepared.context)) {
      return false;
    }
    this._shown = null;
    if (!asksAutomatically(doc, this._settings) || this.cache.lookup(prepared.context)) {
      return false;
    }
    this._onEvent?.({ kind: 'prefetch', doc: prepared.context.doc });
    this._fetch(prepared).catch(() => null);
    return true;
  }

  private _prepare(doc: DocumentSnapshot, stream = false): Prepared {
    const body = this.request(doc, { stream });
    return {
      body,
      context: contextOf(body, doc.docId ?? ''),
      lineBefore: linePrefix(doc.text, cursorOf(doc))
    };
  }

  /** Asks the server (sharing an identical request in flight); caches the fitted answer. */
  private async _fetch(prepared: Prepared): Promise<string | null> {
    const reply = await this.client.complete(prepared.body);
    if (!reply) {
      return null;
    }
    const text = fitToCursor(reply.text, prepared.lineBefore);
    this._remember(prepared.context, text, reply.finish_reason, reply.usage?.completion_tokens ?? 0);
    return text;
  }

  /** Caches a suggestion, unless it was cancelled. An empty one is cached only when the model
   * generated tokens (it had nothing to add there): an empty answer without any means the
   * server's time ran out first (a cold cache), and the same cursor should be asked again. */
  private _remember(
    context: SuggestionContext,
    text: string,
    finishReason: string | undefined,
    generated: number
  ): void {
    if (finishReason !== 'cancelled' && (text.trim() !== '' || generated > 0)) {
      this.cache.put(context, text);
    }
  }

  private _show(context: SuggestionContext, text: string, source: SuggestionSource): void {
    this._shown = text.trim() ? { context, text } : null; // a blank one shows nothing
    this._onEvent?.({ kind: 'suggestion', source, doc: context.doc, chars: text.length });
  }

  private readonly _fetcher: Fetcher;
  private readonly _onEvent?: (event: SuggesterEvent) => void;
  private readonly _warming = new Map<string, { key: string; controller: AbortController }>();
  private _settings: CompleterSettings = DEFAULT_SETTINGS;
  private _shown: ShownSuggestion | null = null;
}
