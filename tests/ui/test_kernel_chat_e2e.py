"""The chat panel's "Kernel" option in a browser: with a notebook whose kernel defined a DataFrame,
the message goes out with the kernel's id and the notebook's execution count, the server answers,
and the message shows that the kernel's variables went along."""

from __future__ import annotations

from tests.ui.conftest import Chat, Lab


def test_the_kernel_option_sends_the_notebooks_kernel(lab: Lab, chat: Chat) -> None:
    page = lab.page
    lab.new_notebook("kernel.ipynb", cells=['import pandas as pd\ndf = pd.DataFrame({"price": [1.0], "qty": [2]})'])
    page.locator(".jp-NotebookPanel .jp-Cell .cm-content").first.click()
    lab.command("notebook:run-cell")
    page.wait_for_function(
        "() => { const w = window.jupyterapp.shell.currentWidget;"
        " return w && w.content.widgets[0].model.executionCount === 1; }", timeout=60_000)
    kernel_id = page.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id")
    chat.open()
    toggle = page.get_by_test_id("llamalab-context-kernel")
    page.wait_for_function("() => { const t = document.querySelector('[data-testid=llamalab-context-kernel]');"
                           " return t && !t.disabled; }", timeout=30_000)
    toggle.check()
    before = chat.send("Which columns has df?")
    chat.wait_finished(before, timeout=60)
    sent = lab.chat_requests()[-1]
    assert sent["kernel"] == {"id": kernel_id, "execution_count": 1}, sent
    assert sent["content"] == "Which columns has df?"
    user = page.locator('#llamalab-chat .llamalab-message[data-role="user"]').last
    assert "Variables in the kernel" in user.inner_text()
    lab.shot("kernel-context", chat.panel)

    toggle.uncheck()
    before = chat.send("Thanks.")
    chat.wait_finished(before, timeout=60)
    assert "kernel" not in lab.chat_requests()[-1]
