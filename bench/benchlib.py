"""What the benchmark scripts share: their common options, finding the model a run measures,
llama.cpp's ``llama-server`` binary and free ports for the servers they start, and writing
their raw numbers.

The scripts run as ``python bench/bench_X.py``, so this folder is on ``sys.path`` and they
import this module by its plain name.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]


def model_path(args: argparse.Namespace) -> Path:
    """``--model PATH`` when given, else the store's default model (under ``--home`` when given),
    pulled on first use."""
    from llamalab import ModelStore, locate

    if args.model:
        return Path(args.model).expanduser().resolve()
    store = ModelStore(args.home) if args.home else ModelStore()
    return locate(None, store=store, on_notice=lambda msg: print(msg, file=sys.stderr))


def add_common_arguments(ap: argparse.ArgumentParser, *, home_also: str = "",
                         json_help: str = "write the raw numbers as JSON to PATH") -> None:
    """The options every benchmark has: which model (``--model``, ``--home``), where its raw
    numbers go (``--json``) and whether a missed target fails the run (``--strict``)."""
    ap.add_argument("--model", help="GGUF file to load (default: the demo model, pulled on first use)")
    ap.add_argument("--home", help=f"llamalab store to locate/pull the demo model in{home_also} "
                    "(default: $LLAMALAB_HOME or the user's store)")
    ap.add_argument("--json", metavar="PATH", help=json_help)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")


def save_report(path: str, report: dict[str, Any]) -> None:
    """Write a run's raw numbers as JSON and say where."""
    Path(path).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"raw numbers written to {path}")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def llama_server_binary(explicit: Optional[str] = None) -> Optional[Path]:
    """llama.cpp's ``llama-server``: ``explicit``, else ``$LLAMA_SERVER`` (the binary or its
    folder), else where ``scripts/build-llama-server.sh`` caches it for the installed
    llama-cpp-python, else an older in-repository build; None when none is there."""
    import importlib.metadata

    given = explicit or os.environ.get("LLAMA_SERVER")
    if given:
        candidates = [Path(given)]
    else:
        cache = Path(os.environ.get("LLAMALAB_DEV_CACHE") or Path.home() / ".cache" / "llamalab-dev")
        try:
            version = importlib.metadata.version("llama_cpp_python")
            candidates = [cache / f"llama.cpp-{version}" / "bin"]
        except importlib.metadata.PackageNotFoundError:
            candidates = []
        candidates.append(REPO / ".cache" / "llama-server-build" / "bin")
    for path in candidates:
        if path.is_dir():
            path = path / "llama-server"
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None
