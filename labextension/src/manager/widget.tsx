/**
 * The model manager's view: a main-area ReactWidget rendering `ManagerModel` snapshots. Every
 * row and control carries the data-testid the browser tests look for.
 */
import { ReactWidget } from '@jupyterlab/ui-components';
import type { Message } from '@lumino/messaging';
import * as React from 'react';

import type { CatalogModelInfo, Job, StoredModelInfo } from '../wire';
import {
  canQuantize,
  CONVERT_DEFAULT_QUANT,
  fitLabel,
  formatAmount,
  formatBytes,
  jobFraction,
  ManagerModel,
  ManagerState,
  NO_QUANT,
  pullReference,
  QUANT_CHOICES,
  ShownError
} from './logic';

export const MANAGER_ID = 'llamalab-model-manager';

function useManagerState(model: ManagerModel): ManagerState {
  const [state, setState] = React.useState(model.state);
  React.useEffect(() => model.subscribe(setState), [model]);
  return state;
}

function ErrorLine({ error, onDismiss }: { error: ShownError; onDismiss: () => void }): JSX.Element {
  const [open, setOpen] = React.useState(false);
  return (
    <div className="llamalab-Manager-error" role="alert" data-testid="llamalab-manager-error">
      <span className="llamalab-Manager-errorMessage">{error.message}</span>
      {error.detail && (
        <button className="llamalab-Manager-link" aria-expanded={open} onClick={() => setOpen(!open)}>
          {open ? 'Hide details' : 'Details'}
        </button>
      )}
      <button className="llamalab-Manager-link" aria-label="Dismiss the error" onClick={onDismiss}>
        Dismiss
      </button>
      {open && error.detail && <pre className="llamalab-Manager-detail">{error.detail}</pre>}
    </div>
  );
}

function LicenseGateBox({ model, state }: { model: ManagerModel; state: ManagerState }): JSX.Element | null {
  const gate = state.gate;
  if (!gate) {
    return null;
  }
  return (
    <div className="llamalab-Manager-gate" role="dialog" aria-label="Licence to accept" data-testid="llamalab-license-gate">
      <p>
        <strong>{gate.subject}</strong> is published under <strong>{gate.license}</strong>. Read the licence and accept it to go on.
      </p>
      {gate.notice && <pre className="llamalab-Manager-notice">{gate.notice}</pre>}
      <div className="llamalab-Manager-actions">
        {gate.licenseUrl && (
          <a href={gate.licenseUrl} target="_blank" rel="noopener noreferrer" className="llamalab-Manager-licenseLink">
            Read the licence
          </a>
        )}
        <button
          className="llamalab-Manager-button llamalab-mod-accept"
          data-testid="llamalab-accept-license"
          onClick={() => void gate.accept()}
        >
          I accept
        </button>
        <button className="llamalab-Manager-button" onClick={() => model.dismissGate()}>
          Cancel
        </button>
      </div>
    </div>
  );
}

function QuantSelect(props: {
  value: string;
  onChange: (value: string) => void;
  choices: readonly string[];
  label: string;
  testId?: string;
}): JSX.Element {
  return (
    <select
      className="llamalab-Manager-select"
      aria-label={props.label}
      data-testid={props.testId}
      value={props.value}
      onChange={e => props.onChange(e.currentTarget.value)}
    >
      {props.choices.map(choice => (
        <option key={choice} value={choice}>
          {choice}
        </option>
      ))}
    </select>
  );
}

function StoredRow({ info, model, state }: { info: StoredModelInfo; model: ManagerModel; state: ManagerState }): JSX.Element {
  const [quantizing, setQuantizing] = React.useState(false);
  const [quant, setQuant] = React.useState<string>(CONVERT_DEFAULT_QUANT);
  const loadBusy = state.busy.has('load') || state.busy.has('unload');
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
            {info.loaded ? (
              <button
                className="llamalab-Manager-button"
                data-testid="llamalab-unload"
                disabled={loadBusy}
                onClick={() => void model.unload()}
                aria-label={`Unload ${info.name}`}
              >
                Unload
              </button>
            ) : (
              <button
                className="llamalab-Manager-button llamalab-mod-accept"
                data-testid="llamalab-load"
                disabled={loadBusy || !info.allowed}
                title={info.allowed ? undefined : 'This server does not allow this model'}
                onClick={() => void model.load(info.name)}
                aria-label={`Load ${info.name}`}
              >
                Load
              </button>
            )}
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
            <form
              className="llamalab-Manager-inline"
              onSubmit={e => {
                e.preventDefault();
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
              <button type="submit" className="llamalab-Manager-button llamalab-mod-accept" data-testid="llamalab-quantize-button">
                Start
              </button>
              <button type="button" className="llamalab-Manager-button" onClick={() => setQuantizing(false)}>
                Cancel
              </button>
            </form>
          </td>
        </tr>
      )}
    </>
  );
}

function StoredSection({ model, state }: { model: ManagerModel; state: ManagerState }): JSX.Element {
  const stored = state.models?.stored ?? [];
  const loaded = state.models?.loaded;
  return (
    <section className="llamalab-Manager-section" aria-labelledby="llamalab-manager-stored">
      <h2 id="llamalab-manager-stored">Your models</h2>
      <p className="llamalab-Manager-note">
        {loaded
          ? `Loaded: ${loaded.name}${loaded.n_gpu_layers !== null && loaded.total_layers ? ` (${loaded.n_gpu_layers} of ${loaded.total_layers} layers on the GPU)` : ''}.`
          : 'No model is loaded; the first chat or completion loads the default one'}
        {state.models?.default_model && !loaded ? ` (${state.models.default_model}).` : ''}
      </p>
      {stored.length === 0 ? (
        <p className="llamalab-Manager-empty">{state.models ? 'The store is empty: pull a model below.' : 'Reading the store…'}</p>
      ) : (
        <table className="llamalab-Manager-table">
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Size</th>
              <th scope="col">Quantization</th>
              <th scope="col">Context</th>
              <th scope="col">Licence</th>
              <th scope="col">
                <span className="llamalab-visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {stored.map(info => (
              <StoredRow key={info.name} info={info} model={model} state={state} />
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function CatalogRow({ info, model, state }: { info: CatalogModelInfo; model: ManagerModel; state: ManagerState }): JSX.Element {
  const [quant, setQuant] = React.useState(info.default_quant);
  return (
    <tr data-testid="llamalab-catalog-model" data-model={info.name}>
      <th scope="row">
        {info.name}
        <div className="llamalab-Manager-note">{info.description}</div>
      </th>
      <td>{info.parameters}</td>
      <td>
        {info.license_url ? (
          <a href={info.license_url} target="_blank" rel="noopener noreferrer">
            {info.license}
          </a>
        ) : (
          info.license
        )}
        {info.requires_license_acceptance && <div className="llamalab-Manager-note">acceptance needed</div>}
      </td>
      <td>
        <QuantSelect
          value={quant}
          onChange={setQuant}
          choices={info.quantizations}
          label={`Quantization of ${info.name}`}
          testId="llamalab-catalog-quant"
        />
      </td>
      <td>
        <div className="llamalab-Manager-actions">
          <button
            className="llamalab-Manager-button llamalab-mod-accept"
            data-testid="llamalab-catalog-pull"
            disabled={state.busy.has('pull')}
            aria-label={`Pull ${info.name} ${quant}`}
            onClick={() => void model.pull(pullReference(info.name, quant, info.default_quant))}
          >
            Pull
          </button>
        </div>
      </td>
    </tr>
  );
}

function PullSection({ model, state }: { model: ManagerModel; state: ManagerState }): JSX.Element {
  const [ref, setRef] = React.useState('');
  const catalog = state.models?.catalog ?? [];
  return (
    <section className="llamalab-Manager-section" aria-labelledby="llamalab-manager-catalog">
      <h2 id="llamalab-manager-catalog">Get a model</h2>
      <form
        className="llamalab-Manager-inline"
        onSubmit={e => {
          e.preventDefault();
          void model.pull(ref);
        }}
      >
        <input
          className="llamalab-Manager-input llamalab-mod-wide"
          data-testid="llamalab-pull-input"
          aria-label="Model to pull: a catalog name, hf:OWNER/REPO/FILE.gguf, a URL or a path on the server"
          placeholder="llama-2-7b-chat:q4_k_m, hf:OWNER/REPO/FILE.gguf, https://…/model.gguf or /path/model.gguf"
          value={ref}
          onChange={e => setRef(e.currentTarget.value)}
        />
        <button
          type="submit"
          className="llamalab-Manager-button llamalab-mod-accept"
          data-testid="llamalab-pull-button"
          disabled={state.busy.has('pull') || !ref.trim()}
        >
          Pull
        </button>
      </form>
      {catalog.length > 0 && (
        <table className="llamalab-Manager-table">
          <thead>
            <tr>
              <th scope="col">Catalog</th>
              <th scope="col">Parameters</th>
              <th scope="col">Licence</th>
              <th scope="col">Quantization</th>
              <th scope="col">
                <span className="llamalab-visually-hidden">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody>
            {catalog.map(info => (
              <CatalogRow key={info.name} info={info} model={model} state={state} />
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function ConvertSection({ model, state }: { model: ManagerModel; state: ManagerState }): JSX.Element {
  const [source, setSource] = React.useState('');
  const [quant, setQuant] = React.useState<string>(CONVERT_DEFAULT_QUANT);
  const [name, setName] = React.useState('');
  return (
    <section className="llamalab-Manager-section" aria-labelledby="llamalab-manager-convert">
      <h2 id="llamalab-manager-convert">Convert a Meta checkpoint</h2>
      <p className="llamalab-Manager-note">
        A folder on the server holding Meta's download (consolidated.*.pth, params.json, tokenizer.model) or a Hugging Face model; it is
        converted to GGUF, quantized and added to your models.
      </p>
      <form
        className="llamalab-Manager-inline"
        onSubmit={e => {
          e.preventDefault();
          void model.convert({ source, quant, name });
        }}
      >
        <input
          className="llamalab-Manager-input llamalab-mod-wide"
          data-testid="llamalab-convert-source"
          aria-label="Checkpoint folder on the server"
          placeholder="/data/llama/llama-2-7b-chat"
          value={source}
          onChange={e => setSource(e.currentTarget.value)}
        />
        <QuantSelect
          value={quant}
          onChange={setQuant}
          choices={[...QUANT_CHOICES, NO_QUANT]}
          label="Quantization"
          testId="llamalab-convert-quant"
        />
        <input
          className="llamalab-Manager-input"
          data-testid="llamalab-convert-name"
          aria-label="Name in the store (optional)"
          placeholder="name (optional)"
          value={name}
          onChange={e => setName(e.currentTarget.value)}
        />
        <button
          type="submit"
          className="llamalab-Manager-button llamalab-mod-accept"
          data-testid="llamalab-convert-button"
          disabled={state.busy.has('convert') || !source.trim()}
        >
          Convert
        </button>
      </form>
    </section>
  );
}

/** The line under a job's bar: percent, amount in the job's unit, the server's message, where it was stored. */
function jobSummary(job: Job, fraction: number | null): string {
  const parts: string[] = [];
  if (fraction !== null && job.state === 'running') {
    parts.push(`${Math.round(fraction * 100)}%`);
  }
  const amount = formatAmount(job.done, job.total, job.unit);
  if (amount) {
    parts.push(amount);
  }
  if (job.message) {
    parts.push(job.message);
  }
  if (job.state === 'done' && job.stored_name) {
    parts.push(`stored as ${job.stored_name}`);
  }
  return parts.join(' · ');
}

function JobRow({ job, model, state }: { job: Job; model: ManagerModel; state: ManagerState }): JSX.Element {
  const fraction = jobFraction(job);
  const [open, setOpen] = React.useState(false);
  const label = `${job.kind} ${job.model}`;
  return (
    <li
      className={`llamalab-Manager-job llamalab-mod-${job.state}`}
      data-testid="llamalab-job"
      data-kind={job.kind}
      data-state={job.state}
      data-job-id={job.id}
    >
      <div className="llamalab-Manager-jobHead">
        <span className="llamalab-Manager-jobKind">{job.kind}</span>
        <span className="llamalab-Manager-jobModel">{job.model}</span>
        <span className="llamalab-Manager-jobState">{job.state === 'running' ? job.stage || 'running' : job.state}</span>
        {job.state === 'running' && (
          <button
            className="llamalab-Manager-button"
            data-testid="llamalab-job-cancel"
            aria-label={`Cancel the ${label}`}
            disabled={state.busy.has(`cancel:${job.id}`)}
            onClick={() => void model.cancelJob(job.id)}
          >
            Cancel
          </button>
        )}
      </div>
      {fraction === null ? (
        <progress aria-label={`Progress of the ${label}`} />
      ) : (
        <progress aria-label={`Progress of the ${label}`} max={1} value={fraction} />
      )}
      <div className="llamalab-Manager-note">
        {jobSummary(job, fraction)}
      </div>
      {job.error && (
        <div className="llamalab-Manager-jobError" role="status">
          {job.error.message}
          {job.error.detail !== null && job.error.detail !== undefined && (
            <>
              {' '}
              <button className="llamalab-Manager-link" aria-expanded={open} onClick={() => setOpen(!open)}>
                {open ? 'Hide details' : 'Details'}
              </button>
              {open && (
                <pre className="llamalab-Manager-detail">
                  {typeof job.error.detail === 'string' ? job.error.detail : JSON.stringify(job.error.detail, null, 2)}
                </pre>
              )}
            </>
          )}
        </div>
      )}
    </li>
  );
}

function JobsSection({ model, state }: { model: ManagerModel; state: ManagerState }): JSX.Element {
  return (
    <section className="llamalab-Manager-section" aria-labelledby="llamalab-manager-jobs">
      <h2 id="llamalab-manager-jobs">Jobs</h2>
      {state.jobs.length === 0 ? (
        <p className="llamalab-Manager-empty">No pulls, conversions or quantizations yet.</p>
      ) : (
        <ul className="llamalab-Manager-jobs" aria-live="polite">
          {state.jobs.map(job => (
            <JobRow key={job.id} job={job} model={model} state={state} />
          ))}
        </ul>
      )}
    </section>
  );
}

function HardwareSection({ state }: { state: ManagerState }): JSX.Element {
  const hw = state.hardware;
  const [open, setOpen] = React.useState(false);
  return (
    <section className="llamalab-Manager-section" aria-labelledby="llamalab-manager-hardware" data-testid="llamalab-hardware">
      <h2 id="llamalab-manager-hardware">Hardware</h2>
      {!hw ? (
        <p className="llamalab-Manager-empty">Reading the hardware report…</p>
      ) : (
        <>
          {hw.gpus.length === 0 ? (
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
          {hw.models.length > 0 && (
            <table className="llamalab-Manager-table">
              <thead>
                <tr>
                  <th scope="col">Model</th>
                  <th scope="col">Quantization</th>
                  <th scope="col">Needs</th>
                  <th scope="col">On a context of {hw.n_ctx.toLocaleString()} tokens</th>
                </tr>
              </thead>
              <tbody>
                {hw.models.map(fit => (
                  <tr key={fit.name} data-testid="llamalab-fit" data-model={fit.name} data-fits={fit.fits_fully ? 'true' : 'false'}>
                    <th scope="row">{fit.name}</th>
                    <td>{fit.quantization}</td>
                    <td>{formatBytes(fit.needed_bytes)}</td>
                    <td>{fitLabel(fit, hw.gpus.length > 0)}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          )}
          {hw.notices.map(notice => (
            <p key={notice} className="llamalab-Manager-note">
              {notice}
            </p>
          ))}
          <button className="llamalab-Manager-link" aria-expanded={open} onClick={() => setOpen(!open)}>
            {open ? 'Hide the full report' : 'Show the full report'}
          </button>
          {open && <pre className="llamalab-Manager-detail">{hw.text}</pre>}
        </>
      )}
    </section>
  );
}

export function ManagerView({ model }: { model: ManagerModel }): JSX.Element {
  const state = useManagerState(model);
  return (
    <div className="llamalab-Manager-body">
      <header className="llamalab-Manager-header">
        <h1>llamalab models</h1>
        <button className="llamalab-Manager-button" aria-label="Refresh" disabled={state.loading} onClick={() => void model.refresh()}>
          {state.loading ? 'Refreshing…' : 'Refresh'}
        </button>
      </header>
      {state.error && <ErrorLine error={state.error} onDismiss={() => model.dismissError()} />}
      <LicenseGateBox model={model} state={state} />
      <StoredSection model={model} state={state} />
      <JobsSection model={model} state={state} />
      <PullSection model={model} state={state} />
      <ConvertSection model={model} state={state} />
      <HardwareSection state={state} />
    </div>
  );
}

/** The main-area widget. */
export class ModelManagerWidget extends ReactWidget {
  constructor(readonly model: ManagerModel) {
    super();
    this.id = MANAGER_ID;
    this.addClass('llamalab-Manager');
    this.title.label = 'llamalab Models';
    this.title.caption = 'llamalab: models, pulls, conversion and hardware';
    this.title.closable = true;
  }

  protected render(): JSX.Element {
    return <ManagerView model={this.model} />;
  }

  /** Coming back to the tab re-reads the store: a chat or a kernel may have switched models. */
  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (this._shownOnce) {
      void this.model.refreshModels();
    }
    this._shownOnce = true;
  }

  private _shownOnce = false;

  dispose(): void {
    if (!this.isDisposed) {
      this.model.dispose();
    }
    super.dispose();
  }
}
