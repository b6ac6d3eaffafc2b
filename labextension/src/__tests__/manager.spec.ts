import {
  canQuantize,
  convertBody,
  fitLabel,
  formatAmount,
  formatBytes,
  jobFraction,
  licenseOf,
  ManagerApi,
  ManagerModel,
  mergeJob,
  pullReference,
  remoteKindLabel,
  teamServer,
  teamServerSummary,
  toShownError
} from '../manager/logic';
import type { HardwareReply, Job, JobProgressMessage, ModelFitInfo, ModelsReply, RemoteServerInfo } from '../wire';

function job(id: string, fields: Partial<Job> = {}): Job {
  return {
    type: 'job',
    id,
    kind: 'pull',
    model: 'm',
    state: 'running',
    stage: 'download',
    done: 0,
    total: null,
    unit: 'B',
    fraction: null,
    message: '',
    error: null,
    stored_name: null,
    started_at: 1,
    finished_at: null,
    ...fields
  };
}

const MODELS: ModelsReply = { type: 'models', default_model: 'a', loaded: null, stored: [], catalog: [], remote: null };
const TEAM: RemoteServerInfo = {
  url: 'http://team.example:8080',
  kind: 'llama-server',
  models: [
    { id: 'llama-2-7b-chat', in_use: true, allowed: true },
    { id: 'codellama-7b', in_use: false, allowed: true }
  ],
  error: null
};
const HARDWARE = { type: 'hardware', gpus: [], models: [], notices: [], text: '' } as unknown as HardwareReply;

class ApiError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly detail: unknown = null
  ) {
    super(message);
  }
}

/** A scriptable event stream: the test pushes events and ends it. */
class EventFeed<T> implements AsyncIterable<T> {
  push(event: T): void {
    this._queue.push(event);
    this._wake?.();
  }
  end(error?: Error): void {
    this._ended = error ?? true;
    this._wake?.();
  }
  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this._queue.length) {
        yield this._queue.shift()!;
        continue;
      }
      if (this._ended) {
        if (this._ended instanceof Error) {
          throw this._ended;
        }
        return;
      }
      await new Promise<void>(resolve => (this._wake = resolve));
      this._wake = null;
    }
  }
  private _queue: T[] = [];
  private _ended: true | Error | false = false;
  private _wake: (() => void) | null = null;
}

function fakeApi(routes: { [key: string]: (body?: any) => unknown }) {
  const calls: string[] = [];
  const feeds = new Map<string, EventFeed<JobProgressMessage>>();
  const answer = async (key: string, body?: unknown) => {
    calls.push(body === undefined ? key : `${key} ${JSON.stringify(body)}`);
    const route = routes[key];
    if (!route) {
      throw new ApiError(`no route ${key}`, 'not_found');
    }
    return route(body);
  };
  const api: ManagerApi = {
    get: <T>(path: string) => answer(`GET ${path}`) as Promise<T>,
    post: <T>(path: string, body: unknown) => answer(`POST ${path}`, body) as Promise<T>,
    del: <T>(path: string) => answer(`DELETE ${path}`) as Promise<T>,
    events: <T>(path: string, signal: AbortSignal) => {
      calls.push(`EVENTS ${path}`);
      const feed = new EventFeed<JobProgressMessage>();
      feeds.set(path, feed);
      signal.addEventListener('abort', () => feed.end(Object.assign(new Error('aborted'), { name: 'AbortError' })));
      return feed as unknown as AsyncIterable<T>;
    }
  };
  return { api, calls, feeds };
}

const tick = () => new Promise(resolve => setTimeout(resolve, 0));

describe('formatting', () => {
  it('formats bytes', () => {
    expect(formatBytes(512)).toBe('512 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(98362432)).toBe('93.8 MiB');
    expect(formatBytes(7 * 1024 ** 3)).toBe('7.0 GiB');
    expect(formatBytes(null)).toBe('—');
  });

  it("formats a job's amount in its unit", () => {
    expect(formatAmount(1536, 3 * 1024 ** 2, 'B')).toBe('1.5 KiB of 3.0 MiB');
    expect(formatAmount(512, null, 'B')).toBe('512 B');
    expect(formatAmount(0, null, 'B')).toBe('');
    expect(formatAmount(12, 291, 'tensors')).toBe('12 of 291 tensors');
    expect(formatAmount(7, null, 'tensors')).toBe('7 tensors');
    expect(formatAmount(1, 1, 'it')).toBe('1 of 1'); // llama.cpp's quantizer: one step, not "1 B of 1 B"
    expect(formatAmount(0, null, 'it')).toBe('');
    expect(formatAmount(2048, 4096, undefined)).toBe('2.0 KiB of 4.0 KiB'); // an older server: bytes
  });

  it('says how a model fits the GPU', () => {
    const fit = (f: Partial<ModelFitInfo>): ModelFitInfo => ({
      name: 'x',
      quantization: 'Q4_K_M',
      file_bytes: 1,
      needed_bytes: 1,
      n_gpu_layers: 0,
      total_layers: 32,
      fits_fully: false,
      problem: null,
      ...f
    });
    expect(fitLabel(fit({ fits_fully: true, n_gpu_layers: 32 }))).toBe('fits fully on the GPU');
    expect(fitLabel(fit({ n_gpu_layers: 20 }))).toBe('20 of 32 layers on the GPU');
    expect(fitLabel(fit({}))).toMatch(/CPU/);
    expect(fitLabel(fit({ problem: 'no GPU' }))).toBe('no GPU');
    expect(fitLabel(fit({}), false)).toBe('runs on the CPU');
  });

  it('computes a job fraction from fraction, done/total, or not at all', () => {
    expect(jobFraction(job('a', { fraction: 0.25 }))).toBe(0.25);
    expect(jobFraction(job('a', { done: 5, total: 10 }))).toBe(0.5);
    expect(jobFraction(job('a'))).toBeNull();
    expect(jobFraction(job('a', { state: 'done' }))).toBe(1);
    expect(jobFraction(job('a', { fraction: 7 }))).toBe(1);
    expect(jobFraction(job('a', { state: 'failed' }))).toBe(0);
  });

  it('merges jobs newest first', () => {
    const jobs = mergeJob([job('a', { started_at: 1 }), job('b', { started_at: 2 })], job('a', { started_at: 1, state: 'done' }));
    expect(jobs.map(j => `${j.id}:${j.state}`)).toEqual(['b:running', 'a:done']);
    expect(mergeJob(jobs, job('c', { started_at: 3 }))[0].id).toBe('c');
  });

  it('keeps a finished job finished when a reply sent while it ran comes last', () => {
    // A cancel: its progress event says "cancelled" before the DELETE's reply ("cancelling", still running) arrives.
    const cancelled = mergeJob([job('a', { message: 'x' })], job('a', { state: 'cancelled', message: 'cancelled' }));
    const jobs = mergeJob(cancelled, job('a', { state: 'running', message: 'cancelling' }));
    expect(jobs.map(j => `${j.id}:${j.state}:${j.message}`)).toEqual(['a:cancelled:cancelled']);
  });

  it('offers quantization only from float weights', () => {
    expect(canQuantize('F16')).toBe(true);
    expect(canQuantize('bf16')).toBe(true);
    expect(canQuantize('Q4_1')).toBe(false);
  });

  it('builds pull references and convert bodies', () => {
    expect(pullReference('llama-2-7b', 'q4_k_m', 'q4_k_m')).toBe('llama-2-7b');
    expect(pullReference('llama-2-7b', 'Q8_0', 'q4_k_m')).toBe('llama-2-7b:q8_0');
    expect(pullReference('x', null)).toBe('x');
    expect(convertBody({ source: '  /data/llama-2-7b ', quant: 'Q4_K_M', name: '' })).toEqual({
      source: '/data/llama-2-7b',
      quant: 'Q4_K_M',
      name: null,
      accept_license: false
    });
    expect(convertBody({ source: '/d', quant: 'F16', name: 'mine' }, true)).toEqual({ source: '/d', quant: null, name: 'mine', accept_license: true });
    expect(typeof convertBody({ source: ' ', quant: 'Q4_K_M', name: '' })).toBe('string');
    expect(typeof convertBody({ source: '/d', quant: 'Q4_K_M', name: 'bad name/' })).toBe('string');
  });

  it('reads errors and licences', () => {
    expect(toShownError(new ApiError('Nope.', 'busy', { why: 1 }), 'Could not load x')).toEqual({
      message: 'Could not load x: Nope.',
      detail: '{\n  "why": 1\n}'
    });
    expect(toShownError(new ApiError('Nope.', 'busy')).detail).toBeNull();
    expect(licenseOf(new ApiError('accept', 'license_required', { license: 'llama2', license_url: 'https://example.org/l' }))).toEqual({
      license: 'llama2',
      licenseUrl: 'https://example.org/l',
      notice: null
    });
    expect(licenseOf(new ApiError('accept', 'license_required', { license: 'llama2', notice: 'Terms.' }))?.notice).toBe('Terms.');
    expect(licenseOf(new ApiError('x', 'busy'))).toBeNull();
  });
});

describe('ManagerModel', () => {
  it('refreshes the store, jobs and hardware, and follows running jobs', async () => {
    const { api, calls } = fakeApi({
      'GET models': () => MODELS,
      'GET jobs': () => ({ type: 'jobs', jobs: [job('old', { state: 'done', started_at: 1 }), job('run', { started_at: 2 })] }),
      'GET hardware': () => HARDWARE
    });
    const model = new ManagerModel(api);
    const snapshots: number[] = [];
    model.subscribe(s => snapshots.push(s.jobs.length));
    await model.refresh();
    expect(model.state.models).toEqual(MODELS);
    expect(model.state.hardware).toEqual(HARDWARE);
    expect(model.state.jobs.map(j => j.id)).toEqual(['run', 'old']);
    expect(model.state.error).toBeNull();
    expect(calls).toContain('EVENTS jobs/run/events');
    expect(calls).not.toContain('EVENTS jobs/old/events');
    expect(snapshots.length).toBeGreaterThan(0);
    model.dispose();
  });

  it('keeps what it could read and names what failed', async () => {
    const { api } = fakeApi({ 'GET models': () => MODELS, 'GET hardware': () => HARDWARE });
    const model = new ManagerModel(api);
    await model.refresh();
    expect(model.state.models).toEqual(MODELS);
    expect(model.state.error?.message).toBe('Could not read the job list: no route GET jobs');
  });

  it('pulls, shows progress from the events, and re-reads the store when done', async () => {
    const { api, calls, feeds } = fakeApi({
      'POST pulls': () => job('p1', { model: 'llama-2-7b:q4_k_m' }),
      'GET models': () => MODELS,
      'GET hardware': () => HARDWARE
    });
    const model = new ManagerModel(api);
    await model.pull(' llama-2-7b ');
    expect(calls[0]).toBe('POST pulls {"model":"llama-2-7b","accept_license":false,"force":false}');
    expect(model.state.jobs).toHaveLength(1);
    const feed = feeds.get('jobs/p1/events')!;
    feed.push({ type: 'job_progress', job: job('p1', { done: 50, total: 100, fraction: 0.5 }) });
    await tick();
    expect(jobFraction(model.state.jobs[0])).toBe(0.5);
    feed.push({ type: 'job_progress', job: job('p1', { state: 'done', stored_name: 'llama-2-7b:q4_k_m' }) });
    await tick();
    await tick();
    expect(model.state.jobs[0].state).toBe('done');
    expect(calls).toContain('GET models');
    expect(calls).toContain('GET hardware');
    expect(model.state.busy.size).toBe(0);
  });

  it('asks for the licence on license_required and retries accepting it', async () => {
    let attempts = 0;
    const { api, calls } = fakeApi({
      'POST pulls': (body: { accept_license: boolean }) => {
        attempts += 1;
        if (!body.accept_license) {
          throw new ApiError('Accept the licence first.', 'license_required', { license: 'llama2', license_url: 'https://example.org/l' });
        }
        return job('p2', { state: 'done' });
      },
      'GET models': () => MODELS,
      'GET hardware': () => HARDWARE
    });
    const model = new ManagerModel(api);
    await model.pull('llama-2-7b-chat');
    expect(model.state.error).toBeNull();
    expect(model.state.gate).toMatchObject({ subject: 'llama-2-7b-chat', license: 'llama2', licenseUrl: 'https://example.org/l' });
    await model.state.gate!.accept();
    expect(attempts).toBe(2);
    expect(calls[1]).toBe('POST pulls {"model":"llama-2-7b-chat","accept_license":true,"force":false}');
    expect(model.state.gate).toBeNull();
    expect(model.state.jobs[0].id).toBe('p2');
  });

  it('gates conversions too, and validates the form before sending', async () => {
    const { api, calls } = fakeApi({
      'POST convert': (body: { accept_license: boolean }) => {
        if (!body.accept_license) {
          throw new ApiError('licence', 'license_required', { license: 'llama2', license_url: null });
        }
        return job('c1', { kind: 'convert', state: 'running' });
      }
    });
    const model = new ManagerModel(api);
    await model.convert({ source: '', quant: 'Q4_K_M', name: '' });
    expect(calls).toHaveLength(0);
    expect(model.state.error?.message).toMatch(/folder/);
    await model.convert({ source: '/data/llama-2-7b', quant: 'Q4_K_M', name: '' });
    expect(model.state.gate?.licenseUrl).toBeNull();
    await model.state.gate!.accept();
    expect(calls).toContain('POST convert {"source":"/data/llama-2-7b","quant":"Q4_K_M","name":null,"accept_license":true}');
    expect(model.state.jobs[0].kind).toBe('convert');
    model.dispose();
  });

  it('shows other errors in one line with details, and the dismiss clears them', async () => {
    const { api } = fakeApi({
      'POST quantize': () => {
        throw new ApiError('No such model.', 'model_not_found', 'traceback…');
      }
    });
    const model = new ManagerModel(api);
    await model.quantize('x', 'Q4_K_M');
    expect(model.state.error).toEqual({ message: 'Could not start the quantization of x: No such model.', detail: 'traceback…' });
    expect(model.state.gate).toBeNull();
    model.dismissError();
    expect(model.state.error).toBeNull();
  });

  it('loads, unloads and cancels jobs', async () => {
    const { api, calls } = fakeApi({
      'POST models/load': () => ({}),
      'POST models/unload': () => ({ type: 'unloaded', model: 'a' }),
      'GET models': () => MODELS,
      'DELETE jobs/j1': () => job('j1', { state: 'cancelled' })
    });
    const model = new ManagerModel(api);
    await model.load('a');
    await model.unload();
    await model.cancelJob('j1');
    expect(calls).toEqual(['POST models/load {"model":"a"}', 'GET models', 'POST models/unload {}', 'GET models', 'DELETE jobs/j1']);
    expect(model.state.jobs[0].state).toBe('cancelled');
  });

  it('falls back to polling the job list when the event stream fails', async () => {
    let polls = 0;
    const { api, feeds } = fakeApi({
      'POST pulls': () => job('p3'),
      'GET jobs': () => {
        polls += 1;
        return { type: 'jobs', jobs: [job('p3', { state: polls > 1 ? 'failed' : 'running' })] };
      },
      'GET models': () => MODELS,
      'GET hardware': () => HARDWARE
    });
    const model = new ManagerModel(api, { pollMs: 5 });
    await model.pull('x');
    feeds.get('jobs/p3/events')!.end(new Error('network'));
    await new Promise(resolve => setTimeout(resolve, 60));
    expect(polls).toBe(2);
    expect(model.state.jobs[0].state).toBe('failed');
    model.dispose();
  });
});

describe('the team server', () => {
  it('is there only when the reply has one', () => {
    expect(teamServer(null)).toBeNull();
    expect(teamServer(MODELS)).toBeNull();
    expect(teamServer({ ...MODELS, remote: TEAM })).toBe(TEAM);
  });

  it('names its kind and what it serves, or that it could not be listed', () => {
    expect(remoteKindLabel('llama-server')).toBe("llama.cpp's llama-server");
    expect(remoteKindLabel('llamalab serve')).toBe('llamalab serve');
    expect(remoteKindLabel('openai-compatible')).toBe('an OpenAI-compatible server');
    expect(remoteKindLabel(null)).toBe('');
    expect(teamServerSummary(TEAM)).toBe('In use: llama-2-7b-chat.');
    expect(teamServerSummary({ ...TEAM, models: TEAM.models.map(m => ({ ...m, in_use: false })) })).toBe('Choose a model to use.');
    expect(teamServerSummary({ ...TEAM, models: [] })).toMatch(/lists no model/);
    expect(teamServerSummary({ ...TEAM, models: [], kind: null, error: 'cannot reach the model server at http://x' })).toBe(
      'Its models could not be listed.'
    );
  });

  it('uses a model it lists through the load route, then shows the new one in use', async () => {
    const after = { ...TEAM, models: TEAM.models.map(m => ({ ...m, in_use: m.id === 'codellama-7b' })) };
    const { api, calls } = fakeApi({
      'POST models/load': () => ({ name: 'codellama-7b', backend: 'remote' }),
      'GET models': () => ({ ...MODELS, remote: after })
    });
    const model = new ManagerModel(api);
    const busy: boolean[] = [];
    model.subscribe(s => busy.push(s.busy.has('load')));
    await model.useRemote('codellama-7b');
    expect(calls).toEqual(['POST models/load {"model":"codellama-7b"}', 'GET models']);
    expect(model.state.models?.remote?.models.find(m => m.in_use)?.id).toBe('codellama-7b');
    expect(busy[0]).toBe(true);
    expect(model.state.busy.has('load')).toBe(false);
    expect(model.state.error).toBeNull();
  });

  it("shows the server's refusal of an id it does not list as the error line", async () => {
    const { api } = fakeApi({
      'POST models/load': () => {
        throw new ApiError("the model server at http://team.example:8080 does not list 'gone'; choose one it lists: a, b.", 'model_not_found');
      }
    });
    const model = new ManagerModel(api);
    await model.useRemote('gone');
    expect(model.state.error?.message).toBe(
      "Could not use gone: the model server at http://team.example:8080 does not list 'gone'; choose one it lists: a, b."
    );
    expect(model.state.busy.size).toBe(0);
  });
});
