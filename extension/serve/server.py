"""Starting and stopping ``llamalab serve``: the tornado application, TLS, the model loaded
once at start, and a graceful stop.

Stop (SIGTERM, SIGINT, or ``Server.stop``): new connections are refused and new requests get
503 at once; running generations get ``stop_grace_s`` to finish, then are cancelled, and a stream
cancelled so ends with an error event that says the server is stopping (and ``data: [DONE]`` is
not sent, so a client cannot take it for a whole answer); then every connection is closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from typing import Any, Callable, Optional

from tornado import web
from tornado.httpserver import HTTPServer

from llamalab import ConfigError, LlamalabError, ModelStore

from .handlers import NotFoundHandler, routes
from .state import ServeConfig, ServeState

__all__ = ["Server", "run"]


class Server:
    def __init__(self, config: ServeConfig, store: Optional[ModelStore] = None,
                 log: Optional[logging.Logger] = None) -> None:
        self.config = config
        self.state = ServeState(config, store, log)
        self.log = self.state.log
        self.app = web.Application(routes(), default_handler_class=NotFoundHandler, llamalab_serve=self.state,
                                   llamalab_manager=self.state.manager, log_function=self._access_log)
        self.http: Optional[HTTPServer] = None
        self.port = config.port
        self._loading: Optional["asyncio.Task[None]"] = None
        self._stopped = asyncio.Event()

    @property
    def url(self) -> str:
        scheme = "https" if self.config.certfile else "http"
        return f"{scheme}://{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Listen, then load the model in the background (``/health`` says ``loading`` until it is in)."""
        manager = self.state.manager
        name = manager.canonical(self.config.model, paths=True)
        if manager.store.find(name) is None and "/" in name:
            raise ConfigError(f"{self.config.model} is a file, not a model in the store; add it first "
                              "(`llamalab models add FILE --name NAME`) and serve it by name.")
        manager.config.default_model = name
        manager.config.allowed_models = (name, self.config.model)
        self.state.model_name = name
        self.http = HTTPServer(self.app, ssl_options=self._tls(), max_body_size=self.config.max_body_bytes,
                               max_buffer_size=self.config.max_body_bytes, idle_connection_timeout=300,
                               body_timeout=60)
        sockets = self.http.listen(self.config.port, self.config.host) or []
        if self.config.port == 0:  # a free port was asked for: which one?
            self.port = _bound_port(self.http)
        del sockets
        self._loading = asyncio.ensure_future(self._load())

    async def _load(self) -> None:
        try:
            loaded = await self.state.manager.load(None)
            self.state.model_name, self.state.loaded = loaded.name, True
            self.log.info("llamalab serve: %s loaded (n_ctx %s, %s)", loaded.name, loaded.context_length,
                          loaded.backend)
        except LlamalabError as exc:
            self.state.load_error = str(exc)
            self.log.error("llamalab serve: cannot load %s: %s", self.config.model, exc)

    async def wait_loaded(self) -> None:
        if self._loading is not None:
            await self._loading
        if self.state.load_error:
            raise ConfigError(self.state.load_error)

    def _tls(self) -> Optional[ssl.SSLContext]:
        if not self.config.certfile:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(str(self.config.certfile), str(self.config.keyfile) if self.config.keyfile else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot use the TLS certificate {self.config.certfile}: {exc}; give a PEM "
                              "certificate with --certfile and its key with --keyfile.") from None
        return context

    async def stop(self) -> None:
        """Stop gracefully (see the module docstring); returns once everything is closed."""
        if self.state.stopping:
            await self._stopped.wait()
            return
        self.state.stopping = True
        manager = self.state.manager
        if self.http is not None:
            self.http.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.stop_grace_s
        while manager.active_count and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if manager.active_count:
            self.log.info("llamalab serve: cancelling %d generations still running", manager.active_count)
        await manager.close()
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        if self.http is not None:
            try:
                await asyncio.wait_for(self.http.close_all_connections(), 10)
            except asyncio.TimeoutError:
                self.log.warning("llamalab serve: some connections did not close within 10 s")
        self._stopped.set()

    def _access_log(self, handler: web.RequestHandler) -> None:
        """Tornado's access log without query strings (where a careless client may put a key)."""
        request = handler.request
        status = handler.get_status()
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
        self.log.log(level, "%d %s %s (%s) %.1f ms", status, request.method, request.path, request.remote_ip,
                     1000.0 * request.request_time())


def _bound_port(http: HTTPServer) -> int:
    for sock in http._sockets.values():  # tornado keeps them by file descriptor
        return int(sock.getsockname()[1])
    raise ConfigError("the server is not listening")


def run(config: ServeConfig, on_ready: Callable[[Server], Any] = lambda server: None,
        log: Optional[logging.Logger] = None) -> None:
    """Serve until SIGTERM or SIGINT, then stop gracefully. ``on_ready`` is called once the model
    is loaded (the CLI prints the address then)."""

    async def main() -> None:
        server = Server(config, log=log)
        await server.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(server.stop()))
        try:
            await server.wait_loaded()
        except ConfigError:
            await server.stop()
            raise
        on_ready(server)
        await server._stopped.wait()

    asyncio.run(main())
