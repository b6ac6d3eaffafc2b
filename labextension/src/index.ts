/** llamalab's JupyterLab front end: the plugins it registers. */
import { chatPlugin } from './chat/plugin';

export default [chatPlugin];
