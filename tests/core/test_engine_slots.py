"""The slot scheduler on the real demo model: batching without cross-talk, cancel, priorities,
the prompt cache and its bound, a full KV cache, a mixed load with no deadlock, bad settings.

Greedy answers under batching are compared with the same request alone; where they part, the
lone answer's choice must have been a near-tie (tests/fixtures/greedy.py): llama.cpp's batched
kernels may round differently, a wrong KV sequence would not part at a clear choice.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from llamalab import ConfigError, ContextOverflowError, GenerationParams, LocalEngine
from llamalab.engine.prompt_cache import PromptCache
from llamalab.engine.slots import PRIORITIES, SlotScheduler
from tests.fixtures.greedy import first_divergence_margin

GREEDY = GenerationParams(max_tokens=32, temperature=0)
NEAR_TIE = 0.5


def _chat(system: str, user: str) -> list[dict]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


CONVERSATIONS = [
    _chat("You are a pirate. Answer like a pirate.", "What is your ship called?"),
    _chat("You are a careful chemistry teacher.", "Why is water wet?"),
    _chat("You answer only with lists of fruit.", "What should I buy at the market?"),
    _chat("You are a poet who writes about the sea.", "Write two lines about the moon."),
]


@pytest.fixture(scope="module")
def slots(demo_model):
    engine = LocalEngine(demo_model, n_ctx=2048, n_parallel=4, name="slots-test")
    yield engine
    engine.close()


def _together(engine: LocalEngine, requests: list, params: GenerationParams = GREEDY) -> list:
    """Start every request at once from its own thread; the results in order."""
    results: list = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = engine.chat(requests[i], params).collect()
        except BaseException as exc:  # noqa: BLE001 - returned to the test
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "deadlock: a request never finished"
    return results


def _assert_same_or_near_tie(engine, demo_model, conversation, alone: str, other: str) -> None:
    margin = first_divergence_margin(engine, demo_model, engine.format_chat(conversation), alone, other,
                                     GREEDY.repeat_penalty)
    assert margin is None or margin < NEAR_TIE, (margin, alone, other)


def test_batched_conversations_get_their_own_answers(slots, demo_model):
    alone = [slots.chat(c, GREEDY).collect().text for c in CONVERSATIONS]
    assert len(set(alone)) == len(alone)  # different system prompts lead to different answers
    slots.clear_cache()
    together = _together(slots, CONVERSATIONS)
    for conversation, lone, result in zip(CONVERSATIONS, alone, together):
        assert result.finish_reason in ("stop", "length")
        _assert_same_or_near_tie(slots, demo_model, conversation, lone, result.text)
    # No cross-talk: no answer is another conversation's answer.
    for i, result in enumerate(together):
        assert all(result.text != alone[j] for j in range(len(alone)) if j != i)


def test_cancelling_one_of_four_streams_leaves_the_others_whole(slots, demo_model):
    alone = [slots.chat(c, GREEDY).collect().text for c in CONVERSATIONS]
    streams = [slots.chat(c, GREEDY) for c in CONVERSATIONS]
    next(streams[1])  # all four are in flight once the second one has produced text
    streams[1].cancel()
    results = [s.collect() for s in streams]
    assert results[1].finish_reason == "cancelled" and results[1].completion_tokens < GREEDY.max_tokens
    for i in (0, 2, 3):
        assert results[i].finish_reason in ("stop", "length")
        _assert_same_or_near_tie(slots, demo_model, CONVERSATIONS[i], alone[i], results[i].text)
    assert slots.stats().slots_busy == 0


def test_a_conversation_keeps_its_slot_while_another_talks(slots):
    a, b = CONVERSATIONS[0], CONVERSATIONS[1]
    first = slots.chat(a, GREEDY).collect()
    slots.chat(b, GREEDY).collect()
    follow_up = a + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And its captain?"}]
    result = slots.chat(follow_up, GREEDY).collect()
    previous_turn = len(slots.format_chat(a))
    assert result.reused_prompt_tokens >= previous_turn  # only the new turn was evaluated
    assert result.restored_prompt_tokens == 0  # from its own slot, not the prompt cache


def test_an_interactive_request_is_served_while_a_chat_streams(slots, demo_model):
    prompt = "Count from one to five hundred: one, two, three,"
    long = GenerationParams(max_tokens=300, temperature=0, repeat_penalty=1.0)  # it keeps counting
    alone = slots.complete(prompt, long).collect()
    assert alone.finish_reason == "length"
    streaming = slots.complete(prompt, long)
    next(streaming)
    completion = slots.complete("def add(a, b):\n    return", GenerationParams(
        max_tokens=8, temperature=0, priority="interactive")).collect()
    assert completion.finish_reason in ("stop", "length") and completion.completion_tokens > 0
    assert slots.stats().slots_busy == 1  # served while the other stream still holds its slot
    rest = streaming.collect()
    assert rest.finish_reason == "length"
    margin = first_divergence_margin(slots, demo_model, slots.tokenize(prompt), alone.text, rest.text)
    assert margin is None or margin < NEAR_TIE, (margin, alone.text, rest.text)


class _Running:
    """What ``_participants`` reads of a running request: its rank and its prompt's progress."""

    def __init__(self, priority: str, arrival: int, prompt_left: int = 0) -> None:
        self.request = type("R", (), {"rank": (PRIORITIES[priority], arrival), "prompt": [0] * prompt_left})()
        self.next_prompt = 0
        self.prefilling = prompt_left > 0


def _scheduler(running: list, share_steps: bool, batch_capacity: int = 512) -> SlotScheduler:
    scheduler = SlotScheduler.__new__(SlotScheduler)
    scheduler._running = running
    scheduler.share_steps = share_steps
    scheduler.native = type("N", (), {"batch": type("B", (), {"capacity": batch_capacity})()})()
    return scheduler


def test_on_a_cpu_a_step_serves_only_the_best_priority_present():
    running = [_Running("normal", 1), _Running("interactive", 2), _Running("background", 0), _Running("interactive", 3)]
    assert [r.request.rank for r in _scheduler(running, False)._participants()] == [(0, 2), (0, 3)]
    # GPU offload: every sequence shares the step
    assert [r.request.rank[0] for r in _scheduler(running, True)._participants()] == [0, 0, 1, 2]


def test_on_a_cpu_a_prompt_one_step_can_finish_goes_alone():
    """A newcomer's first token then waits for nobody's next token; a longer prompt shares."""
    running = [_Running("normal", 1), _Running("normal", 2), _Running("normal", 3, prompt_left=40)]
    assert [r.request.rank for r in _scheduler(running, False)._participants()] == [(1, 3)]
    assert len(_scheduler(running, False, batch_capacity=32)._participants()) == 3  # needs two chunks
    assert len(_scheduler(running, True)._participants()) == 3  # with a GPU every step is shared


def test_a_restored_prompt_cache_entry_continues_like_a_fresh_evaluation(demo_model):
    system = " ".join(f"Rule {i}: answer politely and mention the number {i}." for i in range(40))
    a = _chat(system, "What is the first rule?")
    b = _chat("You are terse.", "Say hello.")
    with LocalEngine(demo_model, n_ctx=2048, n_parallel=1, prompt_cache_mb=64) as engine:
        engine.chat(a, GREEDY).collect()
        engine.chat(b, GREEDY).collect()  # takes the only slot: a's sequence goes to the cache
        assert engine.stats().prompt_cache_entries >= 1
        again = engine.chat(a, GREEDY).collect()
        assert again.restored_prompt_tokens > 300 and again.reused_prompt_tokens == again.prompt_tokens - 1
        engine.clear_cache()
        fresh = engine.chat(a, GREEDY).collect()
        assert fresh.reused_prompt_tokens == 0 and fresh.restored_prompt_tokens == 0
        assert again.text == fresh.text


def test_the_prompt_cache_never_exceeds_its_bound(demo_model):
    with LocalEngine(demo_model, n_ctx=1024, n_parallel=1, prompt_cache_mb=4) as engine:
        limit = engine.stats().prompt_cache_limit_bytes  # about three of these prompts' states
        for i in range(8):
            system = f"Conversation {i}. " + " ".join(f"fact {i}-{j} is true." for j in range(6))
            engine.chat(_chat(system, "Hi"), GenerationParams(max_tokens=2, temperature=0)).collect()
            stats = engine.stats()
            assert stats.prompt_cache_bytes <= limit
        assert 2 <= stats.prompt_cache_entries < 7  # some were kept, the oldest went


def test_prompt_cache_unit_bound_lru_and_superseded_prefixes():
    cache = PromptCache(limit_bytes=100)
    assert cache.put([1, 2, 3], b"x" * 40)
    assert cache.put([1, 2, 3, 4], b"x" * 40)  # supersedes [1, 2, 3]
    assert len(cache) == 1 and cache.used_bytes == 40
    assert cache.put([7, 8], b"y" * 40) and cache.put([9], b"z" * 40)  # [1..4] is the oldest: out
    assert cache.used_bytes <= 100 and cache.best([1, 2, 3, 4, 5]) is None
    entry, n = cache.best([7, 8, 1])
    assert entry.tokens == (7, 8) and n == 2
    assert not cache.put([5], b"w" * 101)  # larger than the whole cache: not kept


def test_a_full_kv_cache_fails_one_request_and_the_engine_keeps_serving(demo_model):
    long = GenerationParams(max_tokens=200, temperature=0, repeat_penalty=1.0)  # counting goes on
    prompts = [f"Count slowly from {i} to one thousand, one number per line: {i}, {i + 1}," for i in (1, 50, 200, 700)]
    with LocalEngine(demo_model, n_ctx=256, n_parallel=4, prompt_cache_mb=0) as engine:
        streams = [engine.complete(p, long) for p in prompts]
        outcomes = []
        for stream in streams:
            try:
                outcomes.append(stream.collect().finish_reason)
            except ContextOverflowError as exc:
                assert "KV cache is full" in str(exc) and "kv_size" in str(exc)
                outcomes.append("failed")
        assert "failed" in outcomes and any(o in ("stop", "length") for o in outcomes), outcomes
        assert engine.stats().slots_busy == 0
        assert engine.complete("Hello", GenerationParams(max_tokens=3, temperature=0)).collect().completion_tokens == 3


def test_thirty_two_mixed_requests_from_eight_threads(slots):
    rng = random.Random(7)
    errors: list[BaseException] = []
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        kind = rng.choice(["chat", "complete", "cancel", "overflow"])
        try:
            if kind == "chat":
                r = slots.chat(CONVERSATIONS[i % 4], GenerationParams(max_tokens=12, temperature=0.7, seed=i)).collect()
            elif kind == "complete":
                r = slots.complete(f"{i} + {i} =", GenerationParams(max_tokens=6, temperature=0,
                                                                   priority="interactive")).collect()
            elif kind == "cancel":
                stream = slots.complete("Once upon a time", GenerationParams(max_tokens=200, temperature=0))
                next(stream, None)
                stream.cancel()
                r = stream.collect()
            else:
                with pytest.raises(ContextOverflowError):
                    slots.complete("word " * 5000, GenerationParams(max_tokens=8, overflow="error"))
                with lock:
                    outcomes.append("refused")
                return
            with lock:
                outcomes.append(r.finish_reason)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def worker(start: int) -> None:
        for i in range(start, 32, 8):
            one(i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert not errors, errors
    assert len(outcomes) == 32 and set(outcomes) <= {"stop", "length", "cancelled", "refused"}
    # Every stream was read to its end, and a slot is released before its result is sent.
    assert slots.stats().slots_busy == 0 and slots.stats().queued == 0


def test_cancel_during_a_long_prefill_frees_the_slot(demo_model):
    with LocalEngine(demo_model, n_ctx=2048, n_parallel=2, n_batch=32, prompt_cache_mb=0) as engine:
        stream = engine.complete("lorem ipsum " * 600, GenerationParams(max_tokens=4, temperature=0))
        # The prefill beginning is seen only in the scheduler's stats: wait for it (not for a time).
        deadline = time.time() + 60
        while engine.stats().slots_busy == 0 and time.time() < deadline:
            time.sleep(0.005)
        assert engine.stats().slots_busy == 1, "the prefill never began"
        stream.cancel()
        result = stream.collect()
        assert result.finish_reason == "cancelled" and result.completion_tokens == 0
        assert engine.stats().slots_busy == 0
        assert engine.complete("Hi", GenerationParams(max_tokens=2, temperature=0)).collect().completion_tokens == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"n_parallel": 0}, "n_parallel must be"),
    ({"n_parallel": 100_000}, "n_parallel must be between 1 and"),
    ({"n_parallel": 2.5}, "n_parallel must be"),
    ({"kv_size": 100}, "kv_size .* must be at least n_ctx"),
    ({"prompt_cache_mb": -1}, "prompt_cache_mb must be"),
    ({"prompt_cache_mb": 10 ** 9}, "more than half of this machine's memory"),
])
def test_bad_slot_settings_are_refused_in_one_line(demo_model, kwargs, message):
    with pytest.raises(ConfigError, match=message) as info:
        LocalEngine(demo_model, n_ctx=256, **kwargs)
    assert "\n" not in str(info.value)


def test_a_prompt_larger_than_the_whole_context_is_refused_or_trimmed(slots):
    huge = "word " * 3000
    with pytest.raises(ContextOverflowError, match="fit the context window"):
        slots.complete(huge, GenerationParams(max_tokens=8, overflow="error"))
    trimmed = slots.complete(huge, GenerationParams(max_tokens=4, temperature=0)).collect()
    assert trimmed.dropped_tokens > 0 and trimmed.prompt_tokens <= slots.n_ctx
    with pytest.raises(ConfigError, match="no tokens"):  # a client's mistake (HTTP 400), not the engine's
        slots.complete_tokens([], GREEDY)
    with pytest.raises(ConfigError, match="vocabulary"):  # llama.cpp would abort the process on it
        slots.complete_tokens([10 ** 9], GREEDY)


def test_chats_with_one_system_prompt_share_its_cells(slots, demo_model):
    system = " ".join(f"Guideline {i}: be brief, be kind and cite guideline {i}." for i in range(20))
    a, b = _chat(system, "Tell me a long story about a dragon."), _chat(system, "What is two plus two?")
    b_alone = slots.chat(b, GREEDY).collect()
    slots.clear_cache()
    running = slots.chat(a, GenerationParams(max_tokens=200, temperature=0))
    next(running)  # a holds its slot while b arrives
    shared = slots.chat(b, GREEDY).collect()
    running.close()
    system_tokens = len(slots.format_chat([{"role": "system", "content": system}, {"role": "user", "content": ""}])) - 8
    assert shared.reused_prompt_tokens >= system_tokens  # b evaluated only its own question
    assert shared.restored_prompt_tokens == 0
    _assert_same_or_near_tie(slots, demo_model, b, b_alone.text, shared.text)


def test_a_completion_never_waits_for_a_slot_while_chats_fill_them_all(slots):
    long = GenerationParams(max_tokens=400, temperature=0, repeat_penalty=1.0)  # counting goes on
    chats = [slots.complete(f"Count from {k} to five hundred: {k}, {k + 1}, {k + 2},", long)
             for k in (1, 20, 300, 4000)]  # n_parallel=4: every general slot busy
    for chat in chats:
        next(chat)
    assert slots.stats().slots_busy == 4
    completion = slots.complete("x = [1, 2,", GenerationParams(max_tokens=4, temperature=0,
                                                               priority="interactive")).collect()
    assert completion.completion_tokens > 0
    assert slots.stats().slots_busy == 4  # served beside them (its own slot), not after them
    for chat in chats:
        chat.close()


def test_a_short_prompt_asked_again_reuses_its_slot_not_an_empty_one(slots):
    """Ghost text repeats a short prefix whose answer is longer than it: its slot still wins."""
    params = GenerationParams(max_tokens=16, temperature=0, priority="interactive", repeat_penalty=1.0)
    slots.clear_cache()
    first = slots.complete("def area(r):\n    return", params).collect()
    assert first.completion_tokens > first.prompt_tokens  # the slot holds more answer than prompt
    again = slots.complete("def area(r):\n    return", params).collect()
    assert again.reused_prompt_tokens == again.prompt_tokens - 1
