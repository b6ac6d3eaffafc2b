"""Inline completions from the demo model: ghost text appears while typing in a notebook cell and in
a Python file, from llamalab's provider, and Tab accepts it; an explicit invoke (Alt+\\) streams."""

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


GHOST_SHOWN_JS = "() => [...document.querySelectorAll('.jp-GhostText')].some(e => e.textContent.trim().length > 0)"


def test_ghost_text_in_a_python_file(lab: Lab) -> None:
    page = lab.page
    (lab.server.root / "script.py").write_text("")
    lab.command("docmanager:open", {"path": "script.py"})
    editor = page.locator(".jp-FileEditor .cm-content").first
    editor.wait_for(state="visible")
    editor.click()
    page.keyboard.type(HEADER, delay=20)
    page.keyboard.press("Enter")
    page.keyboard.type(BODY, delay=40)
    page.wait_for_function(GHOST_SHOWN_JS, timeout=60_000)
    page.wait_for_timeout(300)
    ghost = ghost_text(lab)
    lab.shot("ghost-text-in-file")
    page.keyboard.press("Tab")
    page.wait_for_function(f"() => !({GHOST_SHOWN_JS})()", timeout=10_000)
    text = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.model.sharedModel.getSource()")
    assert text.startswith(f"{HEADER}\n    {BODY}"), text
    assert ghost.strip().splitlines()[0].strip() in text, (ghost, text)


def test_explicit_invoke_streams_a_suggestion(lab: Lab) -> None:
    page = lab.page
    bodies: list = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data or "{}"))
            if "/llamalab/complete" in r.url else None)
    lab.new_notebook("invoke.ipynb", cells=[""])
    page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first.click()
    for line in ("import math", "", "def circle_area(r):"):  # CodeMirror indents the body itself
        page.keyboard.type(line, delay=15)
        page.keyboard.press("Enter")
    page.keyboard.type("return math.", delay=15)
    typed = lab.cell_texts()[0]
    page.wait_for_timeout(1500)  # an automatic suggestion may come
    page.keyboard.press("Escape")  # dismisses it, and leaves edit mode:
    page.keyboard.press("Enter")  # back to the cursor where it was
    page.wait_for_function(f"() => !({GHOST_SHOWN_JS})()", timeout=5000)
    page.keyboard.press("Alt+Backslash")
    page.wait_for_function(GHOST_SHOWN_JS, timeout=60_000)
    lab.shot("invoked")
    assert any(b.get("stream") is True for b in bodies), f"no streamed request was sent: {bodies}"
    assert lab.cell_texts()[0] == typed
    page.keyboard.press("Tab")
    page.wait_for_function(f"() => !({GHOST_SHOWN_JS})()", timeout=10_000)
    text = lab.cell_texts()[0]
    assert typed == "import math\n\ndef circle_area(r):\n    return math.", typed
    assert text.startswith(typed) and len(text) > len(typed), text
