"""The remote model server's list of models, as the Jupyter extension shows it and checks choices
against it (with ``remote_url`` set).

``RemoteModels.listing`` asks the server (``GET /v1/models``, then its kind from the capability
probe) on a thread, through its own ``RemoteEngine`` with short timeouts, and gives up after
``REMOTE_LIST_DEADLINE_S``: an unreachable or slow server becomes a listing with a one-line
``error``, never a stalled route. A listing (an error one too) is reused for
``REMOTE_LIST_TTL_S``, so the model manager's polling does not hammer a team's server; one
listing runs at a time. ``check_listed`` refuses an id the server does not list, naming those it
does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Optional

from llamalab import EngineError, LlamalabError, ModelNotFoundError, RemoteEngine

__all__ = ["RemoteModels", "Listing", "REMOTE_LIST_TTL_S"]

REMOTE_LIST_TTL_S = 15.0  # how long a listing of the remote server's models is reused
REMOTE_LIST_TIMEOUT_S = 3.0  # each step (connect, each read) of a listing request
REMOTE_LIST_DEADLINE_S = 8.0  # a whole listing (the models, then /props once)


@dataclasses.dataclass(frozen=True)
class Listing:
    """What the remote server listed (or why not), and when (the event loop's clock)."""

    ids: tuple[str, ...] = ()
    kind: Optional[str] = None
    error: Optional[str] = None
    at: float = 0.0


class RemoteModels:
    """The cached listing of one remote server (``url``, ``api_key``); ``close`` when they change."""

    def __init__(self) -> None:
        self._lister: Optional[RemoteEngine] = None  # short timeouts, for listing only
        self._listing: Optional[Listing] = None
        self._target: Optional[tuple[str, Optional[str]]] = None
        self._lock = asyncio.Lock()

    async def listing(self, url: str, api_key: Optional[str], *, fresh: bool = False) -> Listing:
        """The server's listing, reused for ``REMOTE_LIST_TTL_S`` unless ``fresh``."""
        async with self._lock:
            loop, target = asyncio.get_running_loop(), (url, api_key)
            if target != self._target:
                stale = self._close_lister()
                if stale is not None:
                    stale.close()  # closes its HTTP client: nothing to wait for
                self._target = target
            cached = self._listing
            if cached is not None and not fresh and loop.time() - cached.at < REMOTE_LIST_TTL_S:
                return cached
            try:
                if self._lister is None:
                    self._lister = RemoteEngine(url, api_key=api_key, timeout=REMOTE_LIST_TIMEOUT_S,
                                                connect_timeout=REMOTE_LIST_TIMEOUT_S)
                listing = await asyncio.wait_for(asyncio.to_thread(_list_remote, self._lister), REMOTE_LIST_DEADLINE_S)
            except LlamalabError as exc:
                listing = Listing(error=" ".join(str(exc).split()))
            except asyncio.TimeoutError:
                listing = Listing(error=f"the model server at {RemoteEngine.redact_url(url)} did not list its models "
                                        f"within {REMOTE_LIST_DEADLINE_S:g} s; check that it is running and not "
                                        "overloaded, then refresh.")
            self._listing = dataclasses.replace(listing, at=loop.time())
            return self._listing

    async def check_listed(self, url: str, api_key: Optional[str], name: str) -> None:
        """Refuse ``name`` unless the server lists it (``ModelNotFoundError`` naming those it does;
        ``EngineError`` when it cannot be asked)."""
        listing = await self.listing(url, api_key)
        if name not in listing.ids:
            listing = await self.listing(url, api_key, fresh=True)  # it may have changed since
        if listing.error:
            raise EngineError(listing.error)
        if name not in listing.ids:
            shown = name if len(name) <= 60 else name[:57] + "..."
            offered = ", ".join(listing.ids[:20]) + (", ..." if len(listing.ids) > 20 else "")
            raise ModelNotFoundError(f"the model server at {RemoteEngine.redact_url(url)} does not list '{shown}'; "
                                     f"choose one it lists: {offered or 'none'}.")

    async def close(self) -> None:
        """Forget the listing and close the listing engine (``remote_url`` or the key changed)."""
        async with self._lock:  # not under a listing that runs
            lister = self._close_lister()
        if lister is not None:
            await asyncio.to_thread(lister.close)

    def _close_lister(self) -> Optional[RemoteEngine]:
        lister, self._lister, self._listing, self._target = self._lister, None, None, None
        return lister


def _list_remote(engine: RemoteEngine) -> Listing:
    """The server's model ids and kind (unknown where ``/props`` fails); an unreachable server is an error listing."""
    try:
        ids = tuple(engine.list_models())
    except LlamalabError as exc:
        return Listing(error=" ".join(str(exc).split()))
    try:
        kind: Optional[str] = engine.server_kind()
    except LlamalabError:
        kind = None
    return Listing(ids, kind)
