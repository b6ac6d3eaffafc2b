"""Progress reporting for long work (pulls, hashing, extraction).

Library code never prints: a long step takes an optional ``ProgressCallback`` and calls
it with ``Progress`` events. The CLI turns them into tqdm bars; Jupyter turns them into
widgets or WebSocket events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

__all__ = ["Progress", "ProgressCallback", "report"]


@dataclass(frozen=True)
class Progress:
    """One step's state: ``done`` of ``total`` units (bytes unless ``unit`` says otherwise)."""

    stage: str
    done: int
    total: Optional[int] = None
    unit: str = "B"
    message: str = ""

    @property
    def fraction(self) -> Optional[float]:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


ProgressCallback = Callable[[Progress], None]


def report(callback: Optional[ProgressCallback], stage: str, done: int,
           total: Optional[int] = None, message: str = "", unit: str = "B") -> None:
    """Call ``callback`` if there is one; a helper so call sites stay one line."""
    if callback is not None:
        callback(Progress(stage=stage, done=done, total=total, unit=unit, message=message))
