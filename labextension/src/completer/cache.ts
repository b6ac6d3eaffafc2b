/**
 * The suggestion cache: recent suggestions keyed by their context (the document, with the
 * cell's id in a notebook, and the text sent before and after the cursor), least recently used
 * forgotten first. It answers an identical context, and a context where the user has typed
 * the first characters of a suggestion (type-ahead: the rest of it, without a request). It also
 * tells whether an edit was the acceptance of a shown suggestion (Tab), so the next suggestion
 * can be asked for ahead of time.
 */
import type { CompletionRequestBody } from './logic';

/** Where a suggestion was asked for. */
export interface SuggestionContext {
  /** The document: its path (or id), and `#cell-id` in a notebook. */
  doc: string;
  /** The text before the cursor as sent (the request's prefix). */
  before: string;
  /** The text after the cursor as sent (the request's suffix). */
  after: string;
}

/** A suggestion and the context it was made for. */
export interface ShownSuggestion {
  context: SuggestionContext;
  text: string;
}

/** The context of a request: its path (or `fallbackDoc`), cursor cell and prefix/suffix. */
export function contextOf(body: CompletionRequestBody, fallbackDoc = ''): SuggestionContext {
  let doc = body.path || fallbackDoc || '';
  const cells = body.cells;
  const index = body.cell_index;
  if (cells && typeof index === 'number' && index >= 0 && index < cells.length) {
    doc += `#${cells[index].id}`;
  }
  return { doc, before: body.prefix, after: body.suffix ?? '' };
}

/** The rest of `shown` after the user typed its first characters at its context, or null when
 * `now` is not such a context (or nothing but whitespace would be left). */
export function typedAhead(shown: ShownSuggestion, now: SuggestionContext): string | null {
  const then = shown.context;
  if (now.doc !== then.doc || now.after !== then.after || now.before.length <= then.before.length) {
    return null;
  }
  if (!now.before.startsWith(then.before)) {
    return null;
  }
  const typed = now.before.slice(then.before.length);
  if (typed.length >= shown.text.length || !shown.text.startsWith(typed)) {
    return null;
  }
  const rest = shown.text.slice(typed.length);
  return rest.trim() === '' ? null : rest;
}

/** Whether `now` is `shown`'s context with the whole suggestion inserted at the cursor (its start
 * may have been cut further along, as a long prefix's is). */
export function isAcceptance(shown: ShownSuggestion, now: SuggestionContext): boolean {
  const then = shown.context;
  if (!shown.text || now.doc !== then.doc || now.after !== then.after || !now.before.endsWith(shown.text)) {
    return false;
  }
  const head = now.before.slice(0, now.before.length - shown.text.length);
  return head === then.before || (head.length > 0 && then.before.endsWith(head));
}

/** A cache answer: an identical context's suggestion, or the rest of a typed-ahead one. */
export interface CacheHit {
  text: string;
  source: 'cache' | 'type-ahead';
}

function keyOf(context: SuggestionContext): string {
  return `${context.doc}\u0000${context.before}\u0000${context.after}`;
}

export class SuggestionCache {
  constructor(readonly capacity = 64) {}

  get size(): number {
    return this._entries.size;
  }

  clear(): void {
    this._entries.clear();
  }

  /** Remembers `text` (possibly empty: the server had nothing) for `context`. */
  put(context: SuggestionContext, text: string): void {
    const key = keyOf(context);
    this._entries.delete(key);
    this._entries.set(key, { context, text });
    while (this._entries.size > this.capacity) {
      this._entries.delete(this._entries.keys().next().value as string);
    }
  }

  /** The suggestion for `context`: an identical context's, else the rest of the most recent one
   * whose first characters the user typed; null when none. A hit counts as a recent use. */
  lookup(context: SuggestionContext): CacheHit | null {
    const key = keyOf(context);
    const exact = this._entries.get(key);
    if (exact) {
      this._touch(key, exact);
      return { text: exact.text, source: 'cache' };
    }
    const entries = [...this._entries.entries()];
    for (let i = entries.length - 1; i >= 0; i--) {
      const [entryKey, entry] = entries[i];
      const rest = typedAhead(entry, context);
      if (rest !== null) {
        this._touch(entryKey, entry);
        return { text: rest, source: 'type-ahead' };
      }
    }
    return null;
  }

  private _touch(key: string, entry: ShownSuggestion): void {
    this._entries.delete(key);
    this._entries.set(key, entry);
  }

  private readonly _entries = new Map<string, ShownSuggestion>();
}
