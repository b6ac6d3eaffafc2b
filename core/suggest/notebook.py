"""A notebook as the text a code suggestion sees: its cells, in order, laid out like a script.

Cells are written in the "percent" format that code models have read in many scripts
(jupytext, VS Code, Spyder): each code cell under a ``# %%`` line in the notebook language's
comment syntax, markdown cells under ``# %% [markdown]`` with every line commented out, raw
cells left out. A language without a line comment we know gets its code cells one blank line
apart and no markdown.

``render_notebook`` writes the cells above the cursor's (nearest last) and the cursor's cell up
to the cursor as the prefix, the rest of that cell and the cells below as the suffix, each
bounded in characters, so a notebook of 10,000 cells costs no more than one of forty. It also
says where each cell starts: the prefix window of ``layout`` may start only at a cell's first
line or ``GRID_LINES`` lines into a cell, and it remembers that start as ``(cell id, line in
the cell)``, which stays right when cells above are added, removed or no longer sent.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from .layout import GRID_LINES, line_comment

__all__ = ["Cell", "CellKind", "HEAD_CHARS", "RenderedNotebook", "render_notebook"]

# The notebook's head (its first cells: imports, data loading) is at most this long. A client
# with a long notebook sends its first cells up to this size and the cells near the cursor.
HEAD_CHARS = 2048

CellKind = Literal["code", "markdown", "raw"]


@dataclass(frozen=True)
class Cell:
    """One notebook cell: JupyterLab's id for it, its source and its kind."""

    id: str
    source: str
    kind: CellKind = "code"


@dataclass(frozen=True)
class RenderedNotebook:
    """The notebook's text around the cursor and where its cells begin in ``prefix``."""

    prefix: str
    suffix: str
    cell_ids: tuple[str, ...]  # of the cells whose text is in prefix, in order
    cell_lines: tuple[int, ...]  # the line (from 0, in prefix) each of those begins on
    cell_offsets: tuple[int, ...]  # and the character it begins at
    from_first_cell: bool  # prefix begins with the notebook's first cell (no cell above was left out)

    def is_anchor(self, line: int) -> bool:
        """May the prefix window start on ``line``: a cell's first line, or a grid line into it."""
        index = bisect.bisect_right(self.cell_lines, line) - 1
        return index >= 0 and (line - self.cell_lines[index]) % GRID_LINES == 0

    def anchor_key(self, line: int) -> tuple[str, int]:
        """``line`` as (the id of the cell it is in, the line in that cell)."""
        index = max(0, bisect.bisect_right(self.cell_lines, line) - 1)
        return self.cell_ids[index], line - self.cell_lines[index]

    def anchor_line(self, key: Optional[tuple[str, int]]) -> Optional[int]:
        """A remembered ``anchor_key`` as a line of this prefix; None when its cell is gone."""
        if key is None:
            return None
        try:
            index = self.cell_ids.index(key[0])
        except ValueError:
            return None
        return self.cell_lines[index] + key[1]


def _cell_text(cell: Cell, comment: Optional[str]) -> str:
    """A whole cell as the prefix shows it, ending in a blank line; '' for what is left out."""
    body = cell.source.rstrip()
    if cell.kind == "raw" or (cell.kind == "markdown" and comment is None) or not body:
        return ""
    if comment is None:
        return body + "\n\n"
    if cell.kind == "markdown":
        lines = "\n".join(f"{comment} {line}".rstrip() for line in body.split("\n"))
        return f"{comment} %% [markdown]\n{lines}\n\n"
    return f"{comment} %%\n{body}\n\n"


def _header(comment: Optional[str]) -> str:
    return f"{comment} %%\n" if comment is not None else ""


def render_notebook(cells: Sequence[Cell], index: int, cell_prefix: str, cell_suffix: str, language: str, *,
                    max_prefix_chars: int, max_suffix_chars: int, max_head_chars: int = 0) -> RenderedNotebook:
    """The text around a cursor in ``cells[index]`` (whose text is ``cell_prefix + cell_suffix``).

    Whole cells above are taken, nearest first, while the prefix stays within
    ``max_prefix_chars`` (the cursor's own cell always, cut by the caller's token windows when
    it alone is larger); when that does not reach the first cell, the first cells (the
    notebook's head: imports, data loading) within ``max_head_chars`` come before them. Below,
    the suffix is cut at ``max_suffix_chars``. A client with a long notebook sends its first
    cells and the cells near the cursor; the ones between may be left out."""
    comment = line_comment(language)
    own = _header(comment) + cell_prefix
    above: list[tuple[str, str]] = []  # (cell id, text), nearest first
    size = len(own)
    first = index
    for i in range(index - 1, -1, -1):
        text = _cell_text(cells[i], comment)
        if not text:
            first = i
            continue
        if size + len(text) > max_prefix_chars:
            break
        above.append((cells[i].id, text))
        size += len(text)
        first = i
    above.reverse()
    if first > 0 and max_head_chars > 0:  # the notebook's first cells, with a gap before the nearest
        head: list[tuple[str, str]] = []
        used = 0
        for cell in cells[:first]:
            text = _cell_text(cell, comment)
            if not text:
                continue
            if used + len(text) > max_head_chars:
                break
            head.append((cell.id, text))
            used += len(text)
        if head:
            above, first = head + above, 0
    ids, lines, offsets, parts, line, offset = [], [], [], [], 0, 0
    for cell_id, text in above:
        ids.append(cell_id)
        lines.append(line)
        offsets.append(offset)
        parts.append(text)
        line += text.count("\n")
        offset += len(text)
    ids.append(cells[index].id)
    lines.append(line)
    offsets.append(offset)
    parts.append(own)
    suffix_parts = [cell_suffix]
    length = len(cell_suffix)
    for cell in cells[index + 1:]:
        if length >= max_suffix_chars:
            break
        text = _cell_text(cell, comment)
        if text:
            text = "\n\n" + text.rstrip("\n") if not suffix_parts[-1].endswith("\n") else "\n" + text.rstrip("\n")
            suffix_parts.append(text)
            length += len(text)
    return RenderedNotebook(prefix="".join(parts), suffix="".join(suffix_parts)[:max_suffix_chars],
                            cell_ids=tuple(ids), cell_lines=tuple(lines), cell_offsets=tuple(offsets),
                            from_first_cell=first == 0)
