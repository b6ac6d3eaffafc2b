"""How kernels started by the Jupyter server find the server's model.

The server process sets two environment variables, which every kernel it starts inherits
(jupyter_server launches kernels with a copy of its own environment):

``LLAMALAB_SERVER_URL``
    the extension's root, e.g. ``http://127.0.0.1:8888/llamalab``; its OpenAI-compatible
    routes are below ``/v1``.
``LLAMALAB_SERVER_KEY``
    a random key made when the server starts. It opens only the inference routes
    (``/llamalab/v1/*`` and ``/llamalab/tokenize``), not the rest of Jupyter's API, and
    dies with the server process. Jupyter's own token (or login cookie) works there too.

When the administrator sets ``LlamalabExtension.store_dir``, ``LLAMALAB_HOME`` is exported
as well (unless already set), so kernels pull into and list the same store.

The key is checked by ``KernelKeyIdentity``, a wrapper around the server's identity
provider used only by the inference handlers: a request bearing the key is the user
``llamalab-kernel``; any other request is handed to Jupyter's identity provider as usual.
Authorization still goes through the server's authorizer (``@authorized``).
"""

from __future__ import annotations

import hmac
import os
import secrets
from typing import Any, Callable, Optional

__all__ = ["HOME_ENV", "KERNEL_USER", "SERVER_KEY_ENV", "SERVER_URL_ENV", "KernelKeyIdentity",
           "export_to_kernels", "new_key"]

SERVER_URL_ENV = "LLAMALAB_SERVER_URL"
SERVER_KEY_ENV = "LLAMALAB_SERVER_KEY"
HOME_ENV = "LLAMALAB_HOME"
KERNEL_USER = "llamalab-kernel"


def new_key() -> str:
    return secrets.token_urlsafe(32)


def bearer(headers: Any) -> Optional[str]:
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() in ("bearer", "token") and token.strip() else None


class KernelKeyIdentity:
    """Jupyter's identity provider, plus the kernels' key for the inference routes."""

    def __init__(self, inner: Any, key: str) -> None:
        self._inner = inner
        self._key = key

    def matches(self, handler: Any) -> bool:
        token = bearer(handler.request.headers)
        return token is not None and hmac.compare_digest(token.encode(), self._key.encode())

    async def get_user(self, handler: Any) -> Any:
        if self.matches(handler):
            from jupyter_server.auth.identity import User

            return User(username=KERNEL_USER, name="llamalab kernel access")
        user = self._inner.get_user(handler)
        if hasattr(user, "__await__"):
            user = await user
        return user

    def is_token_authenticated(self, handler: Any) -> bool:
        return self.matches(handler) or self._inner.is_token_authenticated(handler)

    def should_check_origin(self, handler: Any) -> bool:
        return not self.matches(handler) and self._inner.should_check_origin(handler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def export_to_kernels(url: Optional[str], key: Optional[str], store_dir: Optional[str]) -> Callable[[], None]:
    """Set the variables kernels inherit; return the function that restores the old values."""
    wanted: dict[str, Optional[str]] = {SERVER_URL_ENV: url, SERVER_KEY_ENV: key}
    if store_dir and HOME_ENV not in os.environ:
        wanted[HOME_ENV] = store_dir
    before = {name: os.environ.get(name) for name in wanted}
    for name, value in wanted.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    def restore() -> None:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    return restore
