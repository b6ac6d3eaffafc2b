"""Pull jobs: ``llamalab.pull`` run on a thread, its progress turned into wire events.

``PullJobs.start`` returns at once with a ``Job`` whose state is ``running``; the
core pull reports ``Progress`` from its thread, the job's fields follow, and listeners
(every chat WebSocket, and SSE streams on ``/llamalab/pulls/{id}/events``) get a
``JobProgressMessage`` on the event loop, at most every ``interval`` seconds and always
when the stage changes or the job ends. Asking for a model that is already being pulled
returns the running job instead of starting a second download of the same file.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Callable, Optional

from llamalab import ModelStore, Progress, pull, resolve

from .errors import ModelNotAllowedError, error_message
from .messages import Job, JobProgressMessage, PullRequest

__all__ = ["PullJobs"]

Listener = Callable[[JobProgressMessage], None]


class PullJobs:
    def __init__(self, store: ModelStore, *, allowed: Callable[[str], bool] = lambda name: True,
                 interval: float = 0.2, keep: int = 50) -> None:
        self.store = store
        self._allowed = allowed
        self._interval = interval
        self._keep = keep
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def get(self, job_id: str) -> Optional[Job]:
        with self._lock:
            return self._jobs.get(job_id)

    def list(self) -> list[Job]:
        with self._lock:
            return sorted(self._jobs.values(), key=lambda j: j.started_at)

    def start(self, request: PullRequest) -> Job:
        """Start pulling (call on the event loop); errors in the reference raise at once."""
        resolved = resolve(request.model)  # ModelNotFoundError: say so now, not in a job
        if not (self._allowed(resolved.store_name) or self._allowed(request.model)):
            raise ModelNotAllowedError(f"'{request.model}' is not one of the models this server offers; "
                                       "ask its administrator to allow it.")
        with self._lock:
            for job in self._jobs.values():
                if job.model == resolved.store_name and job.state == "running":
                    return job
            job = Job(id=uuid.uuid4().hex[:12], kind="pull", model=resolved.store_name, state="running",
                          stage="starting", started_at=time.time())
            self._jobs[job.id] = job
            self._forget_old()
        loop = asyncio.get_running_loop()
        threading.Thread(target=self._run, args=(job.id, request, loop), daemon=True,
                         name=f"llamalab-pull-{job.id}").start()
        return job

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.state != "running"]
        for job in sorted(finished, key=lambda j: j.started_at)[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[job.id]

    def _update(self, job_id: str, **fields: object) -> Job:
        with self._lock:
            job = self._jobs[job_id].model_copy(update=fields)
            self._jobs[job_id] = job
            return job

    def _run(self, job_id: str, request: PullRequest, loop: asyncio.AbstractEventLoop) -> None:
        last = [0.0, "starting"]

        def publish(job: Job) -> None:
            try:
                loop.call_soon_threadsafe(self._publish, job)
            except RuntimeError:  # the server's loop has closed: nobody is listening
                pass

        def on_progress(p: Progress) -> None:
            job = self._update(job_id, stage=p.stage, done=p.done, total=p.total, fraction=p.fraction,
                               message=p.message)
            now = time.monotonic()
            if now - last[0] >= self._interval or p.stage != last[1]:
                last[0], last[1] = now, p.stage
                publish(job)

        try:
            stored = pull(request.model, store=self.store, progress=on_progress, force=request.force,
                          accept_license=request.accept_license)
        except Exception as exc:  # reported in the job; the server goes on
            job = self._update(job_id, state="failed", finished_at=time.time(), stage="failed",
                               error=error_message(exc, request_id=job_id))
        else:
            job = self._update(job_id, state="done", finished_at=time.time(), stage="done",
                               fraction=1.0, stored_name=stored.name)
        publish(job)

    def _publish(self, job: Job) -> None:
        message = JobProgressMessage(job=job)
        for listener in list(self._listeners):
            try:
                listener(message)
            except Exception:  # one closed socket must not stop the others
                pass
