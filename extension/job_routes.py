"""REST routes of the model manager's background jobs (``jobs.Jobs``): start, list, follow, cancel.

    GET    /llamalab/jobs                JobList
    POST   /llamalab/pulls               PullRequest -> Job (202, kind "pull")
    POST   /llamalab/convert             ConvertRequest -> Job (202, kind "convert")
    POST   /llamalab/quantize            QuantizeRequest -> Job (202, kind "quantize")
    GET    /llamalab/jobs/{id}           Job
    GET    /llamalab/jobs/{id}/events    server-sent JobProgressMessage events until the job ends
    DELETE /llamalab/jobs/{id}           cancel a running job -> Job (it ends "cancelled")

``GET /llamalab/pulls``, ``/llamalab/pulls/{id}`` (GET, DELETE) and ``/llamalab/pulls/{id}/events``
answer like their ``jobs`` counterparts (earlier clients used them). A request whose checks fail
(a folder that holds no checkpoint, an unknown quantization type) gets a 400 naming the
problem; a licence not yet accepted gets ``license_required`` (403) with ``detail``
``{license, license_url, notice}``, and the client asks again with ``accept_license: true``.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from .handlers import BadRequest, LlamalabHandler
from .messages import ConvertRequest, ErrorMessage, Job, JobList, JobProgressMessage, PullRequest, QuantizeRequest

__all__ = ["handlers"]


class JobsHandler(LlamalabHandler):
    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.reply(JobList(jobs=self.jobs.list()))


class PullsHandler(JobsHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(PullRequest)
        self.reply(self.jobs.start_pull(request), status=202)


class ConvertHandler(LlamalabHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(ConvertRequest)
        self.reply(await self.jobs.start_convert(request), status=202)


class QuantizeHandler(LlamalabHandler):
    @web.authenticated
    @authorized
    async def post(self) -> None:
        request = self.body_as(QuantizeRequest)
        self.reply(await self.jobs.start_quantize(request), status=202)


class JobHandler(LlamalabHandler):
    def _job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise BadRequest(ErrorMessage(code="not_found", message=f"no job '{job_id}'; "
                                          "GET /llamalab/jobs lists them."))
        return job

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        self.reply(self._job(job_id))

    @web.authenticated
    @authorized
    async def delete(self, job_id: str) -> None:
        self._job(job_id)
        job = self.jobs.cancel(job_id)
        assert job is not None
        self.reply(job)


class JobEventsHandler(JobHandler):
    """The job's progress as server-sent events, ending with the event of the finished job."""

    @web.authenticated
    @authorized
    async def get(self, job_id: str) -> None:
        job = self._job(job_id)
        queue: asyncio.Queue[JobProgressMessage] = asyncio.Queue()
        remove = self.jobs.add_listener(lambda m: queue.put_nowait(m) if m.job.id == job_id else None)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        try:
            current = self.jobs.get(job_id) or job  # it may have moved on while the listener was added
            message: Optional[JobProgressMessage] = JobProgressMessage(job=current)
            while message is not None:
                self.write(f"data: {message.model_dump_json()}\n\n")
                await self.flush()
                if message.job.state != "running":
                    break
                message = await queue.get()
        except StreamClosedError:
            return
        finally:
            remove()
        self.finish(set_content_type="text/event-stream")


def handlers() -> list[tuple[str, type]]:
    job = r"(?P<job_id>[A-Za-z0-9_-]{1,64})"
    return [
        (r"/llamalab/jobs", JobsHandler),
        (rf"/llamalab/jobs/{job}", JobHandler),
        (rf"/llamalab/jobs/{job}/events", JobEventsHandler),
        (r"/llamalab/convert", ConvertHandler),
        (r"/llamalab/quantize", QuantizeHandler),
        (r"/llamalab/pulls", PullsHandler),
        (rf"/llamalab/pulls/{job}", JobHandler),
        (rf"/llamalab/pulls/{job}/events", JobEventsHandler),
    ]
