/**
 * The model manager's state and actions, without JupyterLab or React: what the store, the
 * catalog, the team server (with `remote_url`), the jobs and the hardware look like now, the
 * error to show, the licence to accept.
 * The REST and SSE calls come in through `ManagerApi`, so jest drives this module with fakes;
 * the React view (`widget.tsx`) only renders snapshots and calls the actions.
 */
import type { HardwareReply, Job, JobList, JobProgressMessage, ModelFitInfo, ModelsReply, RemoteServerInfo } from '../wire';

/** The calls the manager makes (api.ts's requestAPI/sendJSON/readEvents in the plugin). */
export interface ManagerApi {
  get<T>(path: string): Promise<T>;
  post<T>(path: string, body: unknown): Promise<T>;
  del<T>(path: string): Promise<T>;
  events<T>(path: string, signal: AbortSignal): AsyncIterable<T>;
}

/** An error in one line, with the rest on demand. */
export interface ShownError {
  message: string;
  detail: string | null;
}

/** A licence the user must accept before a pull or conversion goes on. */
export interface LicenseGate {
  /** what is being pulled or converted */
  subject: string;
  license: string;
  licenseUrl: string | null;
  /** the server's summary of the licence's terms, when it sends one */
  notice: string | null;
  /** runs the same request again with accept_license */
  accept: () => Promise<void>;
}

export interface ManagerState {
  models: ModelsReply | null;
  hardware: HardwareReply | null;
  jobs: Job[];
  error: ShownError | null;
  gate: LicenseGate | null;
  /** what is running right now, e.g. "load", "pull", "unload" (buttons disable themselves) */
  busy: ReadonlySet<string>;
  loading: boolean;
}

/** Quantizations offered when converting or quantizing (F16 keeps the converter's output). */
export const QUANT_CHOICES = ['Q4_K_M', 'Q5_K_M', 'Q6_K', 'Q8_0', 'Q4_0', 'Q4_1', 'Q5_0', 'Q3_K_M', 'Q2_K'] as const;
export const CONVERT_DEFAULT_QUANT = 'Q4_K_M';
export const NO_QUANT = 'F16';

/** `1536` -> `1.5 KiB`. */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined || !Number.isFinite(bytes) || bytes < 0) {
    return '—';
  }
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(value >= 100 ? 0 : 1)} ${units[unit]}`;
}

/**
 * A job's `done` of `total` in its unit: bytes as `1.5 KiB of 3.0 MiB`, other units as
 * `12 of 291 tensors` (`it`, the plain steps of a progress bar, has no word: `1 of 1`);
 * '' when there is nothing to count yet.
 */
export function formatAmount(done: number, total: number | null | undefined, unit: string | null | undefined): string {
  const u = unit || 'B';
  if (u === 'B') {
    return total ? `${formatBytes(done)} of ${formatBytes(total)}` : done ? formatBytes(done) : '';
  }
  const word = u === 'it' ? '' : ` ${u}`;
  return total ? `${done} of ${total}${word}` : done ? `${done}${word}` : '';
}

/** What a model's fit on the GPU looks like in words. */
export function fitLabel(fit: ModelFitInfo, hasGpu = true): string {
  if (fit.problem) {
    return fit.problem;
  }
  if (!hasGpu) {
    return 'runs on the CPU';
  }
  if (fit.fits_fully) {
    return 'fits fully on the GPU';
  }
  if (fit.n_gpu_layers <= 0) {
    return 'runs on the CPU (no layers fit the GPU)';
  }
  return `${fit.n_gpu_layers} of ${fit.total_layers} layers on the GPU`;
}

/** The team server's kind in words ('' when unknown). */
export function remoteKindLabel(kind: string | null | undefined): string {
  switch (kind) {
    case 'llamalab serve':
      return 'llamalab serve';
    case 'llama-server':
      return "llama.cpp's llama-server";
    case 'openai-compatible':
      return 'an OpenAI-compatible server';
    default:
      return kind ? kind : '';
  }
}

/**
 * The team server when this Jupyter server fronts one (`remote_url`), else null. Then it loads no
 * model itself: its own store, pulls and conversions have no use, and the view hides them.
 */
export function teamServer(models: ModelsReply | null): RemoteServerInfo | null {
  return models?.remote ?? null;
}

/** The line under the team server's heading: what it serves, or what went wrong listing it. */
export function teamServerSummary(remote: RemoteServerInfo): string {
  if (remote.error) {
    return 'Its models could not be listed.';
  }
  const inUse = remote.models.find(m => m.in_use);
  if (remote.models.length === 0) {
    return 'It lists no model: ask its administrator to load one.';
  }
  return inUse ? `In use: ${inUse.id}.` : 'Choose a model to use.';
}

/** Whether llama.cpp's quantizer can take a stored model (it needs F32, F16 or BF16 weights). */
export function canQuantize(quantization: string): boolean {
  return ['F32', 'F16', 'BF16'].includes(quantization.toUpperCase());
}

/** A job's progress in [0, 1], or null when unknown (an indeterminate bar while it runs). */
export function jobFraction(job: Job): number | null {
  if (job.state === 'done') {
    return 1;
  }
  if (job.fraction !== null && job.fraction !== undefined && Number.isFinite(job.fraction)) {
    return Math.min(1, Math.max(0, job.fraction));
  }
  if (job.total && job.total > 0) {
    return Math.min(1, Math.max(0, job.done / job.total));
  }
  return job.state === 'running' ? null : 0;
}

/** The job list with `job` added or replaced, newest first. */
export function mergeJob(jobs: readonly Job[], job: Job): Job[] {
  const known = jobs.find(j => j.id === job.id);
  if (known && known.state !== 'running' && job.state === 'running') {
    // A reply sent while the job ran (the DELETE of a cancel, a poll) that arrives after the
    // event saying how it ended: the job has ended all the same.
    return [...jobs];
  }
  const others = jobs.filter(j => j.id !== job.id);
  return [job, ...others].sort((a, b) => b.started_at - a.started_at);
}

/** The error to show for whatever a call threw (LlamalabApiError carries message and detail). */
export function toShownError(err: unknown, doing?: string): ShownError {
  const e = (err ?? {}) as { message?: unknown; detail?: unknown };
  const line = typeof e.message === 'string' && e.message ? e.message : String(err);
  const message = doing ? `${doing}: ${line}` : line;
  let detail: string | null = null;
  if (e.detail !== null && e.detail !== undefined && e.detail !== '') {
    detail = typeof e.detail === 'string' ? e.detail : JSON.stringify(e.detail, null, 2);
  }
  return { message, detail };
}

/** The licence named by a `license_required` error, or null for any other error. */
export function licenseOf(err: unknown): { license: string; licenseUrl: string | null; notice: string | null } | null {
  const e = (err ?? {}) as { code?: unknown; detail?: unknown };
  if (e.code !== 'license_required') {
    return null;
  }
  const detail = (e.detail ?? {}) as { license?: unknown; license_url?: unknown; notice?: unknown };
  return {
    license: typeof detail.license === 'string' ? detail.license : 'its licence',
    licenseUrl: typeof detail.license_url === 'string' ? detail.license_url : null,
    notice: typeof detail.notice === 'string' && detail.notice.trim() ? detail.notice : null
  };
}

/** The catalog reference for a pull: `name:quant` (the default quantization needs none). */
export function pullReference(name: string, quant: string | null, defaultQuant?: string): string {
  if (!quant || (defaultQuant && quant.toLowerCase() === defaultQuant.toLowerCase())) {
    return name;
  }
  return `${name}:${quant.toLowerCase()}`;
}

export interface ConvertForm {
  source: string;
  quant: string;
  name: string;
}

/** The ConvertRequest body for the form, or a one-line reason it cannot be sent. */
export function convertBody(form: ConvertForm, acceptLicense = false): { source: string; quant: string | null; name: string | null; accept_license: boolean } | string {
  const source = form.source.trim();
  if (!source) {
    return 'Give the folder on the server that holds the checkpoint (consolidated.*.pth, params.json, tokenizer.model).';
  }
  const name = form.name.trim();
  if (name && !/^[A-Za-z0-9][A-Za-z0-9._:-]*$/.test(name)) {
    return 'A model name may hold letters, digits, ".", "_", ":" and "-".';
  }
  const quant = !form.quant || form.quant === NO_QUANT ? null : form.quant;
  return { source, quant, name: name || null, accept_license: acceptLicense };
}

type Listener = (state: ManagerState) => void;

/**
 * The manager's state and its actions. Views subscribe and get a new snapshot after each
 * change; every action reports failures through `state.error` (or `state.gate` for a licence)
 * rather than throwing.
 */
export class ManagerModel {
  constructor(
    private readonly api: ManagerApi,
    private readonly options: { pollMs?: number } = {}
  ) {}

  get state(): ManagerState {
    return this._state;
  }

  subscribe(listener: Listener): () => void {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  /** Reads the store, catalog, jobs and hardware; follows the jobs still running. */
  async refresh(): Promise<void> {
    this._set({ loading: true });
    const [models, jobs, hardware] = await Promise.allSettled([
      this.api.get<ModelsReply>('models'),
      this.api.get<JobList>('jobs'),
      this.api.get<HardwareReply>('hardware')
    ]);
    const update: Partial<ManagerState> = { loading: false };
    if (models.status === 'fulfilled') {
      update.models = models.value;
    }
    if (hardware.status === 'fulfilled') {
      update.hardware = hardware.value;
    }
    if (jobs.status === 'fulfilled') {
      update.jobs = [...jobs.value.jobs].sort((a, b) => b.started_at - a.started_at);
    }
    const what = ['the model store', 'the job list', 'the hardware report'];
    const failed = [models, jobs, hardware].findIndex(r => r.status === 'rejected');
    if (failed >= 0) {
      update.error = toShownError(([models, jobs, hardware][failed] as PromiseRejectedResult).reason, `Could not read ${what[failed]}`);
    }
    this._set(update);
    for (const job of this._state.jobs) {
      if (job.state === 'running') {
        this.watch(job);
      }
    }
  }

  /** Re-reads the store and catalog only (after a load, an unload or a finished job). */
  async refreshModels(): Promise<void> {
    try {
      this._set({ models: await this.api.get<ModelsReply>('models') });
    } catch (err) {
      this._fail(err, 'Could not read the model store');
    }
  }

  async refreshHardware(): Promise<void> {
    try {
      this._set({ hardware: await this.api.get<HardwareReply>('hardware') });
    } catch (err) {
      this._fail(err, 'Could not read the hardware report');
    }
  }

  load(model: string): Promise<void> {
    return this._action('load', `Could not load ${model}`, async () => {
      await this.api.post('models/load', { model });
      await this.refreshModels();
    });
  }

  /** Makes a model the team server lists the one chats and completions use. */
  useRemote(id: string): Promise<void> {
    return this._action('load', `Could not use ${id}`, async () => {
      await this.api.post('models/load', { model: id });
      await this.refreshModels();
    });
  }

  unload(): Promise<void> {
    return this._action('unload', 'Could not unload the model', async () => {
      await this.api.post('models/unload', {});
      await this.refreshModels();
    });
  }

  /** Pulls a model reference (catalog name[:quant], hf:..., a URL or a path). */
  pull(model: string, acceptLicense = false): Promise<void> {
    const ref = model.trim();
    if (!ref) {
      this._set({ error: { message: 'Name a model to pull: a catalog name, hf:OWNER/REPO/FILE.gguf, a URL or a path.', detail: null } });
      return Promise.resolve();
    }
    return this._startJob('pull', ref, () => this.api.post<Job>('pulls', { model: ref, accept_license: acceptLicense, force: false }), () =>
      this.pull(ref, true)
    );
  }

  convert(form: ConvertForm, acceptLicense = false): Promise<void> {
    const body = convertBody(form, acceptLicense);
    if (typeof body === 'string') {
      this._set({ error: { message: body, detail: null } });
      return Promise.resolve();
    }
    return this._startJob('convert', body.source, () => this.api.post<Job>('convert', body), () => this.convert(form, true));
  }

  quantize(model: string, quant: string, name?: string): Promise<void> {
    const body = { model, quant, name: name?.trim() || null };
    return this._startJob('quantize', model, () => this.api.post<Job>('quantize', body), null);
  }

  cancelJob(id: string): Promise<void> {
    return this._action(`cancel:${id}`, 'Could not cancel the job', async () => {
      const job = await this.api.del<Job | null>(`jobs/${encodeURIComponent(id)}`);
      if (job && job.type === 'job') {
        this._updateJob(job);
      }
    });
  }

  dismissError(): void {
    this._set({ error: null });
  }

  dismissGate(): void {
    this._set({ gate: null });
  }

  /** Follows a running job's progress events; falls back to polling the job list. */
  watch(job: Job): void {
    if (this._watchers.has(job.id) || this._disposed) {
      return;
    }
    const controller = new AbortController();
    this._watchers.set(job.id, controller);
    void (async () => {
      try {
        for await (const event of this.api.events<JobProgressMessage>(`jobs/${encodeURIComponent(job.id)}/events`, controller.signal)) {
          if (event && event.type === 'job_progress') {
            this._updateJob(event.job);
            if (event.job.state !== 'running') {
              break;
            }
          }
        }
      } catch (err) {
        if ((err as Error)?.name !== 'AbortError') {
          this._schedulePoll();
        }
      } finally {
        this._watchers.delete(job.id);
      }
      const latest = this._state.jobs.find(j => j.id === job.id);
      if (latest && latest.state === 'running' && !controller.signal.aborted) {
        this._schedulePoll();
      }
    })();
  }

  dispose(): void {
    this._disposed = true;
    this._watchers.forEach(c => c.abort());
    this._watchers.clear();
    if (this._pollTimer !== null) {
      clearTimeout(this._pollTimer);
      this._pollTimer = null;
    }
    this._listeners.clear();
  }

  private async _startJob(
    kind: string,
    subject: string,
    start: () => Promise<Job>,
    retryAccepting: (() => Promise<void>) | null
  ): Promise<void> {
    const noun = { pull: 'pull', convert: 'conversion', quantize: 'quantization' }[kind] ?? kind;
    await this._action(kind, `Could not start the ${noun} of ${subject}`, async () => {
      try {
        const job = await start();
        this._set({ gate: null });
        this._updateJob(job);
        if (job.state === 'running') {
          this.watch(job);
        }
      } catch (err) {
        const license = licenseOf(err);
        if (license && retryAccepting) {
          this._set({
            error: null,
            gate: { subject, ...license, accept: retryAccepting }
          });
          return;
        }
        throw err;
      }
    });
  }

  private async _action(key: string, doing: string, run: () => Promise<void>): Promise<void> {
    this._set({ busy: new Set([...this._state.busy, key]), error: null });
    try {
      await run();
    } catch (err) {
      this._fail(err, doing);
    } finally {
      const busy = new Set(this._state.busy);
      busy.delete(key);
      this._set({ busy });
    }
  }

  private _updateJob(job: Job): void {
    const before = this._state.jobs.find(j => j.id === job.id);
    this._set({ jobs: mergeJob(this._state.jobs, job) });
    if (job.state === 'done' && (!before || before.state !== 'done')) {
      void this.refreshModels();
      void this.refreshHardware();
    }
  }

  private _schedulePoll(): void {
    if (this._pollTimer !== null || this._disposed) {
      return;
    }
    this._pollTimer = setTimeout(async () => {
      this._pollTimer = null;
      try {
        const list = await this.api.get<JobList>('jobs');
        list.jobs.forEach(job => this._updateJob(job));
      } catch {
        // the server is away: try again later
      }
      if (this._state.jobs.some(j => j.state === 'running')) {
        this._schedulePoll();
      }
    }, this.options.pollMs ?? 1000);
  }

  private _fail(err: unknown, doing: string): void {
    this._set({ error: toShownError(err, doing) });
  }

  private _set(update: Partial<ManagerState>): void {
    if (this._disposed) {
      return;
    }
    this._state = { ...this._state, ...update };
    this._listeners.forEach(listener => listener(this._state));
  }

  private _state: ManagerState = { models: null, hardware: null, jobs: [], error: null, gate: null, busy: new Set(), loading: false };
  private readonly _listeners = new Set<Listener>();
  private readonly _watchers = new Map<string, AbortController>();
  private _pollTimer: ReturnType<typeof setTimeout> | null = null;
  private _disposed = false;
}
