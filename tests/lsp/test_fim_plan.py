"""The language server's prompt planning on a fill-in-the-middle model: the ids equal
``build_fim_prompt``'s, keystroke after keystroke, although the planner tokenizes only the line
being typed where it can (a SentencePiece tokenizer adds a space to a text's start, so there it
must tokenize whole). Uses the tiny Code Llama-style GGUF of ``tests/core/test_fim.py``."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("pygls")

from tests.core.test_fim import code_llama  # noqa: E402,F401  (the module-scoped fixture)

BEFORE = "import os\n\n\ndef main():\n    path = os.getcwd()\n    name = "
AFTER = "\n    return name\n"


def test_planned_ids_equal_build_fim_prompt_while_typing(code_llama):  # noqa: F811
    from llamalab import FimTokens, build_fim_prompt
    from llamalab.suggest.layout import LineCachedTokenizer, plan_prompt

    engine, _ = code_llama
    fim = FimTokens.from_info(engine.info)
    tokenizer = LineCachedTokenizer(engine)
    anchor = None
    for typed in ("", "p", "pa", "pat", "path.up"):
        text = BEFORE + typed + AFTER
        offset = len(BEFORE + typed)
        plan = plan_prompt(tokenizer, fim, text[:offset], text[offset:], prefix_tokens=200, suffix_tokens=50, previous_anchor=anchor)
        expected = build_fim_prompt(engine, text[:offset], text[offset:], fim, max_prefix_tokens=200,
                                    max_suffix_tokens=50)
        assert plan.infill and plan.tokens == expected.tokens, typed
        anchor = plan.anchor_line
    assert anchor == 0


def test_a_sentencepiece_tokenizer_is_never_split(code_llama):  # noqa: F811
    from llamalab.suggest.layout import LineCachedTokenizer

    engine, _ = code_llama
    tokenizer = LineCachedTokenizer(engine)
    for typed in ("x", "xy"):
        assert tokenizer.tokenize(BEFORE + typed) == engine.tokenize(BEFORE + typed)
    assert list(tokenizer._cache.values()) == [None]  # the check refused the split at this head
