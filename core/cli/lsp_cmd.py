"""``llamalab lsp``: the language server for editors (needs the ``lsp`` extra).

pygls and lsprotocol are imported only when the command runs, so the core stays free of them.
"""

from __future__ import annotations

from typing import Optional

import click

from .extras import import_extra

__all__ = ["lsp"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command("lsp", context_settings=CONTEXT_SETTINGS)
@click.option("--tcp", "tcp", metavar="HOST:PORT", default=None,
              help="Listen on TCP instead of stdio (for debugging).")
@click.option("--log-level", default="INFO", show_default=True, help="Logging level of the server (stderr).")
def lsp(tcp: Optional[str], log_level: str) -> None:
    """Run the language server (stdio by default) for inline code completion in editors.

    The model and limits come from the client's initializationOptions."""
    server = import_extra("llamalab.lsp.server", "lsp", "the language server")
    argv = ["--log-level", log_level] + (["--tcp", tcp] if tcp else [])
    raise SystemExit(server.main(argv))
