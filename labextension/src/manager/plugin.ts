/**
 * The model manager plugin: the `llamalab:open-model-manager` command (palette, Settings menu
 * through schema/manager.json, and anything else that runs it, such as the chat panel) opens
 * one main-area manager, restored with the layout.
 */
import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, WidgetTracker } from '@jupyterlab/apputils';

import { readEvents, requestAPI, sendJSON } from '../api';
import { llamaIcon } from '../icons';
import { COMMANDS, PLUGIN_IDS } from '../tokens';
import { ManagerApi, ManagerModel } from './logic';
import { MANAGER_ID, ModelManagerWidget } from './widget';

const api: ManagerApi = {
  get: path => requestAPI(path),
  post: (path, body) => sendJSON(path, body),
  del: path => requestAPI(path, { method: 'DELETE' }),
  events: (path, signal) => readEvents(path, { signal })
};

export const managerPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.manager,
  description: 'The model manager: stored models, the catalog, pulls, conversion, quantization and the hardware report.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (app: JupyterFrontEnd, palette: ICommandPalette | null, restorer: ILayoutRestorer | null) => {
    const tracker = new WidgetTracker<ModelManagerWidget>({ namespace: 'llamalab-manager' });
    let widget: ModelManagerWidget | null = null;

    app.commands.addCommand(COMMANDS.openManager, {
      label: 'llamalab Model Manager',
      caption: 'Pull, convert, quantize and load models; see what fits the GPU',
      icon: args => (args.isPalette ? undefined : llamaIcon),
      execute: () => {
        if (!widget || widget.isDisposed) {
          const model = new ManagerModel(api);
          widget = new ModelManagerWidget(model);
          widget.title.icon = llamaIcon;
          void tracker.add(widget);
          void model.refresh();
        }
        if (!widget.isAttached) {
          app.shell.add(widget, 'main');
        }
        app.shell.activateById(MANAGER_ID);
        return widget;
      }
    });
    palette?.addItem({ command: COMMANDS.openManager, category: 'llamalab' });
    if (restorer) {
      void restorer.restore(tracker, { command: COMMANDS.openManager, name: () => 'llamalab-manager' });
    }
  }
};
