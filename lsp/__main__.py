"""``python -m llamalab.lsp``: the language server over stdio (``--tcp HOST:PORT`` for debugging)."""

import sys

from .server import main

sys.exit(main())
