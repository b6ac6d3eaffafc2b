"""Conversations kept by the Jupyter server, in a real JupyterLab: two tabs (and two browsers) see
the same conversations, a rename in one shows in the other without a reload, a reload keeps them,
and the conversations an earlier version kept in the browser's localStorage move to the server once."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from tests.fixtures.waiting import wait_until
from tests.ui.conftest import VIEWPORT, Chat, Lab

PICKER = "llamalab-conversation-picker"
USER = '#llamalab-chat .llamalab-message[data-role="user"]'


@pytest.fixture
def other_browser(browser: Any, lab: Lab, request: pytest.FixtureRequest) -> Iterator[Lab]:
    """JupyterLab in a second browser context: another browser, with a localStorage of its own."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(30_000)
    other = Lab(context.new_page(), lab.server, request.node.name + "-other")
    try:
        yield other
    finally:
        context.close()


def titles(lab: Lab) -> list[str]:
    return [o.inner_text().strip() for o in lab.page.get_by_test_id(PICKER).locator("option").all()]


def wait_title(lab: Lab, title: str, present: bool = True, timeout: float = 20_000) -> None:
    lab.page.wait_for_function(
        "([id, t, present]) => { const s = document.querySelector(`[data-testid=\"${id}\"]`);"
        " const has = !!s && [...s.options].some(o => o.textContent.trim() === t); return has === present; }",
        arg=[PICKER, title, present], timeout=timeout)


def server_conversations(lab: Lab) -> list[dict[str, Any]]:
    return lab.server.api("llamalab/conversations")["conversations"]


def test_two_tabs_and_two_browsers_see_the_same_conversations(lab: Lab, other_browser: Lab) -> None:
    chat = Chat(lab).open()
    lab.page.get_by_test_id("llamalab-chat-new").click()
    before = chat.send("Remember the word teapot.")
    chat.wait_finished(before, timeout=90)
    wait_title(lab, "Remember the word teapot.")
    answer = chat.answer_text(before).strip()
    stored = next(c for c in server_conversations(lab) if c["name"] == "Remember the word teapot.")
    assert stored["messages"] == 2  # the server wrote the turn

    # A second tab of the same browser, and another browser: both show it with its answer.
    tab = Lab(lab.page.context.new_page(), lab.server, lab.test_name + "-tab")
    for other in (tab, other_browser):
        other.open()
        other_chat = Chat(other).open()
        wait_title(other, "Remember the word teapot.")
        picker = other.page.get_by_test_id(PICKER)
        picker.select_option(value=stored["id"])
        other.page.locator(USER).last.wait_for(state="visible", timeout=10_000)
        assert "Remember the word teapot." in other.page.locator(USER).last.inner_text()
        assert other_chat.answer_text(other_chat.answer_count() - 1).strip() == answer

    # A rename in the other browser shows in the first tab without a reload.
    other_browser.page.get_by_test_id("llamalab-chat-rename").click()
    field = other_browser.page.get_by_test_id("llamalab-chat-rename-input")
    field.fill("Teapot talk")
    field.press("Enter")
    wait_title(lab, "Teapot talk")
    wait_title(tab, "Teapot talk")
    assert any(c["name"] == "Teapot talk" for c in server_conversations(lab))

    # A turn in the second tab reaches the first one's view.
    tab_chat = Chat(tab)
    before = tab_chat.send("And which word was it?")
    tab_chat.wait_finished(before, timeout=90)
    lab.page.get_by_test_id(PICKER).select_option(value=stored["id"])
    lab.page.wait_for_function("(sel) => [...document.querySelectorAll(sel)].some("
                               "m => m.textContent.includes('And which word was it?'))", arg=USER, timeout=20_000)

    # Deleting it in the first tab takes it out of the others.
    lab.page.get_by_test_id("llamalab-chat-delete").click()
    wait_title(other_browser, "Teapot talk", present=False)
    wait_title(tab, "Teapot talk", present=False)
    assert all(c["id"] != stored["id"] for c in server_conversations(lab))
    tab.page.close()


def test_a_reload_keeps_the_conversations(lab: Lab) -> None:
    chat = Chat(lab).open()
    lab.page.get_by_test_id("llamalab-chat-new").click()
    before = chat.send("Say the word kettle.")
    chat.wait_finished(before, timeout=90)
    answer = chat.answer_text(before).strip()
    lab.page.reload()
    lab.wait_ready()
    Chat(lab).open()
    lab.page.locator(USER).last.wait_for(state="visible", timeout=10_000)
    assert "Say the word kettle." in lab.page.locator(USER).last.inner_text()
    assert chat.answer_text(chat.answer_count() - 1).strip() == answer
    assert "Say the word kettle." in titles(lab)


LEGACY = {
    "version": 1, "active": "c-legacy-1", "model": "",
    "conversations": [{
        "id": "c-legacy-1", "title": "Old browser chat", "system": "Be brief.", "created": 1000, "updated": 2000,
        "entries": [
            {"id": "q-old", "role": "user", "content": "What is a llama?", "time": 1000},
            {"id": "q-old", "role": "assistant", "content": "A South American camelid.", "finishReason": "stop",
             "time": 1001},
        ],
    }],
}


def test_the_browsers_conversations_move_to_the_server_once(lab: Lab) -> None:
    page = lab.page
    page.evaluate("(v) => { localStorage.setItem('llamalab-chat:conversations', v);"
                  " localStorage.removeItem('llamalab-chat:conversations-moved'); }", json.dumps(LEGACY))
    page.reload()
    lab.wait_ready()
    Chat(lab).open()
    wait_title(lab, "Old browser chat")
    wait_until(lambda: any(c["id"] == "c-legacy-1" for c in server_conversations(lab)), "the import", timeout=20)
    moved = [c for c in server_conversations(lab) if c["id"] == "c-legacy-1"]
    assert moved[0]["name"] == "Old browser chat" and moved[0]["messages"] == 2
    stored = lab.server.api("llamalab/conversations/c-legacy-1")
    assert stored["system"] == "Be brief." and stored["entries"][1]["content"] == "A South American camelid."
    marker = json.loads(page.evaluate("() => localStorage.getItem('llamalab-chat:conversations-moved')"))
    assert marker["imported"] == ["c-legacy-1"]
    assert page.evaluate("() => localStorage.getItem('llamalab-chat:conversations')") == json.dumps(LEGACY)

    # Renamed on the server, then a reload: nothing is imported again (the server's copy stays).
    lab.server.api("llamalab/conversations/c-legacy-1", "PATCH", {"name": "Renamed on the server"})
    page.reload()
    lab.wait_ready()
    Chat(lab).open()
    wait_title(lab, "Renamed on the server")
    assert "Old browser chat" not in titles(lab)
    assert lab.server.api("llamalab/conversations/c-legacy-1")["revision"] == 2
