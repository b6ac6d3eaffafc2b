"""From a checkpoint folder (or an F16 GGUF) to a model in the store that ``llamalab chat`` can use.

``convert_and_register`` converts, optionally quantizes with llama.cpp's quantizer
(through a hidden temporary GGUF that is always deleted), runs ``smoke_test`` on the
result and registers it. ``quantize_and_register`` does the same from a GGUF. If any step
fails, the output file is removed and nothing is registered: a model is in the store
only once it has loaded and generated tokens. Both take ``cancel`` (a ``threading.Event``):
once set, the running step stops with ``OperationCancelledError`` and leaves no file behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from ..progress import ProgressCallback

__all__ = ["convert_and_register", "quantize_and_register", "default_name"]

_TYPE_SUFFIX = re.compile(r"[.\-_](f32|f16|bf16|q\d\w*|iq\d\w*|tq\d\w*)$", re.IGNORECASE)


def default_name(base: str, type_label: str) -> str:
    """``llama-2-7b-chat`` + ``Q4_K_M`` -> ``llama-2-7b-chat:q4_k_m`` (the catalog's spelling)."""
    clean = re.sub(r"[^A-Za-z0-9._+-]+", "-", _TYPE_SUFFIX.sub("", base)).strip("-.") or "model"
    return f"{clean.lower()}:{type_label.lower()}"


def _store(store: Any) -> Any:
    from ..store import ModelStore

    return store if store is not None else ModelStore()


def _owned(store: Any, path: Path) -> bool:
    try:
        path.resolve().relative_to(store.models_dir.resolve())
        return True
    except ValueError:
        return False


def _finish(store: Any, name: str, out: Path, source: str, created_dir: Optional[Path]) -> Any:
    """Smoke-test ``out`` and register it; on failure delete it (and a folder made for it)."""
    from ..quantize import smoke_test

    with _removed_on_failure(created_dir):
        try:
            smoke_test(out)
            return store.register(name, out, source=source, owned=_owned(store, out))
        except BaseException:
            with contextlib.suppress(OSError):
                out.unlink()  # first the file, then (on the way out) the folder made for it
            raise


def _new_dir(folder: Path) -> Optional[Path]:
    """The folder if it does not exist yet (so a failure can remove it again)."""
    return None if folder.exists() else folder


@contextlib.contextmanager
def _removed_on_failure(created_dir: Optional[Path]) -> Iterator[None]:
    """Remove ``created_dir`` (if this run made it and it is empty) when the block fails."""
    try:
        yield
    except BaseException:
        if created_dir is not None:
            with contextlib.suppress(OSError):
                created_dir.rmdir()
        raise


def convert_and_register(src_dir: os.PathLike[str] | str, *, outtype: str = "f16", quant: Optional[str] = None,
                         out: Optional[os.PathLike[str] | str] = None, name: Optional[str] = None,
                         accept_license: bool = False, store: Any = None,
                         progress: Optional[ProgressCallback] = None,
                         cancel: Optional[threading.Event] = None) -> Any:
    """Convert ``src_dir`` (and quantize to ``quant``), test the result, register it as ``name``.

    Returns the ``StoredModel``. The file goes to ``out`` or into the store's models folder.
    """
    from . import convert_checkpoint, normalize_outtype
    from ..fetch import part_path
    from ..quantize import normalize_quant_type, quantize_gguf

    src = Path(src_dir).expanduser()
    out_type = normalize_outtype(outtype)
    qtype = normalize_quant_type(quant) if quant else None  # an unknown type fails before any work
    store = _store(store)
    label = qtype or out_type
    name = store.validate_name(name or default_name(src.name, label))
    target = Path(out).expanduser().absolute() if out else store.model_dir(name) / f"{src.name}.{label}.gguf"
    created = _new_dir(target.parent)
    with _removed_on_failure(created):
        if qtype is None:
            convert_checkpoint(src, target, out_type, progress, accept_license, store=store, cancel=cancel)
        else:
            temporary = target.with_name(f".{target.stem}.{out_type.lower()}.tmp.gguf")
            try:
                convert_checkpoint(src, temporary, out_type, progress, accept_license, store=store, cancel=cancel)
                quantize_gguf(temporary, target, qtype, progress=progress, cancel=cancel)
            finally:
                for leftover in (temporary, part_path(temporary)):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
    return _finish(store, name, target, f"convert:{src.resolve()}", created)


def quantize_and_register(src: os.PathLike[str] | str, qtype: str, *, out: Optional[os.PathLike[str] | str] = None,
                          name: Optional[str] = None, store: Any = None,
                          progress: Optional[ProgressCallback] = None,
                          cancel: Optional[threading.Event] = None) -> Any:
    """Quantize the GGUF ``src`` to ``qtype`` with llama.cpp, test it, register it as ``name``."""
    from ..gguf_info import read_gguf_info
    from ..quantize import normalize_quant_type, quantize_gguf

    key = normalize_quant_type(qtype)
    path = Path(src).expanduser()
    read_gguf_info(path)  # a clear error for a missing or non-GGUF input before anything else
    store = _store(store)
    base = _TYPE_SUFFIX.sub("", path.name[:-5] if path.name.lower().endswith(".gguf") else path.name)
    name = store.validate_name(name or default_name(base, key))
    target = Path(out).expanduser().absolute() if out else store.model_dir(name) / f"{base}.{key}.gguf"
    created = _new_dir(target.parent)
    with _removed_on_failure(created):
        quantize_gguf(path, target, key, progress=progress, cancel=cancel)
    return _finish(store, name, target, f"quantize:{path.resolve()}", created)
