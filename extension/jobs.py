"""Background jobs of the model manager: pulls, conversions and quantizations, as wire ``Job``s.

``Jobs.start_pull``, ``start_convert`` and ``start_quantize`` check the request at once (an
unknown model, a folder that holds no checkpoint, an unknown quantization type or a licence
not yet accepted raise, and the client gets the error as its reply) and return a ``Job``
whose state is ``running``. The core step (``llamalab.pull``, ``convert_and_register``,
``quantize_and_register``) then runs and reports ``Progress``; the job's fields
follow, and listeners (every chat WebSocket, and SSE streams on ``/llamalab/jobs/{id}/events``)
get a ``JobProgressMessage`` on the event loop, at most every ``interval`` seconds and always
when the stage changes or the job ends.

Conversions and quantizations need a lot of CPU and memory, so they run one at a time, in
the order they were asked for, each in a child process (``python -m llamalab.extension.job_worker``,
in its own process group) whose address space is capped (``RLIMIT_AS``, Linux) at what it maps
after start-up, plus the size of its input files (they may be mapped), plus ``job_memory_mb``
(default: half the machine's memory, at least 4096 MB). A file that makes the step ask for more
fails the job with "needed more than N MB"; the server is not touched. The child reports its
progress over a socket and waits for each reply, which carries the cancel flag; pulls run on
threads in the server. the others wait with ``stage == "queued"``. Pulls run
``max_pulls`` at a time (2 by default), the others queued the same way. ``cancel(id)`` sets the
job's ``threading.Event``: a queued job ends at once, a download within a fraction of a second,
other core steps within a chunk or a tensor (the quantizer's child process is terminated); the
step deletes its partial files, and the job ends ``cancelled``. Asking again for what a running
job already does returns that job. A conversion or quantization whose child has not ended
``cancel_grace`` seconds (0.5) after the cancel (it is stuck inside one allocation or one call)
is killed with its process group, and the server deletes the files the child wrote in the model
folders it announced.

What the server may do for its users is narrower than the library: ``allowed`` (the
``allowed_models`` setting) applies to every name a job reads or writes (pulls, a quantization's
source, the names convert and quantize register), and a name in the store is never replaced by
a conversion or quantization. URL pulls refuse loopback, private and link-local addresses unless
``allow_private_addresses``, with one message for refused, unknown and unreachable hosts alike;
pulls by path stay inside the server's root folder (symlinks resolved first) unless
``allow_paths_outside_root``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Optional
from urllib.parse import unquote, urlparse

from llamalab import (ConfigError, LlamalabError, ModelNotFoundError, ModelStore, OperationCancelledError, Progress,
                      StoredModel, checkpoint_license, normalize_quant_type, pull, pull_license, require_license,
                      resolve)

from .errors import ModelNotAllowedError, error_message
from .job_worker import run_in_child
from .messages import ConvertRequest, Job, JobKind, JobProgressMessage, PullRequest, QuantizeRequest

__all__ = ["Jobs"]

Listener = Callable[[JobProgressMessage], None]
Work = Callable[[Callable[[Progress], None], threading.Event], StoredModel]
_WORKER = "llamalab.extension.job_worker"


def default_job_memory_mb() -> int:
    """Half the machine's memory, at least 4096 MB (4096 where the size cannot be read)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (AttributeError, ValueError, OSError):
        return 4096
    return max(4096, total // 2)


def _not_allowed(name: str) -> str:
    return f"'{name}' is not one of the models this server offers; ask its administrator to allow it."


class Jobs:
    def __init__(self, store: ModelStore, *, allowed: Callable[[str], bool] = lambda name: True,
                 root_dir: Optional[str] = None, interval: float = 0.2, keep: int = 50,
                 allow_private_addresses: bool = False, allow_paths_outside_root: bool = False,
                 max_pulls: int = 2, job_memory_mb: Optional[int] = None, cancel_grace: float = 0.5) -> None:
        self.store = store
        self._memory_mb = job_memory_mb if job_memory_mb and job_memory_mb > 0 else default_job_memory_mb()
        self._cancel_grace = cancel_grace
        self._workers: dict[str, int] = {}  # job id -> its child's pid, while it runs
        self._allowed = allowed
        self._root = Path(root_dir).expanduser() if root_dir else Path.cwd()
        self._allow_private = allow_private_addresses
        self._allow_outside_root = allow_paths_outside_root
        self._max_pulls = max(1, max_pulls)
        self._interval = interval
        self._keep = keep
        self._jobs: dict[str, Job] = {}
        self._cancels: dict[str, threading.Event] = {}
        self._keys: dict[str, tuple] = {}  # what each job does: asking again returns the running job
        self._lock = threading.Lock()
        self._turns = threading.Condition(self._lock)  # woken whenever a queue moves or a job is cancelled
        self._heavy_queue: list[str] = []  # conversions and quantizations in order; the first one runs
        self._pull_queue: list[str] = []  # pulls in order; the first ``max_pulls`` run
        self._listeners: list[Listener] = []

    # -- reading ------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started_at)

    def worker_pid(self, job_id: str) -> Optional[int]:
        """The process id of the child that runs a conversion or quantization, while it runs."""
        with self._lock:
            return self._workers.get(job_id)

    # -- starting (on the event loop) ---------------------------------------------------
    def start_pull(self, request: PullRequest) -> Job:
        """Start pulling; errors in the reference or a licence to accept raise at once. A relative
        path to a GGUF file is taken from the Jupyter server's root folder."""
        ref = self._local_ref(request.model)
        resolved = resolve(ref)  # ModelNotFoundError: say so now, not in a job
        if not (self._allowed(resolved.store_name) or self._allowed(request.model)):
            raise ModelNotAllowedError(_not_allowed(request.model))
        existing = self.store.find(resolved.store_name)
        if request.force or existing is None or not existing.file.is_file():
            require_license(pull_license(ref), accept=request.accept_license, store=self.store)
        public_only = not self._allow_private

        def work(progress: Callable[[Progress], None], cancel: threading.Event) -> StoredModel:
            return pull(ref, store=self.store, progress=progress, force=request.force,
                        accept_license=request.accept_license, cancel=cancel, public_only=public_only)

        return self._start("pull", resolved.store_name, work, queue=self._pull_queue, slots=self._max_pulls,
                           key=("pull", resolved.store_name))

    async def start_convert(self, request: ConvertRequest) -> Job:
        """Start converting a checkpoint folder on this server (relative paths are taken from
        the Jupyter server's root folder); a bad folder, type or name, or a licence to accept,
        raise at once."""
        source = self._resolve_folder(request.source)
        await asyncio.to_thread(self._check_convert, source, request)
        kwargs = {"source": str(source), "quant": request.quant, "name": request.name,
                  "accept_license": request.accept_license}
        return self.start_in_child("convert", request.source, f"{_WORKER}:convert", kwargs, inputs=[str(source)],
                                   key=("convert", str(source.resolve()), (request.quant or "f16").upper(),
                                        request.name))

    async def start_quantize(self, request: QuantizeRequest) -> Job:
        """Start quantizing a stored model into a new stored model."""
        stored = self.store.find(request.model)
        if stored is None:
            raise ModelNotFoundError(f"'{request.model}' is not in the model store; GET /llamalab/models lists "
                                     "the stored models.")
        if not self._allowed(stored.name):
            raise ModelNotAllowedError(_not_allowed(stored.name))
        _checked(lambda: normalize_quant_type(request.quant))
        if request.name:
            self._check_new_name(request.name)
        kwargs = {"source": str(stored.file), "quant": request.quant, "name": request.name}
        return self.start_in_child("quantize", stored.name, f"{_WORKER}:quantize", kwargs, inputs=[str(stored.file)],
                                   key=("quantize", stored.name, request.quant.upper(), request.name))

    def start_in_child(self, kind: JobKind, model: str, call: str, kwargs: dict, *, inputs: list[str],
                       key: tuple) -> Job:
        """Queue a heavy job whose work is ``call`` (``module:function``, run by the child as
        ``function(store=, progress=, cancel=, **kwargs)``, returning the registered name)."""
        spec = {"call": call, "kwargs": kwargs, "inputs": inputs, "store_root": str(self.store.root)}

        def work(progress: Callable[[Progress], None], cancel: threading.Event) -> StoredModel:
            return self._in_child(kind, spec, progress, cancel)

        return self._start(kind, model, work, queue=self._heavy_queue, slots=1, key=key)

    def _check_new_name(self, name: str) -> None:
        """A name a job will register: valid, allowed, and not one the store already has."""
        _checked(lambda: self.store.validate_name(name))
        if not self._allowed(name):
            raise ModelNotAllowedError(_not_allowed(name))
        existing = self.store.find(name)
        if existing is not None:
            raise ConfigError(f"the store already has a model named '{name}'; choose another name, or remove "
                              "it first (DELETE /llamalab/models/NAME or `llamalab models rm NAME`).")

    def _local_ref(self, ref: str) -> str:
        """``ref``, with a path (or ``file:`` URL) taken from the server's root folder when relative.

        Unless ``allow_paths_outside_root``, a path whose real location (symlinks resolved) is
        outside the root gets the same answer as a missing file: the server reveals nothing there."""
        ref = ref.strip()
        if ref.lower().startswith("file:"):
            url = urlparse(ref)
            if url.netloc not in ("", "localhost"):
                return ref  # the catalog refuses it in its own words
            path = Path(unquote(url.path))
        elif ref.startswith(("hf:", "http://", "https://")) or not (
                "/" in ref or ref.startswith("~") or ref.lower().endswith(".gguf")):
            return ref
        else:
            path = Path(ref).expanduser()
        path = path if path.is_absolute() else self._root / path
        if not self._allow_outside_root and not path.resolve().is_relative_to(self._root.resolve()):
            raise ModelNotFoundError(f"{path} does not exist or is not a file; check the path.")
        return str(path)

    def _resolve_folder(self, source: str) -> Path:
        path = Path(source).expanduser()
        return path if path.is_absolute() else self._root / path

    def _check_convert(self, source: Path, request: ConvertRequest) -> None:
        license_id = _checked(lambda: checkpoint_license(source))  # CheckpointError: not a checkpoint
        if request.quant:
            _checked(lambda: normalize_quant_type(request.quant or ""))
        if request.name:
            self._check_new_name(request.name)
        require_license(license_id, accept=request.accept_license, store=self.store)

    def _start(self, kind: JobKind, model: str, work: Work, *, queue: list[str], slots: int, key: tuple) -> Job:
        with self._lock:
            for job in self._jobs.values():
                if job.state == "running" and self._keys.get(job.id) == key:
                    return job
            job = Job(id=uuid.uuid4().hex[:12], kind=kind, model=model, state="running",
                      stage="queued" if len(queue) >= slots else "starting", started_at=time.time())
            self._jobs[job.id] = job
            self._cancels[job.id] = threading.Event()
            self._keys[job.id] = key
            queue.append(job.id)
            self._forget_old()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, args=(job.id, work, queue, slots, loop), daemon=True,
                         name=f"llamalab-{kind}-{job.id}").start()
        return job

    # -- cancelling -----------------------------------------------------------------------
    def cancel(self, job_id: str) -> Optional[Job]:
        """Ask a running job to stop; it ends ``cancelled`` once its step has cleaned up."""
        with self._turns:
            job = self._jobs.get(job_id)
            if job is None or job.state != "running":
                return job
            self._cancels[job_id].set()
            self._turns.notify_all()  # a queued job wakes up to end
            job = self._jobs[job_id] = job.model_copy(update={"message": "cancelling"})
        return job

    def cancel_all(self) -> None:
        """Stop every running job (the server is stopping: no quantizer outlives it)."""
        for job in self.list():
            if job.state == "running":
                self.cancel(job.id)
        with self._lock:
            workers = list(self._workers.values())
        for pid in workers:  # no grace: the server may exit before the job threads act
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)

    # -- running (on the job's thread) ----------------------------------------------------
    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state != "running"]
        for job in sorted(finished, key=lambda j: j.started_at)[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[job.id]
            self._cancels.pop(job.id, None)
            self._keys.pop(job.id, None)

    def _update(self, job_id: str, **fields: object) -> Job:
        with self._lock:
            job = self._jobs[job_id].model_copy(update=fields)
            self._jobs[job_id] = job
            return job

    def _wait_turn(self, job_id: str, cancel: threading.Event, queue: list[str], slots: int) -> bool:
        """Wait until ``job_id`` is among the first ``slots`` of ``queue``; False if cancelled meanwhile."""
        with self._turns:
            while queue.index(job_id) >= slots and not cancel.is_set():
                self._turns.wait()
            if cancel.is_set():
                queue.remove(job_id)
                self._turns.notify_all()
                return False
            return True

    def _done_turn(self, job_id: str, queue: list[str]) -> None:
        with self._turns:
            if job_id in queue:
                queue.remove(job_id)
            self._turns.notify_all()

    def _run(self, job_id: str, work: Work, queue: list[str], slots: int, loop: asyncio.AbstractEventLoop) -> None:
        last = [0.0, ""]
        cancel = self._cancels[job_id]

        def publish(job: Job) -> None:
            try:
                loop.call_soon_threadsafe(self._publish, job)
            except RuntimeError:  # the server's loop has closed: nobody is listening
                pass

        def on_progress(p: Progress) -> None:
            job = self._update(job_id, stage=p.stage, done=p.done, total=p.total, unit=p.unit, fraction=p.fraction,
                               message=p.message)
            now = time.monotonic()
            if now - last[0] >= self._interval or p.stage != last[1]:
                last[0], last[1] = now, p.stage
                publish(job)

        try:
            if not self._wait_turn(job_id, cancel, queue, slots):
                raise OperationCancelledError("cancelled before it started.")
            publish(self._update(job_id, stage="starting"))
            stored = work(on_progress, cancel)
        except OperationCancelledError:
            job = self._update(job_id, state="cancelled", finished_at=time.time(), stage="cancelled",
                               message="cancelled; partial files were deleted")
        except Exception as exc:  # reported in the job; the server goes on
            job = self._update(job_id, state="failed", finished_at=time.time(), stage="failed",
                               error=error_message(exc, request_id=job_id))
        else:
            job = self._update(job_id, state="done", finished_at=time.time(), stage="done",
                               fraction=1.0, stored_name=stored.name)
        finally:
            self._done_turn(job_id, queue)
        publish(job)

    def _in_child(self, kind: str, spec: dict, progress: Callable[[Progress], None],
                  cancel: threading.Event) -> StoredModel:
        with self._lock:
            job_id = next(k for k, event in self._cancels.items() if event is cancel)

        def started(pid: Optional[int]) -> None:
            with self._lock:
                if pid is None:
                    self._workers.pop(job_id, None)
                else:
                    self._workers[job_id] = pid

        name = run_in_child(spec, kind=kind, memory_mb=self._memory_mb, progress=progress, cancel=cancel,
                            allowed=self._allowed, store=self.store, grace=self._cancel_grace, started=started)
        return self.store.get(name)

    def _publish(self, job: Job) -> None:
        message = JobProgressMessage(job=job)
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:  # one closed socket must not stop the others
                pass


def _checked(check: Callable[[], object]) -> object:
    """Run a check of the request; its llamalab error becomes a ``ConfigError`` (HTTP 400)
    unless it is a licence to accept or a missing model, which keep their own codes."""
    try:
        return check()
    except (ConfigError, ModelNotFoundError):
        raise
    except LlamalabError as exc:
        raise ConfigError(str(exc)) from None
