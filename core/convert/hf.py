"""A Hugging Face Llama folder (``config.json``, ``*.safetensors``, ``tokenizer.model``) planned as GGUF.

Safetensors files are read without the ``safetensors`` package or torch: an 8-byte
little-endian header length, a JSON header naming each tensor's dtype, shape and byte
range, then the data, which is memory-mapped. Folders that hold ``pytorch_model*.bin``
instead are read with the same restricted unpickler as Meta's ``.pth`` files.

Hugging Face's conversion script permuted the rows of ``q_proj`` and ``k_proj`` so that
each head's rotary pairs are its two halves instead of adjacent rows; the GGUF
``llama`` architecture wants Meta's adjacent pairs, so the permutation is undone here
head by head (with ``num_key_value_heads`` for ``k_proj``).
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import CheckpointError
from .params import LlamaParams, read_json, tensor_name
from .pth import load_pth
from .source import SOURCE_DTYPES, MappedFile, SourceTensor, convert_block, fill
from .vocab import find_tokenizer, load_spm_vocab
from .writer import ConversionPlan, PlannedTensor

__all__ = ["plan_hf", "is_hf_folder", "load_safetensors", "unpermute_rows"]

_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def load_safetensors(path: Path) -> tuple[dict[str, SourceTensor], MappedFile]:
    """The tensors of one safetensors file, mapped; the caller closes the ``MappedFile``."""
    mapped = MappedFile(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path.name} is truncated (no header); download it again.")
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000 or 8 + length > mapped.size:
                raise CheckpointError(f"{path.name} is truncated or not a safetensors file; download it again.")
            try:
                header = json.loads(handle.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise CheckpointError(f"{path.name} has a damaged header; download it again.") from None
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = entry.get("dtype") if isinstance(entry, dict) else None
            if dtype not in SOURCE_DTYPES:
                raise CheckpointError(f"{path.name}: {name} is {dtype}; llamalab converts BF16, F16 and F32 weights.")
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
            numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if end - begin != numel * SOURCE_DTYPES[dtype].itemsize or 8 + length + end > mapped.size:
                raise CheckpointError(f"{path.name} is truncated or damaged ({name} does not fit); download it again.")
            tensors[name] = SourceTensor(file=mapped, offset=8 + length + begin, shape=shape,
                                         strides=_contiguous_strides(shape), dtype=dtype, origin=f"{path.name}: {name}")
        return tensors, mapped
    except BaseException:
        mapped.close()
        raise


def unpermute_rows(dest: np.ndarray, source: SourceTensor, n_heads: int, out_type: str) -> None:
    """Undo HF's rotary permutation: HF row ``j * hd/2 + i`` of a head is Meta's row ``2 * i + j``."""
    raw = source.raw()
    rows, cols = raw.shape
    head = rows // n_heads
    if rows % n_heads or head % 2:
        raise CheckpointError(f"{source.origin} has {rows} rows, which {n_heads} heads cannot share.")
    out = dest.reshape(n_heads, head // 2, 2, cols)
    for h in range(n_heads):
        block = convert_block(raw[h * head:(h + 1) * head], source.dtype, out_type)
        out[h] = block.reshape(2, head // 2, cols).transpose(1, 0, 2)


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map", {})
        names = sorted(set(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(f"{missing[0]} missing from {folder} (the index lists it); download it again.")
        return [folder / n for n in names]
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise CheckpointError(f"{folder} has config.json but no *.safetensors or pytorch_model*.bin weights.")
    return files


def _hf_names() -> dict[str, tuple[Any, bool]]:
    """HF weight name (layer part) -> (GGUF kind, per layer)."""
    import gguf

    t = gguf.MODEL_TENSOR
    return {
        "model.embed_tokens.weight": (t.TOKEN_EMBD, False), "model.norm.weight": (t.OUTPUT_NORM, False),
        "lm_head.weight": (t.OUTPUT, False),
        "self_attn.q_proj.weight": (t.ATTN_Q, True), "self_attn.k_proj.weight": (t.ATTN_K, True),
        "self_attn.v_proj.weight": (t.ATTN_V, True), "self_attn.o_proj.weight": (t.ATTN_OUT, True),
        "mlp.gate_proj.weight": (t.FFN_GATE, True), "mlp.up_proj.weight": (t.FFN_UP, True),
        "mlp.down_proj.weight": (t.FFN_DOWN, True), "input_layernorm.weight": (t.ATTN_NORM, True),
        "post_attention_layernorm.weight": (t.FFN_NORM, True),
    }


def _license(folder: Path, name: str) -> Optional[str]:
    if re.search(r"llama[-_ ]?2|code[-_ ]?llama", name, re.IGNORECASE):
        return "llama2"
    for doc in ("LICENSE", "LICENSE.txt", "README.md"):
        try:
            text = (folder / doc).read_text(encoding="utf-8", errors="replace")[:20000]
        except OSError:
            continue
        if re.search(r"LLAMA 2 COMMUNITY LICENSE|^license:\s*llama2", text, re.IGNORECASE | re.MULTILINE):
            return "llama2"
    return None


def plan_hf(folder: Path, out_type: str) -> ConversionPlan:
    """Check a Hugging Face Llama folder and plan its GGUF; the caller closes the plan."""
    import gguf

    folder = Path(folder)
    config = read_json(folder / "config.json")
    vocab = load_spm_vocab(find_tokenizer(folder))
    params = LlamaParams.from_hf(config, vocab.size)
    plan = ConversionPlan(params=params, vocab=vocab, tensors=[], name=folder.name,
                          license=_license(folder, folder.name), layout="hf", closers=[])
    try:
        sources: dict[str, SourceTensor] = {}
        for path in _weight_files(folder):
            if path.suffix == ".bin":
                checkpoint = load_pth(path)
                tensors, close = checkpoint.tensors, checkpoint.close
            else:
                tensors, mapped = load_safetensors(path)
                close = mapped.close
            plan.closers.append(close)
            sources.update(tensors)
        table = _hf_names()
        named: dict[str, tuple[str, Any, SourceTensor]] = {}
        for hf_name, tensor in sources.items():
            if _IGNORED.match(hf_name):
                continue
            match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", hf_name)
            key = match.group(2) if match else hf_name
            if key not in table or table[key][1] != bool(match):
                raise CheckpointError(f"{tensor.origin} is not a Llama weight; llamalab converts Llama models only.")
            kind = table[key][0]
            named[tensor_name(kind, int(match.group(1)) if match else None)] = (hf_name, kind, tensor)
        shapes = {name: entry[2].shape for name, entry in named.items()}
        params.check_shapes(shapes, {name: entry[0] for name, entry in named.items()})
        for name in params.expected_shapes(with_output=tensor_name(gguf.MODEL_TENSOR.OUTPUT) in named):
            _, kind, tensor = named[name]
            kind_type = out_type if len(tensor.shape) > 1 else "F32"
            heads = {gguf.MODEL_TENSOR.ATTN_Q: params.n_heads, gguf.MODEL_TENSOR.ATTN_K: params.n_kv_heads}.get(kind)
            plan.tensors.append(PlannedTensor(name=name, shape=tensor.shape, out_type=kind_type,
                                              fill=_filler(tensor, heads, kind_type), sources=(tensor,)))
    except BaseException:
        plan.close()
        raise
    return plan


def _filler(tensor: SourceTensor, heads: Optional[int], out_type: str) -> Callable[[np.ndarray], None]:
    if heads is None:
        return lambda dest: fill(dest, tensor, out_type)
    return lambda dest: unpermute_rows(dest, tensor, heads, out_type)
