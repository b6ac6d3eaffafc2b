"""What goes into a code suggestion's prompt: the prefix window, context chunks, the suffix.

The prompt is laid out as::

    [<s>] [▁<PRE>] {context chunks} {prefix window} [▁<SUF>{suffix window}▁<MID>]

(the bracketed parts only for fill-in-the-middle models; ``llamalab.build_fim_prompt`` turns
text into ids). Everything is chosen so that the prompt stays the *same* between keystrokes
up to the cursor, because llama.cpp then only evaluates the tokens after the edit:

- the prefix window starts on an anchor line (in a file a multiple of ``GRID_LINES``, absolute
  line numbers in the document; in a notebook a cell's first line or a multiple of
  ``GRID_LINES`` lines into a cell, see ``notebook``), the earliest one whose window fits three quarters of
  ``prefixTokens`` (the rest is room for typing); the previous anchor is kept while its window
  still fits the whole budget and fills at least half of it, so typing moves the start of the
  window only once every few hundred tokens, by whole grid steps;
- the window is tokenized as its stable head plus the line being typed
  (``LineCachedTokenizer``), so a keystroke costs the tokenizing of one line;
- context chunks (the kernel's names, the head of the notebook, other open documents) come
  first and change only when what they show changes; chunks of other open documents of the same language (most recently used first) come
  before the prefix, each headed by a comment naming its path in the language's own comment
  syntax (``# path: util.py``), as Code Llama's repository-level prompts and llm-ls do; each
  is the head of its document cut at a line end, and they change only when those documents
  do. They are left out when ``contextTokens`` plus the windows and the answer would not fit
  the context window.

Texts are cut to ``CHARS_PER_TOKEN`` characters per token before anything is tokenized, so
a 5 MB document costs no more than a small one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Sequence

from ..fim import FimTokens, build_fim_prompt

__all__ = ["GRID_LINES", "CHARS_PER_TOKEN", "LINE_COMMENTS", "BLOCK_COMMENTS", "ContextDocument", "PromptPlan",
           "Tokenizes", "LineCachedTokenizer", "comment_header", "line_comment", "prefix_window", "context_chunks",
           "plan_prompt", "on_grid"]

GRID_LINES = 16
CHARS_PER_TOKEN = 8  # text read per token of budget (code averages 3 to 4 characters a token)

LINE_COMMENTS: dict[str, str] = {
    **dict.fromkeys(["python", "shellscript", "sh", "bash", "zsh", "ruby", "perl", "r", "yaml", "toml",
                     "dockerfile", "makefile", "cmake", "julia", "elixir", "nim", "powershell", "coffeescript",
                     "properties", "ini"], "#"),
    **dict.fromkeys(["c", "cpp", "cuda-cpp", "objective-c", "objective-cpp", "csharp", "java", "javascript",
                     "javascriptreact", "typescript", "typescriptreact", "go", "rust", "swift", "kotlin", "scala",
                     "dart", "php", "groovy", "zig", "jsonc", "proto", "solidity", "verilog"], "//"),
    **dict.fromkeys(["lua", "sql", "haskell", "ada", "elm", "purescript"], "--"),
    **dict.fromkeys(["lisp", "clojure", "scheme", "racket", "commonlisp", "fennel"], ";;"),
    **dict.fromkeys(["matlab", "tex", "latex", "erlang", "prolog"], "%"),
    "vim": '"', "fortran": "!", "vb": "'", "bat": "REM",
}
BLOCK_COMMENTS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(["html", "xml", "markdown", "svg", "vue", "svelte"], ("<!--", "-->")),
    **dict.fromkeys(["css", "scss", "less"], ("/*", "*/")),
    "ocaml": ("(*", "*)"),
}


class Tokenizes(Protocol):
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]: ...


@dataclass(frozen=True)
class ContextDocument:
    """Another open document offered as context: its path as shown to the model, and its text."""

    path: str
    text: str


@dataclass(frozen=True)
class PromptPlan:
    tokens: list[int]
    infill: bool
    anchor_line: int  # where the prefix window starts (a line number in the document)
    context_paths: tuple[str, ...]  # other documents whose chunks lead the prompt
    dropped_prefix_tokens: int  # cut by tokens when even the cursor's own grid cell did not fit
    healed: str = ""  # the cursor's trailing blanks left for the model to write (``llamalab.healing``)


class LineCachedTokenizer:
    """Tokenizes a prompt text as its stable part plus the line being typed.

    A window's text up to the end of the line before the cursor's (``head``) does not change
    while a person types on one line, and tokenizing a few kilobytes costs milliseconds on
    every keystroke. So the head's ids are kept (a few heads, most recent first) and only the
    rest (``tail``: the last newline, the indentation and the typed text) is tokenized again.
    The split sits between a non-blank character and whitespace, where pre-tokenizers of the
    GPT-2 kind always cut; whether this tokenizer cuts there is checked once per head against
    a whole-text tokenization (a SentencePiece tokenizer, which adds a space to every text's
    start, fails the check), and a head that fails is always tokenized whole."""

    def __init__(self, tokenizer: Tokenizes, heads: int = 4) -> None:
        self.tokenizer = tokenizer
        self._heads = heads
        self._cache: dict[str, Optional[list[int]]] = {}  # head -> its ids, None: do not split there
        self._lock = threading.Lock()  # a superseded request may still be planning on its thread

    @staticmethod
    def split(text: str) -> int:
        newline = text.rfind("\n")
        if newline <= 0:
            return 0
        return len(text[:newline].rstrip())

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        cut = self.split(text)
        if add_bos or special or cut == 0:
            return self.tokenizer.tokenize(text, add_bos=add_bos, special=special)
        with self._lock:
            return self._tokenize(text, cut)

    def _tokenize(self, text: str, cut: int) -> list[int]:
        head, tail = text[:cut], text[cut:]
        if head in self._cache:
            head_ids = self._cache.pop(head)
            self._cache[head] = head_ids  # most recent last
            if head_ids is not None:
                return head_ids + self.tokenizer.tokenize(tail)
            return self.tokenizer.tokenize(text)
        whole = self.tokenizer.tokenize(text)
        head_ids = self.tokenizer.tokenize(head)
        agrees = whole[:len(head_ids)] == head_ids and whole[len(head_ids):] == self.tokenizer.tokenize(tail)
        self._cache[head] = head_ids if agrees else None
        while len(self._cache) > self._heads:
            del self._cache[next(iter(self._cache))]
        return whole


def comment_header(language_id: str, path: str) -> Optional[str]:
    """``# path: util.py`` in the language's comment syntax; None for a language we do not know."""
    if language_id in LINE_COMMENTS:
        return f"{LINE_COMMENTS[language_id]} path: {path}\n"
    if language_id in BLOCK_COMMENTS:
        opener, closer = BLOCK_COMMENTS[language_id]
        return f"{opener} path: {path} {closer}\n"
    return None


def line_comment(language_id: str) -> Optional[str]:
    """The language's line comment marker (``#``, ``//``), None when it has none we know."""
    return LINE_COMMENTS.get(language_id)


def on_grid(line: int) -> bool:
    """A file's anchor lines: every ``GRID_LINES``-th line."""
    return line % GRID_LINES == 0


def _line_starts_back(prefix: str, max_chars: int) -> list[int]:
    """Offsets of the starts of the last lines of ``prefix``, the cursor's line first, going back
    while the text from there to the end is at most ``max_chars`` long (the cursor's line always)."""
    starts = [prefix.rfind("\n") + 1]
    while starts[-1] > 0 and len(prefix) - starts[-1] <= max_chars:
        starts.append(prefix.rfind("\n", 0, starts[-1] - 1) + 1)
    if len(starts) > 1 and len(prefix) - starts[-1] > max_chars:
        starts.pop()
    return starts


def prefix_window(prefix: str, budget: int, count: Callable[[str], int],
                  previous_anchor: Optional[int] = None, is_anchor: Callable[[int], bool] = on_grid
                  ) -> tuple[int, int]:
    """``(anchor line, offset)``: where the prefix window starts, as the module docstring says;
    ``is_anchor`` says which lines (numbered from 0 in ``prefix``) may start it. When no anchor
    line fits, the start of the cursor's line (the caller then cuts by tokens)."""
    cursor_line = prefix.count("\n")
    starts = _line_starts_back(prefix, budget * CHARS_PER_TOKEN)  # starts[i] is line cursor_line - i
    grid_lines = [line for line in range(cursor_line - len(starts) + 1, cursor_line + 1) if is_anchor(line)]

    def offset(line: int) -> int:
        return starts[cursor_line - line]

    def size(line: int) -> int:
        return count(prefix[offset(line):])

    if previous_anchor is not None and previous_anchor in grid_lines:
        used = size(previous_anchor)
        if used <= budget and (previous_anchor == 0 or 2 * used >= budget):
            return previous_anchor, offset(previous_anchor)
    for limit in (budget - budget // 4, budget):  # leave a quarter free for typing if possible
        lo, hi = 0, len(grid_lines)  # the earliest grid line that fits (later lines hold fewer tokens)
        while lo < hi:
            mid = (lo + hi) // 2
            if size(grid_lines[mid]) <= limit:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(grid_lines):
            return grid_lines[lo], offset(grid_lines[lo])
    return cursor_line, offset(cursor_line)


def _head(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest run of whole first lines of ``text`` within ``budget`` tokens."""
    lines = text[:budget * CHARS_PER_TOKEN].split("\n")
    if len(lines) > 1:
        lines.pop()  # cut by characters: the last line may be partial
    lo, hi = 0, len(lines)
    while lo < hi:  # the most lines that fit
        mid = (lo + hi + 1) // 2
        if count("\n".join(lines[:mid]) + "\n") <= budget:
            lo = mid
        else:
            hi = mid - 1
    return "\n".join(lines[:lo]) + "\n" if lo else ""


def context_chunks(documents: Sequence[ContextDocument], language_id: str, budget: int,
                   count: Callable[[str], int]) -> tuple[str, tuple[str, ...]]:
    """The text of the other documents' chunks, each under its path header, within ``budget``
    tokens in all, and the paths used."""
    parts: list[str] = []
    paths: list[str] = []
    left = budget
    for document in documents:
        header = comment_header(language_id, document.path)
        if header is None or not document.text.strip():
            continue
        room = left - count(header)
        if room < 16:
            break
        body = _head(document.text, room, count)
        if not body.strip():
            continue
        chunk = header + body + ("\n" if not body.endswith("\n\n") else "")
        parts.append(chunk)
        paths.append(document.path)
        left -= count(chunk)
    return "".join(parts), tuple(paths)


def plan_prompt(tokenizer: Tokenizes, fim: FimTokens, prefix: str, suffix: str, *, prefix_tokens: int,
                suffix_tokens: int, context: str = "", context_paths: tuple[str, ...] = (),
                previous_anchor: Optional[int] = None, is_anchor: Callable[[int], bool] = on_grid) -> PromptPlan:
    """The prompt's ids for a cursor between ``prefix`` and ``suffix``, with ``context`` (from
    ``context_chunks`` and the like) ahead of the prefix window."""

    def count(part: str) -> int:
        return len(tokenizer.tokenize(part)) if part else 0

    anchor, start = prefix_window(prefix, prefix_tokens, count, previous_anchor, is_anchor)
    suffix = suffix[:suffix_tokens * CHARS_PER_TOKEN] if fim.supported else ""
    if count(prefix[start:]) > prefix_tokens:  # even the cursor's line is too long: cut by tokens
        context, context_paths, budget = "", (), prefix_tokens
    else:  # the window fits: the slack only absorbs tokens merging differently across the join
        budget = prefix_tokens + count(context) + 16
    prompt = build_fim_prompt(tokenizer, context + prefix[start:], suffix, fim,
                              max_prefix_tokens=budget, max_suffix_tokens=suffix_tokens)
    return PromptPlan(tokens=prompt.tokens, infill=prompt.infill, anchor_line=anchor, context_paths=context_paths,
                      dropped_prefix_tokens=prompt.dropped_prefix_tokens, healed=prompt.healed)

