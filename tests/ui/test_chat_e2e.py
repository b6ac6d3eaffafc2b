"""The chat side panel in a real JupyterLab, answering from the demo model: opening it from the
palette and the keyboard, streamed tokens, stopping with the button and with Escape, conversations
kept across a reload, errors in one line with details on demand, light and dark themes."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.ui.conftest import PACKAGE, Chat, Lab

MAX_PROMPT_CHARS = 3000


@pytest.fixture(scope="module")
def lab_options() -> dict[str, Any]:
    return {"llamalab": {"max_prompt_chars": MAX_PROMPT_CHARS}}

LONG_PROMPT = "Write a very long story about a llama who learns to program, at least 1000 words."


def focused_in_chat(lab: Lab) -> dict:
    return lab.page.evaluate(
        "() => { const a = document.activeElement; const p = document.getElementById('llamalab-chat');"
        " return {inside: !!(p && a && p.contains(a)), testid: a && a.getAttribute('data-testid')}; }")


def test_plugins_activate_and_the_panel_has_an_icon(lab: Lab) -> None:
    for plugin in ("chat", "completer", "manager"):
        assert lab.plugin_activated(f"{PACKAGE}:{plugin}"), f"{PACKAGE}:{plugin} did not activate"
    failures = [line for line in lab.console if "failed to activate" in line.lower() and "llamalab" in line]
    assert not failures, failures
    tab = lab.page.locator('.jp-SideBar [data-id="llamalab-chat"]')
    assert tab.count() == 1, "no side-bar tab for the chat panel"
    assert tab.locator("svg").count() >= 1, "the chat panel's tab has no icon"
    assert tab.get_attribute("title"), "the chat panel's tab has no caption"


def test_the_fixture_catches_an_uncaught_error_of_the_extension(lab: Lab) -> None:
    lab.page.evaluate("() => { setTimeout(() => { throw new Error('llamalab: a deliberate test error'); }); }")
    lab.page.wait_for_timeout(300)
    assert any("deliberate test error" in e for e in lab.extension_errors()), lab.errors
    lab.errors.clear()  # this one was on purpose


def test_palette_command_opens_and_focuses_the_panel(lab: Lab, chat: Chat) -> None:
    page = lab.page
    page.locator("#jp-main-dock-panel").click()  # focus the main area, away from the panel
    page.keyboard.press("Control+Shift+C")
    palette = page.locator("#command-palette")
    palette.wait_for(state="visible")
    page.keyboard.type("Open llamalab Chat")
    item = palette.locator('.lm-CommandPalette-item:has-text("Open llamalab Chat")').first
    item.wait_for(state="visible")
    lab.shot("palette")
    page.keyboard.press("Enter")
    chat.panel.wait_for(state="visible")
    chat.input.wait_for(state="visible")
    assert chat.input.get_attribute("aria-label") == "Message the model"
    assert page.locator("#command-palette").is_hidden()
    page.wait_for_function("() => document.activeElement && document.activeElement.getAttribute('data-testid')"
                           " === 'llamalab-chat-input'", timeout=5000)
    page.wait_for_timeout(500)  # still there once the palette has given focus back
    assert focused_in_chat(lab)["testid"] == "llamalab-chat-input", focused_in_chat(lab)
    lab.shot("opened")


def test_shortcut_opens_and_focuses_the_panel(lab: Lab, chat: Chat) -> None:
    page = lab.page
    assert not chat.panel.is_visible()
    page.locator("#jp-main-dock-panel").click()
    page.keyboard.press("Control+Shift+Y")
    chat.input.wait_for(state="visible", timeout=10_000)
    page.wait_for_function("() => document.activeElement && document.activeElement.getAttribute('data-testid')"
                           " === 'llamalab-chat-input'", timeout=5000)
    assert focused_in_chat(lab)["inside"]


def test_tokens_stream_into_the_answer(lab: Lab, chat: Chat) -> None:
    chat.open()
    before = chat.send("Write a paragraph of at least six sentences about the animals that live on farms.")
    chat.wait_streaming(before, min_chars=20)
    lab.shot("streaming", chat.panel)
    samples = chat.watch(before, timeout=90)
    lab.shot("answered", chat.panel)
    assert samples and samples[-1]["finish"], f"the answer never finished: {samples[-5:]}"
    streaming = [s for s in samples if s["streaming"] == "true" and s["len"] > 0]
    lengths = sorted({s["len"] for s in streaming})
    assert len(lengths) >= 2, f"no growth seen while data-streaming='true': {samples[:20]}"
    assert samples[-1]["streaming"] != "true", "data-streaming stays 'true' after the answer finished"
    assert samples[-1]["finish"] in ("stop", "length"), samples[-1]
    assert chat.wait_settled(before).strip(), "the finished answer is empty"
    user = lab.page.locator('#llamalab-chat .llamalab-message[data-role="user"]').last
    assert "animals that live on farms" in user.inner_text()
    assert chat.stop_button.count() == 0, "the stop button stays after the answer finished"
    assert chat.messages.get_attribute("role") == "log"


def test_the_text_is_complete_when_the_answer_is_marked_finished(lab: Lab, chat: Chat) -> None:
    """data-finish-reason appears only once the answer's whole text is rendered: whoever waits
    for it (a test, a screen reader following the role=log list) reads the full answer. Short
    answers showed it while the throttled Markdown render still had the last tokens to show."""
    chat.open()
    cut = []
    for prompt in ("Say the word banana.", "Say the word apple.", "Say yes."):
        before = chat.send(prompt)
        samples = chat.watch(before, timeout=60)
        assert samples and samples[-1]["finish"], f"{prompt!r} never finished: {samples[-5:]}"
        at_finish = samples[-1]["len"]  # sampled in the same moment the attribute was first seen
        final = chat.wait_settled(before)
        if at_finish != len(final):
            cut.append((prompt, at_finish, final))
        assert chat.answer(before).get_attribute("aria-busy") == "false"
    assert not cut, f"text still arriving after data-finish-reason: {cut}"


def test_stop_button_cancels_a_long_answer(lab: Lab, chat: Chat) -> None:
    chat.open()
    before = chat.send(LONG_PROMPT)
    chat.stop_button.wait_for(state="visible", timeout=30_000)
    chat.wait_streaming(before, min_chars=40)
    partial = chat.answer_text(before)
    lab.shot("generating", chat.panel)
    clicked = time.monotonic()
    chat.stop_button.click()
    answer = chat.wait_finished(before, timeout=5)
    took = time.monotonic() - clicked
    assert answer.get_attribute("data-finish-reason") == "cancelled"
    assert took < 3.0, f"the answer stopped {took:.1f}s after the click"
    chat.stop_button.wait_for(state="detached", timeout=3000)
    assert answer.get_attribute("data-streaming") != "true"
    kept = chat.answer_text(before)
    assert kept.startswith(partial[:30]), f"the stopped answer lost its text: {partial!r} -> {kept!r}"
    chat.send_button.wait_for(state="visible")
    lab.shot("stopped", chat.panel)


def test_keyboard_only_send_and_escape(lab: Lab, chat: Chat) -> None:
    page = lab.page
    page.locator("#jp-main-dock-panel").click()
    page.keyboard.press("Control+Shift+Y")
    page.wait_for_function("() => document.activeElement && document.activeElement.getAttribute('data-testid')"
                           " === 'llamalab-chat-input'", timeout=10_000)
    before = chat.answer_count()
    page.keyboard.type(LONG_PROMPT)
    page.keyboard.press("Enter")
    chat.wait_streaming(before, min_chars=40)
    assert chat.input.input_value() == "", "Enter sent the message but left it in the input"
    user = page.locator('#llamalab-chat .llamalab-message[data-role="user"]').last
    assert "llama who learns to program" in user.inner_text()
    page.keyboard.press("Escape")
    answer = chat.wait_finished(before, timeout=5)
    assert answer.get_attribute("data-finish-reason") == "cancelled"
    chat.stop_button.wait_for(state="detached", timeout=3000)
    lab.shot("escaped", chat.panel)


def _colors(lab: Lab) -> dict:
    return lab.page.evaluate(
        "() => { const style = (el) => el ? getComputedStyle(el) : null;"
        " const i = document.querySelector('[data-testid=\"llamalab-chat-input\"]');"
        " const p = document.getElementById('llamalab-chat');"
        " const bg = (el) => { while (el) { const c = getComputedStyle(el).backgroundColor;"
        "   if (c && c !== 'rgba(0, 0, 0, 0)' && c !== 'transparent') return c; el = el.parentElement; } return null; };"
        " return {panel: bg(p), input: bg(i), inputText: style(i).color}; }")


def test_light_and_dark_theme(lab: Lab, chat: Chat) -> None:
    chat.open()
    before = chat.send("Say hello in one short sentence.")
    chat.wait_finished(before, timeout=90)
    light = _colors(lab)
    lab.shot("light", chat.panel)
    lab.shot("light-full")
    try:
        lab.command("apputils:change-theme", {"theme": "JupyterLab Dark"})
        lab.page.wait_for_function("() => document.body.dataset.jpThemeName === 'JupyterLab Dark'"
                                   " && document.body.dataset.jpThemeLight === 'false'", timeout=30_000)
        lab.page.wait_for_timeout(500)  # the theme's stylesheet applies
        dark = _colors(lab)
        lab.shot("dark", chat.panel)
        lab.shot("dark-full")
        assert dark["panel"] != light["panel"], f"the panel keeps its background in the dark theme: {dark}"
        assert dark["input"] != light["input"] or dark["inputText"] != light["inputText"], (
            f"the chat input ignores the theme: light {light}, dark {dark}")
    finally:
        lab.command("apputils:change-theme", {"theme": "JupyterLab Light"})
        lab.page.wait_for_function("() => document.body.dataset.jpThemeName === 'JupyterLab Light'", timeout=30_000)


def test_shift_enter_is_a_new_line_not_a_send(lab: Lab, chat: Chat) -> None:
    chat.open()
    chat.input.click()
    before = chat.answer_count()
    lab.page.keyboard.type("first line")
    lab.page.keyboard.press("Shift+Enter")
    lab.page.keyboard.type("second line")
    assert chat.input.input_value() == "first line\nsecond line"
    lab.page.wait_for_timeout(300)
    assert chat.answer_count() == before and not lab.chat_requests()


def test_after_a_reload_the_first_message_sends_the_kept_turns_as_history(lab: Lab, chat: Chat) -> None:
    chat.open()
    lab.page.get_by_test_id("llamalab-chat-new").click()
    before = chat.send("My favourite fruit is the banana.")
    chat.wait_finished(before, timeout=90)
    lab.page.reload()
    lab.wait_ready()
    chat.open()
    lab.page.locator('#llamalab-chat .llamalab-message[data-role="user"]').first.wait_for(state="visible", timeout=10_000)
    before = chat.send("Which fruit did I name?")
    chat.wait_finished(before, timeout=90)
    first = lab.chat_requests()[-1]
    assert first["content"] == "Which fruit did I name?"  # no text preamble any more
    assert [t["role"] for t in first["history"]] == ["user", "assistant"]
    assert first["history"][0]["content"] == "My favourite fruit is the banana."
    assert first["history"][1]["content"].strip()  # the answer as streamed (Markdown source)
    before = chat.send("Thanks.")
    chat.wait_finished(before, timeout=90)
    assert not lab.chat_requests()[-1].get("history")  # the server has the turns on this connection


def test_conversations_survive_a_reload_and_a_new_one_starts_empty(lab: Lab, chat: Chat) -> None:
    chat.open()
    before = chat.send("Say the word banana.")
    chat.wait_finished(before, timeout=90)
    answer = chat.answer_text(before)
    lab.page.reload()
    lab.wait_ready()
    chat.open()
    user = lab.page.locator('#llamalab-chat .llamalab-message[data-role="user"]')
    user.first.wait_for(state="visible", timeout=10_000)
    assert "Say the word banana." in user.last.inner_text()
    assert chat.answer_text(chat.answer_count() - 1).strip() == answer.strip()
    lab.shot("after-reload", chat.panel)
    picker = lab.page.get_by_test_id("llamalab-conversation-picker")
    options_before = picker.locator("option").count()
    lab.page.get_by_test_id("llamalab-chat-new").click()
    lab.page.wait_for_function("() => !document.querySelector('#llamalab-chat .llamalab-message[data-role=\"user\"]')",
                               timeout=5000)
    assert picker.locator("option").count() == options_before + 1
    picker.select_option(index=[o.get_attribute("value") for o in picker.locator("option").all()].index(
        next(o.get_attribute("value") for o in picker.locator("option").all() if "banana" in o.inner_text())))
    user.first.wait_for(state="visible", timeout=5000)
    assert "Say the word banana." in user.last.inner_text()


def test_an_error_is_one_line_with_details_on_demand(lab: Lab, chat: Chat) -> None:
    chat.open()
    chat.input.fill("x" * (MAX_PROMPT_CHARS + 500))
    chat.send_button.click()
    error = lab.page.get_by_test_id("llamalab-chat-error").last
    error.wait_for(state="visible", timeout=30_000)
    summary = error.locator("summary")
    line = error.locator(".llamalab-error-text").inner_text().strip()
    assert "3000" in line, line
    assert line and "\n" not in line, f"the error is not one line: {line!r}"
    box = summary.bounding_box()
    assert box and box["height"] < 40, f"the error line is {box} tall"
    detail = error.locator(".llamalab-error-detail")
    assert not detail.is_visible(), "the details show before they are asked for"
    lab.shot("error-line", chat.panel)
    summary.click()
    detail.wait_for(state="visible")
    assert "prompt_too_long" in detail.inner_text()
    lab.shot("error-details", chat.panel)
    chat.stop_button.wait_for(state="detached", timeout=5000)
    assert chat.send_button.is_visible()


UNNAMED_CONTROLS_JS = """
(root) => [...root.querySelectorAll('button, select, textarea, input, [role=button]')]
  .filter(el => el.offsetParent !== null)
  .filter(el => {
    const label = el.getAttribute('aria-label') || el.getAttribute('title') || (el.textContent || '').trim();
    const byId = el.getAttribute('aria-labelledby');
    const wrapped = el.closest('label') && el.closest('label').textContent.trim();
    const forLabel = el.id && document.querySelector(`label[for="${el.id}"]`);
    return !(label || byId || wrapped || forLabel);
  })
  .map(el => el.outerHTML.slice(0, 160))
"""


def test_every_control_has_a_name_and_tab_reaches_send(lab: Lab, chat: Chat) -> None:
    chat.open()
    before = chat.send("Say hi.")
    chat.wait_finished(before, timeout=90)
    unnamed = chat.panel.evaluate(UNNAMED_CONTROLS_JS)
    assert not unnamed, f"controls without an accessible name: {unnamed}"
    chat.input.fill("typed")
    chat.input.focus()
    page = lab.page
    for _ in range(6):  # Tab moves on from the message box to the send button
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.getAttribute('data-testid')") == "llamalab-chat-send":
            break
    else:
        pytest.fail("Tab from the message box never reached the send button")
    page.keyboard.press("Enter")  # a focused button sends
    chat.wait_finished(before + 1, timeout=90)
