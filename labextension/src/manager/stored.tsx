/**
 * "Your models": the stored models section. It owns the table of models in the server's store,
 * the line saying which one is loaded, and each row's Load/Unload and "Quantize…" controls (with
 * the inline quantize form a row opens under itself). The requests themselves go to `ManagerModel`.
 */
import * as React from 'react';

import type { StoredModelInfo } from '../wire';
import { InlineForm, QuantSelect, SubmitButton } from './controls';
import { Section, SectionProps, Table } from './layout';
import { canQuantize, CONVERT_DEFAULT_QUANT, formatBytes, QUANT_CHOICES } from './logic';

/** Unload for the loaded model, Load for the others (disabled where the server does not allow it). */
function LoadButton({ info, model, state }: { info: StoredModelInfo } & SectionProps): JSX.Element {
  const busy = state.busy.has('load') || state.busy.has('unload');
  const verb = info.loaded ? 'Unload' : 'Load';
  return (
    <button
      className={info.loaded ? 'llamalab-Manager-button' : 'llamalab-Manager-button llamalab-mod-accept'}
      data-testid={info.loaded ? 'llamalab-unload' : 'llamalab-load'}
      disabled={busy || (!info.loaded && !info.allowed)}
      title={info.loaded || info.allowed ? undefined : 'This server does not allow this model'}
      onClick={() => void (info.loaded ? model.unload() : model.load(info.name))}
      aria-label={`${verb} ${info.name}`}
    >
      {verb}
    </button>
  );
}

function StoredRow({ info, model, state }: { info: StoredModelInfo } & SectionProps): JSX.Element {
  const [quantizing, setQuantizing] = React.useState(false);
  const [quant, setQuant] = React.useState<string>(CONVERT_DEFAULT_QUANT);
  return (
    <>
      <tr
        data-testid="llamalab-stored-model"
        data-model={info.name}
        data-loaded={info.loaded ? 'true' : 'false'}
        className={info.loaded ? 'llamalab-mod-loaded' : ''}
      >
        <th scope="row" title={info.path}>
          {info.name}
          {info.loaded && <span className="llamalab-Manager-badge">loaded</span>}
        </th>
        <td>{formatBytes(info.size_bytes)}</td>
        <td>{info.quantization}</td>
        <td>{info.context_length.toLocaleString()}</td>
        <td>{info.license ?? '—'}</td>
        <td>
          <div className="llamalab-Manager-actions">
            <LoadButton info={info} model={model} state={state} />
            <button
              className="llamalab-Manager-button"
              data-testid="llamalab-quantize-open"
              disabled={!canQuantize(info.quantization)}
              title={canQuantize(info.quantization) ? undefined : `${info.quantization} is already quantized: quantize an F16, BF16 or F32 model`}
              aria-expanded={quantizing}
              aria-label={`Quantize ${info.name}`}
              onClick={() => setQuantizing(!quantizing)}
            >
              Quantize…
            </button>
          </div>
        </td>
      </tr>
      {quantizing && (
        <tr className="llamalab-Manager-subrow">
          <td colSpan={6}>
            <InlineForm
              onSubmit={() => {
                setQuantizing(false);
                void model.quantize(info.name, quant);
              }}
            >
              <label>
                Quantize {info.name} to{' '}
                <QuantSelect
                  value={quant}
                  onChange={setQuant}
                  choices={QUANT_CHOICES}
                  label={`Quantization for ${info.name}`}
                  testId="llamalab-quantize-quant"
                />
              </label>
              <SubmitButton testId="llamalab-quantize-button">Start</SubmitButton>
              <button type="button" className="llamalab-Manager-button" onClick={() => setQuantizing(false)}>
                Cancel
              </button>
            </InlineForm>
          </td>
        </tr>
      )}
    </>
  );
}

export function StoredSection({ model, state }: SectionProps): JSX.Element {
  const stored = state.models?.stored ?? [];
  const loaded = state.models?.loaded;
  return (
    <Section id="llamalab-manager-stored" title="Your models">
      <p className="llamalab-Manager-note">
        {loaded
          ? `Loaded: ${loaded.name}${loaded.n_gpu_layers !== null && loaded.total_layers ? ` (${loaded.n_gpu_layers} of ${loaded.total_layers} layers on the GPU)` : ''}.`
          : 'No model is loaded; the first chat or completion loads the default one'}
        {state.models?.default_model && !loaded ? ` (${state.models.default_model}).` : ''}
      </p>
      {stored.length === 0 ? (
        <p className="llamalab-Manager-empty">{state.models ? 'The store is empty: pull a model below.' : 'Reading the store…'}</p>
      ) : (
        <Table columns={['Name', 'Size', 'Quantization', 'Context', 'Licence']} actions>
          {stored.map(info => (
            <StoredRow key={info.name} info={info} model={model} state={state} />
          ))}
        </Table>
      )}
    </Section>
  );
}
