"""Where a code completion stops and how it is cleaned up: pure functions on text, shared by
the language server and the JupyterLab inline completer.

``CursorContext.at(text, offset)`` describes the cursor; ``mode`` picks a single-line
completion when there is code after the cursor on its line or before it (mid-line), and a
multi-line one on a blank line. ``should_stop`` is checked while the model streams, so a
generation ends as soon as its answer is complete; ``postprocess`` then cuts and cleans
the text:

- single line: the first line only;
- multi-line: up to the end of the current indented block (the first line indented less than
  the cursor's line), and before the first line that repeats the suffix's next line;
- trailing whitespace trimmed;
- closing brackets that the text after the cursor already has are not written twice;
- a suggestion that only repeats what follows the cursor is dropped (empty string).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CursorContext", "Mode", "choose_mode", "should_stop", "postprocess", "cut_to_block",
           "cut_at_suffix_repeat", "balance_closers", "only_repeats_suffix", "trim_trailing_whitespace",
           "indent_of"]

Mode = Literal["single", "multi"]
OPENERS, CLOSERS = "([{", ")]}"
PAIRS = dict(zip(CLOSERS, OPENERS))


def indent_of(line: str) -> int:
    """Columns of leading whitespace (a tab counts as one column; compare like with like)."""
    return len(line) - len(line.lstrip(" \t"))


def choose_mode(line_prefix: str, line_suffix: str) -> Mode:
    """Multi-line on a blank line (nothing before or after the cursor on it), else single-line."""
    return "multi" if not line_prefix.strip() and not line_suffix.strip() else "single"


@dataclass(frozen=True)
class CursorContext:
    prefix: str  # the document before the cursor
    suffix: str  # the document after the cursor
    mode: Mode

    @classmethod
    def at(cls, text: str, offset: int, mode: Mode | None = None) -> "CursorContext":
        prefix, suffix = text[:offset], text[offset:]
        ctx = cls(prefix, suffix, "single")
        return cls(prefix, suffix, mode or choose_mode(ctx.line_prefix, ctx.line_suffix))

    @property
    def line_prefix(self) -> str:
        return self.prefix.rsplit("\n", 1)[-1]

    @property
    def line_suffix(self) -> str:
        return self.suffix.split("\n", 1)[0]

    @property
    def block_indent(self) -> int:
        """The indentation of the block the cursor is in: that of the cursor's line."""
        return indent_of(self.line_prefix) if self.line_prefix.strip() else len(self.line_prefix)

    @property
    def next_suffix_line(self) -> str:
        """The first non-blank line after the cursor's line, stripped ('' if none)."""
        for line in self.suffix.split("\n")[1:]:
            if line.strip():
                return line.strip()
        return ""


def cut_to_block(completion: str, indent: int) -> str:
    """Keep the lines up to the first non-blank line (after the first) indented less than ``indent``."""
    lines = completion.split("\n")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() and indent_of(line) < indent:
            return "\n".join(lines[:i])
    return completion


def cut_at_suffix_repeat(completion: str, next_suffix_line: str) -> str:
    """Cut before the first completion line (after the first) that repeats the suffix's next line."""
    if not next_suffix_line:
        return completion
    lines = completion.split("\n")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() == next_suffix_line:
            return "\n".join(lines[:i])
    return completion


def trim_trailing_whitespace(completion: str) -> str:
    return "\n".join(line.rstrip() for line in completion.split("\n")).rstrip()


def _unmatched_closers_tail(text: str) -> str:
    """The run of closing brackets ending ``text`` that close nothing opened inside ``text``."""
    stack: list[str] = []
    unmatched_at: list[int] = []
    for i, ch in enumerate(text):
        if ch in OPENERS:
            stack.append(ch)
        elif ch in CLOSERS:
            if stack and stack[-1] == PAIRS[ch]:
                stack.pop()
            else:
                unmatched_at.append(i)
    tail_start = len(text)
    while tail_start > 0 and (tail_start - 1) in unmatched_at:
        tail_start -= 1
    return text[tail_start:]


def balance_closers(completion: str, line_suffix: str) -> str:
    """Drop closing brackets at the end of ``completion`` that close brackets opened before the
    cursor when the text after the cursor already starts with them (``print(|)`` + ``'hi')``)."""
    tail = _unmatched_closers_tail(completion.rstrip())
    after = line_suffix.lstrip()
    for n in range(len(tail), 0, -1):
        if after.startswith(tail[-n:]):
            return completion.rstrip()[:-n]
    return completion


def only_repeats_suffix(completion: str, suffix: str) -> bool:
    """True when the suggestion is empty or merely re-types what already follows the cursor."""
    text = completion.strip()
    return not text or suffix.lstrip().startswith(text)


def should_stop(generated: str, ctx: CursorContext) -> bool:
    """Whether a streaming completion is already complete (checked after each piece)."""
    if ctx.mode == "single":
        return "\n" in (generated if ctx.line_prefix.strip() else generated.lstrip("\n"))
    complete_lines = generated.split("\n")[:-1]  # the last one may still grow
    text = "\n".join(complete_lines)
    return (cut_to_block(text, ctx.block_indent) != text
            or cut_at_suffix_repeat(text, ctx.next_suffix_line) != text)


def postprocess(completion: str, ctx: CursorContext) -> str:
    """The text to insert at the cursor, or '' when there is nothing worth suggesting."""
    text = completion
    if ctx.mode == "single":
        text = text.lstrip("\n") if not ctx.line_prefix.strip() else text
        text = text.split("\n", 1)[0]
    else:
        text = cut_to_block(text, ctx.block_indent)
        text = cut_at_suffix_repeat(text, ctx.next_suffix_line)
    text = trim_trailing_whitespace(text)
    text = balance_closers(text, ctx.line_suffix)
    if only_repeats_suffix(text, ctx.suffix):
        return ""
    return text
