/**
 * MarkdownView's scheduling, with a fake renderer: streaming text is throttled, a final text
 * is on screen when `update` resolves, never a throttle interval later.
 */
jest.mock('@jupyterlab/rendermime', () => ({
  MimeModel: class {
    data: Record<string, unknown>;
    constructor(options: { data: Record<string, unknown> }) {
      this.data = options.data;
    }
  }
}));

import type { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { blockRemoteMedia, MarkdownView, NoRemoteMediaSanitizer } from '../chat/markdown';

(globalThis as { window?: unknown }).window = globalThis;

class FakeRenderer {
  node = { textContent: '', querySelectorAll: () => [], remove: () => undefined } as unknown as HTMLElement;
  renders: string[] = [];
  /** When set, each render waits until `finish()` is called. */
  slow = false;
  private _finish: (() => void)[] = [];

  addClass(): void {}
  dispose(): void {}

  renderModel(model: { data: Record<string, string> }): Promise<void> {
    const text = model.data['text/markdown'];
    this.renders.push(text);
    const show = () => {
      this.node.textContent = text;
    };
    if (!this.slow) {
      show();
      return Promise.resolve();
    }
    return new Promise(resolve => this._finish.push(() => (show(), resolve())));
  }

  finish(): void {
    this._finish.splice(0).forEach(f => f());
  }
}

/** A registry whose clone records the sanitizer the view asked for. */
function fakeRegistry(renderer: FakeRenderer) {
  const cloned: { sanitizer?: { sanitize(html: string): string } } = {};
  const registry = {
    sanitizer: { sanitize: (html: string) => html },
    createRenderer: () => renderer,
    clone: (options: { sanitizer: { sanitize(html: string): string } }) => {
      cloned.sanitizer = options.sanitizer;
      return registry;
    }
  };
  return { rendermime: registry as unknown as IRenderMimeRegistry, cloned };
}

function setup() {
  const renderer = new FakeRenderer();
  const { rendermime } = fakeRegistry(renderer);
  const host = { appendChild: () => undefined } as unknown as HTMLElement;
  const actions = { copy: () => undefined, insert: () => true, newCell: () => true };
  return { renderer, view: new MarkdownView(rendermime, host, actions) };
}

const tick = () => new Promise(resolve => jest.requireActual<typeof import('timers')>('timers').setImmediate(resolve));

describe('MarkdownView', () => {
  beforeEach(() => jest.useFakeTimers({ doNotFake: ['nextTick', 'queueMicrotask', 'setImmediate'] }));
  afterEach(() => jest.useRealTimers());

  it('throttles streaming text but shows a final text at once', async () => {
    const { renderer, view } = setup();
    void view.update('Ba', true); // the first text renders at once
    await tick();
    expect(renderer.node.textContent).toBe('Ba');
    void view.update('Ban', true);
    void view.update('Bana', true);
    await tick();
    expect(renderer.renders).toEqual(['Ba']); // waiting for the throttle
    const shown = view.update('Banana.', false); // done: no waiting for the timer
    await shown;
    expect(renderer.node.textContent).toBe('Banana.');
    expect(renderer.renders).toEqual(['Ba', 'Banana.']);
    jest.advanceTimersByTime(1000);
    await tick();
    expect(renderer.renders).toEqual(['Ba', 'Banana.']); // the cancelled timer renders nothing more
  });

  it('renders a final text that came during a render right after it, not a throttle later', async () => {
    const { renderer, view } = setup();
    renderer.slow = true;
    void view.update('B', true);
    let resolved = false;
    const shown = view.update('Banana.', false).then(() => (resolved = true));
    await tick();
    expect(renderer.renders).toEqual(['B']);
    renderer.finish(); // 'B' is on screen; 'Banana.' goes next, without a timer
    await tick();
    expect(renderer.renders).toEqual(['B', 'Banana.']);
    expect(resolved).toBe(false); // not before its text shows
    renderer.finish();
    await shown;
    expect(renderer.node.textContent).toBe('Banana.');
  });

  it('resolves at once for a text already shown, and on dispose', async () => {
    const { renderer, view } = setup();
    await view.update('Yes.', false);
    await view.update('Yes.', false);
    expect(renderer.renders).toEqual(['Yes.']);
    renderer.slow = true;
    const pending = view.update('Yes, sure.', false);
    view.dispose();
    await pending;
  });
});

describe('answers load nothing from the network', () => {
  it('turns remote images into links', () => {
    const html = blockRemoteMedia('<p>see <img src="https://host/?d=secret&amp;x=1" alt="chart" /> here</p>');
    expect(html).not.toMatch(/<img/i);
    expect(html).toContain('<a class="llamalab-remote-image" href="https://host/?d=secret&amp;x=1"');
    expect(html).toContain('[image: chart]</a> here</p>');
  });

  it('keeps inline data images and drops media URLs and CSS urls', () => {
    const inline = '<img src="data:image/png;base64,AAAA" alt="dot" />';
    expect(blockRemoteMedia(inline)).toBe(inline);
    const media = blockRemoteMedia(
      '<video poster="https://h/p.png" controls><source src="https://h/v.mp4" srcset="https://h/a 1x" type="video/mp4"></video>' +
        '<span style="background: url(https://h/x)">x</span><IMG SRC=https://h/y>'
    );
    expect(media).not.toMatch(/https:\/\/h\/(p\.png|v\.mp4|a|x)/);
    expect(media).toContain('<video controls="">');
    expect(media).not.toMatch(/<img/i);
  });

  it('renders answers through a sanitizer that blocks remote images', () => {
    const renderer = new FakeRenderer();
    const { rendermime, cloned } = fakeRegistry(renderer);
    new MarkdownView(rendermime, { appendChild: () => undefined } as unknown as HTMLElement, {
      copy: () => undefined,
      insert: () => true,
      newCell: () => true
    });
    expect(cloned.sanitizer).toBeInstanceOf(NoRemoteMediaSanitizer);
    const out = cloned.sanitizer!.sanitize('<p><img src="https://host/?d=secret" alt=""></p>');
    expect(out).not.toMatch(/<img/i);
    expect(out).toContain('href="https://host/?d=secret"');
  });
});
