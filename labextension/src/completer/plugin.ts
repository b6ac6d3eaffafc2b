/** The completer plugin: registers llamalab's inline completion provider with JupyterLab. */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICompletionProviderManager } from '@jupyterlab/completer';

import { PLUGIN_IDS } from '../tokens';
import { LlamalabInlineProvider } from './provider';

export const completerPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.completer,
  description: 'Inline completions (ghost text) from the local model in cells and files.',
  autoStart: true,
  requires: [ICompletionProviderManager],
  activate: (app: JupyterFrontEnd, manager: ICompletionProviderManager) => {
    manager.registerInlineProvider(new LlamalabInlineProvider(app.serviceManager.serverSettings));
  }
};
