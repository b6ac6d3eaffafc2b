import { parseEventStream } from '../sse';

function streamOf(chunks: string[]): ReadableStream<Uint8Array> {
  const encoder = new TextEncoder();
  return new ReadableStream({
    start(controller) {
      for (const chunk of chunks) {
        controller.enqueue(encoder.encode(chunk));
      }
      controller.close();
    }
  });
}

async function collect<T>(stream: ReadableStream<Uint8Array>): Promise<T[]> {
  const events: T[] = [];
  for await (const event of parseEventStream<T>(stream)) {
    events.push(event);
  }
  return events;
}

describe('parseEventStream', () => {
  it('joins events split across chunks, at any byte', async () => {
    const text = 'data: {"n":1}\n\ndata: {"n":2,"s":"é✓"}\n\n';
    const bytes = new TextEncoder().encode(text);
    // one byte at a time, so multi-byte characters are split too
    const parts: Uint8Array[] = Array.from(bytes, b => new Uint8Array([b]));
    const stream = new ReadableStream<Uint8Array>({
      start(controller) {
        parts.forEach(p => controller.enqueue(p));
        controller.close();
      }
    });
    expect(await collect(stream)).toEqual([{ n: 1 }, { n: 2, s: 'é✓' }]);
  });

  it('skips comments and keep-alives, accepts CRLF and multi-line data', async () => {
    const events = await collect(streamOf([': keep-alive\r\n\r\n', 'event: x\r\ndata: {"a":\r\ndata: 1}\r\n\r\n']));
    expect(events).toEqual([{ a: 1 }]);
  });

  it('drops an unterminated last event', async () => {
    expect(await collect(streamOf(['data: {"a":1}\n\ndata: {"b"']))).toEqual([{ a: 1 }]);
  });
});
