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
import math
import re
import struct
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..errors import CheckpointError
from .params import LIMITS, LlamaParams, read_json, tensor_name
from .pth import load_pth
from .source import SOURCE_DTYPES, MappedFile, SourceTensor, convert_block, fill
from .vocab import find_tokenizer, load_spm_vocab
from .writer import ConversionPlan, PlannedTensor

__all__ = ["plan_hf", "is_hf_folder", "load_safetensors", "check_config", "unpermute_rows"]

_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


def is_hf_folder(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


# Bounds on what a safetensors header may claim (the safetensors library caps headers at 100 MB too).
MAX_HEADER_BYTES = 100_000_000
MAX_TENSORS_PER_FILE = 100_000  # Llama 2 70B has 723 tensors in all
MAX_DIMS = 8
MAX_DIM = 1 << 40


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"{path.name} is damaged or not a safetensors file ({what}); download it again.")


def _plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _read_header(path: Path, size: int) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and the byte offset where its data begins."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) != 8:
                raise CheckpointError(f"{path.name} is truncated (no header); download it again.")
            (length,) = struct.unpack("<Q", head)
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise CheckpointError(f"{path.name} is truncated or not a safetensors file (its header claims "
                                      f"{length:,} bytes, the file has {size:,}); download it again.")
            raw = handle.read(length)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path.name} ({exc.strerror or exc}); check the file.") from None
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # JSONDecodeError, over-long integers, deep nesting
        raise _damaged(path, "its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    if len(header) > MAX_TENSORS_PER_FILE + 1:
        raise _damaged(path, f"its header lists {len(header):,} tensors, more than {MAX_TENSORS_PER_FILE:,}")
    return header, 8 + length


def _check_entry(path: Path, name: str, entry: Any, data_size: int) -> tuple[str, tuple[int, ...], int, int]:
    """One header entry's dtype, shape and byte range, each checked against the file."""
    shown = ascii(name[:80])
    if not isinstance(entry, dict):
        raise _damaged(path, f"the entry of {shown} is not an object")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in SOURCE_DTYPES:
        raise CheckpointError(f"{path.name}: {shown} is {ascii(dtype)[:40]}; llamalab converts BF16, F16 and "
                              "F32 weights.")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(_plain_int(d) and 0 <= d <= MAX_DIM for d in shape)):
        raise _damaged(path, f"the shape of {shown} is not a list of at most {MAX_DIMS} non-negative sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_plain_int(x) for x in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise CheckpointError(f"{path.name} is truncated or damaged (the data of {shown} is not inside the "
                              "file); download it again.")
    numel = 1
    for d in shape:
        numel *= d  # Python integers: no overflow
    begin, end = offsets
    if end - begin != numel * SOURCE_DTYPES[dtype].itemsize:
        raise _damaged(path, f"{shown} takes {end - begin:,} bytes but its shape {tuple(shape)} of {dtype} "
                             f"needs {numel * SOURCE_DTYPES[dtype].itemsize:,}")
    return dtype, tuple(shape), begin, end


def load_safetensors(path: Path) -> tuple[dict[str, SourceTensor], MappedFile]:
    """The tensors of one safetensors file, mapped; the caller closes the ``MappedFile``.

    Every header value is checked before use: the header's length against the file, each
    tensor's dtype, shape (at most ``MAX_DIMS`` non-negative sizes) and ``data_offsets``
    (inside the data, exactly its shape's bytes, no two tensors sharing a byte), so a
    crafted header is refused with one ``CheckpointError`` line and never reads outside
    the file.
    """
    path = Path(path)
    try:
        mapped = MappedFile(path)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path.name} ({exc.strerror or exc}); check the file.") from None
    try:
        header, data_start = _read_header(path, mapped.size)
        data_size = mapped.size - data_start
        tensors: dict[str, SourceTensor] = {}
        ranges: list[tuple[int, int, str]] = []
        for name, entry in header.items():
            if name == "__metadata__":
                if not isinstance(entry, dict):
                    raise _damaged(path, "its __metadata__ is not an object")
                continue
            dtype, shape, begin, end = _check_entry(path, name, entry, data_size)
            if end > begin:
                ranges.append((begin, end, name))
            tensors[name] = SourceTensor(file=mapped, offset=data_start + begin, shape=shape,
                                         strides=_contiguous_strides(shape), dtype=dtype, origin=f"{path.name}: {name}")
        ranges.sort()
        for (_, end, first), (begin, _, second) in zip(ranges, ranges[1:]):
            if begin < end:
                raise _damaged(path, f"{ascii(first[:80])} and {ascii(second[:80])} share bytes")
        return tensors, mapped
    except BaseException:
        mapped.close()
        raise


# config.json's numbers: key -> (the LIMITS entry that bounds it, int or float, required).
_CONFIG_NUMBERS: dict[str, tuple[str, type, bool]] = {
    "hidden_size": ("dim", int, True),
    "num_hidden_layers": ("n_layers", int, True),
    "num_attention_heads": ("n_heads", int, True),
    "num_key_value_heads": ("n_kv_heads", int, False),
    "vocab_size": ("vocab_size", int, True),
    "intermediate_size": ("hidden_dim", int, True),
    "rms_norm_eps": ("norm_eps", float, False),
    "rope_theta": ("rope_theta", float, False),
    "max_position_embeddings": ("context_length", int, False),
}


def check_config(config: dict[str, Any]) -> None:
    """Refuse a ``config.json`` whose sizes are missing, not numbers of the right kind, or out of
    ``LIMITS``, before anything is derived from them."""
    for key, (limit, kind, required) in _CONFIG_NUMBERS.items():
        value = config.get(key)
        if value is None:
            if required:
                raise CheckpointError(f"config.json has no '{key}'; it is not a Llama config.")
            continue
        is_number = _plain_int(value) or (isinstance(value, float) and math.isfinite(value))
        if not is_number or (kind is int and not _plain_int(value)):
            what = "an integer" if kind is int else "a number"
            raise CheckpointError(f"config.json's '{key}' is {ascii(value)[:40]}, not {what}; "
                                  "the config.json is damaged: download it again.")
        low, high = LIMITS[limit]
        if not low <= value <= high:
            shown = repr(value) if len(repr(value)) <= 40 else f"a {len(repr(value))}-digit number"
            raise CheckpointError(f"config.json's '{key}' is {shown}, outside the sane range {low:g} to {high:g}; "
                                  "the config.json is damaged or not a Llama model's: download it again.")


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


def _read_json(path: Path) -> dict[str, Any]:
    """``read_json``, with the JSON bombs it lets through (over-long integers, deep nesting) refused too."""
    try:
        return read_json(path)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path.name} is not valid JSON (an over-long number or too deeply nested); "
                              "download it again.") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path.name} ({exc.strerror or exc}); check the file.") from None


def _index_map(index: Path) -> dict[str, str]:
    """The index's tensor -> file map; each file a plain ``.safetensors`` name in the same folder."""
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index.name} has no weight_map object; download it again.")
    for tensor, file in weight_map.items():
        if (not isinstance(file, str) or not file.endswith(".safetensors") or file.startswith(".")
                or any(c in file for c in "/\\:") or any(ord(c) < 32 for c in file)):
            raise CheckpointError(f"{index.name} maps {ascii(tensor[:80])} to {ascii(file)[:80]}, which is not a "
                                  ".safetensors file in this folder; download it again.")
    return weight_map


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _index_map(index)
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


def _expected_hf_names(table: dict[str, tuple[Any, bool]], n_layers: int) -> dict[str, str]:
    """GGUF name -> the Hugging Face name of every weight a Llama of ``n_layers`` layers has."""
    names = {}
    for key, (kind, per_layer) in table.items():
        if per_layer:
            names.update({tensor_name(kind, i): f"model.layers.{i}.{key}" for i in range(n_layers)})
        else:
            names[tensor_name(kind)] = key
    return names


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
    config = _read_json(folder / "config.json")
    if config.get("model_type") == "llama":  # another model_type gets from_hf's own message
        check_config(config)
    vocab = load_spm_vocab(find_tokenizer(folder))
    params = LlamaParams.from_hf(config, vocab.size)
    plan = ConversionPlan(params=params, vocab=vocab, tensors=[], name=folder.name,
                          license=_license(folder, folder.name), layout="hf", closers=[])
    try:
        sources: dict[str, SourceTensor] = {}
        index = folder / "model.safetensors.index.json"
        for path in _weight_files(folder):
            if path.suffix == ".bin":
                checkpoint = load_pth(path)
                tensors, close = checkpoint.tensors, checkpoint.close
            else:
                tensors, mapped = load_safetensors(path)
                close = mapped.close
            plan.closers.append(close)
            for hf_name, tensor in tensors.items():
                if hf_name in sources:
                    raise CheckpointError(f"{ascii(hf_name[:80])} is in both {sources[hf_name].origin.partition(': ')[0]} "
                                          f"and {path.name}; the folder mixes two checkpoints: download it again.")
                sources[hf_name] = tensor
        if index.is_file():
            for hf_name, file in _index_map(index).items():
                if hf_name not in sources or not sources[hf_name].origin.startswith(f"{file}: "):
                    raise CheckpointError(f"{file} has no tensor {ascii(hf_name[:80])}, which {index.name} lists; "
                                          "the download is incomplete: download it again.")
        table = _hf_names()
        named: dict[str, tuple[str, Any, SourceTensor]] = {}
        for hf_name, tensor in sources.items():
            if _IGNORED.match(hf_name):
                continue
            match = re.fullmatch(r"model\.layers\.(0|[1-9][0-9]{0,5})\.(.+)", hf_name)  # ASCII digits, no 01
            key = match.group(2) if match else hf_name
            if key not in table or table[key][1] != bool(match):
                raise CheckpointError(f"{ascii(tensor.origin[:120])} is not a Llama weight; llamalab converts "
                                      "Llama models only.")
            kind = table[key][0]
            named[tensor_name(kind, int(match.group(1)) if match else None)] = (hf_name, kind, tensor)
        shapes = {name: entry[2].shape for name, entry in named.items()}
        origin = _expected_hf_names(table, params.n_layers)  # a missing weight is named as HF names it
        origin.update({name: entry[0] for name, entry in named.items()})
        params.check_shapes(shapes, origin)
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
