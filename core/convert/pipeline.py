"""From a checkpoint folder (or an F16 GGUF) to a model in the store that ``llamalab chat`` can use.

``convert_and_register`` converts, optionally quantizes with llama.cpp's quantizer
(through a hidden temporary GGUF that is always deleted), checks the result with
``runcheck.check_model`` and registers it. ``quantize_and_register`` does the same from a GGUF.
If any step fails, the output file is removed and nothing is registered: a model is in the
store only once llama.cpp has accepted it. Both take ``cancel`` (a ``threading.Event``): once
set, the running step stops with ``OperationCancelledError`` and leaves no file behind.

Each weight is read as few times as the step allows: a conversion to f16/bf16/f32 writes the
file once, with its sha256 computed from the bytes as they are written; the check reads no
weight unless the model fits in memory (then once, to run one prompt). A quantized file,
written by llama.cpp, is read once more for its sha256. ``check`` ("auto", "run", "structure")
chooses the check's depth; the line saying which one was done is the last progress event of
the ``checking NAME`` stage.
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


def _finish(store: Any, name: str, out: Path, source: str, created_dir: Optional[Path], *,
            sha256: Optional[str], check: str, progress: Optional[ProgressCallback]) -> Any:
    """Check ``out`` runs and register it; on failure delete it (and a folder made for it)."""
    from ..gguf_info import read_gguf_info
    from ..store import sha256_file
    from .runcheck import check_model

    with _removed_on_failure(created_dir):
        try:
            info = read_gguf_info(out)
            digest = sha256 or sha256_file(out, progress, stage=f"hashing {out.name}")
            check_model(out, mode=check, progress=progress)  # its one-line result is the last event
            return store.register(name, out, source=source, sha256=digest, info=info, owned=_owned(store, out))
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
                         cancel: Optional[threading.Event] = None, check: str = "auto") -> Any:
    """Convert ``src_dir`` (and quantize to ``quant``), check the result, register it as ``name``.

    Returns the ``StoredModel``. The file goes to ``out`` or into the store's models folder.
    """
    from . import convert_checkpoint, normalize_outtype, write_checkpoint
    from ..fetch import part_path
    from ..quantize import normalize_quant_type, quantize_gguf

    src = Path(src_dir).expanduser()
    out_type = normalize_outtype(outtype)
    qtype = normalize_quant_type(quant) if quant else None  # an unknown type fails before any work
    _check_mode(check)
    store = _store(store)
    label = qtype or out_type
    name = store.validate_name(name or default_name(src.name, label))
    target = Path(out).expanduser().absolute() if out else store.model_dir(name) / f"{src.name}.{label}.gguf"
    created = _new_dir(target.parent)
    sha256 = None
    with _removed_on_failure(created):
        if qtype is None:
            sha256 = write_checkpoint(src, target, out_type, progress, accept_license, store=store,
                                      cancel=cancel).sha256
        else:
            temporary = target.with_name(f".{target.stem}.{out_type.lower()}.tmp.gguf")
            try:
                convert_checkpoint(src, temporary, out_type, progress, accept_license, store=store, cancel=cancel)
                quantize_gguf(temporary, target, qtype, progress=progress, cancel=cancel)
            finally:
                for leftover in (temporary, part_path(temporary)):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
    return _finish(store, name, target, f"convert:{src.resolve()}", created, sha256=sha256, check=check,
                   progress=progress)


def quantize_and_register(src: os.PathLike[str] | str, qtype: str, *, out: Optional[os.PathLike[str] | str] = None,
                          name: Optional[str] = None, store: Any = None,
                          progress: Optional[ProgressCallback] = None,
                          cancel: Optional[threading.Event] = None, check: str = "auto") -> Any:
    """Quantize the GGUF ``src`` to ``qtype`` with llama.cpp, check it, register it as ``name``."""
    from ..gguf_info import read_gguf_info
    from ..quantize import normalize_quant_type, quantize_gguf

    key = normalize_quant_type(qtype)
    _check_mode(check)
    path = Path(src).expanduser()
    read_gguf_info(path)  # a clear error for a missing or non-GGUF input before anything else
    store = _store(store)
    base = _TYPE_SUFFIX.sub("", path.name[:-5] if path.name.lower().endswith(".gguf") else path.name)
    name = store.validate_name(name or default_name(base, key))
    target = Path(out).expanduser().absolute() if out else store.model_dir(name) / f"{base}.{key}.gguf"
    created = _new_dir(target.parent)
    with _removed_on_failure(created):
        quantize_gguf(path, target, key, progress=progress, cancel=cancel)
    return _finish(store, name, target, f"quantize:{path.resolve()}", created, sha256=None, check=check,
                   progress=progress)


def _check_mode(check: str) -> None:
    """An unknown ``check`` fails before any work."""
    from .runcheck import check_mode

    check_mode(check)
