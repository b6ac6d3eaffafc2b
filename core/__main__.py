"""``python -m llamalab`` is the ``llamalab`` command."""

from .cli.main import main

main()
