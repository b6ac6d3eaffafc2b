/** The chat side panel's React view: header, settings, messages and the message box. */
import type { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { addIcon, deleteIcon, editIcon, LabIcon, refreshIcon, stopIcon } from '@jupyterlab/ui-components';
import React, { useEffect, useState } from 'react';

import type { KernelRef } from '../wire';
import type { ConnectionState } from './client';
import type { CodeActions } from './markdown';
import { MessageList } from './messages';
import type { ChatModel } from './model';
import type { ContextChoice, ContextPlaces } from './notebook';
import type { ContextBlock } from './prompts';

/** What the view needs from the documents around it. */
export interface ViewWorkspace extends CodeActions {
  describe(): ContextPlaces;
  contextBlocks(choice: ContextChoice): ContextBlock[];
  /** The notebook's running Python kernel, whose names the server reads ("Kernel" context). */
  kernel(): KernelRef | null;
}

export interface ChatViewProps {
  model: ChatModel;
  workspace: ViewWorkspace;
  rendermime: IRenderMimeRegistry;
}

/** A header button showing only an icon; `label` is both its accessible name and its tooltip. */
function IconButton(props: { icon: LabIcon; label: string; testId?: string; onClick: () => void }): JSX.Element {
  return (
    <button
      type="button"
      className="llamalab-icon-button"
      data-testid={props.testId}
      aria-label={props.label}
      title={props.label}
      onClick={props.onClick}
    >
      <props.icon.react tag="span" elementSize="normal" />
    </button>
  );
}

function useModel(model: ChatModel): number {
  const [version, setVersion] = useState(model.version);
  useEffect(() => model.subscribe(() => setVersion(model.version)), [model]);
  return version;
}

/** Re-renders every second while `active` (for the reconnect countdown). */
function useTicker(active: boolean): void {
  const [, setTick] = useState(0);
  useEffect(() => {
    if (!active) {
      return;
    }
    const timer = window.setInterval(() => setTick(t => t + 1), 1000);
    return () => window.clearInterval(timer);
  }, [active]);
}

const STATE_TEXT: Record<ConnectionState, string> = {
  connecting: 'Connecting…',
  open: 'Connected',
  reconnecting: 'Reconnecting…',
  closed: 'Disconnected'
};

function Status({ model }: { model: ChatModel }) {
  const state = model.state;
  useTicker(state === 'reconnecting');
  let text = STATE_TEXT[state];
  if (state === 'reconnecting' && model.client.retryAt) {
    const seconds = Math.max(0, Math.ceil((model.client.retryAt - Date.now()) / 1000));
    text = seconds > 0 ? `Connection lost · retrying in ${seconds} s` : 'Reconnecting…';
  }
  const loaded = model.loaded;
  let detail = '';
  if (model.loading) {
    detail = `Loading ${model.loading}…`;
  } else if (state === 'open') {
    if (loaded) {
      const gpu = loaded.n_gpu_layers && loaded.total_layers ? ` · ${loaded.n_gpu_layers}/${loaded.total_layers} layers on GPU` : '';
      detail = `${loaded.name}${loaded.quantization ? ` (${loaded.quantization})` : ''}${gpu}`;
    } else {
      detail = 'no model loaded yet: the first message loads it';
    }
  }
  return (
    <div className="llamalab-chat-status" data-testid="llamalab-chat-status" data-state={state} role="status" aria-live="polite">
      <span className="llamalab-status-dot" aria-hidden="true" />
      <span className="llamalab-status-text">{text}</span>
      {detail && (
        <span className="llamalab-status-model" title={loaded?.location ?? ''}>
          {detail}
        </span>
      )}
      {state === 'reconnecting' && (
        <button type="button" className="llamalab-link-button" onClick={() => model.client.connect()}>
          Retry now
        </button>
      )}
    </div>
  );
}

function ModelPicker({ model }: { model: ChatModel }) {
  const picked = model.store.model;
  const choices = model.pickerChoices();
  const names = choices.map(c => c.name);
  return (
    <label className="llamalab-chat-field llamalab-model-field">
      <span className="llamalab-field-label">Model</span>
      <select
        className="jp-mod-styled"
        data-testid="llamalab-model-picker"
        aria-label="Model"
        value={picked}
        disabled={!!model.loading}
        onChange={e => void model.pickModel(e.currentTarget.value)}
      >
        <option value="">
          {model.remoteModels ? 'Team server default' : 'Server default'}
          {model.defaultModel ? ` (${model.defaultModel})` : ''}
        </option>
        {choices.map(c => (
          <option key={c.name} value={c.name} disabled={!c.allowed}>
            {c.name}
            {c.note}
            {c.allowed ? '' : ' · not allowed'}
          </option>
        ))}
        {picked && !names.includes(picked) && <option value={picked}>{picked}</option>}
      </select>
    </label>
  );
}

function Settings({ model }: { model: ChatModel }) {
  const conversation = model.store.active;
  return (
    <details className="llamalab-chat-settings">
      <summary>Conversation settings</summary>
      <label className="llamalab-chat-field llamalab-system-field">
        <span className="llamalab-field-label">System prompt</span>
        <textarea
          className="jp-mod-styled"
          data-testid="llamalab-chat-system"
          rows={3}
          value={conversation.system ?? ''}
          placeholder="The server's default system prompt"
          aria-describedby="llamalab-system-help"
          onChange={e => model.setSystem(e.currentTarget.value === '' ? null : e.currentTarget.value)}
        />
      </label>
      <div id="llamalab-system-help" className="llamalab-help">
        Sent with this conversation's next message; empty uses the server's default.
      </div>
      <div className="llamalab-settings-actions">
        <button type="button" className="jp-mod-styled llamalab-button" data-testid="llamalab-chat-clear" onClick={() => model.clear()}>
          Clear conversation
        </button>
      </div>
    </details>
  );
}

function Empty({ onPick }: { onPick: (text: string) => void }) {
  const ideas = ['Explain what a Python generator is, with an example.', 'Write a function that reads a CSV file into a DataFrame.'];
  return (
    <div className="llamalab-chat-empty">
      <p className="llamalab-chat-empty-title">Ask the local model anything.</p>
      <p>
        It answers in Markdown; code blocks come with <em>Copy</em>, <em>Insert</em> and <em>New cell</em>. Tick <em>Cell</em>,{' '}
        <em>Selection</em>, <em>Notebook</em> or <em>Kernel</em> (its variables) below to send your work along.
      </p>
      <div className="llamalab-chat-ideas">
        {ideas.map(idea => (
          <button key={idea} type="button" className="llamalab-idea" onClick={() => onPick(idea)}>
            {idea}
          </button>
        ))}
      </div>
    </div>
  );
}

function Toggle(props: { id: keyof ContextChoice; label: string; title: string; choice: ContextChoice; disabled: boolean; set: (c: ContextChoice) => void }) {
  return (
    <label className="llamalab-context-toggle" title={props.title}>
      <input
        type="checkbox"
        data-testid={`llamalab-context-${props.id}`}
        checked={props.choice[props.id]}
        disabled={props.disabled}
        onChange={e => props.set({ ...props.choice, [props.id]: e.currentTarget.checked })}
      />
      {props.label}
    </label>
  );
}

/** The conversation's title as an input, while renaming: Enter keeps it, Escape or leaving drops it. */
function RenameField({ title, done }: { title: string; done: (title: string | null) => void }) {
  const [value, setValue] = useState(title);
  return (
    <input
      className="jp-mod-styled llamalab-conversation-picker"
      data-testid="llamalab-chat-rename-input"
      aria-label="Conversation title"
      autoFocus
      value={value}
      onChange={e => setValue(e.currentTarget.value)}
      onBlur={() => done(null)}
      onKeyDown={e => {
        if (e.key === 'Enter') {
          e.preventDefault();
          done(value.trim() ? value : null);
        } else if (e.key === 'Escape') {
          e.preventDefault();
          e.stopPropagation();
          done(null);
        }
      }}
    />
  );
}

/** Conversation files the server could not read: they were set aside, not lost. */
function Problems({ model }: { model: ChatModel }) {
  const problems = model.sync?.problems ?? [];
  if (!problems.length) {
    return null;
  }
  return (
    <div className="llamalab-help llamalab-chat-problems" data-testid="llamalab-chat-problems" title={problems.map(p => p.message).join('\n')}>
      {problems.length === 1 ? problems[0].message : `${problems.length} conversation files could not be read; they were set aside.`}
    </div>
  );
}

export function ChatView({ model, workspace, rendermime }: ChatViewProps) {
  useModel(model);
  const [draft, setDraft] = useState('');
  const [renaming, setRenaming] = useState(false);
  const [choice, setChoice] = useState<ContextChoice>({ cell: false, selection: false, notebook: false, kernel: false });
  const conversation = model.store.active;
  const generating = model.isGenerating();
  const where = workspace.describe();

  const send = (text = draft) => {
    const message = text.trim();
    if (!message || generating) {
      return;
    }
    const blocks = workspace.contextBlocks(choice);
    const kernel = choice.kernel ? workspace.kernel() : null;
    const id = model.sendWithContext(message, blocks, { display: message, kernel });
    if (id && text === draft) {
      setDraft('');
    }
  };
  const stop = () => void model.stop();

  return (
    <div
      className="llamalab-chat"
      onKeyDown={e => {
        if (e.key === 'Escape' && generating) {
          e.preventDefault();
          e.stopPropagation();
          stop();
        }
      }}
    >
      <div className="llamalab-chat-header">
        {renaming ? (
          <RenameField
            title={conversation.title}
            done={title => {
              setRenaming(false);
              if (title !== null) {
                model.rename(title, conversation.id);
              }
            }}
          />
        ) : (
          <select
            className="jp-mod-styled llamalab-conversation-picker"
            data-testid="llamalab-conversation-picker"
            aria-label="Conversation"
            value={conversation.id}
            onChange={e => model.select(e.currentTarget.value)}
          >
            {model.store.conversations.map(c => (
              <option key={c.id} value={c.id}>
                {c.title}
                {model.isGenerating(c.id) ? ' (answering)' : ''}
              </option>
            ))}
          </select>
        )}
        <IconButton icon={editIcon} label="Rename this conversation" testId="llamalab-chat-rename" onClick={() => setRenaming(true)} />
        <IconButton icon={addIcon} label="New conversation" testId="llamalab-chat-new" onClick={() => model.newConversation()} />
        <IconButton icon={deleteIcon} label="Delete this conversation" testId="llamalab-chat-delete" onClick={() => model.remove()} />
      </div>
      <div className="llamalab-chat-bar">
        <ModelPicker model={model} />
        <IconButton icon={refreshIcon} label="Refresh the model list" onClick={() => void model.refreshModels()} />
      </div>
      <Status model={model} />
      <Problems model={model} />
      <Settings model={model} />
      <MessageList
        entries={conversation.entries}
        rendermime={rendermime}
        actions={workspace}
        modelName={model.loaded?.name || model.store.model || model.defaultModel || 'Model'}
        empty={<Empty onPick={text => send(text)} />}
      />
      <div className="llamalab-chat-composer">
        <div
          className="llamalab-context-toggles"
          role="group"
          aria-label="Send along with the message"
          title="Send the active cell, the selection, the whole notebook or the kernel's variables along with your message"
        >
          <Toggle id="cell" label="Cell" title={where.cell ? `The ${where.cell}` : 'Open a notebook or file first'} choice={choice} disabled={!where.cell} set={setChoice} />
          <Toggle id="selection" label="Selection" title="The selected text of the active cell or editor" choice={choice} disabled={!where.cell} set={setChoice} />
          <Toggle id="notebook" label="Notebook" title={where.notebook ? `The whole notebook ${where.notebook}` : 'Open a notebook first'} choice={choice} disabled={!where.notebook} set={setChoice} />
          <Toggle
            id="kernel"
            label="Kernel"
            title={
              where.kernel
                ? `The names ${where.kernel} defines: variables, functions, DataFrame columns (read when it is idle)`
                : 'Open a notebook with a running Python kernel first'
            }
            choice={choice}
            disabled={!where.kernel}
            set={setChoice}
          />
        </div>
        <div className="llamalab-chat-input-row">
          <textarea
            className="llamalab-chat-input"
            data-testid="llamalab-chat-input"
            aria-label="Message the model"
            placeholder={generating ? 'Answering… (Escape stops)' : 'Message the model (Enter sends, Shift+Enter for a new line)'}
            rows={3}
            value={draft}
            onChange={e => setDraft(e.currentTarget.value)}
            onKeyDown={e => {
              if (e.key === 'Enter' && !e.shiftKey && !e.nativeEvent.isComposing) {
                e.preventDefault();
                send();
              }
            }}
          />
          <div className="llamalab-chat-actions">
            {generating && (
              <button type="button" className="llamalab-stop" data-testid="llamalab-chat-stop" aria-label="Stop the answer" title="Stop (Escape)" onClick={stop}>
                <stopIcon.react tag="span" elementSize="normal" />
                <span>Stop</span>
              </button>
            )}
            <button
              type="button"
              className="llamalab-send"
              data-testid="llamalab-chat-send"
              aria-label="Send"
              title="Send (Enter)"
              disabled={generating || !draft.trim()}
              onClick={() => send()}
            >
              Send
            </button>
          </div>
        </div>
      </div>
    </div>
  );
}
