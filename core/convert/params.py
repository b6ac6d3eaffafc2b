"""A Llama model's hyperparameters, from Meta's ``params.json`` or Hugging Face's ``config.json``.

``LlamaParams`` is a frozen dataclass with everything the GGUF header and the shape checks
need. Meta's file leaves some values implicit, resolved here as Meta's reference
``model.py`` does:

- ``vocab_size: -1`` means "as many as the tokenizer has pieces";
- ``n_kv_heads`` missing means "as many as ``n_heads``" (no grouped-query attention);
- the feed-forward width is not stored but computed from ``dim``, ``multiple_of`` and
  ``ffn_dim_multiplier`` (``meta_hidden_dim``);
- ``rope_theta`` defaults to 10000 (Code Llama sets 1e6).

Every value is checked against ``LIMITS`` (sane ranges, well beyond any released Llama)
before anything is derived from it, so a crafted ``params.json`` (``n_layers: 1000000000``)
is refused at once instead of driving per-layer work.

``expected_shapes`` gives each GGUF tensor's shape (numpy order, rows first) so a
checkpoint whose weights contradict its parameters is refused with one clear message.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from ..errors import CheckpointError

__all__ = ["LlamaParams", "LIMITS", "meta_hidden_dim", "read_json", "tensor_name"]

LLAMA2_CONTEXT = 4096
CODE_LLAMA_CONTEXT = 16384

# Inclusive ranges for each hyperparameter (Llama 2 70B: dim 8192, 80 layers, 64 heads, 32000 words).
LIMITS: dict[str, tuple[float, float]] = {
    "dim": (1, 65_536),
    "n_layers": (1, 1_024),
    "n_heads": (1, 1_024),
    "n_kv_heads": (1, 1_024),
    "vocab_size": (1, 1_048_576),
    "hidden_dim": (1, 1_048_576),
    "multiple_of": (1, 65_536),
    "ffn_dim_multiplier": (0.01, 64.0),
    "norm_eps": (1e-12, 0.1),
    "rope_theta": (1.0, 1e10),
    "context_length": (1, 16_777_216),
}


def _in_range(key: str, value: float, source: str) -> None:
    low, high = LIMITS[key]
    if not low <= value <= high:  # NaN fails too
        raise CheckpointError(f"{source}'s '{key}' is {value!r}, outside the sane range {low:g} to {high:g}; "
                              f"the {source} is damaged or not a Llama model's: download it again.")


def meta_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: Optional[float]) -> int:
    """The SwiGLU width of Meta's ``FeedForward``: 2/3 of 4*dim, scaled, rounded up to ``multiple_of``."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} is missing from {path.parent}; it comes with the weights.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); download it again.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; download it again.")
    return data


def tensor_name(kind: Any, layer: Optional[int] = None) -> str:
    """GGUF's name for a weight, from gguf's own table (``blk.3.attn_q.weight``)."""
    import gguf

    base = gguf.TENSOR_NAMES[kind]
    return (base.format(bid=layer) if layer is not None else base) + ".weight"


@dataclass(frozen=True)
class LlamaParams:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab_size: int
    hidden_dim: int
    norm_eps: float
    rope_theta: float
    context_length: int
    source: str  # "params.json" or "config.json", for messages

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_meta(cls, raw: Mapping[str, Any], tokenizer_vocab: int) -> "LlamaParams":
        """Meta's ``params.json``; ``tokenizer_vocab`` resolves ``vocab_size: -1``."""
        def number(key: str, kind: type = int, default: Any = None) -> Any:
            value = raw.get(key, default)
            if value is None and default is None:
                raise CheckpointError(f"params.json has no '{key}'; it is not a Llama params.json.")
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or (kind is int and value != int(value))):
                raise CheckpointError(f"params.json's '{key}' is {value!r}, not a number.")
            value = kind(value)
            if key in LIMITS and (value > 0 or key in ("multiple_of", "ffn_dim_multiplier")):
                _in_range(key, value, "params.json")  # zero and negatives get validate's message
            return value

        dim, n_heads = number("dim"), number("n_heads")
        n_kv = raw.get("n_kv_heads")
        n_kv_heads = n_heads if n_kv is None else number("n_kv_heads")
        multiplier = raw.get("ffn_dim_multiplier")
        if multiplier is not None:
            multiplier = number("ffn_dim_multiplier", float)
        vocab = number("vocab_size", int, -1)
        if vocab == -1:
            vocab = tokenizer_vocab
        elif vocab != tokenizer_vocab:
            raise CheckpointError(
                f"params.json says vocab_size {vocab} but tokenizer.model has {tokenizer_vocab} pieces; "
                "use the tokenizer.model that came with these weights.")
        rope_theta = number("rope_theta", float, 10000.0)
        if raw.get("max_seq_len") is not None:
            _in_range("context_length", number("max_seq_len"), "params.json")
        default_ctx = CODE_LLAMA_CONTEXT if rope_theta >= 1e6 else LLAMA2_CONTEXT
        params = cls(
            dim=dim, n_layers=number("n_layers"), n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=vocab,
            hidden_dim=meta_hidden_dim(dim, number("multiple_of", int, 256), multiplier),
            norm_eps=number("norm_eps", float, 1e-5), rope_theta=rope_theta,
            context_length=number("max_seq_len", int, default_ctx), source="params.json")
        params.validate()
        return params

    @classmethod
    def from_hf(cls, raw: Mapping[str, Any], tokenizer_vocab: int) -> "LlamaParams":
        """A Hugging Face ``config.json`` of a ``LlamaForCausalLM``."""
        if raw.get("model_type") != "llama":
            raise CheckpointError(f"config.json describes a '{raw.get('model_type')}' model; llamalab converts "
                                  "Llama models (model_type 'llama') only.")
        rope_theta = _hf_rope_theta(raw)
        head_dim = raw.get("head_dim")
        if head_dim is not None and raw.get("num_attention_heads") and raw.get("hidden_size") and \
                head_dim != raw["hidden_size"] // raw["num_attention_heads"]:
            raise CheckpointError(f"config.json sets head_dim {head_dim}, not hidden_size / num_attention_heads; "
                                  "Llama 2 and Code Llama do not, and llamalab does not convert this model.")
        try:
            n_heads = int(raw["num_attention_heads"])
            params = cls(
                dim=int(raw["hidden_size"]), n_layers=int(raw["num_hidden_layers"]), n_heads=n_heads,
                n_kv_heads=int(raw.get("num_key_value_heads") or n_heads),
                vocab_size=int(raw["vocab_size"]), hidden_dim=int(raw["intermediate_size"]),
                norm_eps=float(raw.get("rms_norm_eps", 1e-5)), rope_theta=rope_theta,
                context_length=int(raw.get("max_position_embeddings") or LLAMA2_CONTEXT), source="config.json")
        except KeyError as exc:
            raise CheckpointError(f"config.json has no {exc}; it is not a Llama config.") from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise CheckpointError(f"config.json has a value that is not a number ({exc}).") from None
        if params.vocab_size != tokenizer_vocab:
            raise CheckpointError(
                f"config.json says vocab_size {params.vocab_size} but tokenizer.model has {tokenizer_vocab} "
                "pieces; use the tokenizer.model that came with these weights.")
        params.validate()
        return params

    def validate(self) -> None:
        problems = []
        if min(self.dim, self.n_layers, self.n_heads, self.n_kv_heads, self.vocab_size, self.hidden_dim) < 1:
            problems.append("sizes must be positive")
        elif self.dim % self.n_heads:
            problems.append(f"dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        elif self.n_heads % self.n_kv_heads:
            problems.append(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        elif self.head_dim % 2:
            problems.append(f"the head size {self.head_dim} is odd, so rotary embeddings cannot apply")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)) or not self.rope_theta > 0:
            problems.append("norm_eps and rope_theta must be positive")
        if problems:
            raise CheckpointError(f"{self.source} is inconsistent: {'; '.join(problems)}.")
        for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "hidden_dim", "norm_eps",
                    "rope_theta", "context_length"):
            _in_range(key, getattr(self, key), self.source)

    def expected_shapes(self, *, with_output: bool = True) -> dict[str, tuple[int, ...]]:
        """Every GGUF tensor's shape (numpy order, rows first) for these parameters."""
        import gguf

        t = gguf.MODEL_TENSOR
        d, hd, h = self.dim, self.head_dim, self.hidden_dim
        shapes: dict[str, tuple[int, ...]] = {tensor_name(t.TOKEN_EMBD): (self.vocab_size, d),
                                              tensor_name(t.OUTPUT_NORM): (d,)}
        if with_output:
            shapes[tensor_name(t.OUTPUT)] = (self.vocab_size, d)
        for i in range(self.n_layers):
            shapes.update({
                tensor_name(t.ATTN_NORM, i): (d,),
                tensor_name(t.ATTN_Q, i): (self.n_heads * hd, d),
                tensor_name(t.ATTN_K, i): (self.n_kv_heads * hd, d),
                tensor_name(t.ATTN_V, i): (self.n_kv_heads * hd, d),
                tensor_name(t.ATTN_OUT, i): (d, self.n_heads * hd),
                tensor_name(t.FFN_NORM, i): (d,),
                tensor_name(t.FFN_GATE, i): (h, d),
                tensor_name(t.FFN_UP, i): (h, d),
                tensor_name(t.FFN_DOWN, i): (d, h),
            })
        return shapes

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], origin: Mapping[str, str]) -> None:
        """Refuse weights that contradict these parameters; ``origin`` names each tensor's source."""
        layers = {int(n.split(".")[1]) for n in shapes if n.startswith("blk.")}
        if layers and max(layers) + 1 != self.n_layers:
            raise CheckpointError(f"{self.source} says {self.n_layers} layers but the weights have "
                                  f"{max(layers) + 1}; the {self.source} belongs to another model.")
        expected = self.expected_shapes(with_output=any(n.startswith("output.") for n in shapes))
        missing = sorted(set(expected) - set(shapes))
        if missing:
            raise CheckpointError(f"the checkpoint has no {origin.get(missing[0], missing[0])} "
                                  f"({len(missing)} weights missing); it is incomplete.")
        for name, shape in expected.items():
            if tuple(shapes[name]) != shape:
                raise CheckpointError(
                    f"{self.source} does not match the weights: {origin.get(name, name)} is {tuple(shapes[name])} "
                    f"but dim {self.dim}, {self.n_heads} heads ({self.n_kv_heads} for keys/values), "
                    f"feed-forward {self.hidden_dim} and vocabulary {self.vocab_size} need {shape}; "
                    f"the {self.source} belongs to another model.")


def _hf_rope_theta(raw: Mapping[str, Any]) -> float:
    """RoPE's base frequency from a ``config.json`` as transformers 4 writes it (a top-level
    ``rope_theta``, ``rope_scaling`` for other schemes) or 5 (``rope_parameters: {"rope_theta",
    "rope_type"}``); any scheme but plain RoPE is refused, as is a contradiction between the two."""
    thetas = []
    if raw.get("rope_theta") is not None:
        thetas.append(("rope_theta", raw["rope_theta"]))
    for key in ("rope_parameters", "rope_scaling"):
        settings = raw.get(key)
        if not settings:
            continue
        if not isinstance(settings, Mapping):
            raise CheckpointError(f"config.json's {key} is not an object; it is not a Llama config llamalab knows.")
        kind = settings.get("rope_type", settings.get("type"))
        if kind not in (None, "default"):
            raise CheckpointError(f"config.json's {key} asks for rope_type {ascii(kind)[:40]}; Llama 2 and Code "
                                  "Llama use plain RoPE, and llamalab does not convert this model.")
        if key == "rope_scaling" and kind is None:
            raise CheckpointError("config.json uses rope_scaling, which Llama 2 and Code Llama do not; "
                                  "llamalab does not convert this model.")
        if settings.get("rope_theta") is not None:
            thetas.append((f"{key}.rope_theta", settings["rope_theta"]))
    values = []
    for where, value in thetas:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise CheckpointError(f"config.json's {where} is {ascii(value)[:40]}, not a positive number.")
        values.append(float(value))
    if len(set(values)) > 1:
        shown = ", ".join(f"{where} {value:g}" for (where, _), value in zip(thetas, values))
        raise CheckpointError(f"config.json contradicts itself about RoPE's base ({shown}); fix the config.")
    return values[0] if values else 10000.0
