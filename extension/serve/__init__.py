"""``llamalab serve``: one model for a team, behind API keys (``llamalab.KeyRing``).

The same OpenAI-compatible routes as the Jupyter extension (``llamalab.extension.openai``),
served by a plain tornado server with no Jupyter around it: a JupyterHub's single-user servers
point at it with ``remote_url`` and a key each, so the model is loaded once for everyone.
"""

from .server import Server, run
from .state import ServeConfig

__all__ = ["ServeConfig", "Server", "run"]
