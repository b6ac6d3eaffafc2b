"""What a remote server offers beyond the OpenAI routes, probed once per ``RemoteEngine``.

llama-server (and llamalab's own servers, which answer the same routes) has ``/props``; then
prompts may be token ids, ``/tokenize`` and ``/detokenize`` work, and ``/infill`` takes a
fill-in-the-middle prompt when the model has FIM tokens, whose ids are found by tokenizing their
texts. llama-cpp-python's server has ``/extras/tokenize``; vLLM and others only the OpenAI
routes. Each missing capability is logged once, one line naming the fallback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..errors import ServerResponseError
from ..fim import FimTokens

__all__ = ["CHARS_PER_TOKEN", "ServerCapabilities", "ServerProbe"]

log = logging.getLogger("llamalab.engine.remote")

CHARS_PER_TOKEN = 4  # the approximate count where a server cannot tokenize
# Texts of the fill-in-the-middle tokens of the models llama.cpp knows (Code Llama's first);
# llama-server does not list their ids, so they are tokenized with special parsing.
_FIM_TEXTS = {
    "pre": ("\u2581<PRE>", "<PRE>", "<|fim_prefix|>", "<fim_prefix>", "<fim-prefix>"),
    "suf": ("\u2581<SUF>", "<SUF>", "<|fim_suffix|>", "<fim_suffix>", "<fim-suffix>"),
    "mid": ("\u2581<MID>", "<MID>", "<|fim_middle|>", "<fim_middle>", "<fim-middle>"),
    "eot": ("\u2581<EOT>", "<EOT>", "<|endoftext|>", "<|eot_id|>"),
}


@dataclass(frozen=True)
class ServerCapabilities:
    """What a server offers beyond the OpenAI routes, probed once per engine."""

    server: str  # "llama-server", "llamalab serve" (the same routes) or "openai-compatible" (llama-cpp-python's, vLLM)
    tokenize: bool  # a tokenize route (else token counts are approximate)
    token_prompts: bool  # prompts may be token ids, and /detokenize works (llama-server)
    infill: bool  # /infill works for the served model (llama-server, model with FIM tokens)
    fim: FimTokens = FimTokens()  # the model's FIM ids where known
    props: dict = field(default_factory=dict)  # llama-server's /props
    missing: tuple[str, ...] = ()  # one line each: what is missing and the fallback

    @property
    def context_size(self) -> Optional[int]:
        n_ctx = (self.props.get("default_generation_settings") or {}).get("n_ctx")
        return int(n_ctx) if isinstance(n_ctx, int) else None


class ServerProbe:
    """Asks a server, through ``request(method, route, **kwargs)`` (which raises
    ``ServerResponseError``), what it offers; remembers the answers."""

    def __init__(self, root_url: str, request: Callable[..., Any]) -> None:
        self.root_url = root_url
        self._request = request
        self.tokenize_route: Optional[str] = None
        self.auto_prefix: Optional[list[int]] = None  # what llama-cpp-python's route adds to every text
        self._props: Optional[dict[str, Any]] = None
        self._caps: Optional[ServerCapabilities] = None

    @property
    def missing(self) -> tuple[str, ...]:
        return self._caps.missing if self._caps is not None else ()

    def props(self) -> dict[str, Any]:
        """llama-server's ``/props`` ({} from servers without it), fetched once."""
        if self._props is None:
            try:
                data = self._request("GET", "/props")
            except ServerResponseError as exc:
                if exc.status_code in (401, 403):
                    raise
                data = {}  # no such route (404), or not JSON: not llama-server
            ok = isinstance(data, dict) and "default_generation_settings" in data
            self._props = data if ok else {}
        return self._props

    def kind(self) -> str:
        """llama-server, or llamalab's servers, which answer its routes too (``build_info``)."""
        return "llamalab serve" if self.props().get("build_info") == "llamalab" else "llama-server"

    def _one_token(self, text: str) -> Optional[int]:
        """The id of ``text`` when the server reads it (special tokens parsed) as one token."""
        ids = self.tokens("/tokenize", {"content": text, "add_special": False, "parse_special": True})
        return ids[0] if len(ids) == 1 else None

    def _probe_fim(self) -> tuple[bool, FimTokens, Optional[str]]:
        """Whether /infill works for the served model, its FIM ids, and the note when not."""
        try:
            self._request("POST", "/infill", json={"input_prefix": "", "input_suffix": "", "n_predict": 1,
                                                   "temperature": 0, "cache_prompt": False})
        except ServerResponseError as exc:
            reason = "the model has no fill-in-the-middle tokens" if exc.status_code == 501 else \
                f"/infill answered HTTP {exc.status_code}"
            return False, FimTokens(), f"{self.kind()} at {self.root_url} cannot /infill ({reason}): " \
                                       "code completions use the prefix only"
        ids = {kind: next((i for i in map(self._one_token, texts) if i is not None), None)
               for kind, texts in _FIM_TEXTS.items()}
        bos = self.tokens("/tokenize", {"content": "", "add_special": True, "parse_special": False})
        fim = FimTokens(bos=bos[0] if len(bos) == 1 else None, **ids)
        if not fim.supported or len({fim.pre, fim.suf, fim.mid}) != 3:
            return False, FimTokens(), (f"{self.kind()} at {self.root_url} has /infill but its FIM token ids "
                                        "were not recognised: code completions use the prefix only")
        return True, fim, None

    def capabilities(self) -> ServerCapabilities:
        """What the server offers beyond the OpenAI routes (probed once; missing ones are logged
        once, one line each, with the fallback used)."""
        if self._caps is not None:
            return self._caps
        props = self.props()
        missing: list[str] = []
        if props:
            self.tokenize_route, self.auto_prefix = "/tokenize", []
            infill, fim, note = self._probe_fim()
            missing += [note] if note else []
            caps = ServerCapabilities(self.kind(), True, True, infill, fim, props, tuple(missing))
        else:
            if self.tokenize_route is None:
                self.find_tokenize_route()
            missing.append(f"the server at {self.root_url} has no /infill: code completions use the prefix only")
            if self.tokenize_route is None:
                missing.append(f"the server at {self.root_url} has no tokenize route: token counts are "
                               f"approximate ({CHARS_PER_TOKEN} characters a token)")
            caps = ServerCapabilities("openai-compatible", self.tokenize_route is not None, False, False,
                                      missing=tuple(missing))
        for note in caps.missing:
            log.warning(note)
        self._caps = caps
        return caps

    def tokens(self, route: str, payload: dict[str, Any]) -> list[int]:
        data = self._request("POST", route, json=payload)
        try:
            return [int(t) for t in data["tokens"]]
        except (KeyError, TypeError, ValueError):
            raise ServerResponseError(f"{self.root_url}{route} answered without a token list; "
                                      "count tokens with a local engine instead.") from None

    def find_tokenize_route(self) -> None:
        """Try llama-server's route, then llama-cpp-python's, on the empty text; remember the
        one that answers, and for llama-cpp-python what it adds to every text ([] or [BOS])."""
        for route, payload in (("/tokenize", {"content": ""}), ("/extras/tokenize", {"input": ""})):
            try:
                prefix = self.tokens(route, payload)
            except ServerResponseError as exc:
                if exc.status_code in (404, 405, 501):  # no such route (501: not implemented)
                    continue
                raise
            self.tokenize_route, self.auto_prefix = route, prefix
            return
