/** The completer plugin (placeholder until it lands). */
import { JupyterFrontEndPlugin } from '@jupyterlab/application';

import { PLUGIN_IDS } from '../tokens';

export const completerPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.completer,
  autoStart: true,
  activate: () => undefined
};
