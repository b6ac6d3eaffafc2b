"""Progress reporting and cancelling for long work (pulls, hashing, conversion, quantization).

Library code never prints: a long step takes an optional ``ProgressCallback`` and calls
it with ``Progress`` events. The CLI turns them into tqdm bars; Jupyter turns them into
widgets or WebSocket events.

A long step that takes ``cancel: Optional[threading.Event]`` wraps its callback with
``cancellable``: every report then raises ``OperationCancelledError`` once the event is set,
so the step stops between two chunks or tensors and cleans up like after any other error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

from .errors import OperationCancelledError

__all__ = ["Progress", "ProgressCallback", "report", "cancellable", "raise_if_cancelled"]


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


def raise_if_cancelled(cancel: Optional[threading.Event], what: str = "the operation") -> None:
    if cancel is not None and cancel.is_set():
        raise OperationCancelledError(f"{what} was cancelled; its partial files were deleted, start it again "
                                      "to redo it.")


def cancellable(callback: Optional[ProgressCallback], cancel: Optional[threading.Event],
                what: str = "the operation") -> Optional[ProgressCallback]:
    """``callback`` (which may be None) that raises ``OperationCancelledError`` once ``cancel``
    is set, checked before and after each report; ``callback`` itself when ``cancel`` is None.

    A report that the step is complete (``done >= total``) is let through: steps send it once
    their output is in place, and a cancel that comes that late lets them finish."""
    if cancel is None:
        return callback

    def call(progress: Progress) -> None:
        finished = progress.total is not None and progress.done >= progress.total
        if not finished:
            raise_if_cancelled(cancel, what)
        if callback is not None:
            callback(progress)
        if not finished:
            raise_if_cancelled(cancel, what)

    return call
