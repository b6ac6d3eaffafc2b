"""The language server end to end with pytest-lsp: ``python -m llamalab.lsp`` as a subprocess over
stdio, driven by pygls' client with Neovim's capabilities, against the real demo model.

Features: capabilities, inline and classic completion under the stop rules, ``$/cancelRequest``,
superseding, ``workspace/didChangeConfiguration`` (max tokens, time budget, languages, bad
values), context from other open documents, UTF-16 positions, and KV-cache reuse between
keystrokes (read from the server's ``window/logMessage`` statistics)."""

from __future__ import annotations

import asyncio
import re
import sys
import time

import pytest

pytest.importorskip("pytest_lsp")

import pytest_lsp  # noqa: E402
from lsprotocol import types  # noqa: E402
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities  # noqa: E402
from tests.fixtures.waiting import until  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAIN = "file:///work/project/main.py"
MAIN_TEXT = ("import math\n\n\ndef area(radius):\n    \"\"\"Return the area of a circle.\"\"\"\n"
             "    return math.pi * \n\n\ndef circumference(radius):\n    \n\n\nprint(area(2))\n")
MID_LINE = types.Position(line=5, character=len("    return math.pi * "))
BLANK_LINE = types.Position(line=9, character=4)
LIST_URI = "file:///work/project/numbers.py"
LIST_TEXT = "def numbers():\n    return [\n" + "".join(f"        {i},\n" for i in range(1, 13)) + "        \n    ]\n"
LIST_CURSOR = types.Position(line=14, character=8)  # after 12 numbers the model counts on past 40: long
STATS = re.compile(r"prompt (\d+) tokens, reused (\d+), evaluated (\d+); generated (\d+) tokens, ended by ([a-z ]+), "
                   r"\d+ ms \((\S+)\)")

OPTIONS = {"maxTokens": 24, "debounceMs": 0, "nCtx": 2048, "prefixTokens": 512, "suffixTokens": 128,
           "contextTokens": 256, "timeBudgetMs": 20000}


@pytest_lsp.fixture(scope="module", config=ClientServerConfig(server_command=[sys.executable, "-m", "llamalab.lsp"]))
async def client(lsp_client: LanguageClient, demo_model):
    capabilities = client_capabilities("neovim@v0.11.0")
    capabilities.text_document.inline_completion = types.InlineCompletionClientCapabilities()
    capabilities.general.position_encodings = [types.PositionEncodingKind.Utf16]  # as VS Code
    lsp_client.capabilities_result = await lsp_client.initialize_session(types.InitializeParams(
        capabilities=capabilities, root_uri="file:///work/project",
        initialization_options={"model": str(demo_model), **OPTIONS}))
    for uri, text in ((MAIN, MAIN_TEXT), (LIST_URI, LIST_TEXT)):
        open_doc(lsp_client, uri, text)
    await prompt_info(lsp_client, MAIN, MID_LINE)  # loads the model
    yield
    await lsp_client.shutdown_session()


def open_doc(client: LanguageClient, uri: str, text: str, language: str = "python") -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        text_document=types.TextDocumentItem(uri=uri, language_id=language, version=1, text=text)))


def configure(client: LanguageClient, **settings) -> None:
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"llamalab": settings}))


def inline_params(uri: str, position: types.Position) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), position=position,
        context=types.InlineCompletionContext(trigger_kind=types.InlineCompletionTriggerKind.Automatic))


async def inline(client: LanguageClient, uri: str, position: types.Position) -> list[types.InlineCompletionItem]:
    result = await client.text_document_inline_completion_async(inline_params(uri, position))
    return list(result.items) if isinstance(result, types.InlineCompletionList) else list(result or [])


async def next_stats(client: LanguageClient, seen: int, uri: str, timeout: float = 30) -> re.Match:
    """The first statistics of a generation for ``uri`` logged after the first ``seen`` log messages
    (they come once the generation has wound down, maybe after the reply)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for message in client.log_messages[seen:]:
            if (match := STATS.search(message.message)) is not None and match[6] == uri:
                return match
        await asyncio.sleep(0.02)
    raise AssertionError(f"no statistics logged: {[m.message for m in client.log_messages[seen:]]}")


async def prompt_info(client: LanguageClient, uri: str, position: types.Position) -> dict:
    result = await client.protocol.send_request_async("llamalab/prompt", {
        "textDocument": {"uri": uri}, "position": {"line": position.line, "character": position.character}})
    return result._asdict()  # pygls hands untyped results over as namedtuples


async def test_capabilities(client):
    caps = client.capabilities_result.capabilities
    assert caps.inline_completion_provider
    assert caps.completion_provider is not None and "." in caps.completion_provider.trigger_characters
    assert caps.position_encoding == types.PositionEncodingKind.Utf16
    sync = caps.text_document_sync
    assert getattr(sync, "change", sync) == types.TextDocumentSyncKind.Incremental


async def test_inline_completion_mid_line_is_one_clean_line(client):
    seen = len(client.log_messages)
    items = await inline(client, MAIN, MID_LINE)
    assert items, "the demo model had nothing to say"
    text = items[0].insert_text
    assert text.strip() and "\n" not in text and text == text.rstrip()
    assert items[0].range.start == MID_LINE and items[0].range.end == MID_LINE
    stats = await next_stats(client, seen, MAIN)
    assert int(stats[4]) <= OPTIONS["maxTokens"]


async def test_completion_returns_one_single_line_item(client):
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(uri=MAIN), position=MID_LINE))
    assert result.is_incomplete and result.items
    new_text = result.items[0].text_edit.new_text
    assert new_text.strip() and "\n" not in new_text
    assert result.items[0].text_edit.range.start == MID_LINE


async def test_multi_line_completion_on_a_blank_line_ends_with_its_block(client):
    configure(client, maxTokens=64)
    try:
        items = await inline(client, MAIN, BLANK_LINE)
    finally:
        configure(client, maxTokens=OPTIONS["maxTokens"])
    assert items
    lines = items[0].insert_text.split("\n")
    assert lines[0].strip()
    assert all(not line.strip() or line.startswith("    ") for line in lines[1:]), lines  # stays in the function
    assert "print(area(2))" not in items[0].insert_text


async def test_cancel_request_stops_the_generation(client):
    configure(client, maxTokens=400)
    try:
        seen = len(client.log_messages)
        started = time.monotonic()
        future = asyncio.ensure_future(client.protocol.send_request_async(  # a coroutine: sent once scheduled
            types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(LIST_URI, LIST_CURSOR), msg_id="cancel-me"))
        await asyncio.sleep(0.5)  # generating by now
        client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id="cancel-me"))
        with pytest.raises(Exception) as caught:
            await asyncio.wait_for(future, 30)
        assert getattr(caught.value, "code", None) == -32800, caught.value  # RequestCancelled
        stats = await next_stats(client, seen, LIST_URI)
        assert stats[5] == "cancelled" and int(stats[4]) < 400
        assert time.monotonic() - started < 20
    finally:
        configure(client, maxTokens=OPTIONS["maxTokens"])


async def test_a_newer_request_supersedes_the_older(client):
    configure(client, maxTokens=400)
    try:
        first = asyncio.ensure_future(inline(client, LIST_URI, LIST_CURSOR))
        await asyncio.sleep(0.3)
        configure(client, maxTokens=OPTIONS["maxTokens"])  # for the second request only
        started = time.monotonic()
        second = asyncio.ensure_future(inline(client, LIST_URI, LIST_CURSOR))
        assert await asyncio.wait_for(first, 30) == []  # answered empty, not after 400 tokens
        assert time.monotonic() - started < 10  # a loose bound: 400 tokens take far longer here
        assert await asyncio.wait_for(second, 60)
    finally:
        configure(client, maxTokens=OPTIONS["maxTokens"])


async def test_max_tokens_setting_takes_effect(client):
    configure(client, maxTokens=3)
    try:
        seen = len(client.log_messages)
        await inline(client, LIST_URI, LIST_CURSOR)
        stats = await next_stats(client, seen, LIST_URI)
        assert int(stats[4]) <= 3
    finally:
        configure(client, maxTokens=OPTIONS["maxTokens"])
    seen = len(client.log_messages)
    await inline(client, LIST_URI, LIST_CURSOR)
    assert int((await next_stats(client, seen, LIST_URI))[4]) > 3


async def test_time_budget_caps_a_generation(client):
    configure(client, maxTokens=400, timeBudgetMs=300, contextTokens=0)  # the list alone: the model counts
    try:
        seen = len(client.log_messages)
        items = await inline(client, LIST_URI, LIST_CURSOR)
        stats = await next_stats(client, seen, LIST_URI)
        assert stats[5] == "time budget" and int(stats[4]) < 400
        for item in items:  # only complete lines of what was generated in time
            assert all(line.strip().rstrip(",").isdigit() for line in item.insert_text.split("\n") if line.strip()), \
                repr(item.insert_text)
    finally:
        configure(client, maxTokens=OPTIONS["maxTokens"], timeBudgetMs=OPTIONS["timeBudgetMs"],
                  contextTokens=OPTIONS["contextTokens"])


async def test_languages_outside_the_allow_list_get_nothing(client):
    configure(client, languages=["rust"])
    try:
        seen = len(client.log_messages)
        assert await inline(client, MAIN, MID_LINE) == []
        await asyncio.sleep(0.2)
        assert not any(STATS.search(m.message) for m in client.log_messages[seen:])  # nothing generated
    finally:
        configure(client, languages=[])
    assert await inline(client, MAIN, MID_LINE)


async def test_bad_settings_are_reported_and_ignored(client):
    shown = len(client.messages)
    configure(client, maxTokens="lots", noSuchSetting=1, languages="python")
    deadline = time.monotonic() + 10
    while len(client.messages) < shown + 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    messages = [m.message for m in client.messages[shown:]]
    assert any("'maxTokens'" in m and "'lots'" in m and "keeping 24" in m for m in messages), messages
    assert any("'noSuchSetting'" in m for m in messages), messages
    assert any("'languages'" in m for m in messages), messages
    assert all(m.type == types.MessageType.Warning for m in client.messages[shown:])
    seen = len(client.log_messages)
    assert await inline(client, MAIN, MID_LINE)  # still up, still 24 tokens at most
    assert int((await next_stats(client, seen, MAIN))[4]) <= 24


async def test_other_open_documents_of_the_language_lead_the_prompt(client):
    open_doc(client, "file:///work/project/geometry/shapes.py", "SQUARE_SIDES = 4\nTRIANGLE_SIDES = 3\n")
    open_doc(client, "file:///work/project/lib.rs", "fn secret_rust() {}\n", language="rust")
    info = await prompt_info(client, MAIN, MID_LINE)
    text = info["text"]
    assert "# path: geometry/shapes.py\nSQUARE_SIDES = 4\nTRIANGLE_SIDES = 3\n" in text
    assert text.index("SQUARE_SIDES") < text.index("def area(radius)")  # before the prefix
    assert text.endswith("    return math.pi *") and info["healed"] == " "  # the model writes the blank
    assert "secret_rust" not in text and "geometry/shapes.py" in info["contextPaths"]
    assert info["mode"] == "single" and info["promptTokens"] == len(info["tokens"])
    configure(client, contextTokens=0)
    try:
        assert "SQUARE_SIDES" not in (await prompt_info(client, MAIN, MID_LINE))["text"]
    finally:
        configure(client, contextTokens=OPTIONS["contextTokens"])


async def test_utf16_positions_split_the_line_at_the_right_character(client):
    uri = "file:///work/project/unicode.py"
    line = 'label = "😀 漢字テスト" + name.upper()'
    open_doc(client, uri, f"# 😀😀 emoji first\n{line}\n")
    utf16_column = len(line[:line.index("name")].encode("utf-16-le")) // 2  # the emoji counts twice
    assert utf16_column == line.index("name") + 1
    info = await prompt_info(client, uri, types.Position(line=1, character=utf16_column))
    assert info["linePrefix"] == 'label = "😀 漢字テスト" + '
    assert info["lineSuffix"] == "name.upper()"
    # an incremental edit addressed in UTF-16 units lands after the emoji, not inside it
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(
            range=types.Range(start=types.Position(line=1, character=utf16_column),
                              end=types.Position(line=1, character=utf16_column)), text="user.")]))
    info = await prompt_info(client, uri, types.Position(line=1, character=utf16_column + len("user.")))
    assert info["linePrefix"] == 'label = "😀 漢字テスト" + user.'
    assert info["lineSuffix"] == "name.upper()"
    items = await inline(client, uri, types.Position(line=1, character=utf16_column + len("user.")))
    assert all("\n" not in item.insert_text for item in items)


async def test_unopened_documents_get_an_empty_answer(client):
    assert await inline(client, "file:///work/project/never-opened.py", types.Position(line=0, character=0)) == []


async def test_a_one_character_edit_reevaluates_few_prompt_tokens(client):
    """A document longer than the prefix window: the window stays anchored while typing, so the
    KV cache keeps all but the last few tokens."""
    uri = "file:///work/project/long.py"
    body = "".join(f"def function_{i}(value):\n    return value * {i} + {i * 7}\n\n\n" for i in range(80))
    text = body + "def target(value):\n    return value + \n"
    line = text.count("\n") - 1
    open_doc(client, uri, text)
    configure(client, prefixTokens=256)
    cursor = types.Position(line=line, character=len("    return value + "))
    seen = len(client.log_messages)
    items = await inline(client, uri, cursor)
    first = await next_stats(client, seen, uri)
    assert int(first[1]) > 200  # the window is full: the document is far longer than 256 tokens
    for version in (2, 3):
        shown = items[0].insert_text if items else ""
        char = next(c for c in "7q(" if not shown.startswith(c))  # not what the suggestion says: no type-ahead
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=cursor, end=cursor), text=char)]))
        cursor = types.Position(line=cursor.line, character=cursor.character + 1)
        seen = len(client.log_messages)
        items = await inline(client, uri, cursor)
        stats = await next_stats(client, seen, uri)
        prompt, evaluated = int(stats[1]), int(stats[3])
        assert evaluated <= max(3, prompt // 10), stats[0]
    configure(client, prefixTokens=OPTIONS["prefixTokens"])


async def test_debounce_lets_only_the_last_of_a_burst_generate(client):
    configure(client, debounceMs=300)
    try:
        seen = len(client.log_messages)
        burst = [asyncio.ensure_future(inline(client, MAIN, MID_LINE)) for _ in range(3)]
        await asyncio.sleep(0)
        results = await asyncio.wait_for(asyncio.gather(*burst), 60)
        assert results[0] == [] and results[1] == [] and results[2]
        await next_stats(client, seen, MAIN)
        await asyncio.sleep(0.2)
        generations = [m for m in client.log_messages[seen:] if (s := STATS.search(m.message)) and s[6] == MAIN]
        assert len(generations) == 1, [m.message for m in generations]  # the first two never reached the model
    finally:
        configure(client, debounceMs=0)


async def test_typing_the_suggestion_is_answered_from_it_without_a_generation(client):
    """Type-ahead in the server: a request whose text extends the last suggestion by what it
    predicted gets the rest of it at once, and no generation runs (the log says so)."""
    uri = "file:///work/project/typeahead.py"
    text = "import math\n\n\ndef area(radius):\n    return math."
    open_doc(client, uri, text)
    cursor = types.Position(line=4, character=len("    return math."))
    seen = len(client.log_messages)
    items = await inline(client, uri, cursor)
    assert items and len(items[0].insert_text) >= 2, items
    await next_stats(client, seen, uri)  # the first generation has wound down and said so
    shown = items[0].insert_text
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangePartial(range=types.Range(start=cursor, end=cursor),
                                                                text=shown[0])]))
    seen = len(client.log_messages)
    again = await inline(client, uri, types.Position(line=4, character=cursor.character + 1))
    assert [item.insert_text for item in again] == [shown[1:]]
    await until(lambda: any(uri in m.message and "type-ahead" in m.message for m in client.log_messages[seen:]),
                "the type-ahead log line", 30)
    assert not any(STATS.search(m.message) and uri in m.message for m in client.log_messages[seen:])


async def test_a_two_million_character_line_is_read_as_a_window_around_the_cursor(client):
    """Issue 13, row 13: the cursor at the end of a 1.9-million-character line: the prompt holds
    a window of the line, and the server answers (and keeps serving)."""
    uri = "file:///work/project/one_line.py"
    line = "data = [" + ", ".join(str(i % 89) for i in range(640_000))
    open_doc(client, uri, "import math\n" + line + "\n")
    cursor = types.Position(line=1, character=len(line))
    info = await prompt_info(client, uri, cursor)
    assert info["promptTokens"] <= OPTIONS["prefixTokens"] + 16, info["promptTokens"]
    assert line[-200:-10] in info["text"]  # the text just before the cursor
    await inline(client, uri, cursor)  # answers, empty or not
    client.text_document_did_close(types.DidCloseTextDocumentParams(text_document=types.TextDocumentIdentifier(uri)))
    open_doc(client, MAIN, MAIN_TEXT)
    assert (await prompt_info(client, MAIN, MID_LINE))["promptTokens"] > 0  # still serving
