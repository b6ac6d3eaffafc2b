/** The extension's icons, as JupyterLab LabIcons so that they follow the theme. */
import { LabIcon } from '@jupyterlab/ui-components';

import llamaSvg from '../style/icons/llama.svg';

export const llamaIcon = new LabIcon({ name: 'llamalab:llama', svgstr: llamaSvg });
