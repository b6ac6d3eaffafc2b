/** The chat side panel: a ReactWidget around the chat view. */
import type { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ReactWidget } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import React from 'react';

import type { ChatModel } from './model';
import { ChatView, ViewWorkspace } from './view';

export const CHAT_PANEL_ID = 'llamalab-chat';

export class ChatPanel extends ReactWidget {
  constructor(
    readonly model: ChatModel,
    private readonly _workspace: ViewWorkspace,
    private readonly _rendermime: IRenderMimeRegistry
  ) {
    super();
    this.id = CHAT_PANEL_ID;
    this.addClass('llamalab-chat-panel');
  }

  render(): JSX.Element {
    return <ChatView model={this.model} workspace={this._workspace} rendermime={this._rendermime} />;
  }

  /** Puts the cursor in the message box (once the view has rendered). */
  focusInput(tries = 10): void {
    const input = this.node.querySelector<HTMLTextAreaElement>('textarea[data-testid="llamalab-chat-input"]');
    if (input && this.isVisible) {
      input.focus();
    } else if (tries > 0) {
      requestAnimationFrame(() => this.focusInput(tries - 1));
    }
  }

  protected onActivateRequest(msg: Message): void {
    super.onActivateRequest(msg);
    this.focusInput();
  }

  dispose(): void {
    if (!this.isDisposed) {
      this.model.dispose();
    }
    super.dispose();
  }
}
