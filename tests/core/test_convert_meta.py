"""Evidence that a converted Meta checkpoint is the same model: llama.cpp's logits of the GGUF
against a float64 forward pass written from Meta's model.py, llama.cpp's tokenization
against sentencepiece's, every header key llama.cpp needs, and Hugging Face's layout
converting to the very same tensors.

Checkpoints are built in Meta's on-disk format (torch.save of bf16 shards split as the
model-parallel layers split them) with 1, 2 and 8 shards, with and without grouped-query
attention, ffn_dim_multiplier, vocab_size -1, and Code Llama's rope_theta and FIM pieces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from tests.fixtures.meta_checkpoint import (FIM_PIECES, Spec, llama_cpp_logits, make_weights,  # noqa: E402
                                            reference_logits, relative_error, train_tokenizer,
                                            write_hf_checkpoint, write_meta_checkpoint)

# name -> (spec, shards, Code Llama tokenizer)
CASES = {
    # 7B-like: one shard, no GQA, vocab_size -1
    "llama-2-7b": (Spec(dim=64, n_heads=4), 1, False),
    # 13B-chat-like: two shards, with GQA, vocab_size given
    "llama-2-13b-chat": (Spec(dim=64, n_heads=4, n_kv_heads=2, explicit_vocab=True), 2, False),
    # 70B-chat-like: eight shards, n_kv_heads 8 of 16 heads, ffn_dim_multiplier 1.3, vocab_size -1
    "llama-2-70b-chat": (Spec(dim=128, n_heads=16, n_kv_heads=8, ffn_dim_multiplier=1.3), 8, False),
    # Code Llama Instruct: rope_theta 1e6, ffn_dim_multiplier 1.0, FIM pieces, vocab_size given
    "CodeLlama-7b-Instruct": (Spec(dim=64, n_heads=4, ffn_dim_multiplier=1.0, rope_theta=1e6,
                                   explicit_vocab=True), 2, True),
}
# Relative L2 error of all logits against the float64 reference, and the reference's top-1/top-2
# margin above which llama.cpp's argmax must agree. llama.cpp multiplies f16/bf16 weights with
# activations rounded to the same type, hence the looser bounds (measured on these cases:
# f32 2.8e-7..3.1e-7, f16 5.1e-4..5.7e-4, bf16 4.2e-3..4.5e-3; argmax agreement 100%, 100%, >=97%).
BOUNDS = {"f32": (2e-6, 1e-3), "f16": (2e-3, 0.05), "bf16": (1.5e-2, 0.3)}
MIN_AGREEMENT = {"f32": 1.0, "f16": 1.0, "bf16": 0.9}
TEXTS = ["the quick brown fox jumps over the lazy dog", "Hello world 0123456789!", "  two  spaces\nand a newline",
         "naïve café — ünïcödé", "🦙 llamas 龍 and émojis", "[INST] <<SYS>> be brief <</SYS>> hi [/INST]",
         "def main():\n\treturn 42", "", " ", "tab\tseparated\tvalues", "UPPER lower MiXeD 3.14159"]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokenizers")
    return {False: train_tokenizer(root / "plain"), True: train_tokenizer(root / "fim", fim=True)}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizers):
    """Each case's weights and Meta folder, built once."""
    import sentencepiece as spm

    root = tmp_path_factory.mktemp("meta")
    result = {}
    for name, (spec, shards, fim) in CASES.items():
        sp = spm.SentencePieceProcessor(model_file=str(tokenizers[fim]))
        weights = make_weights(spec, sp.vocab_size(), seed=len(result))
        # Llama 2's download keeps tokenizer.model beside the model folders; Code Llama's inside them
        folder = write_meta_checkpoint(root / name, weights, spec, shards, tokenizers[fim],
                                       tokenizer_in_parent=not fim)
        result[name] = (spec, weights, folder, sp)
    return result


@pytest.fixture(scope="module")
def converted(built, tmp_path_factory, tmp_store_module):
    from llamalab.convert import convert_checkpoint

    out = tmp_path_factory.mktemp("gguf")
    cache = {}

    def get(name: str, outtype: str) -> Path:
        if (name, outtype) not in cache:
            cache[name, outtype] = convert_checkpoint(built[name][2], out / f"{name}.{outtype}.gguf", outtype,
                                                      accept_license=True, store=tmp_store_module)
        return cache[name, outtype]
    return get


@pytest.fixture(scope="module")
def tmp_store_module(tmp_path_factory):
    from llamalab import ModelStore

    return ModelStore(tmp_path_factory.mktemp("store"))


def prompt_tokens(sp, n: int = 40) -> list[int]:
    text = ("please write short poem about rivers mountains numbers 0 1 2 3 while a llama reads python code "
            "in a notebook and the quick brown fox jumps over the lazy dog")
    return ([sp.bos_id()] + sp.encode(text))[:n]


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_metas_reference(built, converted, case, outtype):
    spec, weights, _, sp = built[case]
    tokens = prompt_tokens(sp)
    want = reference_logits(weights, spec, tokens)
    got = llama_cpp_logits(converted(case, outtype), tokens)
    bound, margin = BOUNDS[outtype]
    error = relative_error(got, want)
    assert error < bound, f"{case} {outtype}: relative error {error:.2e} >= {bound:.0e}"
    top2 = np.sort(want, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > margin
    agree = got.argmax(-1) == want.argmax(-1)
    print(f"{case} {outtype}: relative error {error:.2e}, argmax agreement {agree.mean():.3f} "
          f"({clear.sum()} positions with a clear margin)")
    assert agree.mean() >= MIN_AGREEMENT[outtype]
    assert agree[clear].all(), f"{case} {outtype}: argmax differs at positions {np.flatnonzero(clear & ~agree)}"


def test_a_wrong_conversion_would_be_caught(built, tmp_path):
    """The reference is sensitive to what matters: a GGUF with Q/K rows in HF's order is far off."""
    from tests.fixtures.meta_checkpoint import hf_permute

    spec, weights, _, sp = built["llama-2-13b-chat"]
    wrong = dict(weights)
    for i in range(spec.n_layers):
        wrong[f"layers.{i}.attention.wq.weight"] = hf_permute(weights[f"layers.{i}.attention.wq.weight"], spec.n_heads)
        wrong[f"layers.{i}.attention.wk.weight"] = hf_permute(weights[f"layers.{i}.attention.wk.weight"], spec.kv_heads)
    tokens = prompt_tokens(sp)
    assert relative_error(reference_logits(wrong, spec, tokens), reference_logits(weights, spec, tokens)) > 0.05


@pytest.mark.parametrize("case", list(CASES))
def test_header_has_every_key_llama_cpp_needs(built, converted, case):
    import gguf

    spec, _, folder, sp = built[case]
    reader = gguf.GGUFReader(converted(case, "f16"))

    def value(key):
        field = reader.get_field(key)
        assert field is not None, f"{key} missing"
        return field.contents()

    keys = gguf.Keys
    arch = "llama"
    code_llama = case.startswith("CodeLlama")
    assert value(keys.General.ARCHITECTURE) == arch
    assert value(keys.General.NAME) == case
    assert value(keys.General.LICENSE) == "llama2"
    assert value(keys.General.FILE_TYPE) == gguf.LlamaFileType.MOSTLY_F16
    assert value(keys.LLM.CONTEXT_LENGTH.format(arch=arch)) == (16384 if code_llama else 4096)
    assert value(keys.LLM.EMBEDDING_LENGTH.format(arch=arch)) == spec.dim
    assert value(keys.LLM.FEED_FORWARD_LENGTH.format(arch=arch)) == spec.hidden_dim
    assert value(keys.LLM.BLOCK_COUNT.format(arch=arch)) == spec.n_layers
    assert value(keys.LLM.VOCAB_SIZE.format(arch=arch)) == sp.vocab_size()
    assert value(keys.Attention.HEAD_COUNT.format(arch=arch)) == spec.n_heads
    assert value(keys.Attention.HEAD_COUNT_KV.format(arch=arch)) == spec.kv_heads
    assert value(keys.Attention.LAYERNORM_RMS_EPS.format(arch=arch)) == pytest.approx(spec.norm_eps)
    assert value(keys.Rope.DIMENSION_COUNT.format(arch=arch)) == spec.head_dim
    assert value(keys.Rope.FREQ_BASE.format(arch=arch)) == pytest.approx(spec.theta)
    assert value(keys.Tokenizer.MODEL) == "llama"
    n = sp.vocab_size()
    assert value(keys.Tokenizer.LIST) == [sp.id_to_piece(i) for i in range(n)]
    assert value(keys.Tokenizer.SCORES) == pytest.approx([sp.get_score(i) for i in range(n)])
    types = value(keys.Tokenizer.TOKEN_TYPE)
    assert types.count(gguf.TokenType.BYTE) == 256 and types[0] == gguf.TokenType.UNKNOWN
    assert types[1] == types[2] == gguf.TokenType.CONTROL
    assert (value(keys.Tokenizer.BOS_ID), value(keys.Tokenizer.EOS_ID), value(keys.Tokenizer.UNK_ID)) == (1, 2, 0)
    assert value(keys.Tokenizer.ADD_BOS) is True
    assert (reader.get_field(keys.Tokenizer.CHAT_TEMPLATE) is not None) == case.endswith(("chat", "Instruct"))
    if code_llama:
        ids = [sp.piece_to_id(p) for p in FIM_PIECES]
        assert [value(k) for k in (keys.Tokenizer.FIM_PRE_ID, keys.Tokenizer.FIM_SUF_ID,
                                   keys.Tokenizer.FIM_MID_ID, keys.Tokenizer.EOT_ID)] == ids
        assert all(types[i] == gguf.TokenType.USER_DEFINED for i in ids)
    else:
        assert reader.get_field(keys.Tokenizer.FIM_PRE_ID) is None
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 3 + 9 * spec.n_layers and not any("rope" in name for name in tensors)
    for name, t in tensors.items():
        expected = gguf.GGMLQuantizationType.F32 if name.endswith("norm.weight") else gguf.GGMLQuantizationType.F16
        assert t.tensor_type == expected, name


def test_fim_ids_reach_llama_cpp(built, converted):
    import llama_cpp

    _, _, _, sp = built["CodeLlama-7b-Instruct"]
    llm = llama_cpp.Llama(model_path=str(converted("CodeLlama-7b-Instruct", "f16")), vocab_only=True, verbose=False)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        got = [llama_cpp.llama_vocab_fim_pre(vocab), llama_cpp.llama_vocab_fim_suf(vocab),
               llama_cpp.llama_vocab_fim_mid(vocab), llama_cpp.llama_vocab_eot(vocab)]
    finally:
        llm.close()
    assert got == [sp.piece_to_id(p) for p in FIM_PIECES]


@pytest.mark.parametrize("case", ["llama-2-7b", "CodeLlama-7b-Instruct"])
def test_llama_cpp_tokenizes_like_sentencepiece(built, converted, case):
    import llama_cpp

    _, _, _, sp = built[case]
    llm = llama_cpp.Llama(model_path=str(converted(case, "f16")), vocab_only=True, verbose=False)
    try:
        for text in TEXTS:
            assert llm.tokenize(text.encode(), add_bos=False, special=False) == sp.encode(text), repr(text)
            assert llm.tokenize(text.encode(), add_bos=True, special=False) == [sp.bos_id()] + sp.encode(text)
    finally:
        llm.close()


def test_chat_template_renders_metas_prompt(built, converted):
    """The GGUF's Jinja template gives the same tokens as Meta's generation.py construction."""
    from llamalab import LocalEngine

    path = converted("llama-2-13b-chat", "f16")
    dialogs = [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " What is 2+2? "}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b "},
         {"role": "user", "content": "c"}],
    ]
    with LocalEngine(path, n_ctx=256, n_gpu_layers=0, chat_format="gguf") as jinja, \
            LocalEngine(path, n_ctx=256, n_gpu_layers=0, chat_format="llama-2") as meta:
        for dialog in dialogs:
            assert jinja.format_chat(dialog) == meta.format_chat(dialog)


@pytest.mark.parametrize("case", ["llama-2-13b-chat", "llama-2-70b-chat"])
def test_hugging_face_layout_converts_to_the_same_tensors(built, converted, tmp_path, tmp_store_module, case):
    import gguf

    from llamalab.convert import convert_checkpoint, detect_layout

    spec, weights, _, _ = built[case]
    hf = write_hf_checkpoint(tmp_path / case, weights, spec, built[case][2].parent / "tokenizer.model")
    assert detect_layout(hf) == "hf"
    out = convert_checkpoint(hf, tmp_path / "hf.gguf", "f16", store=tmp_store_module, accept_license=True)
    meta = gguf.GGUFReader(converted(case, "f16"))
    other = gguf.GGUFReader(out)
    assert [t.name for t in other.tensors] == [t.name for t in meta.tensors]
    for a, b in zip(meta.tensors, other.tensors):
        assert a.tensor_type == b.tensor_type and list(a.shape) == list(b.shape), a.name
        assert np.array_equal(np.asarray(a.data).view(np.uint8), np.asarray(b.data).view(np.uint8)), a.name
    for key in (gguf.Keys.LLM.FEED_FORWARD_LENGTH.format(arch="llama"), gguf.Keys.Tokenizer.LIST,
                gguf.Keys.Attention.HEAD_COUNT_KV.format(arch="llama"), gguf.Keys.Rope.FREQ_BASE.format(arch="llama")):
        assert meta.get_field(key).contents() == other.get_field(key).contents(), key
    assert other.get_field(gguf.Keys.General.LICENSE).contents() == "llama2"


def test_progress_is_reported_and_part_file_gone(built, tmp_path, tmp_store_module):
    from llamalab.convert import convert_checkpoint

    events = []
    out = convert_checkpoint(built["llama-2-7b"][2], tmp_path / "m.gguf", progress=events.append,
                             store=tmp_store_module, accept_license=True)
    assert events[-1].done == events[-1].total > 0
    assert all(a.done <= b.done for a, b in zip(events, events[1:]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]
    assert out == tmp_path / "m.gguf"
