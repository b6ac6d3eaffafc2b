"""Hugging Face checkpoints as transformers writes them today: a tiny random ``LlamaForCausalLM``
saved with transformers itself (5.x writes ``rope_parameters`` and no top-level ``rope_theta``),
converted to f32, and llama.cpp's logits compared with transformers' over 48 positions; the same
weights with a transformers-4-style config; RoPE schemes llama.cpp's Llama 2 cannot represent
refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.meta_checkpoint import llama_cpp_logits, relative_error, train_tokenizer

POSITIONS = 48


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory) -> Path:
    return train_tokenizer(tmp_path_factory.mktemp("tok"))


def save_model(folder: Path, tokenizer: Path, *, kv_heads: int, tied: bool, rope_theta: float):
    """A random tiny Llama saved by transformers, with the SentencePiece model beside it."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = spm.SentencePieceProcessor(model_file=str(tokenizer)).vocab_size()
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=8, num_key_value_heads=kv_heads, rope_theta=rope_theta,
                         max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=tied)
    torch.manual_seed(7)
    model = LlamaForCausalLM(config).float().eval()
    with torch.no_grad():
        for parameter in model.parameters():  # larger weights than the default init: logits that differ
            parameter.normal_(0.0, 0.08)
    model.save_pretrained(folder, safe_serialization=True)
    shutil.copy(tokenizer, folder / "tokenizer.model")
    return model


def transformers_logits(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


def convert(folder: Path, tmp_path: Path) -> Path:
    from llamalab import ModelStore
    from llamalab.convert import convert_checkpoint

    return convert_checkpoint(folder, tmp_path / f"{folder.name}.f32.gguf", "f32", accept_license=True,
                              store=ModelStore(tmp_path / "store"))


@pytest.mark.parametrize("kv_heads, tied", [(8, False), (2, False), (2, True)], ids=["MHA", "GQA", "GQA-tied"])
def test_a_transformers_5_checkpoint_matches_transformers_logits(tokenizer_model, tmp_path, kv_heads, tied):
    folder = tmp_path / f"tiny-{kv_heads}-{tied}"
    model = save_model(folder, tokenizer_model, kv_heads=kv_heads, tied=tied, rope_theta=1e6)
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_parameters"]["rope_theta"] == 1e6 and "rope_theta" not in config  # the new layout
    tokens = [1] + list(np.random.default_rng(3).integers(3, config["vocab_size"], POSITIONS - 1))
    want = transformers_logits(model, tokens)
    gguf = convert(folder, tmp_path)

    from gguf import GGUFReader

    field = GGUFReader(gguf).fields["llama.rope.freq_base"]
    assert float(field.parts[field.data[0]][0]) == pytest.approx(1e6)
    got = llama_cpp_logits(gguf, tokens)
    assert relative_error(got, want) < 1e-3
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()

    # the same weights under a transformers-4-style config: the same model
    old_style = {k: v for k, v in config.items() if k != "rope_parameters"}
    old_style["rope_theta"] = 1e6
    (folder / "config.json").write_text(json.dumps(old_style))
    again = llama_cpp_logits(convert(folder, tmp_path / "v4"), tokens)
    assert relative_error(again, want) < 1e-3


@pytest.mark.parametrize("change, message", [
    ({"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6}}, "rope_type 'linear'"),
    ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5}}, "rope_type 'llama3'"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "rope_type 'dynamic'"),
    ({"rope_scaling": {"factor": 2.0}}, "uses rope_scaling"),
    ({"rope_theta": 10000.0}, "contradicts itself"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": "many"}}, "not a positive number"),
    ({"head_dim": 16}, "head_dim 16"),
])
def test_rope_schemes_llama2_cannot_represent_are_refused(tokenizer_model, tmp_path, change, message):
    from llamalab import CheckpointError

    folder = tmp_path / "tiny"
    save_model(folder, tokenizer_model, kv_heads=2, tied=False, rope_theta=1e6)
    config = json.loads((folder / "config.json").read_text())
    config.update(change)
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message) as caught:
        convert(folder, tmp_path)
    assert "\n" not in str(caught.value)
    assert not list(tmp_path.glob("*.gguf*"))  # nothing written
