"""Where a code completion stops and how it is cleaned up: pure functions on text, shared by
the language server and the JupyterLab inline completer.

``CursorContext.at(text, offset)`` describes the cursor; ``mode`` picks a multi-line completion
on a blank line and at the end of a line that opens a block (``:``, ``(``, ``[``, ``{``), and a
single-line one elsewhere (mid-line, or after a complete statement). ``should_stop`` is checked while the model streams, so a
generation ends as soon as its answer is complete; ``postprocess`` then cuts and cleans
the text:

- single line: the first line only;
- multi-line: up to the end of the current indented block (the first line indented less than
  the cursor's line; at the end of a line that opens a block, such as ``def f(n):``, the first
  line not indented deeper than it, keeping a closing ``}``/``)``), and before the first line
  that repeats the suffix's next line;
- trailing whitespace trimmed;
- closing brackets that the text after the cursor already has are not written twice;
- a suggestion that only repeats what follows the cursor is dropped (empty string).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["CursorContext", "Mode", "block_opener", "choose_mode", "should_stop", "postprocess", "cut_to_block",
           "cut_at_suffix_repeat", "balance_closers", "only_repeats_suffix", "trim_trailing_whitespace",
           "indent_of"]

Mode = Literal["single", "multi"]
OPENERS, CLOSERS = "([{", ")]}"
PAIRS = dict(zip(CLOSERS, OPENERS))


def indent_of(line: str) -> int:
    """Columns of leading whitespace (a tab counts as one column; compare like with like)."""
    return len(line) - len(line.lstrip(" \t"))


def block_opener(line_prefix: str, line_suffix: str) -> str:
    """The character that opens a block at the end of the cursor's line (``def f(n):|``,
    ``if (x) {|``, ``call(|``), or '' when the line does not end in one."""
    if line_suffix.strip():
        return ""
    end = line_prefix.rstrip()[-1:]
    return end if end and end in ":" + OPENERS else ""


def choose_mode(line_prefix: str, line_suffix: str) -> Mode:
    """Multi-line on a blank line (nothing before or after the cursor on it) and at the end of a
    line that opens a block; single-line elsewhere."""
    if not line_prefix.strip() and not line_suffix.strip():
        return "multi"
    return "multi" if block_opener(line_prefix, line_suffix) else "single"


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
    def opener(self) -> str:
        """See ``block_opener``: what the cursor's line opens, if anything."""
        return block_opener(self.line_prefix, self.line_suffix) if self.line_prefix.strip() else ""

    @property
    def block_indent(self) -> int:
        """The indentation the completion's lines must keep: that of the cursor's line, or
        deeper than it when the line opens a block (its body)."""
        if not self.line_prefix.strip():
            return len(self.line_prefix)
        return indent_of(self.line_prefix) + (1 if self.opener else 0)

    @property
    def next_suffix_line(self) -> str:
        """The first non-blank line after the cursor's line, stripped ('' if none)."""
        for line in self.suffix.split("\n")[1:]:
            if line.strip():
                return line.strip()
        return ""


def cut_to_block(completion: str, indent: int, closer: str = "") -> str:
    """Keep the lines up to the first non-blank line (after the first) indented less than
    ``indent``; a line that starts with ``closer`` one column back (the ``}`` or ``)`` closing
    the bracket the block opened) is kept as the block's last line."""
    lines = completion.split("\n")
    for i, line in enumerate(lines[1:], start=1):
        if line.strip() and indent_of(line) < indent:
            keep = bool(closer) and line.strip().startswith(closer) and indent_of(line) == indent - 1
            return "\n".join(lines[:i + 1] if keep else lines[:i])
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


def _closer(ctx: CursorContext) -> str:
    return {"(": ")", "[": "]", "{": "}"}.get(ctx.opener, "")


def should_stop(generated: str, ctx: CursorContext) -> bool:
    """Whether a streaming completion is already complete (checked after each piece)."""
    if ctx.mode == "single":
        return "\n" in (generated if ctx.line_prefix.strip() else generated.lstrip("\n"))
    complete_lines = generated.split("\n")[:-1]  # the last one may still grow
    text = "\n".join(complete_lines)
    return (cut_to_block(text, ctx.block_indent, _closer(ctx)) != text
            or cut_at_suffix_repeat(text, ctx.next_suffix_line) != text)


def postprocess(completion: str, ctx: CursorContext) -> str:
    """The text to insert at the cursor, or '' when there is nothing worth suggesting."""
    text = completion
    if ctx.mode == "single":
        text = text.lstrip("\n") if not ctx.line_prefix.strip() else text
        text = text.split("\n", 1)[0]
    else:
        text = cut_to_block(text, ctx.block_indent, _closer(ctx))
        text = cut_at_suffix_repeat(text, ctx.next_suffix_line)
    text = trim_trailing_whitespace(text)
    text = balance_closers(text, ctx.line_suffix)
    if only_repeats_suffix(text, ctx.suffix):
        return ""
    return text
