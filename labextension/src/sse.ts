/**
 * Server-sent events: parses a `text/event-stream` body into its events' JSON `data`. Pure (no
 * JupyterLab imports), so the unit tests load it directly.
 */

/** Parses server-sent events from a byte stream; comments and empty events are skipped. */
export async function* parseEventStream<T>(body: ReadableStream<Uint8Array>): AsyncGenerator<T> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        break;
      }
      buffer += decoder.decode(value, { stream: true });
      let end: number;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(buffer.slice(end).match(/^\r?\n\r?\n/)![0].length + end);
        const data = block
          .split(/\r?\n/)
          .filter(line => line.startsWith('data:'))
          .map(line => line.slice(5).replace(/^ /, ''))
          .join('\n');
        if (data) {
          yield JSON.parse(data) as T;
        }
      }
    }
  } finally {
    reader.releaseLock();
  }
}
