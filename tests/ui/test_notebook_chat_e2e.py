"""A code block of the model's answer goes into the notebook: into the active cell, and as a new
cell below it, with one click each."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ui.conftest import Chat, Lab

# The demo model is tiny: the server's system prompt and an exact reply to copy make a fenced
# block likely, and the test asks again (a new answer each time) until one comes.
SYSTEM = "You write Python. Answer with one fenced Python code block and nothing else."
PROMPT = "Reply with exactly:\n```python\nprint(1)\n```"
TRIES = 5


@pytest.fixture(scope="module")
def lab_options() -> dict[str, Any]:
    return {"llamalab": {"system_prompt": SYSTEM, "default_max_tokens": 64}}


def code_of(button: Any) -> str:
    """The code of the block a button belongs to, as the page shows it."""
    return button.evaluate(
        "(b) => { let el = b; while (el && !el.querySelector('pre, code')) el = el.parentElement;"
        " const c = el && (el.querySelector('pre code') || el.querySelector('pre') || el.querySelector('code'));"
        " return c ? c.textContent : null; }")


def answer_with_code(lab: Lab, chat: Chat) -> Any:
    for _ in range(TRIES):
        before = chat.send(PROMPT)
        answer = chat.wait_finished(before, timeout=60)
        if answer.get_by_test_id("llamalab-code-insert").count():
            return answer
    pytest.fail(f"no code block in {TRIES} answers of the demo model; the last: {answer.inner_text()!r}")


def test_insert_a_code_block_into_the_active_cell_and_a_new_cell(lab: Lab, chat: Chat) -> None:
    lab.new_notebook("insert.ipynb", cells=["# the model's code goes below\n"])
    editor = lab.page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first
    editor.click()
    lab.page.keyboard.press("Control+End")  # the cursor at the end of the cell
    chat.open()
    answer = answer_with_code(lab, chat)
    insert = answer.get_by_test_id("llamalab-code-insert").first
    for testid in ("llamalab-code-copy", "llamalab-code-new-cell"):
        assert answer.get_by_test_id(testid).count() >= 1, f"the code block has no {testid} button"
    code = code_of(insert)
    assert code and code.strip(), "the code block's text is not in the page"
    lab.shot("answer-with-code")

    insert.click()
    lab.page.wait_for_function(
        "(code) => { const w = window.jupyterapp.shell.widgets('main');"
        " for (const x of w) { if (x.context && x.context.path === 'insert.ipynb')"
        "   return x.content.widgets[0].model.sharedModel.getSource().includes(code); } return false; }",
        arg=code.strip(), timeout=10_000)
    cells = lab.notebook_cell_texts("insert.ipynb")
    assert cells[0].startswith("# the model's code goes below"), cells
    assert len(cells) == 1, cells
    lab.shot("inserted")

    answer.get_by_test_id("llamalab-code-new-cell").first.click()
    lab.page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.widgets('main');"
        " for (const x of w) { if (x.context && x.context.path === 'insert.ipynb')"
        "   return x.content.widgets.length === 2; } return false; }", timeout=10_000)
    cells = lab.notebook_cell_texts("insert.ipynb")
    assert cells[1].strip() == code.strip(), cells
    lab.shot("new-cell")
