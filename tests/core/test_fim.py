"""Fill-in-the-middle prompts at the token level, on a tiny Code Llama-style GGUF built with our
converter from a checkpoint in Meta's format whose tokenizer has the ``▁<PRE> ▁<SUF> ▁<MID> ▁<EOT>``
pieces. The expected ids come from sentencepiece itself, laid out as Meta's reference
``infilling_prompt_tokens`` lays them out."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from tests.fixtures.meta_checkpoint import (FIM_PIECES, Spec, make_weights, train_tokenizer,  # noqa: E402
                                            write_meta_checkpoint)

PREFIX = "def main():\n    the quick brown fox = "
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
