"""Issue 13, deliverable 7: model text shown as Markdown by the ``%%llama`` magics and the
ipywidgets chat never becomes active HTML, and images in it load nothing."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from llamalab import GenerationParams, GenerationResult, TokenStream
from llamalab.extension.magics import render, safe_markdown
from llamalab.extension.widgets import ChatWidget

ATTACKS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "Sure! <svg onload=alert(1)>",
    "```\ncode\n```~\n<img src=x onerror=alert(1)>\n```",  # a closing fence markdown renderers disagree on
    "``` a`b\n<img src=x onerror=alert(1)>",  # not a fence: a backtick in the info string
    "`unclosed <img src=x onerror=alert(1)>",
    "\\`<img src=x onerror=alert(1)>`",
    "    indented `\n<img src=x onerror=alert(1)>\n`",
    "~~~\n<b>\n```\n<img src=x onerror=alert(1)>\n~~~\n<iframe src=https://evil>",
]


class Tags(HTMLParser):
    """The HTML tags a renderer would make active: anything but our own ``<code>``."""

    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def active_tags(markdown: str) -> list[str]:
    """Tags outside fenced code blocks (the fences safe_markdown writes are whole lines)."""
    outside, fence = [], None
    for line in markdown.split("\n"):
        if fence is None and re.match(r"^`{3,}", line):
            fence = re.match(r"^`+", line).group()
        elif fence is not None and line == fence:
            fence = None
        elif fence is None:
            outside.append(line)
    parser = Tags()
    parser.feed("\n".join(outside))
    return [t for t in parser.tags if t != "code"]


@pytest.mark.parametrize("answer", ATTACKS)
def test_markdown_answers_carry_no_active_html(answer):
    bundle = render(answer, "markdown", final=True)
    assert bundle["text/plain"] == answer  # the plain text is untouched
    assert active_tags(bundle["text/markdown"]) == []


def test_code_stays_readable_and_fenced():
    md = safe_markdown("Use `a < b`:\n```python\nif a < b:\n    print('<ok>')\n```\nDone & dusted.")
    assert "<code>a &lt; b</code>" in md
    assert "```python\nif a < b:\n    print('<ok>')\n```" in md  # code blocks verbatim
    assert "Done &amp; dusted." in md


def test_a_code_block_cannot_close_its_fence_early():
    md = render("```html\n<b>````</b>\n```", "code", final=True)["text/markdown"]
    assert active_tags(md) == []
    md = safe_markdown("```\nx ```` y\n```")
    fence = md.split("\n")[0]
    assert fence == "`````" and md == "`````\nx ```` y\n`````"


def test_images_and_script_links_are_not_live():
    md = safe_markdown("![x](https://host/?d=secret) [click](javascript:alert(1)) [ok](https://example.com)")
    assert "![" not in md and "](javascript:" not in md
    assert "[ok](https://example.com)" in md  # ordinary links still work


class FakeEngine:
    """An engine whose answer is fixed: the widget's rendering is what is under test."""

    def __init__(self, answer):
        self.answer = answer

    def describe(self):
        from types import SimpleNamespace

        return SimpleNamespace(name="<b>fake</b>")

    def chat(self, messages, params=None):
        def pieces():
            yield self.answer
            return GenerationResult(text=self.answer, finish_reason="stop", prompt_tokens=1,
                                    completion_tokens=1, duration_s=0.1)

        return TokenStream(pieces(), lambda: None)


@pytest.mark.parametrize("answer", ATTACKS[:3])
def test_widget_chat_escapes_the_answer_and_the_question(answer):
    chat = ChatWidget(engine=FakeEngine(answer), params=GenerationParams(max_tokens=4), update_interval=0)
    chat.ask("<img src=q onerror=alert(2)>").join(30)
    question, reply = (child.value for child in chat.history_box.children)
    for shown in (question, reply, chat.header.value):
        parser = Tags()
        parser.feed(shown)
        assert set(parser.tags) <= {"div", "b", "br"}  # the widget's own markup only
    assert "&lt;" in reply and chat.messages[-1]["content"] == answer
