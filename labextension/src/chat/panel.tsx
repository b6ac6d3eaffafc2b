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

  /**
   * Puts the cursor in the message box once the view has rendered, and keeps it there for a
   * moment: a command run from the palette gives the focus back to where it was when the
   * palette closes, after the command ran. Any click or key press (anywhere: the user has moved
   * on) or a focus moved elsewhere inside the panel ends the watch.
   */
  focusInput(watchMs = 600, waitMs = 5000): void {
    const start = performance.now();
    let focusedAt: number | null = null;
    let userActed = false;
    const onUserInput = () => {
      userActed = true;
    };
    const stopListening = () => {
      document.removeEventListener('pointerdown', onUserInput, true);
      document.removeEventListener('keydown', onUserInput, true);
    };
    document.addEventListener('pointerdown', onUserInput, true);
    document.addEventListener('keydown', onUserInput, true);
    const attempt = () => {
      if (this.isDisposed || userActed) {
        stopListening();
        return;
      }
      const now = performance.now();
      const input = this.node.querySelector<HTMLTextAreaElement>('textarea[data-testid="llamalab-chat-input"]');
      const active = document.activeElement;
      if (focusedAt !== null && active !== input && active instanceof Node && this.node.contains(active)) {
        stopListening();
        return; // the user moved on inside the panel
      }
      if (input && this.isVisible) {
        if (active !== input) {
          input.focus();
        }
        focusedAt = focusedAt ?? now;
      }
      if (focusedAt === null ? now - start < waitMs : now - focusedAt < watchMs) {
        requestAnimationFrame(attempt);
      } else {
        stopListening();
      }
    };
    attempt();
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
