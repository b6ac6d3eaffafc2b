"""The suggestion service: one code suggestion, from the editor's text to the text to insert.

Every editor surface asks it the same way (the language server for VS Code and Neovim,
JupyterLab's inline completer through ``POST /llamalab/complete``), and it owns what a
suggestion is made of:

- the prompt's layout (``layout``): context chunks (the kernel's names, the head of the
  notebook, other open documents), a prefix window whose start is remembered per document so
  that typing only appends to the prompt and the model's cache is reused, the suffix for
  fill-in-the-middle models, built from token ids when the engine takes them
  (``Engine.accepts_token_prompts``) and as text otherwise;
- a notebook's cells laid out as a script (``notebook``);
- token healing (``llamalab.healing``), the stop rules and the clean-up
  (``llamalab.completion_rules``), the time budget (``collect``);
- type-ahead: when the user types what the last suggestion predicted, ``predicted`` answers
  the rest of it without the model.

The faces keep only their protocol: the language server its debounce and superseding per
document, the Jupyter extension its HTTP and server-sent events. State is kept per document
(a key the face chooses: a URI, a user and path), for at most ``MAX_DOCUMENTS`` documents.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import AsyncIterator, Awaitable, Callable, Hashable, Optional, Sequence

from ..completion_rules import CursorContext, Mode, postprocess, should_stop
from ..engine.base import Engine, GenerationParams, TokenStream
from ..healing import strip_healed
from .layout import (CHARS_PER_TOKEN, ContextDocument, LineCachedTokenizer, PromptPlan, context_chunks, on_grid,
                     plan_prompt, prefix_window)
from .notebook import HEAD_CHARS, Cell, RenderedNotebook, render_notebook

__all__ = ["SuggestOptions", "SuggestRequest", "SuggestionPlan", "SuggestionService", "SuggestionText", "collect",
           "MAX_DOCUMENTS"]

MAX_DOCUMENTS = 256  # documents whose window start, tokenizer cache and last suggestion are kept
_CHARS_PER_TOKEN_TEXT = 3  # a text prompt (remote engine) is cut by characters: about 3 per token of code
_HEAD_MIN_TOKENS = 32  # a notebook head shorter than this is not worth its place


@dataclass(frozen=True)
class SuggestOptions:
    """How large each part of the prompt may be, in tokens, and how long a suggestion may take."""

    prefix_tokens: int = 1024
    suffix_tokens: int = 256
    context_tokens: int = 512  # the kernel's names, the notebook's head, other documents
    max_tokens: int = 64
    time_budget_s: Optional[float] = 3.0


@dataclass(frozen=True)
class SuggestRequest:
    """A cursor to suggest code at.

    For a file, ``prefix``/``suffix`` are the document's text before and after the cursor. For a
    notebook, they are the cursor's cell's, and ``cells`` holds the notebook's cells in order,
    the cursor's at ``cell_index`` (its ``source`` is not read). ``document`` keys the state kept
    between requests ("" keeps none)."""

    document: Hashable
    prefix: str
    suffix: str = ""
    language: str = ""
    cells: Optional[Sequence[Cell]] = None
    cell_index: int = 0
    mode: Optional[Mode] = None  # None: chosen from the cursor's line
    others: Sequence[ContextDocument] = ()  # other open documents of the same language
    kernel_names: str = ""  # the kernel's names as a comment block (``llamalab.kernel_names``)
    max_tokens: Optional[int] = None
    warm: bool = False  # only read the prompt into the model's cache

    @property
    def cursor(self) -> CursorContext:
        """The cursor in its own text (the cell, in a notebook): what the stop rules look at."""
        return CursorContext.at(self.prefix + self.suffix, len(self.prefix), mode=self.mode)

    @property
    def cell_id(self) -> Optional[str]:
        return self.cells[self.cell_index].id if self.cells is not None else None


@dataclass(frozen=True)
class SuggestionPlan:
    """What the model is sent: ``tokens`` (an engine that takes ids) or ``text``."""

    tokens: Optional[list[int]]
    text: Optional[str]
    infill: bool
    healed: str  # the prefix's end left for the model to write, and taken off its answer
    context_paths: tuple[str, ...] = ()
    anchor_line: int = 0  # where the prefix window starts, in the laid-out text


@dataclass
class _Document:
    anchor: Optional[Hashable] = None  # the prefix window's start, as the layout keys it
    tokenizer: Optional[LineCachedTokenizer] = None
    last: Optional[tuple[Optional[str], str, str]] = None  # (cell id, prefix, suggestion) last answered


@dataclass(frozen=True)
class _Layout:
    prefix: str
    suffix: str
    context: str
    context_paths: tuple[str, ...]
    is_anchor: Callable[[int], bool]
    previous_line: Optional[int]
    to_key: Callable[[int], Hashable]


class SuggestionService:
    """Plans prompts and remembers, per document, what keeps them stable (see the module)."""

    def __init__(self, options: SuggestOptions = SuggestOptions()) -> None:
        self.options = options
        self._documents: OrderedDict[Hashable, _Document] = OrderedDict()
        self._lock = threading.Lock()  # plans run on helper threads
        self._others_cache: Optional[tuple[Hashable, tuple[str, tuple[str, ...]]]] = None

    # -- per-document state -------------------------------------------------------------------
    def _document(self, key: Hashable) -> _Document:
        with self._lock:
            document = self._documents.pop(key, None) or _Document()
            self._documents[key] = document
            while len(self._documents) > MAX_DOCUMENTS:
                self._documents.popitem(last=False)
            return document

    def forget(self, key: Hashable) -> None:
        """A document was closed."""
        with self._lock:
            self._documents.pop(key, None)

    # -- budgets ------------------------------------------------------------------------------
    def _budgets(self, engine: Engine, request: SuggestRequest) -> tuple[int, int, int, int]:
        """(prefix, suffix, context, answer) tokens, shrunk to fit the engine's context window:
        the context chunks give way first, then the windows shrink in proportion."""
        o = self.options
        answer = request.max_tokens or o.max_tokens
        prefix, suffix, context = o.prefix_tokens, o.suffix_tokens, o.context_tokens
        size = engine.context_size
        if size is None:
            return prefix, suffix, context, answer
        room = max(64, size - answer - 16)
        context = min(context, max(0, room - prefix - suffix))  # context gives way first
        if prefix + suffix > room:
            prefix, suffix = max(16, room * 3 // 4), room // 4
            prefix = min(prefix, o.prefix_tokens)
            suffix = min(suffix, o.suffix_tokens)
        return prefix, suffix, context, answer

    def prompt_chars(self) -> int:
        """The most characters of a request's text a prompt can use (what a server should count
        against its limit on prompt size: the rest is never read)."""
        o = self.options
        return (o.prefix_tokens + o.suffix_tokens + o.context_tokens) * CHARS_PER_TOKEN + HEAD_CHARS

    # -- layout -------------------------------------------------------------------------------
    def _layout(self, request: SuggestRequest, document: _Document, prefix_tokens: int, suffix_tokens: int,
                context_tokens: int, count: Callable[[str], int]) -> _Layout:
        context = request.kernel_names if context_tokens > 0 else ""
        if context and count(context) > context_tokens:
            context = ""
        left = context_tokens - (count(context) if context else 0)
        if request.cells is not None:
            return self._notebook_layout(request, document, prefix_tokens, suffix_tokens, context, left, count)
        paths: tuple[str, ...] = ()
        if left > 16 and request.others:
            chunks, paths = self._other_documents(request, left, count)
            context += chunks
        previous = document.anchor if isinstance(document.anchor, int) else None
        return _Layout(request.prefix, request.suffix[:suffix_tokens * CHARS_PER_TOKEN], context, paths, on_grid,
                       previous, lambda line: line)

    def _other_documents(self, request: SuggestRequest, budget: int,
                         count: Callable[[str], int]) -> tuple[str, tuple[str, ...]]:
        """``context_chunks`` of the other documents, remembered until they, the budget or the
        language change (an unchanged document's text keeps its hash)."""
        key = (request.language, budget, tuple((d.path, hash(d.text), len(d.text)) for d in request.others))
        cached = self._others_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        result = context_chunks(request.others, request.language, budget, count)
        self._others_cache = (key, result)
        return result

    def _notebook_layout(self, request: SuggestRequest, document: _Document, prefix_tokens: int,
                         suffix_tokens: int, context: str, head_budget: int, count: Callable[[str], int]) -> _Layout:
        assert request.cells is not None
        rendered = render_notebook(request.cells, request.cell_index, request.prefix, request.suffix,
                                   request.language, max_prefix_chars=prefix_tokens * CHARS_PER_TOKEN,
                                   max_suffix_chars=suffix_tokens * CHARS_PER_TOKEN,
                                   max_head_chars=min(HEAD_CHARS, head_budget * CHARS_PER_TOKEN))
        previous_key = document.anchor if isinstance(document.anchor, tuple) else None
        previous = rendered.anchor_line(previous_key)
        head = ""
        if head_budget >= _HEAD_MIN_TOKENS and rendered.from_first_cell:
            head = self._notebook_head(rendered, prefix_tokens, previous, head_budget, count)
        skipped = head.count("\n")  # lines of the rendered prefix that went to the head
        return _Layout(rendered.prefix[len(head):], rendered.suffix, context + head, (),
                       lambda line: rendered.is_anchor(line + skipped),
                       None if previous is None else previous - skipped,
                       lambda line: rendered.anchor_key(line + skipped))

    @staticmethod
    def _notebook_head(rendered: RenderedNotebook, prefix_tokens: int, previous: Optional[int], budget: int,
                       count: Callable[[str], int]) -> str:
        """The notebook's first cells (imports, data loading) within ``budget`` tokens and
        ``HEAD_CHARS`` characters, when they lie wholly above the prefix window: whole cells, the
        same text while the window stays."""
        # where the window will start: the previous start only if the window keeps it
        _, start = prefix_window(rendered.prefix, prefix_tokens, count, previous, rendered.is_anchor)
        head_end, used = 0, 0
        for end in rendered.cell_offsets[1:]:
            used += count(rendered.prefix[head_end:end])
            if end > start or used > budget or end > HEAD_CHARS:
                break
            head_end = end
        return rendered.prefix[:head_end]

    # -- plans ----------------------------------------------------------------------------------
    def plan(self, engine: Engine, request: SuggestRequest, *, remember: bool = True) -> SuggestionPlan:
        """The prompt for ``request`` on ``engine`` (tokenizes: call it off the event loop).
        ``remember`` keeps where its prefix window starts for the document's next request."""
        document = self._document(request.document)
        prefix_tokens, suffix_tokens, context_tokens, _ = self._budgets(engine, request)
        request = _clip_cursor_line(request, prefix_tokens * CHARS_PER_TOKEN, suffix_tokens * CHARS_PER_TOKEN)
        if engine.accepts_token_prompts:
            tokenizer = document.tokenizer
            if tokenizer is None or tokenizer.tokenizer is not engine:  # one per document and model
                tokenizer = document.tokenizer = LineCachedTokenizer(engine)

            def count(part: str) -> int:
                return len(engine.tokenize(part)) if part else 0

            layout = self._layout(request, document, prefix_tokens, suffix_tokens, context_tokens, count)
            plan: PromptPlan = plan_prompt(tokenizer, engine.fim_tokens(), layout.prefix, layout.suffix,
                                           prefix_tokens=prefix_tokens, suffix_tokens=suffix_tokens,
                                           context=layout.context, context_paths=layout.context_paths,
                                           previous_anchor=layout.previous_line, is_anchor=layout.is_anchor)
            if remember:
                document.anchor = layout.to_key(plan.anchor_line)
            return SuggestionPlan(tokens=plan.tokens, text=None, infill=plan.infill, healed=plan.healed,
                                  context_paths=plan.context_paths, anchor_line=plan.anchor_line)

        def estimate(part: str) -> int:
            return len(part) // _CHARS_PER_TOKEN_TEXT

        layout = self._layout(request, document, prefix_tokens, suffix_tokens, context_tokens, estimate)
        anchor, start = prefix_window(layout.prefix, prefix_tokens, estimate, layout.previous_line, layout.is_anchor)
        if remember:
            document.anchor = layout.to_key(anchor)
        text = layout.context + layout.prefix[start:][-_CHARS_PER_TOKEN_TEXT * prefix_tokens:]
        return SuggestionPlan(tokens=None, text=text, infill=False, healed="", context_paths=layout.context_paths,
                              anchor_line=anchor)

    def params(self, request: SuggestRequest, engine: Optional[Engine] = None) -> GenerationParams:
        """Greedy (a suggestion should not change between two identical requests), interactive,
        one line when the cursor is in the middle of one (llama.cpp stops at the newline)."""
        ctx = request.cursor
        single = ctx.mode == "single" and bool(ctx.line_prefix.strip())
        max_tokens = 1 if request.warm else (request.max_tokens or self.options.max_tokens)
        return GenerationParams(max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0,
                                stop=("\n",) if single else (), priority="interactive")

    def start(self, engine: Engine, request: SuggestRequest,
              params: Optional[GenerationParams] = None) -> tuple[TokenStream, SuggestionPlan]:
        """Plan the prompt and start the generation (on the calling thread: a helper thread)."""
        params = params or self.params(request, engine)
        plan = self.plan(engine, request)
        if plan.tokens is not None:
            return engine.complete_tokens(plan.tokens, dataclasses.replace(params, heal=plan.healed)), plan
        assert plan.text is not None
        return engine.complete(plan.text, params), plan

    # -- type-ahead -----------------------------------------------------------------------------
    def remember(self, request: SuggestRequest, suggestion: str) -> None:
        """``suggestion`` was answered for ``request``: typing it may be answered from it."""
        if request.document == "" or request.warm:
            return
        self._document(request.document).last = (request.cell_id, request.prefix, suggestion) if suggestion else None

    def predicted(self, request: SuggestRequest) -> Optional[str]:
        """The rest of the document's last suggestion when the text typed since it is the
        suggestion's start (same cell, same text after the cursor's line); None otherwise."""
        if request.document == "" or request.warm:
            return None
        with self._lock:
            document = self._documents.get(request.document)
        last = document.last if document is not None else None
        if last is None:
            return None
        cell_id, prefix, suggestion = last
        if cell_id != request.cell_id or len(request.prefix) <= len(prefix) or not request.prefix.startswith(prefix):
            return None
        typed = request.prefix[len(prefix):]
        if len(typed) >= len(suggestion) or not suggestion.startswith(typed):
            return None
        rest = suggestion[len(typed):]
        ctx = request.cursor
        if "\n" in typed and ctx.mode == "single":
            return None
        return rest


class SuggestionText:
    """The suggestion as the model's pieces arrive: healed text taken off, stop rules applied."""

    def __init__(self, ctx: CursorContext, healed: str = "") -> None:
        self.ctx = ctx
        self.healed = healed
        self.raw = ""
        self.generated = ""

    def add(self, piece: str) -> bool:
        """Take one piece; True when the suggestion is complete (stop generating)."""
        self.raw += piece
        self.generated = strip_healed(self.raw, self.healed)
        return should_stop(self.generated, self.ctx)

    @property
    def text(self) -> str:
        """The suggestion so far, cleaned up as it would be inserted."""
        return postprocess(self.generated, self.ctx)

    def cut_short(self) -> str:
        """What a generation cut short by the time budget may still offer: single-line
        suggestions as they are, multi-line ones up to their last complete line."""
        generated = self.generated
        if self.ctx.mode != "single" and "\n" in generated.strip("\n"):
            generated = generated[:generated.rstrip("\n").rfind("\n")]
        return postprocess(generated, self.ctx)


async def collect(pieces: AsyncIterator[str], text: SuggestionText, budget_s: Optional[float],
                  on_text: Optional[Callable[[str], Awaitable[None]]] = None) -> tuple[str, str]:
    """Read ``pieces`` into ``text`` until the stop rules say it is complete, the model ends or
    ``budget_s`` runs out; ``on_text`` gets each new cleaned-up text. Returns (the suggestion,
    what ended it: "stop rules", "time budget" or "model")."""
    sent = ""
    try:
        async with asyncio.timeout(budget_s):
            async for piece in pieces:
                complete = text.add(piece)
                if on_text is not None and text.text and text.text != sent:
                    sent = text.text
                    await on_text(sent)
                if complete:
                    return text.text, "stop rules"
    except TimeoutError:
        return text.cut_short(), "time budget"
    return text.text, "model"


def _clip_cursor_line(request: SuggestRequest, before: int, after: int) -> SuggestRequest:
    """The request with the cursor's line cut to ``before`` characters before the cursor and
    ``after`` after it: a 2-million-character line costs no more than a short one (the window
    can hold no more of it anyway)."""
    line_start = request.prefix.rfind("\n") + 1
    line_end = request.suffix.find("\n")
    line_end = len(request.suffix) if line_end < 0 else line_end
    prefix, suffix = request.prefix, request.suffix
    if len(prefix) - line_start > before:
        prefix = prefix[:line_start] + prefix[len(prefix) - before:]
    if line_end > after:
        suffix = suffix[:after] + suffix[line_end:]
    if prefix is request.prefix and suffix is request.suffix:
        return request
    return dataclasses.replace(request, prefix=prefix, suffix=suffix)
