"""What the benchmark scripts share: their common options, finding the model a run measures,
and writing its raw numbers.

The scripts run as ``python bench/bench_X.py``, so this folder is on ``sys.path`` and they
import this module by its plain name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


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
