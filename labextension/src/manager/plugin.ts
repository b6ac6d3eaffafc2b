/** The manager plugin (placeholder until it lands). */
import { JupyterFrontEndPlugin } from '@jupyterlab/application';

import { PLUGIN_IDS } from '../tokens';

export const managerPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.manager,
  autoStart: true,
  activate: () => undefined
};
