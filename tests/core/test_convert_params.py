"""params.json as Meta's model.py reads it: the real Llama 2 / Code Llama sizes, vocab_size -1,
n_kv_heads, ffn_dim_multiplier, rope_theta, and one clear error for a bad file."""

from __future__ import annotations

import pytest

from llamalab.convert.params import LlamaParams, meta_hidden_dim
from llamalab.errors import CheckpointError

# The published params.json files and the feed-forward widths of the released weights.
REAL = {
    "7B": ({"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-05,
            "vocab_size": -1}, 11008),
    "13B": ({"dim": 5120, "multiple_of": 256, "n_heads": 40, "n_layers": 40, "norm_eps": 1e-05,
             "vocab_size": -1}, 13824),
    "70B": ({"dim": 8192, "multiple_of": 4096, "ffn_dim_multiplier": 1.3, "n_heads": 64, "n_kv_heads": 8,
             "n_layers": 80, "norm_eps": 1e-05, "vocab_size": -1}, 28672),
    "CodeLlama-7b": ({"dim": 4096, "n_layers": 32, "n_heads": 32, "multiple_of": 256, "ffn_dim_multiplier": 1.0,
                      "norm_eps": 1e-5, "rope_theta": 1000000, "vocab_size": 32016}, 11008),
    "CodeLlama-34b": ({"dim": 8192, "n_layers": 48, "n_heads": 64, "n_kv_heads": 8, "multiple_of": 256,
                       "ffn_dim_multiplier": 1.0, "norm_eps": 1e-5, "rope_theta": 1000000, "vocab_size": 32000}, 22016),
}


@pytest.mark.parametrize("model", list(REAL))
def test_real_models_resolve_as_metas_model_py_does(model):
    raw, hidden = REAL[model]
    vocab = raw["vocab_size"] if raw["vocab_size"] > 0 else 32000
    p = LlamaParams.from_meta(raw, vocab)
    assert p.hidden_dim == hidden
    assert p.vocab_size == vocab
    assert p.n_kv_heads == raw.get("n_kv_heads", raw["n_heads"])
    assert p.head_dim == 128
    code_llama = model.startswith("CodeLlama")
    assert p.rope_theta == (1e6 if code_llama else 1e4)
    assert p.context_length == (16384 if code_llama else 4096)


def test_meta_hidden_dim_formula():
    assert meta_hidden_dim(64, 32, None) == 192  # int(2*256/3)=170 -> 192
    assert meta_hidden_dim(128, 32, 1.3) == 448  # 341 -> 443 -> 448
    assert meta_hidden_dim(256, 256, None) == 768


def test_vocab_size_must_match_the_tokenizer():
    raw = dict(REAL["CodeLlama-7b"][0])
    with pytest.raises(CheckpointError, match="vocab_size 32016 but tokenizer.model has 32000 pieces"):
        LlamaParams.from_meta(raw, 32000)


@pytest.mark.parametrize("change, message", [
    ({"dim": None}, "params.json has no 'dim'"),
    ({"n_heads": "32"}, "'n_heads' is '32', not a number"),
    ({"n_heads": 33}, "dim 4096 is not a multiple of n_heads 33"),
    ({"n_kv_heads": 5}, "n_heads 32 is not a multiple of n_kv_heads 5"),
    ({"norm_eps": -1.0}, "norm_eps and rope_theta must be positive"),
])
def test_inconsistent_params_are_one_clear_error(change, message):
    raw = {**REAL["7B"][0], **change}
    raw = {k: v for k, v in raw.items() if v is not None}
    with pytest.raises(CheckpointError, match=message) as info:
        LlamaParams.from_meta(raw, 32000)
    assert "\n" not in str(info.value)


def test_hugging_face_config():
    config = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
              "num_key_value_heads": 8, "num_hidden_layers": 80, "rms_norm_eps": 1e-5, "vocab_size": 32000,
              "max_position_embeddings": 4096}
    p = LlamaParams.from_hf(config, 32000)
    assert (p.hidden_dim, p.n_kv_heads, p.rope_theta, p.context_length) == (28672, 8, 10000.0, 4096)
    with pytest.raises(CheckpointError, match="'mistral' model"):
        LlamaParams.from_hf({**config, "model_type": "mistral"}, 32000)
