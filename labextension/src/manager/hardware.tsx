/**
 * "Hardware": the server's hardware report. It owns the GPU list with each GPU's memory bar, the
 * table of how well each stored model fits, the report's notices and the full text report on
 * demand. Wording of a fit is `fitLabel` in logic.ts.
 */
import * as React from 'react';

import { DisclosureLink, Section, Table } from './layout';
import { fitLabel, formatBytes, ManagerState, teamServer } from './logic';

export function HardwareSection({ state }: { state: ManagerState }): JSX.Element {
  const hw = state.hardware;
  const [open, setOpen] = React.useState(false);
  // With a team server this machine runs no model: its GPUs and what would fit here do not matter.
  const remote = teamServer(state.models) !== null;
  return (
    <Section id="llamalab-manager-hardware" title="Hardware" testId="llamalab-hardware">
      {!hw ? (
        <p className="llamalab-Manager-empty">Reading the hardware report…</p>
      ) : (
        <>
          {remote ? (
            <p data-testid="llamalab-hardware-remote">
              The models run on the team server&apos;s hardware; what it offers:
            </p>
          ) : hw.gpus.length === 0 ? (
            <p>
              No NVIDIA GPU found: models run on the CPU.
              {!hw.gpu_offload_supported && ' (This llama.cpp build has no GPU offload.)'}
            </p>
          ) : (
            <ul className="llamalab-Manager-gpus">
              {hw.gpus.map(gpu => (
                <li key={gpu.index} data-testid="llamalab-gpu">
                  GPU {gpu.index}: {gpu.name} — {formatBytes(gpu.free_bytes)} free of {formatBytes(gpu.total_bytes)}
                  <progress
                    aria-label={`Memory used on GPU ${gpu.index}`}
                    max={gpu.total_bytes || 1}
                    value={Math.max(0, gpu.total_bytes - gpu.free_bytes)}
                  />
                </li>
              ))}
            </ul>
          )}
          {!remote && hw.models.length > 0 && (
            <Table columns={['Model', 'Quantization', 'Needs', `On a context of ${hw.n_ctx.toLocaleString()} tokens`]}>
              {hw.models.map(fit => (
                <tr key={fit.name} data-testid="llamalab-fit" data-model={fit.name} data-fits={fit.fits_fully ? 'true' : 'false'}>
                  <th scope="row">{fit.name}</th>
                  <td>{fit.quantization}</td>
                  <td>{formatBytes(fit.needed_bytes)}</td>
                  <td>{fitLabel(fit, hw.gpus.length > 0)}</td>
                </tr>
              ))}
            </Table>
          )}
          {(remote ? hw.remote : hw.notices).map(notice => (
            <p key={notice} className="llamalab-Manager-note">
              {notice}
            </p>
          ))}
          <DisclosureLink open={open} onToggle={() => setOpen(!open)} showText="Show the full report" hideText="Hide the full report" />
          {open && <pre className="llamalab-Manager-detail">{hw.text}</pre>}
        </>
      )}
    </Section>
  );
}
