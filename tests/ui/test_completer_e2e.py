"""Inline completions from the demo model in a notebook cell: ghost text appears while typing, from
llamalab's provider, and Tab accepts it into the cell."""

from __future__ import annotations

import json

from tests.ui.conftest import Lab

HEADER = "def add(a, b):"  # Enter, then BODY: CodeMirror indents the body line itself
BODY = "return a"


def ghost_text(lab: Lab) -> str:
    return lab.page.evaluate(
        "() => [...document.querySelectorAll('.jp-GhostText')].map(e => e.textContent).join('')")


def test_ghost_text_in_a_cell_and_tab_accepts_it(lab: Lab) -> None:
    page = lab.page
    replies: list = []
    page.on("response", lambda r: replies.append(r) if "/llamalab/complete" in r.url else None)
    lab.new_notebook("complete.ipynb", cells=[""])
    editor = page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first
    editor.click()
    page.keyboard.type(HEADER, delay=20)
    page.keyboard.press("Enter")  # JupyterLab asks for no completion at a new line: type on
    page.keyboard.type(BODY, delay=40)
    typed = lab.cell_texts()[0]
    assert typed == f"{HEADER}\n    {BODY}", typed
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-GhostText')].some(e => e.textContent.trim().length > 0)",
        timeout=60_000)
    page.wait_for_timeout(300)  # let a streamed suggestion settle a little
    ghost = ghost_text(lab)
    lab.shot("ghost-text")
    assert ghost.strip(), "ghost text is empty"
    suggested = [json.loads(r.text()).get("text", "") for r in replies if r.ok]
    assert any(ghost.strip() in text for text in suggested), (
        f"the ghost text {ghost!r} is none of llamalab's suggestions {suggested}")
    page.keyboard.press("Tab")
    page.wait_for_function(
        "() => ![...document.querySelectorAll('.jp-GhostText')].some(e => e.textContent.trim().length > 0)",
        timeout=10_000)
    text = lab.cell_texts()[0]
    lab.shot("accepted")
    assert text.startswith(typed), text
    assert len(text) > len(typed), f"Tab inserted nothing: {text!r}"
    first_line = ghost.strip().splitlines()[0].strip()
    assert first_line in text, f"the cell {text!r} lacks the ghost text {ghost!r}"
