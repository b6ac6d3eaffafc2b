// Builds the prebuilt JupyterLab extension into dist/ with @jupyterlab/builder.
//
// The builder reads the JupyterLab core's package.json (its shared singleton packages) from
// --core-path. JupyterLab 4.6 publishes that file as @jupyterlab/core-meta's core.package.json,
// while the builder (4.5) looks for package.json, so it is copied into node_modules/.llamalab-core
// first. Usage: node scripts/build-labextension.mjs [--development]
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const pkg = join(dirname(fileURLToPath(import.meta.url)), '..');
const coreDir = join(pkg, 'node_modules', '.llamalab-core');
mkdirSync(coreDir, { recursive: true });
copyFileSync(join(pkg, 'node_modules', '@jupyterlab', 'core-meta', 'core.package.json'), join(coreDir, 'package.json'));

const builder = join(pkg, 'node_modules', '@jupyterlab', 'builder', 'lib', 'build-labextension.js');
const args = [builder, '--core-path', coreDir, ...process.argv.slice(2), pkg];
const result = spawnSync(process.execPath, args, { stdio: 'inherit', cwd: pkg });
process.exit(result.status ?? 1);
