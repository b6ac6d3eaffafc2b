"""Small text helpers shared by the CLI's commands."""

from __future__ import annotations

__all__ = ["human_size"]


def human_size(n: float) -> str:
    """Bytes as a person reads them, in decimal units: ``98.4 MB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
