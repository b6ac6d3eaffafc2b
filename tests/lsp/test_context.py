"""Prompt context and settings without a model: the anchored prefix window, other documents'
chunks under path headers, and the checks on settings (a word-count tokenizer stands in for the
model's, which keeps these tests exact and fast)."""

from __future__ import annotations

import pytest

pytest.importorskip("pygls")

from llamalab.lsp.server import display_path  # noqa: E402
from llamalab.suggest.layout import (GRID_LINES, ContextDocument, LineCachedTokenizer, comment_header,  # noqa: E402
                                     context_chunks, prefix_window)
from llamalab.lsp.settings import Settings  # noqa: E402


def words(text: str) -> int:
    return len(text.split()) + text.count("\n")


def document(lines: int) -> str:
    return "".join(f"value_{i} = compute({i}, factor)\n" for i in range(lines))


def test_the_window_starts_on_a_grid_line_and_leaves_room_for_typing():
    prefix = document(400) + "result = "
    anchor, offset = prefix_window(prefix, 200, words)
    assert anchor % GRID_LINES == 0 and anchor > 0
    assert prefix[offset:].startswith(f"value_{anchor} = ")
    assert words(prefix[offset:]) <= 150  # three quarters of the budget
    earlier = len(document(anchor - GRID_LINES))  # where the grid line before it starts
    assert words(prefix[earlier:]) > 150  # the earliest grid line that does


def test_typing_at_the_cursor_keeps_the_window_start():
    base = document(400) + "result = "
    anchor, offset = prefix_window(base, 200, words)
    typed = base
    for char in "compute(1, 2)":
        typed += char
        new_anchor, new_offset = prefix_window(typed, 200, words, previous_anchor=anchor)
        assert (new_anchor, new_offset) == (anchor, offset)


def test_typing_a_quarter_of_the_budget_never_moves_the_window():
    base = document(400)
    anchor, offset = prefix_window(base, 200, words)
    typed = base + "x = 1\n" * 20  # 40 more words
    assert prefix_window(typed, 200, words, previous_anchor=anchor) == (anchor, offset)


def test_the_window_moves_a_whole_grid_step_when_it_must():
    base = document(400)
    anchor, _ = prefix_window(base, 200, words)
    longer = base + document(40)[len(document(0)):]  # 40 more lines
    moved, offset = prefix_window(longer, 200, words, previous_anchor=anchor)
    assert moved > anchor and (moved - anchor) % GRID_LINES == 0
    assert words(longer[offset:]) <= 200


def test_a_short_document_is_taken_whole():
    prefix = document(5) + "x = "
    assert prefix_window(prefix, 1000, words) == (0, 0)


def test_a_cursor_line_longer_than_the_budget_falls_back_to_its_start():
    prefix = document(20) + "x = " + "a " * 500
    anchor, offset = prefix_window(prefix, 100, words)
    assert anchor == 20 and prefix[offset:].startswith("x = ")


def test_other_documents_come_as_commented_heads_within_the_budget():
    docs = [ContextDocument("pkg/util.py", "def helper():\n    return 1\n" * 50),
            ContextDocument("empty.py", "   \n"), ContextDocument("b.py", "B = 2\n")]
    text, paths = context_chunks(docs, "python", 60, words)
    assert text.startswith("# path: pkg/util.py\ndef helper():\n")
    assert words(text) <= 60 and paths[0] == "pkg/util.py" and "empty.py" not in paths
    text, paths = context_chunks(docs[2:], "python", 60, words)
    assert text == "# path: b.py\nB = 2\n\n" and paths == ("b.py",)
    assert context_chunks(docs, "no-such-language", 60, words) == ("", ())


def test_comment_headers_use_the_language_syntax():
    assert comment_header("rust", "src/lib.rs") == "// path: src/lib.rs\n"
    assert comment_header("lua", "init.lua") == "-- path: init.lua\n"
    assert comment_header("html", "a.html") == "<!-- path: a.html -->\n"
    assert comment_header("brainfuck", "x.bf") is None
    assert display_path("/work/project/a/b.py", "/work/project") == "a/b.py"
    assert display_path("/elsewhere/c.py", "/work/project") == "c.py"


def test_settings_apply_known_keys_and_explain_the_rest():
    settings, problems = Settings().updated({"maxTokens": 32, "languages": ["python"], "timeBudgetMs": 500.0,
                                             "logStats": False})
    assert problems == []
    assert (settings.max_tokens, settings.languages, settings.time_budget_ms, settings.log_stats) == \
        (32, ("python",), 500, False)
    assert settings.completes("python") and not settings.completes("rust")
    assert Settings(languages=("*",)).completes("rust") and Settings().completes(None)

    kept, problems = settings.updated({"maxTokens": 0, "debounceMs": "fast", "prefixTokens": True,
                                       "languages": "python", "colour": "blue", "model": ""})
    assert kept == settings
    assert len(problems) == 6
    assert any("'maxTokens'" in p and "from 1 to 4096" in p and "keeping 32" in p for p in problems)
    assert any("'colour'" in p and "known settings" in p for p in problems)
    same, problems = settings.updated(["not", "an", "object"])
    assert same == settings and "JSON object" in problems[0]


def test_a_null_setting_clears_a_string_and_keeps_a_number():
    settings, problems = Settings(model="x", remote_url="http://127.0.0.1:1/v1").updated(
        {"model": None, "remoteUrl": None, "maxTokens": None})
    assert problems == [] and settings.model is None and settings.remote_url is None and settings.max_tokens == 64
    assert Settings().changed(settings) == []
    assert Settings().changed(Settings(n_ctx=1024)) == ["n_ctx"]


class CountingTokenizer:
    """Characters as ids (a GPT-2-like cut between words and whitespace), counting its work."""

    def __init__(self) -> None:
        self.characters = 0

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        self.characters += len(text)
        return [ord(c) for c in text]


class SpaceAddingTokenizer(CountingTokenizer):
    """Adds a space to every text's start, as SentencePiece does."""

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        return [32] + super().tokenize(text)


def test_the_line_cache_tokenizes_only_the_typed_line_and_agrees_with_a_whole_tokenization():
    inner = CountingTokenizer()
    tokenizer = LineCachedTokenizer(inner)
    head = document(200) + "def f(x):\n    return x"
    text = head + " +"
    assert tokenizer.tokenize(text) == inner.tokenize(text)
    inner.characters = 0
    for typed in (" + 1", " + 12", " + 123"):
        assert tokenizer.tokenize(head + typed) == [ord(c) for c in head + typed]
    assert inner.characters < 3 * 40  # the last line each time, not the whole window


def test_the_line_cache_falls_back_when_splitting_changes_the_ids():
    inner = SpaceAddingTokenizer()
    tokenizer = LineCachedTokenizer(inner)
    text = document(50) + "y = "
    assert tokenizer.tokenize(text) == inner.tokenize(text)
    assert tokenizer.tokenize(text + "2") == inner.tokenize(text + "2")  # never head + tail with two spaces
