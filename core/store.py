"""The model store: which GGUF files llamalab knows, and what each one is.

A store is a folder (``paths.store_root()`` by default) holding ``models/`` for files it
owns and ``registry.json`` describing every registered model: file, size, sha256,
architecture, quantization, context length, chat template, source and licence. Files
registered by path (``llamalab models add``) or living in the Hugging Face cache stay
where they are; the store only records them.

The registry is rewritten atomically (temporary file, then rename) under an advisory
file lock, so two processes (a Jupyter server and a terminal) can share one store.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional

from .errors import ConfigError, ModelNotFoundError
from .gguf_info import GGUFInfo, read_gguf_info
from .paths import store_root
from .progress import ProgressCallback, report

__all__ = ["ModelStore", "StoredModel", "sha256_file", "atomic_write_text"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")
_HASH_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class StoredModel:
    name: str
    path: str
    size_bytes: int
    sha256: str
    architecture: str
    quantization: str
    context_length: int
    chat_template: Optional[str]
    source: str
    license: Optional[str]
    owned: bool  # True when the file lives in the store's models/ folder and `rm` may delete it
    added_at: float

    @property
    def file(self) -> Path:
        return Path(self.path)


def sha256_file(path: Path, progress: Optional[ProgressCallback] = None, stage: str = "hashing") -> str:
    """The file's sha256, read in chunks so memory stays flat."""
    digest = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            report(progress, stage, done, total)
    return digest.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so readers see the old or the new file, never half of one, and a
    crash right after leaves the new one: a ``*.part`` file (mode 0600) in the same folder,
    fsynced, renamed over ``path``, the folder fsynced too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself, on filesystems that allow a folder fsync
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class ModelStore:
    """Registry of local GGUF models. Cheap to create; every call re-reads the registry."""

    def __init__(self, root: Optional[os.PathLike[str] | str] = None) -> None:
        self.root = Path(root).expanduser() if root is not None else store_root()

    # -- layout ---------------------------------------------------------------------
    @property
    def registry_path(self) -> Path:
        return self.root / "registry.json"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def model_dir(self, name: str) -> Path:
        """The folder a pulled model's file goes in (``:`` is not portable in paths)."""
        return self.models_dir / self.validate_name(name).replace(":", "--")

    @staticmethod
    def validate_name(name: str) -> str:
        if not _NAME_RE.match(name):
            raise ConfigError(
                f"'{name}' is not a valid model name: use letters, digits and . _ - : + (at most 128)."
            )
        return name

    # -- registry I/O ---------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self.root / ".registry.lock"
        with open(lock_path, "a+") as lock:
            try:
                import fcntl

                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            except ImportError:  # Windows: no advisory lock; atomic rename still protects readers
                pass
            yield

    def _read(self) -> dict[str, dict]:
        try:
            raw = self.registry_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(
                f"{self.registry_path} is not valid JSON; move it aside and re-add your models."
            ) from None
        return data.get("models", {})

    def _write(self, models: dict[str, dict]) -> None:
        atomic_write_text(self.registry_path,
                          json.dumps({"version": 1, "models": models}, indent=2, sort_keys=True))

    # -- queries ----------------------------------------------------------------------
    def list(self) -> list[StoredModel]:
        return [StoredModel(**entry) for _, entry in sorted(self._read().items())]

    def find(self, name: str) -> Optional[StoredModel]:
        entry = self._read().get(name)
        return StoredModel(**entry) if entry else None

    def get(self, name: str) -> StoredModel:
        model = self.find(name)
        if model is None:
            raise ModelNotFoundError(
                f"no model named '{name}' in the store; see `llamalab models list` "
                f"or pull it with `llamalab models pull {name}`."
            )
        if not model.file.is_file():
            raise ModelNotFoundError(
                f"the file of model '{name}' is gone ({model.path}); "
                f"remove it with `llamalab models rm {name}` and pull or add it again."
            )
        return model

    # -- changes ----------------------------------------------------------------------
    def register(self, name: str, path: Path, *, source: str, sha256: Optional[str] = None,
                 license: Optional[str] = None, owned: bool = False,
                 info: Optional[GGUFInfo] = None,
                 progress: Optional[ProgressCallback] = None, force: bool = False) -> StoredModel:
        """Validate ``path`` as a GGUF model and record it under ``name``.

        A name already in the store is never replaced silently: that raises ``ConfigError``
        unless ``force=True`` (the caller's user asked to replace it)."""
        self.validate_name(name)
        path = Path(path).expanduser().resolve()
        if not force:
            self._refuse_existing(name)  # early, before hashing; checked again under the lock
        info = info or read_gguf_info(path)
        digest = sha256 or sha256_file(path, progress)
        model = StoredModel(
            name=name,
            path=str(path),
            size_bytes=info.size_bytes,
            sha256=digest,
            architecture=info.architecture,
            quantization=info.quantization,
            context_length=info.context_length,
            chat_template=info.chat_template,
            source=source,
            license=license or info.license,
            owned=owned,
            added_at=time.time(),
        )
        with self._locked():
            models = self._read()
            if not force and name in models:
                self._refuse_existing(name)
            models[name] = asdict(model)
            self._write(models)
        return model

    def _refuse_existing(self, name: str) -> None:
        existing = self.find(name)
        if existing is not None:
            raise ConfigError(
                f"the store already has a model named '{name}' ({existing.path}); choose another name, "
                f"remove it first (`llamalab models rm {name}`) or replace it explicitly with force."
            )

    def remove(self, name: str, *, delete_file: bool = True) -> StoredModel:
        """Forget ``name``; delete its file too when the store owns it."""
        with self._locked():
            models = self._read()
            entry = models.pop(name, None)
            if entry is None:
                raise ModelNotFoundError(f"no model named '{name}' in the store; see `llamalab models list`.")
            self._write(models)
        model = StoredModel(**entry)
        if delete_file and model.owned:
            with contextlib.suppress(FileNotFoundError):
                model.file.unlink()
            with contextlib.suppress(OSError):
                model.file.parent.rmdir()
        return model
