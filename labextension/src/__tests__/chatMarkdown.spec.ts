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
import { MarkdownView } from '../chat/markdown';

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

function setup() {
  const renderer = new FakeRenderer();
  const rendermime = { createRenderer: () => renderer } as unknown as IRenderMimeRegistry;
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
