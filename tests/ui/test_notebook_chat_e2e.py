"""The chat panel with notebooks: a code block of the model's answer goes into the active cell and
into a new cell below it with one click each; the active cell goes along as context when ticked;
"Explain this error" on a failed cell asks the model about its traceback."""

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


def test_the_active_cell_goes_along_as_context(lab: Lab, chat: Chat) -> None:
    source = "values = [3, 1, 2]\nprint(sorted(values))"
    lab.new_notebook("context.ipynb", cells=[source])
    lab.page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first.click()
    chat.open()
    toggle = lab.page.get_by_test_id("llamalab-context-cell")
    assert toggle.is_enabled(), "the Cell context toggle is disabled with a notebook cell active"
    toggle.check()
    before = chat.send("What does this code print?")
    chat.wait_finished(before, timeout=60)
    sent = lab.chat_requests()[-1]
    assert "print(sorted(values))" in sent["content"], sent
    assert "What does this code print?" in sent["content"], sent
    user = lab.page.locator('#llamalab-chat .llamalab-message[data-role="user"]').last
    assert "What does this code print?" in user.inner_text()
    lab.shot("cell-context", chat.panel)


def test_explain_this_error_on_a_failed_cell(lab: Lab, chat: Chat) -> None:
    page = lab.page
    lab.new_notebook("explain.ipynb", cells=["numbers = [1, 2, 3]\nprint(numbers[10])"])
    page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first.click()
    lab.command("notebook:run-cell")
    button = page.get_by_test_id("llamalab-explain-error")
    button.wait_for(state="visible", timeout=60_000)
    assert "IndexError" in (button.get_attribute("title") or ""), button.get_attribute("title")
    lab.shot("failed-cell")
    before = chat.answer_count()
    button.click()
    chat.panel.wait_for(state="visible")
    chat.wait_finished(before, timeout=60)
    sent = lab.chat_requests()[-1]
    assert "IndexError" in sent["content"] and "numbers[10]" in sent["content"], sent["content"][-2000:]
    assert chat.answer_text(before).strip(), "the explanation is empty"
    lab.shot("explained")
