"""``GenerationResult.reused_prompt_tokens``: what llama.cpp's KV cache kept between two
generations, counted by the slot scheduler where it evaluates the prompt. Each test starts
from an empty cache (``clear_cache``): the shared engine's other slots may hold anything."""

from __future__ import annotations

PROMPT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return n\n"


def test_a_repeated_prompt_reuses_all_but_at_most_one_token(engine):
    from llamalab import GenerationParams

    params = GenerationParams(max_tokens=4, temperature=0.0)
    engine.clear_cache()
    engine.complete("A different prompt first, so the cache holds something else.", params).collect()
    first = engine.complete(PROMPT, params).collect()
    assert first.reused_prompt_tokens is not None
    assert first.evaluated_prompt_tokens == first.prompt_tokens - first.reused_prompt_tokens
    assert first.evaluated_prompt_tokens >= first.prompt_tokens - 2  # only <s> can be shared

    again = engine.complete(PROMPT, params).collect()
    assert again.prompt_tokens == first.prompt_tokens
    assert again.evaluated_prompt_tokens <= 1  # one token is replayed to refresh the logits


def test_a_one_character_edit_at_the_end_evaluates_only_the_new_tokens(engine):
    from llamalab import GenerationParams

    params = GenerationParams(max_tokens=4, temperature=0.0)
    engine.clear_cache()
    base = engine.complete(PROMPT + "    a = ", params).collect()
    edited = engine.complete(PROMPT + "    a = f", params).collect()
    assert edited.prompt_tokens >= base.prompt_tokens
    assert edited.evaluated_prompt_tokens is not None and 1 <= edited.evaluated_prompt_tokens <= 3
    assert edited.reused_prompt_tokens >= base.prompt_tokens - 2


def test_an_edit_near_the_start_evaluates_almost_everything(engine):
    from llamalab import GenerationParams

    params = GenerationParams(max_tokens=4, temperature=0.0)
    engine.clear_cache()
    base = engine.complete(PROMPT, params).collect()
    edited = engine.complete("#" + PROMPT, params).collect()
    assert edited.evaluated_prompt_tokens >= base.prompt_tokens - 2
