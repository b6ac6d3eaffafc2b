/** The completer plugin: registers llamalab's inline completion provider with JupyterLab, and
 * tells it when a notebook cell is entered (warm-up), when a cell ran (the kernel's names may
 * have changed) and when JupyterLab's inline completer accepted a suggestion (prefetch). */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICompletionProviderManager } from '@jupyterlab/completer';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';

import { PLUGIN_IDS } from '../tokens';
import { LlamalabInlineProvider } from './provider';

/** JupyterLab's command that accepts the shown inline suggestion (Tab). */
export const ACCEPT_COMMAND = 'inline-completer:accept';

export const completerPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.completer,
  description: 'Inline completions (ghost text) from the local model in cells and files.',
  autoStart: true,
  requires: [ICompletionProviderManager],
  optional: [INotebookTracker],
  activate: (app: JupyterFrontEnd, manager: ICompletionProviderManager, notebooks: INotebookTracker | null) => {
    const provider = new LlamalabInlineProvider(app.serviceManager.serverSettings);
    manager.registerInlineProvider(provider);
    if (notebooks) {
      notebooks.activeCellChanged.connect(() => {
        const panel = notebooks.currentWidget;
        if (panel) {
          provider.cellEntered(panel);
        }
      });
    }
    NotebookActions.executed.connect((_, { notebook, cell }) => {
      const count = (cell.model as { executionCount?: number | null }).executionCount;
      provider.cellExecuted(notebook, count);
    });
    app.commands.commandExecuted.connect((_, args) => {
      if (args.id === ACCEPT_COMMAND) {
        provider.suggestionAccepted(app.shell.currentWidget);
      }
    });
  }
};
