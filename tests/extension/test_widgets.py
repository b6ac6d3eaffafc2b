"""The ipywidgets chat: streamed answers into the history, Stop, and llamalab.chat()."""

from __future__ import annotations

import time

import llamalab
from llamalab import GenerationParams
from llamalab.extension.widgets import ChatWidget


def test_chat_widget_streams_an_answer_and_remembers(engine):
    chat = ChatWidget(engine=engine, params=GenerationParams(max_tokens=12, temperature=0), update_interval=0)
    chat.input.value = "Name a colour."
    chat.send_button.click()  # what the Send button does
    chat.wait(60)
    assert chat.input.value == "" and len(chat.history_box.children) == 2
    assert [m["role"] for m in chat.messages] == ["user", "assistant"] and chat.messages[1]["content"]
    assert "tokens/s" in chat.status.value and "smollm2-test" in chat.header.value
    assert chat.send_button.disabled is False and chat.stop_button.disabled is True
    chat.ask("And another one?").join(60)
    assert len(chat.messages) == 4 and len(chat.history_box.children) == 4


def test_stop_cancels_the_answer(engine):
    chat = ChatWidget(engine=engine, params=GenerationParams(max_tokens=400, temperature=0))
    chat.ask("Write a long story about llamas.")
    deadline = time.monotonic() + 30
    while "&#8230;" in chat.history_box.children[-1].value and time.monotonic() < deadline:
        time.sleep(0.02)  # until the first tokens show
    chat.stop_button.click()
    chat.wait(10)
    assert not chat.busy and "stopped" in chat.status.value
    assert chat.messages[-1]["content"]  # what came before Stop is kept


def test_llamalab_chat_returns_the_widget(engine):
    widget = llamalab.chat(engine=engine, system="Be brief.")
    assert isinstance(widget, ChatWidget) and widget.system == "Be brief."
