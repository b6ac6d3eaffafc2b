"""Downloading Llama 2 and Code Llama from Meta's signed URL: what download.sh does, verified.

``download_meta(url, ["7B-chat"], out=DIR)`` produces download.sh's folder tree (see
``meta_layout``) and adds what it lacks:

- the licence gate (``license.require_license``) before any request is made;
- every checklist fetched first and checked to be a checklist, not an error page, that names
  only files Meta's release has for that model (``release_names``): a checklist listing
  ``.bashrc`` stops the run before any listed file is requested;
- a disk-space check from the server's sizes: HEAD, and where a CDN refuses HEAD (405, or 403 to
  HEAD alone) a one-byte ranged GET (its ``Content-Range``); a 403 to both means the URL no longer
  opens that file (expired, used up, or not granted for that model) and stops the run with
  ``SignedUrlExpiredError`` naming it, before any file is fetched; only a server that tells no
  size at all falls back to the models' known sizes, with a warning logged on
  ``llamalab.meta_download`` (the CLI shows it);
- several files at once (a thread pool, ``jobs``), each resumed with HTTP ``Range`` from its
  ``*.part``, retried when a transfer is cut, md5-verified, and renamed only once verified;
- a file failing its md5 is fetched again once, then the run fails with ``ChecksumMismatchError``;
- HTTP 403 and web pages where files should be raise ``SignedUrlExpiredError`` saying to
  request a new URL; the first error, or Ctrl-C, stops the other transfers (their parts
  are kept, flushed and fsynced: the next run resumes each from its last byte received);
- files already present and verified are skipped, so running it again resumes the job.

Progress goes to a ``ProgressCallback`` (calls are serialized): one stage per file (its
path, or ``verifying PATH``) and ``TOTAL_STAGE`` for all bytes. Nothing is printed.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .errors import (ChecksumMismatchError, ConfigError, LlamalabError, OperationCancelledError, PullError,
                     SignedUrlExpiredError, SourceUnreachableError)
from .fetch import HttpErrorHook, download_to_part, ensure_free_space, file_digest, part_path
from .license import require_license
from .meta_layout import (FAMILIES, LICENSE_ID, META_FORM_URL, DownloadPlan, MetaFile, MetaModel, SignedUrl,
                          html_page_error, looks_like_html, parse_checklist, parse_signed_url, plan_download,
                          release_names, resolve_models)
from .progress import Progress, ProgressCallback, report
from .store import ModelStore

if TYPE_CHECKING:  # pragma: no cover
    import httpx

__all__ = ["download_meta", "MetaDownloadResult", "TOTAL_STAGE", "DEFAULT_JOBS"]

log = logging.getLogger(__name__)

TOTAL_STAGE = "total"
DEFAULT_JOBS = 4
_RETRY_WAIT_S = 0.5
_RESUME_HINT = "run the same command again to resume"


@dataclass(frozen=True)
class MetaDownloadResult:
    out_dir: Path
    models: tuple[MetaModel, ...]
    downloaded: tuple[str, ...]  # relative paths fetched (and verified) by this run, checklists aside
    skipped: tuple[str, ...]  # already present and verified
    unverified: tuple[str, ...]  # fetched, but no checklist lists an md5 for them
    bytes_downloaded: int  # the sizes of the files this run fetched (resumed ones in full)

    @property
    def model_dirs(self) -> tuple[Path, ...]:
        return tuple(self.out_dir / m.folder for m in self.models)


class _Cancelled(Exception):
    """Raised inside a worker's progress callback when another worker failed."""


class _Tracker:
    """Per-file and total progress from many threads, serialized, and the shared cancel flag."""

    def __init__(self, callback: Optional[ProgressCallback]) -> None:
        self.callback = callback
        self.cancel = threading.Event()
        self._lock = threading.Lock()
        self._done: dict[str, int] = {}
        self.total = 0

    def for_file(self, path: str, counted: bool = True) -> ProgressCallback:
        """The callback for one file's events; ``counted`` adds its bytes to the total."""
        def forward(event: Progress) -> None:
            if self.cancel.is_set():
                raise _Cancelled()
            with self._lock:
                if counted and not event.stage.startswith("verifying "):
                    self._done[path] = event.done
                if self.callback is not None:
                    self.callback(event)
                    report(self.callback, TOTAL_STAGE, sum(self._done.values()), self.total or None)
        return forward

    def finished(self, path: str, size: int) -> None:
        with self._lock:
            self._done[path] = size
            report(self.callback, TOTAL_STAGE, sum(self._done.values()), self.total or None)


def _http_error(path: str, family: str) -> HttpErrorHook:
    def translate(status: int) -> Optional[LlamalabError]:
        if status == 403:
            return SignedUrlExpiredError(
                f"Meta's server refused {path} (HTTP 403): the signed URL has expired (it lasts about 24 "
                f"hours) or was used too many times; request a new URL from Meta's form at {META_FORM_URL} "
                "and run the command again with it (verified files are kept, partial ones resume)."
            )
        if status == 404:
            return PullError(
                f"Meta's server has no {path} (HTTP 404): check that the URL is the one for {FAMILIES[family]} "
                "(Llama 2 and Code Llama come with different URLs) and that your request covered that model."
            )
        return None
    return translate


def _refused_before_download(path: str) -> SignedUrlExpiredError:
    return SignedUrlExpiredError(
        f"Meta's server refused {path} (HTTP 403 to HEAD and to GET): the signed URL has expired (it is valid "
        "for 24 hours), was used too many times, or was not granted for this model; request a new URL from "
        f"Meta's form at {META_FORM_URL} and pass it with --meta-url (verified files are kept)."
    )


def _probed_size(response: "httpx.Response") -> Optional[int]:
    """The whole file's size from the answer to ``Range: bytes=0-0`` (the body is never read)."""
    if response.status_code == 206:
        total = response.headers.get("content-range", "").rpartition("/")[2].strip()
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length", "")
    return int(length) if response.status_code == 200 and length.isdigit() else None


def _unknown_size(path: str, why: str) -> None:
    log.warning("Meta's server did not tell the size of %s (%s); the disk-space check uses the model's "
                "approximate size instead.", path, why)
    return None


def _is_html(path: Path) -> bool:
    with open(path, "rb") as handle:
        return looks_like_html(handle.read(512))


class _Session:
    """One run: the HTTP client, the worker pool, the progress tracker and the output folder."""

    def __init__(self, signed: SignedUrl, out: Path, jobs: int, timeout: float, retries: int,
                 progress: Optional[ProgressCallback]) -> None:
        import httpx

        self.signed, self.out, self.retries = signed, out, retries
        self.tracker = _Tracker(progress)
        self.client = httpx.Client(timeout=timeout, follow_redirects=True,
                                   limits=httpx.Limits(max_connections=2 * jobs + 2))
        self.pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="llamalab-meta")

    def close(self) -> None:
        self.tracker.cancel.set()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    # -- running many, stopping all at the first error ------------------------------------------
    def run_all(self, calls: Sequence[tuple]) -> list:
        futures: list[Future] = [self.pool.submit(*call) for call in calls]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f.done() and not f.cancelled() and f.exception() is not None]
        if failed:
            self.tracker.cancel.set()
            for future in futures:
                future.cancel()
            wait(futures)
            errors = [f.exception() for f in futures if f.done() and not f.cancelled() and f.exception()]
            raise next((e for e in errors if not isinstance(e, (_Cancelled, OperationCancelledError))), errors[0])
        return [f.result() for f in futures]

    # -- one transfer ---------------------------------------------------------------------------
    def transfer(self, path: str, family: str, counted: bool = True) -> str:
        """Download ``path`` into its part (retrying cut transfers); return the part's md5."""
        dest = self.out / path
        for attempt in range(self.retries + 1):
            try:
                return download_to_part(self.signed.for_path(path), dest, self.tracker.for_file(path, counted),
                                        algorithm="md5", stage=path, label=path, client=self.client,
                                        http_error=_http_error(path, family), resume_hint=_RESUME_HINT,
                                        cancel=self.tracker.cancel)
            except SourceUnreachableError:
                if attempt == self.retries or self.tracker.cancel.is_set():
                    raise
                time.sleep(_RETRY_WAIT_S * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    # -- checklists ----------------------------------------------------------------------------
    def checklist(self, path: str, family: str, allowed: frozenset[str]) -> dict[str, str]:
        dest = self.out / path
        if dest.is_file():
            try:
                return parse_checklist(dest.read_bytes(), path, allowed)
            except LlamalabError:
                pass  # an error page or garbage from an earlier download.sh run: fetch it again
        self.transfer(path, family, counted=False)
        part = part_path(dest)
        try:
            sums = parse_checklist(part.read_bytes(), path, allowed)
        except LlamalabError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        return sums

    # -- sizes ---------------------------------------------------------------------------------
    def size_of(self, path: str, family: str) -> Optional[int]:
        """The server's size for ``path`` without fetching it, or None (logged) when it will not say.

        HEAD first; a CDN that refuses HEAD (405, or 403 to HEAD only) is asked for one byte
        (``Range: bytes=0-0``) and its ``Content-Range`` read. A 403 to that GET too means the
        transfer would be refused: ``SignedUrlExpiredError`` now, before anything is downloaded."""
        import httpx

        url = self.signed.for_path(path)
        try:
            head = self.client.head(url)
        except httpx.HTTPError as exc:
            return _unknown_size(path, f"HEAD failed: {type(exc).__name__}")
        length = head.headers.get("content-length", "")
        if head.status_code == 200 and length.isdigit():
            return int(length)
        try:
            with self.client.stream("GET", url, headers={"Range": "bytes=0-0"}) as probe:
                status, size = probe.status_code, _probed_size(probe)
        except httpx.HTTPError as exc:
            return _unknown_size(path, f"HEAD answered {head.status_code}, a ranged GET failed: {type(exc).__name__}")
        error = _refused_before_download(path) if status == 403 else _http_error(path, family)(status)
        if error is not None:  # 403: the transfer would be refused too; 404: no such file
            raise error
        if size is None:
            return _unknown_size(path, f"HEAD answered {head.status_code}, a ranged GET {status}")
        return size

    # -- one file, verified ----------------------------------------------------------------------
    def fetch_file(self, item: MetaFile, md5: Optional[str], size: Optional[int], family: str) -> str:
        """Bring ``item`` into place; return "skipped", "downloaded" or "unverified"."""
        dest = self.out / item.path
        if dest.is_file():
            if self._present_ok(item, dest, md5):
                self.tracker.finished(item.path, dest.stat().st_size)
                return "skipped"
            part = part_path(dest)
            if md5 and not part.exists() and not _is_html(dest):
                size = size or self.size_of(item.path, family)
                if size and dest.stat().st_size < size:
                    os.replace(dest, part)  # a partial file (download.sh's wget --continue): resume it
        bad = ""
        for _ in range(2):
            digest = self.transfer(item.path, family)
            part = part_path(dest)
            html = _is_html(part)
            if not html and md5 in (None, digest):
                os.replace(part, dest)
                self.tracker.finished(item.path, dest.stat().st_size)
                return "unverified" if md5 is None and item.checklist else "downloaded"
            part.unlink()
            if html:
                raise html_page_error(item.path)
            bad = digest
        raise ChecksumMismatchError(
            f"{item.path} failed its md5 check twice (got {bad[:12]}..., {item.checklist} says {md5[:12]}...); "
            f"the bad download was deleted; run the command again, and if it keeps failing request a new "
            f"URL from Meta's form at {META_FORM_URL}."
        )

    def _present_ok(self, item: MetaFile, dest: Path, md5: Optional[str]) -> bool:
        if md5 is None:
            return not _is_html(dest)
        return file_digest(dest, "md5", self.tracker.for_file(item.path), f"verifying {item.path}") == md5


def _family_of(path: str, models: Sequence[MetaModel]) -> str:
    folder = path.split("/")[0]
    return next((m.family for m in models if m.folder == folder), models[0].family)


def _expected_md5s(session: _Session, plan: DownloadPlan) -> dict[str, str]:
    sums: dict[str, str] = {}
    calls = [(session.checklist, path, _family_of(path, plan.models), release_names(path, plan.models))
             for path in plan.checklists]
    for listed in session.run_all(calls):
        sums.update(listed)
    return sums


def _check_listed(plan: DownloadPlan, sums: dict[str, str]) -> None:
    """A shard missing from its checklist, or one the model does not have, means the checklist is
    not this model's: stop before any file is requested. Only planned files are ever fetched."""
    for item in plan.files:
        if item.path.endswith(".pth") and item.path not in sums:
            raise PullError(f"{item.checklist} lists no md5 for {item.path}: it does not belong to this model; "
                            f"delete {item.checklist} and run the command again.")
    known = {f.path for f in plan.files} | set(plan.checklists)
    for path in sums:
        if path not in known:
            checklist = path.rsplit("/", 1)[0] + "/checklist.chk" if "/" in path else "tokenizer_checklist.chk"
            raise PullError(f"{checklist} lists {path}, which Meta's release of this model does not have; "
                            f"nothing was fetched: delete {checklist} and run the command again.")


def _needed_bytes(session: _Session, out: Path, files: Sequence[MetaFile],
                  plan_models: Sequence[MetaModel]) -> tuple[dict[str, int], int]:
    """Expected sizes of the files still missing (``size_of``, else the known approximation) and bytes to fetch."""
    missing = [f for f in files if not (out / f.path).is_file()]
    probed = session.run_all([(session.size_of, f.path, _family_of(f.path, plan_models)) for f in missing])
    sizes = {f.path: size if size is not None else f.approx_bytes for f, size in zip(missing, probed)}
    needed = 0
    for item in missing:
        part = part_path(out / item.path)
        needed += max(0, sizes[item.path] - (part.stat().st_size if part.exists() else 0))
    return sizes, needed


def download_meta(url: str, models: Optional[Sequence[str]] = None, *, family: str = "llama2",
                  out: os.PathLike[str] | str = ".", jobs: int = DEFAULT_JOBS, accept_license: bool = False,
                  store: Optional[ModelStore] = None, progress: Optional[ProgressCallback] = None,
                  timeout: float = 30.0, retries: int = 2) -> MetaDownloadResult:
    """Download ``models`` (download.sh's names; all of ``family`` when None) from Meta's signed ``url``.

    The Llama 2 licence must have been accepted in ``store`` (or ``accept_license=True``
    accepts and records it) before any request is made.
    """
    signed = parse_signed_url(url)
    chosen = resolve_models(models, family)
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, not {jobs}.")
    require_license(LICENSE_ID, accept=accept_license, store=store)
    out_dir = Path(out).expanduser().resolve()
    plan = plan_download(chosen)
    session = _Session(signed, out_dir, jobs, timeout, retries, progress)
    try:
        sums = _expected_md5s(session, plan)
        _check_listed(plan, sums)
        sizes, needed = _needed_bytes(session, out_dir, plan.files, plan.models)
        ensure_free_space(out_dir, needed, hint="choose another --out folder")
        session.tracker.total = sum(sizes.get(f.path) or _present_size(out_dir / f.path) for f in plan.files)
        outcomes = session.run_all([(session.fetch_file, f, sums.get(f.path), sizes.get(f.path),
                                     _family_of(f.path, chosen)) for f in plan.files])
    except OSError as exc:  # ENOSPC is translated in fetch; this is an unusable --out folder
        raise PullError(f"cannot write {exc.filename or out_dir} ({exc.strerror or exc}); "
                        "choose another --out folder.") from None
    finally:
        session.close()
    by_kind: dict[str, list[str]] = {"downloaded": [], "skipped": [], "unverified": []}
    for item, outcome in zip(plan.files, outcomes):
        by_kind[outcome].append(item.path)
    fetched = by_kind["downloaded"] + by_kind["unverified"]
    return MetaDownloadResult(out_dir=out_dir, models=chosen, downloaded=tuple(by_kind["downloaded"]),
                              skipped=tuple(by_kind["skipped"]), unverified=tuple(by_kind["unverified"]),
                              bytes_downloaded=sum((out_dir / p).stat().st_size for p in fetched))


def _present_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0
