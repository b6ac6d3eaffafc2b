"""Pulling models into the store, and finding the model a command should run.

``pull(ref)`` resolves a reference with ``catalog.resolve``, fetches the file with the
matching function of ``fetch`` and registers it in the ``ModelStore``. ``locate(ref)``
is what engines and commands call: a path, a store name or a catalog reference; the
embedded default is pulled on first use (``on_notice`` is told so, for the caller to show).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from .catalog import DEFAULT_MODEL, HubFile, ResolvedRef, UrlFile, WheelFile, find_entry, resolve
from .errors import LlamalabError, ModelNotFoundError
from .fetch import fetch_hub, fetch_url, fetch_wheel_member
from .gguf_info import read_gguf_info
from .license import LLAMA2, require_license
from .progress import ProgressCallback
from .store import ModelStore, StoredModel, sha256_file

__all__ = ["pull", "locate", "default_model_name"]

Notice = Callable[[str], None]


def default_model_name() -> str:
    """The store name of the embedded default model, e.g. ``smollm2-135m-instruct:q4_1``."""
    return f"{DEFAULT_MODEL.name}:{DEFAULT_MODEL.default_quant}"


def _fetch(resolved: ResolvedRef, store: ModelStore,
           progress: Optional[ProgressCallback]) -> tuple[Path, bool]:
    """Fetch the file; return its path and whether the store owns it."""
    source = resolved.source
    if isinstance(source, HubFile):
        return fetch_hub(source, progress), False
    folder = store.model_dir(resolved.store_name)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(source, WheelFile):
        dest = folder / Path(source.member).name
        return fetch_wheel_member(source, dest, progress), True
    if isinstance(source, UrlFile):
        return fetch_url(source, folder / source.filename, progress), True
    raise TypeError(f"unknown source {source!r}")  # pragma: no cover - the union is closed


def _license_of(resolved: ResolvedRef) -> Optional[str]:
    if resolved.license:
        return resolved.license
    source = resolved.source
    if isinstance(source, HubFile) and source.gated:  # meta-llama/* repos: Llama weights
        return LLAMA2.id
    return None


def pull(ref: str, *, store: Optional[ModelStore] = None, progress: Optional[ProgressCallback] = None,
         force: bool = False, accept_license: bool = False) -> StoredModel:
    """Fetch the model ``ref`` names and register it; a no-op when it is already there and intact.

    Llama weights need their licence accepted first (``accept_license=True`` records it)."""
    store = store or ModelStore()
    resolved = resolve(ref)
    existing = store.find(resolved.store_name)
    if existing and existing.file.is_file() and not force:
        return existing
    require_license(_license_of(resolved), accept=accept_license, store=store)
    path, owned = _fetch(resolved, store, progress)
    try:
        info = read_gguf_info(path)  # a downloaded HTML page or truncated file fails here, clearly
    except LlamalabError:
        if owned:  # never leave an unusable file in the store
            path.unlink(missing_ok=True)
        raise
    expected = getattr(resolved.source, "sha256", None)
    digest = expected if expected and owned else sha256_file(path, progress, stage=f"verifying {path.name}")
    return store.register(resolved.store_name, path, source=_describe(resolved), sha256=digest,
                          license=resolved.license, owned=owned, info=info)


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
