"""What the benchmark scripts share: finding the model a run measures.

The scripts run as ``python bench/bench_X.py``, so this folder is on ``sys.path`` and they
import this module by its plain name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def model_path(args: argparse.Namespace) -> Path:
    """``--model PATH`` when given, else the store's default model (under ``--home`` when given),
    pulled on first use."""
    from llamalab import ModelStore, locate

    if args.model:
        return Path(args.model).expanduser().resolve()
    store = ModelStore(args.home) if args.home else ModelStore()
    return locate(None, store=store, on_notice=lambda msg: print(msg, file=sys.stderr))
