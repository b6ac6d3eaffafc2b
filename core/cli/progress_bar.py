"""Turns core ``Progress`` events into tqdm bars on stderr, one bar per stage."""

from __future__ import annotations

import sys
from typing import Any, Optional

from ..progress import Progress

__all__ = ["TqdmProgress"]


class TqdmProgress:
    """A ``ProgressCallback`` drawing a tqdm bar for each stage in turn."""

    def __init__(self, enabled: Optional[bool] = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bar: Any = None
        self._stage: Optional[str] = None

    def __call__(self, event: Progress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if event.stage != self._stage:
            self.close()
            self._stage = event.stage
            self._bar = tqdm(total=event.total, desc=event.stage, unit=event.unit, unit_scale=True,
                             unit_divisor=1024 if event.unit == "B" else 1000, leave=False, file=sys.stderr)
        if event.total and self._bar.total != event.total:
            self._bar.total = event.total
        self._bar.update(event.done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._stage = None

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
