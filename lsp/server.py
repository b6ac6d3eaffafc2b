"""The llamalab language server: inline code completion from a local or remote model.

Features: ``textDocument/inlineCompletion`` (LSP 3.18 ghost text), ``textDocument/completion``
for clients without it, document sync (pygls keeps the open documents), ``$/cancelRequest``
(pygls cancels the handler's task, which cancels the generation underneath).

A request waits ``debounceMs`` first; a newer request for the same document supersedes it:
the older one's generation is cancelled (``TokenStream.cancel`` takes effect within one
token) and it answers with an empty result. Prompts are fill-in-the-middle ones built from
token ids when the model has FIM tokens, prefix-only otherwise; generation streams on a
helper thread (``AsyncTokenStream``) so the event loop never blocks, and ends as soon as
the stop rules in ``llamalab.completion_rules`` say the suggestion is complete.

``initializationOptions`` (all optional)::

    {"model": "path/to/model.gguf or a catalog name", "remoteUrl": "http://host:port/v1",
     "remoteModel": "name", "maxTokens": 64, "debounceMs": 150, "nCtx": 4096,
     "prefixTokens": 1024, "suffixTokens": 256}
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import dataclass, replace
from typing import Any, Optional

from lsprotocol import types
from pygls.lsp.server import LanguageServer

from llamalab import (AsyncTokenStream, CursorContext, Engine, FimTokens, GenerationParams, LocalEngine, RemoteEngine,
                      __version__, build_fim_prompt, locate, postprocess_completion,
                      should_stop_completion)


__all__ = ["Settings", "LlamalabLanguageServer", "create_server", "main"]

log = logging.getLogger("llamalab.lsp")


@dataclass(frozen=True)
class Settings:
    model: Optional[str] = None
    remote_url: Optional[str] = None
    remote_model: Optional[str] = None
    max_tokens: int = 64
    debounce_ms: int = 150
    n_ctx: int = 4096
    prefix_tokens: int = 1024
    suffix_tokens: int = 256

    _KEYS = {"model": "model", "remoteUrl": "remote_url", "remoteModel": "remote_model",
             "maxTokens": "max_tokens", "debounceMs": "debounce_ms", "nCtx": "n_ctx",
             "prefixTokens": "prefix_tokens", "suffixTokens": "suffix_tokens"}

    def updated(self, options: Any) -> "Settings":
        """These settings with the known camelCase keys of ``options`` applied."""
        if not isinstance(options, dict):
            return self
        changes: dict[str, Any] = {}
        for key, field_name in self._KEYS.items():
            if options.get(key) is not None:
                current = getattr(self, field_name)
                value = options[key]
                changes[field_name] = int(value) if isinstance(current, int) else str(value)
        return replace(self, **changes)


class LlamalabLanguageServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("llamalab", __version__)
        self.settings = Settings()
        self.engine: Optional[Engine] = None
        self._engine_lock = asyncio.Lock()
        self._latest: dict[str, int] = {}  # uri -> number of the newest request
        self._streams: dict[str, AsyncTokenStream] = {}  # uri -> the running generation
        self._counter = 0

    # -- the model ------------------------------------------------------------------
    def _load_engine(self) -> Engine:
        s = self.settings
        if s.remote_url:
            return RemoteEngine(s.remote_url, model=s.remote_model)
        path = locate(s.model)
        log.info("loading %s", path)
        return LocalEngine(path, n_ctx=s.n_ctx)

    async def get_engine(self) -> Engine:
        async with self._engine_lock:
            if self.engine is None:
                self.engine = await asyncio.to_thread(self._load_engine)
            return self.engine

    def _start(self, engine: Engine, ctx: CursorContext, params: GenerationParams) -> AsyncTokenStream:
        s = self.settings

        def start() -> Any:
            if isinstance(engine, LocalEngine):
                prompt = build_fim_prompt(engine, ctx.prefix, ctx.suffix, FimTokens.from_info(engine.info),
                                          max_prefix_tokens=s.prefix_tokens, max_suffix_tokens=s.suffix_tokens)
                return engine.complete_tokens(prompt.tokens, params)
            return engine.complete(ctx.prefix[-4 * s.prefix_tokens:], params)

        return AsyncTokenStream(start)

    # -- one completion ---------------------------------------------------------------
    async def suggest(self, uri: str, position: types.Position) -> Optional[str]:
        """The suggestion at ``position``; None when superseded, cancelled or nothing to say."""
        self._counter += 1
        number = self._latest[uri] = self._counter
        older = self._streams.pop(uri, None)
        if older is not None:
            older.cancel()  # the superseded generation stops within a token
        document = self.workspace.get_text_document(uri)
        text = document.source
        if uri not in self.workspace.text_documents:
            return None
        offset = min(len(text), document.offset_at_position(position))
        ctx = CursorContext.at(text, offset)
        if self.settings.debounce_ms > 0:
            await asyncio.sleep(self.settings.debounce_ms / 1000)
        if self._latest.get(uri) != number:
            return None
        engine = await self.get_engine()
        if self._latest.get(uri) != number:
            return None
        params = GenerationParams(max_tokens=self.settings.max_tokens, temperature=0.0,
                                  stop=("\n",) if ctx.mode == "single" and ctx.line_prefix.strip() else ())
        stream = self._streams[uri] = self._start(engine, ctx, params)
        generated = ""
        try:
            async for piece in stream:
                generated += piece
                if should_stop_completion(generated, ctx):
                    stream.cancel()
                    break
        finally:
            if self._streams.get(uri) is stream:
                del self._streams[uri]
        if self._latest.get(uri) != number:
            return None
        if stream.result is not None:
            log.info("completion: %d prompt tokens, %d generated, %s, %.3f s", stream.result.prompt_tokens,
                     stream.result.completion_tokens, stream.result.finish_reason, stream.result.duration_s)
        return postprocess_completion(generated, ctx) or None


def create_server() -> LlamalabLanguageServer:
    server = LlamalabLanguageServer()

    @server.feature(types.INITIALIZE)
    def initialize(ls: LlamalabLanguageServer, params: types.InitializeParams) -> None:
        ls.settings = ls.settings.updated(params.initialization_options)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: LlamalabLanguageServer, params: types.DidChangeConfigurationParams) -> None:
        settings = params.settings
        if isinstance(settings, dict) and isinstance(settings.get("llamalab"), dict):
            settings = settings["llamalab"]
        ls.settings = ls.settings.updated(settings)

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: LlamalabLanguageServer, params: types.InlineCompletionParams
                                ) -> types.InlineCompletionList:
        text = await ls.suggest(params.text_document.uri, params.position)
        if not text:
            return types.InlineCompletionList(items=[])
        return types.InlineCompletionList(items=[types.InlineCompletionItem(
            insert_text=text, range=types.Range(start=params.position, end=params.position))])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION,
                    types.CompletionOptions(trigger_characters=[".", "(", " "]))
    async def completion(ls: LlamalabLanguageServer, params: types.CompletionParams) -> types.CompletionList:
        text = await ls.suggest(params.text_document.uri, params.position)
        if not text:
            return types.CompletionList(is_incomplete=True, items=[])
        item = types.CompletionItem(
            label=text.split("\n", 1)[0].strip() or text.strip(), kind=types.CompletionItemKind.Snippet,
            detail="llamalab", insert_text_format=types.InsertTextFormat.PlainText,
            text_edit=types.TextEdit(range=types.Range(start=params.position, end=params.position), new_text=text))
        return types.CompletionList(is_incomplete=True, items=[item])

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: LlamalabLanguageServer, params: None) -> None:
        for stream in list(ls._streams.values()):
            stream.cancel()

    return server


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="llamalab lsp", description="The llamalab language server.")
    parser.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead of stdio (for debugging)")
    parser.add_argument("--log-level", default="INFO", help="logging level for stderr (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("pygls").setLevel(logging.WARNING)  # it logs every message in full at INFO
    server = create_server()
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
    else:
        server.start_io()
    return 0
