"""Where llamalab keeps its files.

The store lives in ``$LLAMALAB_HOME`` when set, else ``$XDG_CACHE_HOME/llamalab``, else
``~/.cache/llamalab``. Nothing is created on import; callers create what they write.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["HOME_ENV", "store_root"]

HOME_ENV = "LLAMALAB_HOME"


def store_root() -> Path:
    """The folder that holds the model store and its registry."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".cache"
    return base / "llamalab"
