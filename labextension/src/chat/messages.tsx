/** The chat's message list: user messages, streamed Markdown answers, one-line errors. */
import type { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import React, { useEffect, useLayoutEffect, useRef, useState } from 'react';

import type { ChatEntry } from './conversations';
import { CodeActions, MarkdownView } from './markdown';

export interface MessageListProps {
  entries: readonly ChatEntry[];
  rendermime: IRenderMimeRegistry;
  actions: CodeActions;
  /** Shown when the conversation is empty. */
  empty: React.ReactNode;
  /** The name shown on an answer until it says which model wrote it. */
  modelName: string;
}

/**
 * An answer's Markdown. `onFinal(text)` is called once a text that is no longer streaming is
 * on screen: the answer is marked finished only then, never before its last tokens show.
 */
function Markdown(props: {
  text: string;
  streaming: boolean;
  rendermime: IRenderMimeRegistry;
  actions: CodeActions;
  onFinal?: (text: string) => void;
}) {
  const host = useRef<HTMLDivElement>(null);
  const view = useRef<MarkdownView | null>(null);
  const onFinal = useRef(props.onFinal);
  onFinal.current = props.onFinal;
  useEffect(() => {
    view.current = new MarkdownView(props.rendermime, host.current!, props.actions);
    return () => {
      view.current?.dispose();
      view.current = null;
    };
  }, [props.rendermime, props.actions]);
  useEffect(() => {
    const current = view.current;
    if (!current) {
      return;
    }
    const shown = current.update(props.text, props.streaming);
    if (props.streaming) {
      return;
    }
    let live = true;
    void shown.then(() => {
      if (live && view.current === current) {
        onFinal.current?.(props.text);
      }
    });
    return () => {
      live = false;
    };
  }, [props.text, props.streaming, props.rendermime, props.actions]);
  return <div className="llamalab-message-body" ref={host} />;
}

function detailText(detail: unknown): string {
  if (detail === null || detail === undefined || detail === '') {
    return '';
  }
  return typeof detail === 'string' ? detail : JSON.stringify(detail, null, 2);
}

function ErrorLine({ entry }: { entry: ChatEntry }) {
  const detail = detailText(entry.detail);
  return (
    <div className="llamalab-message llamalab-error" data-role="error" data-testid="llamalab-chat-error" data-code={entry.code}>
      <details>
        <summary title={entry.content}>
          <span className="llamalab-error-icon" aria-hidden="true">
            !
          </span>
          <span className="llamalab-error-text">{entry.content}</span>
        </summary>
        <div className="llamalab-error-detail">
          {entry.code && <div className="llamalab-error-code">Error code: {entry.code}</div>}
          {detail ? <pre>{detail}</pre> : <div>No further details.</div>}
        </div>
      </details>
    </div>
  );
}

function usageText(entry: ChatEntry): string {
  const u = entry.usage;
  if (!u) {
    return '';
  }
  const speed = u.duration_s > 0 ? ` · ${(u.completion_tokens / u.duration_s).toFixed(1)} tokens/s` : '';
  return `${u.prompt_tokens} prompt + ${u.completion_tokens} answer tokens in ${u.duration_s.toFixed(1)} s${speed}`;
}

const FINISH_NOTES: Record<string, string> = {
  length: 'The answer reached the token limit.',
  cancelled: 'Stopped.'
};

const Message = React.memo(function Message(props: {
  entry: ChatEntry;
  rendermime: IRenderMimeRegistry;
  actions: CodeActions;
  modelName: string;
}) {
  const { entry } = props;
  // The finished answer's text once it is on screen (see Markdown): until then the answer is
  // not marked finished, so whoever waits for data-finish-reason reads the whole text.
  const [rendered, setRendered] = useState<string | null>(null);
  if (entry.role === 'error') {
    return <ErrorLine entry={entry} />;
  }
  if (entry.role === 'user') {
    return (
      <div className="llamalab-message llamalab-user" data-role="user" aria-label="Your message">
        <div className="llamalab-message-author">You</div>
        {entry.context?.length ? (
          <ul className="llamalab-message-context" aria-label="Sent with">
            {entry.context.map(c => (
              <li key={c}>{c}</li>
            ))}
          </ul>
        ) : null}
        <div className="llamalab-message-text">{entry.content}</div>
      </div>
    );
  }
  const streaming = !!entry.streaming;
  const shown = !streaming && rendered === entry.content;
  const note = entry.finishReason ? FINISH_NOTES[entry.finishReason] : undefined;
  return (
    <div
      className="llamalab-message llamalab-assistant"
      data-role="assistant"
      data-streaming={streaming ? 'true' : undefined}
      data-finish-reason={shown ? entry.finishReason : undefined}
      aria-busy={!shown}
      aria-label="The model's answer"
    >
      <div className="llamalab-message-author" title={usageText(entry)}>
        {entry.model || props.modelName}
      </div>
      {streaming && !entry.content ? (
        <div className="llamalab-thinking" aria-label="The model is thinking">
          <span />
          <span />
          <span />
        </div>
      ) : (
        <Markdown
          text={entry.content}
          streaming={streaming}
          rendermime={props.rendermime}
          actions={props.actions}
          onFinal={setRendered}
        />
      )}
      {(note || entry.notice) && (
        <div className="llamalab-message-notes">
          {note && <div className="llamalab-message-finish">{note}</div>}
          {entry.notice && <div className="llamalab-message-notice">{entry.notice}</div>}
        </div>
      )}
    </div>
  );
});

/** The conversation; follows the newest text while the reader is at the bottom. */
export function MessageList(props: MessageListProps) {
  const list = useRef<HTMLDivElement>(null);
  const pinned = useRef(true);
  const last = props.entries[props.entries.length - 1];
  useLayoutEffect(() => {
    const node = list.current;
    if (node && pinned.current) {
      node.scrollTop = node.scrollHeight;
    }
  }, [props.entries.length, last?.content, last?.streaming]);
  useEffect(() => {
    // Markdown renders asynchronously: keep following while pinned.
    const node = list.current;
    if (!node || typeof ResizeObserver === 'undefined') {
      return;
    }
    const observer = new ResizeObserver(() => {
      if (pinned.current) {
        node.scrollTop = node.scrollHeight;
      }
    });
    const content = node.firstElementChild;
    if (content) {
      observer.observe(content);
    }
    return () => observer.disconnect();
  }, []);
  return (
    <div
      className="llamalab-chat-messages"
      data-testid="llamalab-chat-messages"
      role="log"
      aria-live="polite"
      aria-relevant="additions"
      aria-label="Conversation"
      tabIndex={0}
      ref={list}
      onScroll={() => {
        const node = list.current;
        if (node) {
          pinned.current = node.scrollHeight - node.scrollTop - node.clientHeight < 40;
        }
      }}
    >
      <div className="llamalab-chat-messages-inner">
        {props.entries.length === 0
          ? props.empty
          : props.entries.map(entry => (
              <Message
                key={`${entry.role}:${entry.id}`}
                entry={entry}
                rendermime={props.rendermime}
                actions={props.actions}
                modelName={props.modelName}
              />
            ))}
      </div>
    </div>
  );
}
