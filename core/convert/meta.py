"""Meta's checkpoint folder (``consolidated.NN.pth``, ``params.json``, ``tokenizer.model``) planned as GGUF.

Meta saved each model-parallel rank's slice of the weights in its own shard (7B: 1,
13B: 2, 70B: 8). ``plan_meta`` puts them back together the way the layers split them:

    ColumnParallelLinear  wq wk wv w1 w3 output   concatenated along axis 0 (rows)
    RowParallelLinear     wo w2                   concatenated along axis 1 (columns)
    ParallelEmbedding     tok_embeddings          concatenated along axis 1
    RMSNorm weights       attention_norm ffn_norm norm: replicated, shard 0's is used
    rope.freqs            recomputed by llama.cpp, dropped

Meta's layout rotates adjacent pairs of each head, which is what llama.cpp's ``llama``
architecture does, so unlike Hugging Face's layout no Q/K permutation is needed.

Before anything is written the folder is checked: shards numbered without gaps and
matching ``checklist.chk``; as many shards as the weights were split into (the
replicated norm gives the true width, each shard's embedding slice the split); the same
tensors in every shard; and every merged shape as ``params.json`` implies. Each problem
is one ``CheckpointError`` naming the file to fix.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import CheckpointError
from .params import LlamaParams, read_json, tensor_name
from .pth import PthCheckpoint, load_pth
from .source import SourceTensor, fill
from .vocab import find_tokenizer, load_spm_vocab
from .writer import ConversionPlan, PlannedTensor

__all__ = ["plan_meta", "find_shards", "is_meta_folder"]

SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")
_DROPPED = {"rope.freqs"}


def _kinds() -> tuple[dict[str, tuple[object, Optional[int]]], dict[str, tuple[object, Optional[int]]]]:
    """Meta's weight names -> (GGUF tensor kind, axis the shards split it on, None if replicated)."""
    import gguf

    t = gguf.MODEL_TENSOR
    top = {"tok_embeddings.weight": (t.TOKEN_EMBD, 1), "norm.weight": (t.OUTPUT_NORM, None),
           "output.weight": (t.OUTPUT, 0)}
    layer = {"attention.wq.weight": (t.ATTN_Q, 0), "attention.wk.weight": (t.ATTN_K, 0),
             "attention.wv.weight": (t.ATTN_V, 0), "attention.wo.weight": (t.ATTN_OUT, 1),
             "feed_forward.w1.weight": (t.FFN_GATE, 0), "feed_forward.w2.weight": (t.FFN_DOWN, 1),
             "feed_forward.w3.weight": (t.FFN_UP, 0), "attention_norm.weight": (t.ATTN_NORM, None),
             "ffn_norm.weight": (t.FFN_NORM, None)}
    return top, layer


def is_meta_folder(folder: Path) -> bool:
    return (folder / "params.json").is_file() or any(SHARD_RE.match(p.name) for p in folder.iterdir())


def _checklist_names(folder: Path) -> Optional[set[str]]:
    path = folder / "checklist.chk"
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    names = {line.split()[-1].lstrip("*") for line in lines if len(line.split()) >= 2}
    return {n for n in names if SHARD_RE.match(n)} or None


def find_shards(folder: Path) -> list[Path]:
    """The ``consolidated.NN.pth`` files in order; an error names any missing or extra one."""
    found = {int(m.group(1)): p for p in folder.iterdir() if (m := SHARD_RE.match(p.name)) and p.is_file()}
    if not found:
        raise CheckpointError(f"{folder} has no consolidated.NN.pth; point llamalab convert at a model folder "
                              "of Meta's download (e.g. llama-2-7b-chat).")
    gaps = [f"consolidated.{i:02d}.pth" for i in range(max(found) + 1) if i not in found]
    if gaps:
        raise CheckpointError(f"{', '.join(gaps)} missing from {folder}; the download is incomplete: "
                              "run llamalab download again.")
    listed = _checklist_names(folder)
    if listed is not None:
        names = {p.name for p in found.values()}
        if listed - names:
            raise CheckpointError(f"{', '.join(sorted(listed - names))} missing from {folder} (checklist.chk "
                                  "lists it); the download is incomplete: run llamalab download again.")
        if names - listed:
            raise CheckpointError(f"{', '.join(sorted(names - listed))} in {folder} is not in checklist.chk: "
                                  "it belongs to another model; remove it.")
    return [found[i] for i in sorted(found)]


def _check_shard_count(shards: list[PthCheckpoint], folder: Path) -> None:
    first = shards[0].tensors
    norm, embed = first.get("norm.weight"), first.get("tok_embeddings.weight")
    if norm is None or embed is None or len(norm.shape) != 1 or len(embed.shape) != 2:
        raise CheckpointError(f"{shards[0].path.name} has no norm.weight/tok_embeddings.weight; "
                              "it is not a Llama checkpoint shard.")
    dim, per_shard = norm.shape[0], embed.shape[1]
    if per_shard < 1 or dim % per_shard:
        raise CheckpointError(f"{shards[0].path.name} holds a {per_shard}-wide slice of a {dim}-wide "
                              "embedding; the shard is damaged.")
    n_split = dim // per_shard
    if n_split > len(shards):
        missing = ", ".join(f"consolidated.{i:02d}.pth" for i in range(len(shards), n_split))
        raise CheckpointError(f"the weights are split into {n_split} shards but {folder} has {len(shards)}: "
                              f"{missing} missing; run llamalab download again.")
    if n_split < len(shards):
        extra = ", ".join(p.path.name for p in shards[n_split:])
        raise CheckpointError(f"the weights are split into {n_split} shard(s) but {folder} has {len(shards)}: "
                              f"{extra} belongs to another model; remove it.")
    keys = set(first) - _DROPPED
    for shard in shards[1:]:
        other = set(shard.tensors) - _DROPPED
        if other != keys:
            odd = sorted(other ^ keys)[0]
            raise CheckpointError(f"{shard.path.name} and {shards[0].path.name} hold different tensors "
                                  f"(e.g. {odd}); they come from different models.")


def _merged_shape(parts: list[SourceTensor], axis: Optional[int], meta_name: str) -> tuple[int, ...]:
    shapes = [p.shape for p in parts]
    if axis is None:
        if len(set(shapes)) != 1:
            raise CheckpointError(f"{meta_name} differs in shape between shards ({shapes}); "
                                  "the shards come from different models.")
        return shapes[0]
    if any(len(s) != 2 for s in shapes) or len({s[1 - axis] for s in shapes}) != 1:
        raise CheckpointError(f"{meta_name} has shapes {shapes} in the shards, which do not fit together; "
                              "the shards come from different models.")
    merged = list(shapes[0])
    merged[axis] = sum(s[axis] for s in shapes)
    return tuple(merged)


def _filler(parts: list[SourceTensor], axis: Optional[int], out_type: str) -> Callable[[np.ndarray], None]:
    def run(dest: np.ndarray) -> None:
        if axis is None:
            fill(dest, parts[0], out_type)
            return
        start = 0
        for part in parts:
            stop = start + part.shape[axis]
            fill(dest[start:stop] if axis == 0 else dest[:, start:stop], part, out_type)
            start = stop
    return run


def plan_meta(folder: Path, out_type: str) -> ConversionPlan:
    """Check Meta's folder and plan its GGUF; the caller closes the plan (it maps the shards)."""
    folder = Path(folder)
    shard_paths = find_shards(folder)
    raw_params = read_json(folder / "params.json")
    vocab = load_spm_vocab(find_tokenizer(folder))
    params = LlamaParams.from_meta(raw_params, vocab.size)
    shards: list[PthCheckpoint] = []
    plan = ConversionPlan(params=params, vocab=vocab, tensors=[], name=folder.name, license="llama2",
                          layout="meta", closers=[])
    try:
        for path in shard_paths:
            shard = load_pth(path)
            shards.append(shard)
            plan.closers.append(shard.close)
        _check_shard_count(shards, folder)
        plan.tensors = _plan_tensors(shards, params, out_type)
    except BaseException:
        plan.close()
        raise
    return plan


def _plan_tensors(shards: list[PthCheckpoint], params: LlamaParams, out_type: str) -> list[PlannedTensor]:
    top, layer = _kinds()
    entries: dict[str, tuple[str, Optional[int], list[SourceTensor]]] = {}
    for meta_name in shards[0].tensors:
        if meta_name in _DROPPED:
            continue
        match = re.fullmatch(r"layers\.(\d+)\.(.+)", meta_name)
        if meta_name in top:
            kind, axis = top[meta_name]
            name = tensor_name(kind)
        elif match and match.group(2) in layer:
            kind, axis = layer[match.group(2)]
            name = tensor_name(kind, int(match.group(1)))
        else:
            raise CheckpointError(f"{shards[0].path.name} has a tensor '{meta_name}' that Llama 2 does not have; "
                                  "it is not a Llama 2 or Code Llama checkpoint.")
        entries[name] = (meta_name, axis, [s.tensors[meta_name] for s in shards])
    shapes = {name: _merged_shape(parts, axis, meta_name) for name, (meta_name, axis, parts) in entries.items()}
    origin = {name: meta_name for name, (meta_name, _, _) in entries.items()}
    params.check_shapes(shapes, origin)
    order = list(params.expected_shapes(with_output="output.weight" in shapes))
    planned = []
    for name in order:
        _, axis, parts = entries[name]
        kind_type = out_type if len(shapes[name]) > 1 else "F32"  # norms stay F32, as llama.cpp expects
        planned.append(PlannedTensor(name=name, shape=shapes[name], out_type=kind_type,
                                     fill=_filler(parts, axis, kind_type), sources=tuple(parts)))
    return planned
