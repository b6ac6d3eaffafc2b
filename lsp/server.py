"""The llamalab language server: inline code completion from a local or remote model.

Features: ``textDocument/inlineCompletion`` (LSP 3.18 ghost text), ``textDocument/completion``
for clients without it, incremental document sync (pygls keeps the open documents, positions
in the negotiated encoding, UTF-16 by default), ``$/cancelRequest`` (pygls cancels the
handler's task, which cancels the generation underneath), ``workspace/didChangeConfiguration``,
and ``llamalab/prompt``, which says what a completion at a position would send the model (for
editor-client authors and the benchmark). What a suggestion is made of lives in
the core's ``llamalab.suggest``, the per-document debounce and superseding in ``completer``; the settings and their checks in ``settings``; strict
JSON-RPC error replies in ``protocol``.

Settings come from ``initializationOptions`` and ``workspace/didChangeConfiguration`` (the
keys are listed in ``llamalab.lsp.settings``); a bad one is reported with
``window/showMessage`` and ignored. Each generation's prompt statistics
(``prompt N tokens, reused M, evaluated K``) are logged at INFO and sent as
``window/logMessage``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import posixpath
import sys
from typing import Any, BinaryIO, Optional, TextIO
from urllib.parse import unquote, urlparse

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.workspace import TextDocument

from llamalab import CursorContext, LlamalabError, __version__
from llamalab.suggest import ContextDocument

from .completer import Completer, CompletionStats
from .protocol import LlamalabProtocol, ParseErrorLogFilter
from .settings import Settings

__all__ = ["LlamalabLanguageServer", "Settings", "create_server", "main", "PROMPT_METHOD"]

log = logging.getLogger("llamalab.lsp")

PROMPT_METHOD = "llamalab/prompt"


class LlamalabLanguageServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("llamalab", __version__, protocol_cls=LlamalabProtocol)
        self.completer = Completer(self._report_stats)
        self._used: dict[str, int] = {}  # uri -> when it was last opened or changed
        self._clock = itertools.count(1)
        self._shown_errors: set[str] = set()

    @property
    def settings(self) -> Settings:
        return self.completer.settings

    # -- settings -----------------------------------------------------------------------------
    def apply_settings(self, options: Any, origin: str) -> None:
        settings, problems = self.settings.updated(options)
        self._shown_errors.clear()  # new settings may fix (or change) what failed
        for problem in problems:
            log.warning("%s: %s", origin, problem)
            self.window_show_message(types.ShowMessageParams(type=types.MessageType.Warning,
                                                             message=f"llamalab: {problem}"))
        self.completer.configure(settings)

    # -- documents ------------------------------------------------------------------------------
    def touch(self, uri: str) -> None:
        self._used[uri] = next(self._clock)

    def close_document(self, uri: str) -> None:
        self.completer.forget(uri)
        self._used.pop(uri, None)

    def open_document(self, uri: str) -> Optional[TextDocument]:
        """The open document at ``uri``; None (and a log line) when the client never opened it."""
        document = self.workspace.text_documents.get(unquote(uri))
        if document is None:
            log.info("no completion for %s: it is not open (send textDocument/didOpen first)", uri)
        return document

    def context_documents(self, current: TextDocument) -> list[ContextDocument]:
        """The other open documents of the same language, most recently used first."""
        root = self.workspace.root_path
        others = [d for d in self.workspace.text_documents.values()
                  if d is not current and d.language_id == current.language_id]
        others.sort(key=lambda d: -self._used.get(d.uri, 0))
        return [ContextDocument(display_path(unquote(urlparse(d.uri).path), root), d.source) for d in others]

    async def suggest(self, uri: str, position: types.Position) -> Optional[str]:
        """The suggestion at ``position`` in the open document ``uri``, or None."""
        document = self.open_document(uri)
        if document is None or not self.settings.completes(document.language_id):
            return None
        text = document.source
        offset = document.offset_at_position(position)
        others = self.context_documents(document) if self.settings.context_tokens else []
        try:
            return await self.completer.suggest(uri, text, offset, document.language_id or "", others)
        except LlamalabError as exc:  # no model, a server that is down: say so once, answer empty
            self.show_error_once(str(exc))
            return None

    def show_error_once(self, message: str) -> None:
        """``window/showMessage`` an error, once per distinct text (a request per keystroke would
        otherwise repeat it); always logged."""
        log.error("%s", message)
        if message not in self._shown_errors:
            self._shown_errors.add(message)
            self.window_show_message(types.ShowMessageParams(type=types.MessageType.Error,
                                                             message=f"llamalab: {message}"))

    # -- reports ------------------------------------------------------------------------------
    def _report_stats(self, stats: CompletionStats) -> None:
        log.info("%s", stats.message)
        if self.settings.log_stats:
            self.window_log_message(types.LogMessageParams(type=types.MessageType.Log, message=stats.message))

    def report_server_error(self, error: Exception, source: Any) -> None:
        if isinstance(error, (json.JSONDecodeError, UnicodeDecodeError)):
            log.warning("a message that is not JSON: %s", error)
            self.protocol.send_parse_error(error)  # type: ignore[attr-defined]
            return
        super().report_server_error(error, source)


def _plain(value: Any) -> Any:
    """pygls hands a custom method's params over as namedtuples; JSON-shaped data back."""
    if hasattr(value, "_asdict"):
        value = value._asdict()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


async def _prompt_info(ls: LlamalabLanguageServer, params: Any) -> dict[str, Any]:
    """``llamalab/prompt``: what a completion at ``params.position`` would send the model, without
    generating: ``{"mode", "linePrefix", "lineSuffix", "promptTokens", "tokens", "text", "infill",
    "anchorLine", "contextPaths"}`` (the last five for a local model only)."""
    params = _plain(params)
    try:
        uri, position = params["textDocument"]["uri"], types.Position(**params["position"])
    except (TypeError, KeyError, ValueError):
        raise JsonRpcInvalidParams("Invalid params for llamalab/prompt: expected {\"textDocument\": {\"uri\": ...}, "
                                   "\"position\": {\"line\": n, \"character\": n}}.") from None
    document = ls.open_document(uri)
    if document is None:
        raise JsonRpcInvalidParams(f"{uri} is not open; send textDocument/didOpen first.")
    text = document.source
    ctx = CursorContext.at(text, document.offset_at_position(position))
    others = ls.context_documents(document) if ls.settings.context_tokens else []
    info: dict[str, Any] = {"mode": ctx.mode, "linePrefix": ctx.line_prefix, "lineSuffix": ctx.line_suffix}
    engine = await ls.completer.get_engine()
    request = ls.completer.request(uri, text, document.offset_at_position(position), document.language_id or "",
                                   others)
    plan = await asyncio.to_thread(ls.completer.plan, engine, request, False)
    if plan.tokens is not None:
        info.update(promptTokens=len(plan.tokens), tokens=plan.tokens, infill=plan.infill,
                    text=engine.detokenize(plan.tokens), anchorLine=plan.anchor_line,
                    contextPaths=list(plan.context_paths), healed=plan.healed)
    else:
        info.update(text=plan.text)
    return info


def display_path(uri_path: str, root: Optional[str]) -> str:
    """A document's path relative to the workspace root when it is inside it, else its name."""
    if root:
        relative = posixpath.relpath(uri_path, root)
        if not relative.startswith(".."):
            return relative
    return posixpath.basename(uri_path) or uri_path


def create_server() -> LlamalabLanguageServer:
    server = LlamalabLanguageServer()

    @server.feature(types.INITIALIZE)
    def initialize(ls: LlamalabLanguageServer, params: types.InitializeParams) -> None:
        ls.apply_settings(params.initialization_options, "initializationOptions")

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: LlamalabLanguageServer, params: types.DidChangeConfigurationParams) -> None:
        settings = params.settings
        if isinstance(settings, dict) and isinstance(settings.get("llamalab"), dict):
            settings = settings["llamalab"]
        ls.apply_settings(settings, "workspace/didChangeConfiguration")

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: LlamalabLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.touch(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: LlamalabLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.touch(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: LlamalabLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.close_document(params.text_document.uri)

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

    server.feature(PROMPT_METHOD)(_prompt_info)

    @server.feature(types.SHUTDOWN)
    def shutdown(ls: LlamalabLanguageServer, params: None) -> None:
        ls.completer.cancel()

    return server


def _protected_stdio() -> tuple[BinaryIO, BinaryIO, TextIO]:
    """The protocol's own stdin/stdout and a log stream, on duplicated file descriptors.

    llama-cpp-python points fds 1 and 2 at /dev/null while it loads or frees a model
    (``suppress_stdout_stderr``), which would swallow any reply written meanwhile; and a
    library printing to stdout would corrupt the JSON-RPC stream. So the protocol writes to
    a copy of fd 1, and fd 1 itself then goes to stderr."""
    protocol_out = os.fdopen(os.dup(1), "wb")
    log_stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(2, 1)
    return sys.stdin.buffer, protocol_out, log_stream


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="llamalab lsp", description="The llamalab language server.")
    parser.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP instead of stdio (for debugging)")
    parser.add_argument("--log-level", default="INFO", help="logging level for stderr (default INFO)")
    args = parser.parse_args(argv)
    stdin, stdout, log_stream = _protected_stdio() if not args.tcp else (sys.stdin.buffer, sys.stdout.buffer,
                                                                        sys.stderr)
    logging.basicConfig(stream=log_stream, level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pygls.server").addFilter(ParseErrorLogFilter())
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("pygls").setLevel(logging.WARNING)  # it logs every message in full at INFO
    server = create_server()
    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        server.start_tcp(host or "127.0.0.1", int(port))
    else:
        server.start_io(stdin, stdout)
    return 0
