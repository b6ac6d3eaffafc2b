"""Commands whose code lives in an optional part of llamalab (the ``lsp`` or ``jupyter`` extra):
imported only when they run, with one line saying which extra to install when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

import click

__all__ = ["import_extra"]


def import_extra(module: str, extra: str, what: str) -> ModuleType:
    """``module``, or a ``ClickException`` naming the extra that ``what`` needs."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise click.ClickException(
            f"{what} needs the {extra} extra ({exc.name} is missing): pip install 'llamalab[{extra}]'"
        ) from None
