/** llamalab's JupyterLab front end: the plugins it registers. */
import { chatPlugin } from './chat/plugin';
import { completerPlugin } from './completer/plugin';
import { managerPlugin } from './manager/plugin';

export default [chatPlugin, completerPlugin, managerPlugin];
