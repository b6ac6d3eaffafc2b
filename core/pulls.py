"""Pulling models into the store, and finding the model a command should run.

``pull(ref)`` resolves a reference with ``catalog.resolve``, fetches the file with the
matching function of ``fetch`` and registers it in the ``ModelStore``; a local GGUF file
(a path or ``file://`` URL) is checked and registered where it is, as ``llamalab models add`` does. ``locate(ref)``
is what engines and commands call: a path, a store name or a catalog reference; the
embedded default is pulled on first use (``on_notice`` is told so, for the caller to show).

Pulls of one store name into one store take turns: a lock per destination (in this process,
and an advisory lock file under the store's ``.locks/`` for other processes), so a second pull
of the same source waits, then finds the first one's model registered and returns it. A model
is registered with the sha256 and size its transfer verified, and only when the final file
still has that size. A failed pull leaves no folder behind (a resumable ``.part`` stays).
"""

from __future__ import annotations

import contextlib
import re
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional

from .catalog import DEFAULT_MODEL, HubFile, LocalFile, ResolvedRef, UrlFile, WheelFile, find_entry, resolve
from .errors import ChecksumMismatchError, ConfigError, ModelNotFoundError, OperationCancelledError
from .fetch import fetch_hub, fetch_verified, part_path
from .gguf_info import read_gguf_info
from .license import LLAMA2, require_license
from .progress import ProgressCallback, cancellable, raise_if_cancelled, report
from .store import ModelStore, StoredModel, sha256_file

__all__ = ["pull", "locate", "default_model_name", "pull_license"]

Notice = Callable[[str], None]

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()
_POLL = 0.1  # seconds between looks at ``cancel`` while waiting for another pull


def default_model_name() -> str:
    """The store name of the embedded default model, e.g. ``smollm2-135m-instruct:q4_1``."""
    return f"{DEFAULT_MODEL.name}:{DEFAULT_MODEL.default_quant}"


def _destination(resolved: ResolvedRef, store: ModelStore) -> Optional[Path]:
    """Where a store-owned download goes (None for the Hub's own cache)."""
    source = resolved.source
    folder = store.model_dir(resolved.store_name)
    if isinstance(source, WheelFile):
        return folder / Path(source.member).name
    if isinstance(source, UrlFile):
        return folder / source.filename
    return None


def _discard_partial(resolved: ResolvedRef, store: ModelStore, *, keep_part: bool = False) -> None:
    """After a failed pull: the part file (unless kept for resuming; an empty one never is) and
    the model's folder when that leaves it empty."""
    dest = _destination(resolved, store)
    if dest is None:
        return
    part = part_path(dest)
    with contextlib.suppress(OSError):
        if not keep_part or part.stat().st_size == 0:
            part.unlink()
    try:
        dest.parent.rmdir()
    except OSError:  # not empty: a part kept for resuming, or other files of the store
        pass


@contextlib.contextmanager
def _pull_lock(store: ModelStore, name: str, cancel: Optional[threading.Event],
               progress: Optional[ProgressCallback]) -> Iterator[None]:
    """Hold the lock of ``name`` in ``store`` (this process's threads, then other processes)."""
    folder = store.root / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    lock_file = folder / (re.sub(r"[^A-Za-z0-9._+-]", "-", name) + ".lock")
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(str(lock_file.resolve()), threading.Lock())
    waiting = f"waiting for another pull of {name}"
    if not lock.acquire(blocking=False):
        report(progress, waiting, 0, None)
        while not lock.acquire(timeout=_POLL):
            raise_if_cancelled(cancel, f"the pull of {name}")
    try:
        with open(lock_file, "a+") as handle:
            _flock(handle.fileno(), cancel, name, lambda: report(progress, waiting, 0, None))
            yield
    finally:
        lock.release()


def _flock(fd: int, cancel: Optional[threading.Event], name: str, on_wait: Callable[[], None]) -> None:
    """Take an exclusive advisory lock on ``fd`` (released when it closes); no-op without fcntl."""
    try:
        import fcntl
    except ImportError:  # Windows: the in-process lock is all there is
        return
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if not told:
                on_wait()
                told = True
            raise_if_cancelled(cancel, f"the pull of {name}")
            (cancel or threading.Event()).wait(_POLL)


def _fetch(resolved: ResolvedRef, store: ModelStore, progress: Optional[ProgressCallback], *,
           public_only: bool, cancel: Optional[threading.Event]) -> tuple[Path, bool, Optional[str]]:
    """Fetch the file; return its path, whether the store owns it, and the sha256 its transfer verified."""
    source = resolved.source
    if isinstance(source, HubFile):
        return fetch_hub(source, progress), False, None
    dest = _destination(resolved, store)
    assert dest is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, (WheelFile, UrlFile)):
        fetched = fetch_verified(source, dest, progress, public_only=public_only, cancel=cancel)
        if fetched.path.stat().st_size != fetched.size_bytes:  # changed under us: never register it
            fetched.path.unlink(missing_ok=True)
            raise ChecksumMismatchError(f"{dest.name} changed while it was being pulled; pull it again.")
        return fetched.path, True, fetched.sha256
    raise TypeError(f"unknown source {source!r}")  # pragma: no cover - the union is closed


def _license_of(resolved: ResolvedRef) -> Optional[str]:
    if resolved.license:
        return resolved.license
    source = resolved.source
    if isinstance(source, HubFile) and source.gated:  # meta-llama/* repos: Llama weights
        return LLAMA2.id
    return None


def pull_license(ref: str) -> Optional[str]:
    """The id of the licence that pulling ``ref`` needs accepted (e.g. ``llama2``), or None."""
    return _license_of(resolve(ref))


def pull(ref: str, *, store: Optional[ModelStore] = None, progress: Optional[ProgressCallback] = None,
         force: bool = False, accept_license: bool = False,
         cancel: Optional[threading.Event] = None, public_only: bool = False) -> StoredModel:
    """Fetch the model ``ref`` names and register it; a no-op when it is already there and intact.

    Llama weights need their licence accepted first (``accept_license=True`` records it).
    Setting ``cancel`` stops the transfer within a fraction of a second with
    ``OperationCancelledError``; the partial file is then deleted rather than kept for resuming
    (the Hub's cache keeps its own). ``force`` fetches again and replaces the name's entry;
    without it a name held by another source is refused. ``public_only`` (a server's pulls)
    refuses URLs on loopback, private and link-local addresses (see ``fetch``)."""
    store = store or ModelStore()
    resolved = resolve(ref)
    if isinstance(resolved.source, LocalFile):
        return _add_local(resolved.store_name, Path(resolved.source.path), store, progress, cancel, force)
    existing = store.find(resolved.store_name)
    if existing and existing.file.is_file() and not force:
        return existing
    require_license(_license_of(resolved), accept=accept_license, store=store)
    progress = cancellable(progress, cancel, f"the pull of {resolved.store_name}")
    with _pull_lock(store, resolved.store_name, cancel, progress):
        existing = store.find(resolved.store_name)  # another pull may have finished meanwhile
        if existing and existing.file.is_file() and not force:
            return existing
        source = _describe(resolved)
        if existing and existing.source != source and not force:
            raise ConfigError(f"the store already has a model named '{existing.name}' from {existing.source}; "
                              f"remove it first (`llamalab models rm {existing.name}`) or pull with force to "
                              "replace it.")
        return _fetch_and_register(resolved, store, progress, source, public_only, cancel,
                                   replace=force or existing is not None)


def _fetch_and_register(resolved: ResolvedRef, store: ModelStore, progress: Optional[ProgressCallback], source: str,
                        public_only: bool, cancel: Optional[threading.Event], replace: bool) -> StoredModel:
    """The locked part of ``pull``: fetch, check, register; on failure leave no file or empty folder."""
    try:
        path, owned, digest = _fetch(resolved, store, progress, public_only=public_only, cancel=cancel)
    except OperationCancelledError:
        _discard_partial(resolved, store)
        raise
    except BaseException:
        _discard_partial(resolved, store, keep_part=True)  # a cut transfer resumes next time
        raise
    try:
        info = read_gguf_info(path)  # a downloaded HTML page or truncated file fails here, clearly
        digest = digest or sha256_file(path, progress, stage=f"verifying {path.name}")
        return store.register(resolved.store_name, path, source=source, sha256=digest,
                              license=resolved.license, owned=owned, info=info, force=replace)
    except BaseException:
        if owned:  # never leave an unusable (or unwanted) file in the store
            path.unlink(missing_ok=True)
            _discard_partial(resolved, store)
        raise


def _add_local(name: str, path: Path, store: ModelStore, progress: Optional[ProgressCallback],
               cancel: Optional[threading.Event], force: bool) -> StoredModel:
    """Register a GGUF file on this machine where it is (the store's call of ``llamalab models add``):
    checked with ``read_gguf_info`` first, then hashed with progress (``cancel`` stops the hashing)."""
    what = f"the pull of {name}"
    if cancel is not None:
        raise_if_cancelled(cancel, what)
    progress = cancellable(progress, cancel, what)
    existing = store.find(name)
    if existing is not None and not force:
        if existing.file == path and path.is_file():
            return existing
        raise ConfigError(f"the store already has a model named '{name}' ({existing.path}); remove it first "
                          f"(`llamalab models rm {name}`), pull with force to replace it, or add the file under "
                          "another name with `llamalab models add PATH --name NAME`.")
    info = read_gguf_info(path)  # InvalidModelFileError: not a GGUF file, before any hashing
    return store.register(name, path, source=f"file:{path}", progress=progress, info=info, force=force)


def _describe(resolved: ResolvedRef) -> str:
    source = resolved.source
    if isinstance(source, WheelFile):
        return f"pypi:{source.package}=={source.version}#{source.member}"
    if isinstance(source, HubFile):
        return f"hf:{source.repo_id}/{source.filename}@{source.revision}"
    return source.url


def locate(ref: Optional[str] = None, *, store: Optional[ModelStore] = None,
           progress: Optional[ProgressCallback] = None,
           on_notice: Optional[Notice] = None) -> Path:
    """The GGUF file for ``ref`` (None: the default model), pulling the default on first use."""
    store = store or ModelStore()
    if ref and Path(ref).expanduser().is_file():
        return Path(ref).expanduser().resolve()
    name = ref or default_model_name()
    stored = store.find(name)
    if stored is None:
        try:
            resolved = resolve(name)
        except ModelNotFoundError:
            if ref and ("/" in ref or ref.endswith(".gguf")):
                raise ModelNotFoundError(f"{ref} does not exist; check the path.") from None
            raise
        stored = store.find(resolved.store_name)
        if stored is None and resolved.entry is find_entry(DEFAULT_MODEL.name):
            if on_notice:
                on_notice(f"Pulling the default model {resolved.store_name} "
                          f"({DEFAULT_MODEL.files[DEFAULT_MODEL.default_quant].size_bytes / 1e6:.0f} MB) "
                          "for first use; later runs start at once.")
            stored = pull(name, store=store, progress=progress)
        if stored is None:
            raise ModelNotFoundError(
                f"{resolved.store_name} is not in the store yet; pull it first with "
                f"`llamalab models pull {resolved.store_name}`."
            )
    return store.get(stored.name).file
