"""API keys for ``llamalab serve``: who may use a team's model, and how much of it.

A key is ``llk-`` followed by 43 random URL-safe characters (256 bits). The file keeps only its
SHA-256 (a random 256-bit secret needs no salt or slow hash: there is nothing to guess), the
first characters to recognise it by, its name and its limits:

    {"version": 1, "keys": [{"name": "alice", "sha256": "...", "shown": "llk-AbCd",
                             "created": 1765000000.0, "max_concurrent": 4, "max_tokens": 2048,
                             "role": "user", "revoked": null}]}

The name is the user the server's scheduler treats fairly and the label in its metrics. The
role says what the key opens (``ROLES``): ``user`` the model's routes, ``metrics`` only
``/metrics`` (which shows every user's usage: a key for Prometheus, not for a person),
``admin`` both; a key written before roles existed is a ``user`` key. The
file (default ``$LLAMALAB_HOME/serve-keys.json``) is written atomically with mode 0600
(``atomic_write_text``); a
running server notices changes (a key added or revoked) on the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional, Union

from .errors import ConfigError
from .paths import store_root
from .store import atomic_write_text

__all__ = ["ApiKey", "KeyRing", "default_keys_file", "ROLES"]

_VERSION = 1
_PREFIX = "llk-"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
ROLES = ("user", "metrics", "admin")


def default_keys_file() -> Path:
    return store_root() / "serve-keys.json"


@dataclass(frozen=True)
class ApiKey:
    """One key as the file keeps it (never the key itself)."""

    name: str
    sha256: str
    shown: str
    created: float
    max_concurrent: int = 4
    max_tokens: int = 2048
    revoked: Optional[float] = None
    role: str = "user"

    @property
    def active(self) -> bool:
        return self.revoked is None

    @property
    def may_generate(self) -> bool:
        """Whether the key opens the model's routes (completions, chat, tokenize, ...)."""
        return self.role in ("user", "admin")

    @property
    def may_read_metrics(self) -> bool:
        """Whether the key opens ``/metrics``, which shows every user's usage."""
        return self.role in ("metrics", "admin")


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class KeyRing:
    """The keys file: add, list, revoke, and check a presented key."""

    def __init__(self, path: Union[str, os.PathLike[str], None] = None) -> None:
        self.path = Path(path) if path is not None else default_keys_file()
        self._lock = threading.Lock()
        self._seen: Optional[tuple[int, int]] = None  # (mtime_ns, size) of the file last read
        self._keys: list[ApiKey] = []

    # -- reading ----------------------------------------------------------------------
    def _read(self) -> list[ApiKey]:
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ConfigError(f"cannot read the keys file {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != _VERSION or not isinstance(data.get("keys"), list):
                raise ValueError(f"expected version {_VERSION} with a list of keys")
            return [_key_from(entry) for entry in data["keys"]]
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"the keys file {self.path} is damaged ({exc}); move it aside and add the keys "
                              "again with `llamalab serve keys add NAME`.") from None

    def keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, as the file has them now."""
        with self._lock:
            self._refresh()
            return list(self._keys)

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
            seen: Optional[tuple[int, int]] = (stat.st_mtime_ns, stat.st_size)
        except FileNotFoundError:
            seen = None
        if seen != self._seen or seen is None:
            self._keys = self._read()
            self._seen = seen

    def check(self, presented: str) -> Optional[ApiKey]:
        """The active key ``presented`` is, or None (unknown or revoked)."""
        if not presented.startswith(_PREFIX) or len(presented) > 128:
            return None
        digest = _digest(presented)
        found = None
        for key in self.keys():
            if hmac.compare_digest(key.sha256, digest):  # compare every key: no early exit to time
                found = key
        return found if found is not None and found.active else None

    # -- changing ---------------------------------------------------------------------
    def add(self, name: str, *, max_concurrent: int = 4, max_tokens: int = 2048, role: str = "user") -> str:
        """A new key named ``name``; returns the key itself (shown once, never stored)."""
        if role not in ROLES:
            raise ConfigError(f"unknown key role '{role}'; choose one of: {', '.join(ROLES)}.")
        if not _NAME.match(name):
            raise ConfigError(f"'{name}' is not a usable key name: use 1-64 letters, digits and . _ @ - "
                              "(a user name, say), starting with a letter or digit.")
        if not 1 <= max_concurrent <= 1024:
            raise ConfigError(f"max_concurrent must be between 1 and 1024, got {max_concurrent}.")
        if not 1 <= max_tokens <= 1_000_000:
            raise ConfigError(f"max_tokens must be between 1 and 1000000, got {max_tokens}.")
        key = _PREFIX + secrets.token_urlsafe(32)
        with self._lock:
            keys = self._read()
            if any(k.name == name and k.active for k in keys):
                raise ConfigError(f"a key named '{name}' exists; revoke it first "
                                  f"(`llamalab serve keys revoke {name}`) or choose another name.")
            keys = [k for k in keys if k.name != name]  # a revoked key of that name is replaced
            keys.append(ApiKey(name=name, sha256=_digest(key), shown=key[:8], created=time.time(),
                               max_concurrent=max_concurrent, max_tokens=max_tokens, role=role))
            self._write(keys)
        return key

    def revoke(self, name: str) -> ApiKey:
        with self._lock:
            keys = self._read()
            match = [k for k in keys if k.name == name and k.active]
            if not match:
                known = ", ".join(k.name for k in keys if k.active) or "none"
                raise ConfigError(f"no active key named '{name}' (active keys: {known}).")
            revoked = replace(match[0], revoked=time.time())
            self._write([revoked if k is match[0] else k for k in keys])
        return revoked

    def _write(self, keys: list[ApiKey]) -> None:
        atomic_write_text(self.path, json.dumps({"version": _VERSION, "keys": [asdict(k) for k in keys]}, indent=1))
        self._seen = None  # read it again next time


def _key_from(entry: Any) -> ApiKey:
    if not isinstance(entry, dict):
        raise ValueError("a key entry is not an object")
    key = ApiKey(name=str(entry["name"]), sha256=str(entry["sha256"]), shown=str(entry.get("shown", "")),
                 created=float(entry.get("created", 0)), max_concurrent=int(entry.get("max_concurrent", 4)),
                 max_tokens=int(entry.get("max_tokens", 2048)),
                 revoked=None if entry.get("revoked") is None else float(entry["revoked"]),
                 role=str(entry.get("role", "user")))
    if not re.fullmatch(r"[0-9a-f]{64}", key.sha256):
        raise ValueError(f"the key '{key.name}' has no valid sha256")
    if key.role not in ROLES:
        raise ValueError(f"the key '{key.name}' has an unknown role '{key.role}'")
    return key
