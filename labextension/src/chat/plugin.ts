/** The chat side panel plugin (placeholder until the panel lands). */
import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Widget } from '@lumino/widgets';

import { llamaIcon } from '../icons';
import { COMMANDS, PLUGIN_IDS } from '../tokens';

export const chatPlugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_IDS.chat,
  description: 'A chat with the local model, in the side panel.',
  autoStart: true,
  requires: [ILabShell],
  activate: (app: JupyterFrontEnd, shell: ILabShell) => {
    const panel = new Widget();
    panel.id = 'llamalab-chat';
    panel.title.icon = llamaIcon;
    panel.title.caption = 'llamalab chat';
    shell.add(panel, 'right', { rank: 1000 });
    app.commands.addCommand(COMMANDS.openChat, {
      label: 'Open llamalab Chat',
      execute: () => shell.activateById(panel.id)
    });
  }
};
