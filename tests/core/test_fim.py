"""Fill-in-the-middle prompts at the token level, on a tiny Code Llama-style GGUF built with our
converter from a checkpoint in Meta's format whose tokenizer has the ``▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>``
pieces. The expected ids come from sentencepiece itself, laid out as Meta's reference
``infilling_prompt_tokens`` lays them out."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from tests.fixtures.meta_checkpoint import (FIM_PIECES, Spec, make_weights, train_tokenizer,  # noqa: E402
                                            write_meta_checkpoint)

PREFIX = "def main():\n    the quick brown fox ="  # no trailing blank: those are healed (below)
SUFFIX = "\n    return 0\n"


@pytest.fixture(scope="module")
def code_llama(tmp_path_factory):
    import sentencepiece as spm

    from llamalab import LocalEngine, ModelStore
    from llamalab.convert import convert_checkpoint

    root = tmp_path_factory.mktemp("codellama")
    tokenizer = train_tokenizer(root / "tok", fim=True)
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    spec = Spec(dim=64, n_heads=4, ffn_dim_multiplier=1.0, rope_theta=1e6, explicit_vocab=True)
    folder = write_meta_checkpoint(root / "CodeLlama-7b", make_weights(spec, sp.vocab_size()), spec, 1, tokenizer)
    gguf_path = convert_checkpoint(folder, root / "codellama.f32.gguf", "f32", accept_license=True,
                                   store=ModelStore(root / "store"))
    engine = LocalEngine(gguf_path, n_ctx=256, n_gpu_layers=0, name="tiny-codellama")
    yield engine, sp
    engine.close()


def sp_infill_no_space(sp, text: str) -> list[int]:
    """Meta's ``encode_infilling``: the text's ids without SentencePiece's dummy-prefix space."""
    head = sp.encode("\u263a")
    both = sp.encode("\u263a" + text)
    assert both[:len(head)] == head
    return both[len(head):]


def test_fim_ids_are_read_from_the_gguf(code_llama):
    from llamalab import FimTokens

    engine, sp = code_llama
    fim = FimTokens.from_info(engine.info)
    assert fim.supported
    assert (fim.pre, fim.suf, fim.mid, fim.eot) == tuple(sp.piece_to_id(p) for p in FIM_PIECES)
    assert fim.bos == sp.bos_id()


def test_infilling_prompt_is_meta_s_exact_id_sequence(code_llama):
    from llamalab import FimTokens, build_fim_prompt

    engine, sp = code_llama
    fim = FimTokens.from_info(engine.info)
    prompt = build_fim_prompt(engine, PREFIX, SUFFIX, fim)
    pre, suf, mid, _ = (sp.piece_to_id(p) for p in FIM_PIECES)
    expected = [sp.bos_id(), pre] + sp.encode(PREFIX) + [suf] + sp_infill_no_space(sp, SUFFIX) + [mid]
    assert prompt.tokens == expected
    assert prompt.infill and prompt.dropped_prefix_tokens == prompt.dropped_suffix_tokens == 0
    # the prefix carries SentencePiece's leading space, the suffix does not
    assert sp.id_to_piece(expected[2]).startswith("\u2581")
    assert not sp.id_to_piece(expected[expected.index(suf) + 1]).startswith("\u2581")


def test_windows_keep_the_text_nearest_the_cursor(code_llama):
    from llamalab import FimTokens, build_fim_prompt

    engine, sp = code_llama
    fim = FimTokens.from_info(engine.info)
    full_prefix, full_suffix = sp.encode(PREFIX), sp_infill_no_space(sp, SUFFIX)
    prompt = build_fim_prompt(engine, PREFIX, SUFFIX, fim, max_prefix_tokens=5, max_suffix_tokens=3)
    assert prompt.tokens == [sp.bos_id(), fim.pre, *full_prefix[-5:], fim.suf, *full_suffix[:3], fim.mid]
    assert prompt.dropped_prefix_tokens == len(full_prefix) - 5
    assert prompt.dropped_suffix_tokens == len(full_suffix) - 3


def test_models_without_fim_get_a_prefix_only_prompt(code_llama):
    from llamalab import FimTokens, build_fim_prompt

    engine, sp = code_llama
    prompt = build_fim_prompt(engine, PREFIX, SUFFIX, FimTokens(bos=sp.bos_id()))
    assert not prompt.infill
    assert prompt.tokens == [sp.bos_id()] + sp.encode(PREFIX)


def test_demo_model_has_no_fim_tokens(demo_model):
    from llamalab import FimTokens, read_gguf_info

    assert not FimTokens.from_info(read_gguf_info(demo_model)).supported


def test_complete_tokens_runs_the_infilling_prompt(code_llama):
    from llamalab import FimTokens, GenerationParams, build_fim_prompt

    engine, _ = code_llama
    prompt = build_fim_prompt(engine, PREFIX, SUFFIX, FimTokens.from_info(engine.info))
    result = engine.complete_tokens(prompt.tokens, GenerationParams(max_tokens=4, temperature=0.0)).collect()
    assert result.prompt_tokens == len(prompt.tokens)
    assert result.finish_reason in ("stop", "length")


# -- token healing (llamalab.healing) ---------------------------------------------------------
INDENTED = "class Stock:\n    def take(self, sku, count):\n        if self.items.get(sku, 0) < count:\n            "
COUNTING = "def numbers():\n    return [\n        1,\n        2,\n        3,\n        "


def test_heal_prefix_leaves_the_blanks_and_their_newline_to_the_model():
    from llamalab import heal_prefix

    assert heal_prefix(INDENTED) == (INDENTED[:-13], "\n            ")
    assert heal_prefix("total = ") == ("total =", " ")
    assert heal_prefix("print(a, b)") == ("print(a, b)", "")
    assert heal_prefix("    return self.ite") == ("    return self.", "ite")  # the partial word
    assert heal_prefix("x = 12") == ("x =", " 12")  # the word with its one leading space
    assert heal_prefix("f(a,  b") == ("f(a,  ", "b")  # two spaces: the word alone
    assert heal_prefix("   ") == ("   ", "") and heal_prefix("word") == ("word", "")  # no prompt left


def _healed_answer(engine, text: str, max_tokens: int = 6) -> tuple[str, str, str]:
    from llamalab import FimTokens, GenerationParams, build_fim_prompt

    prompt = build_fim_prompt(engine, text, "", FimTokens.from_info(engine.info))
    params = GenerationParams(max_tokens=max_tokens, temperature=0, repeat_penalty=1.0, heal=prompt.healed)
    return prompt.healed, engine.complete_tokens(prompt.tokens, params).collect().text, \
        engine.detokenize(prompt.tokens[-1:])


PARTIAL = "class Stock:\n    def __init__(self):\n        self.items = {}\n\n    def count(self):\n        return len(self.ite"


@pytest.mark.parametrize("text", [INDENTED, COUNTING, "total = ", PARTIAL])
def test_a_healed_answer_begins_with_the_blanks_in_the_models_own_tokens(demo_model, text):
    """GPT-2 BPE (the demo model) joins '\n' + 11 spaces before ' self' but '\n' + 8 spaces
    before '4': with the blanks left to it, the model picks its tokenization and the answer
    begins with exactly the buffer's blanks."""
    from llamalab import LocalEngine, strip_healed

    with LocalEngine(demo_model, n_ctx=512, n_parallel=1) as engine:
        healed, answer, last = _healed_answer(engine, text)
        assert not last.endswith((" ", "\t")) and answer.startswith(healed), (last, answer)
        assert not strip_healed(answer, healed)[:1].isspace() or text == PARTIAL
        if text == COUNTING:
            assert strip_healed(answer, healed).startswith("4,")
        if text == PARTIAL:  # the word is finished, not started again
            assert healed == "ite" and strip_healed(answer, healed).startswith("ms")


@pytest.mark.parametrize("text", [INDENTED, "total = ", PARTIAL])
def test_healed_answers_with_a_sentencepiece_tokenizer(code_llama, text):
    """The tiny Code Llama (random weights, SentencePiece): whatever it prefers, the answer
    begins with the healed text, and the prompt's prefix ids are the kept text's own."""
    from llamalab import heal_prefix

    engine, sp = code_llama
    healed, answer, _ = _healed_answer(engine, text, max_tokens=32)  # it may write blanks one by one
    kept = heal_prefix(text)[0]
    assert healed == text[len(kept):] and answer.startswith(healed), (healed, answer)


def test_the_constraint_holds_even_against_the_models_wish(demo_model, code_llama):
    """``heal`` is honoured token by token with both tokenizers (BPE, SentencePiece), even for
    text the model would never write there."""
    from llamalab import GenerationParams, LocalEngine

    with LocalEngine(demo_model, n_ctx=512, n_parallel=1) as demo:
        for engine in (demo, code_llama[0]):
            params = GenerationParams(max_tokens=24, temperature=0, heal=" zebra crossing")
            answer = engine.complete("def add(a, b):\n    return a +", params).collect().text
            assert answer.startswith(" zebra crossing"), (engine.name, answer)


def test_strip_healed_keeps_what_goes_beyond_the_buffer():
    from llamalab import strip_healed

    assert strip_healed("\n            return x", "\n            ") == "return x"
    assert strip_healed("\n      ", "\n            ") == ""  # still writing the blanks
    assert strip_healed(" 5", " ") == "5" and strip_healed("anything", "") == "anything"
    assert strip_healed("4,", "\n    ") == "4,"  # an engine that ignored heal: the buffer's blanks win
