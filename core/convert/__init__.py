"""Converting Llama 2 / Code Llama checkpoints to GGUF, without torch and without running pickles.

    from llamalab.convert import convert_checkpoint
    path = convert_checkpoint("llama-2-13b-chat", "llama-2-13b-chat.f16.gguf", accept_license=True)

``convert_checkpoint`` reads Meta's folders (``consolidated.NN.pth`` + ``params.json`` +
``tokenizer.model``) and Hugging Face Llama folders (``config.json`` + safetensors) and
writes one GGUF, streaming tensor by tensor. ``convert_and_register`` and
``quantize_and_register`` add llama.cpp's quantizer, a bounded check that llama.cpp accepts
(and, where it fits in memory, runs) the result, and registration in the model store, which is
what ``llamalab convert`` and ``llamalab quantize`` do.

The modules, each owning one concept:

    pth        torch.save zip files through a restricted unpickler (no code runs)
    source     memory-mapped tensors; bf16/f16/f32 conversion in blocks
    params     params.json / config.json as LlamaParams; shape checks
    vocab      tokenizer.model as GGUF tokens, scores, types, special and FIM ids
    metadata   the GGUF key-values (gguf.Keys) and Meta's chat template
    meta       Meta's shards merged along each tensor's split axis
    hf         Hugging Face safetensors with the Q/K permutation undone
    writer     streaming GGUF writing into NAME.part, checked, renamed
    blockio    the data written in whole blocks (O_DIRECT where possible), hashed on its own thread
    runcheck   llama.cpp loads the result and runs one prompt, or loads it structurally
    pipeline   convert [+ quantize] + check + register

Importing this package is light: numpy, gguf and llama_cpp load when a conversion starts.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ..errors import CheckpointError, ConfigError
from ..progress import ProgressCallback, cancellable
from .params import LlamaParams, meta_hidden_dim
from .pipeline import convert_and_register, quantize_and_register

if TYPE_CHECKING:
    from .writer import WrittenGGUF

__all__ = ["convert_checkpoint", "detect_layout", "checkpoint_license", "OUTTYPES", "LlamaParams",
           "meta_hidden_dim", "convert_and_register", "quantize_and_register"]

OUTTYPES = ("f32", "f16", "bf16")


def normalize_outtype(outtype: str) -> str:
    """``f16`` -> ``F16``; a ``ConfigError`` listing the choices otherwise."""
    key = str(outtype).strip().lower()
    if key not in OUTTYPES:
        raise ConfigError(f"unknown output type '{outtype}'; choose one of: {', '.join(OUTTYPES)} "
                          "(quantized types go to --quant).")
    return key.upper()


def detect_layout(folder: os.PathLike[str] | str) -> str:
    """``"meta"`` for Meta's consolidated.NN.pth folders, ``"hf"`` for Hugging Face folders."""
    from .hf import is_hf_folder
    from .meta import is_meta_folder

    path = Path(folder).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a folder; give the model folder of Meta's download "
                              "(e.g. llama-2-7b-chat) or a Hugging Face model folder.")
    if is_meta_folder(path):
        return "meta"
    if is_hf_folder(path):
        return "hf"
    raise CheckpointError(f"{path} holds neither Meta's checkpoint (consolidated.NN.pth, params.json) nor a "
                          "Hugging Face model (config.json, *.safetensors).")


def checkpoint_license(folder: os.PathLike[str] | str) -> Optional[str]:
    """The id of the licence converting ``folder`` needs accepted (``llama2`` for Meta's
    checkpoints), or None; a ``CheckpointError`` when it is no checkpoint folder. Cheap: it reads
    no weights, so a caller can ask for the acceptance before starting a long conversion."""
    from .hf import _license

    path = Path(folder).expanduser()
    if detect_layout(path) == "meta":
        return "llama2"
    return _license(path, path.name)


def convert_checkpoint(src_dir: os.PathLike[str] | str, out_path: Optional[os.PathLike[str] | str] = None,
                       outtype: str = "f16", progress: Optional[ProgressCallback] = None,
                       accept_license: bool = False, *, name: Optional[str] = None,
                       chat: Optional[bool] = None, store: Optional[object] = None,
                       cancel: Optional[threading.Event] = None) -> Path:
    """Convert a checkpoint folder to a GGUF file and return its path.

    ``out_path`` defaults to ``SRC_DIR/<folder>.<outtype>.gguf``. ``outtype`` is f32, f16
    (default) or bf16 (1-D norm weights stay f32). ``accept_license`` accepts the Llama 2
    licence for this store if it was not accepted yet. ``name`` sets ``general.name``
    (default: the folder name); ``chat`` forces the chat template on or off (default: on
    for -chat/-Instruct folders). The file appears only once written and checked. Setting
    ``cancel`` stops the conversion between two tensors with ``OperationCancelledError`` (the
    ``.part`` file is deleted).
    """
    return write_checkpoint(src_dir, out_path, outtype, progress, accept_license, name=name, chat=chat,
                            store=store, cancel=cancel).path


def write_checkpoint(src_dir: os.PathLike[str] | str, out_path: Optional[os.PathLike[str] | str] = None,
                     outtype: str = "f16", progress: Optional[ProgressCallback] = None,
                     accept_license: bool = False, *, name: Optional[str] = None,
                     chat: Optional[bool] = None, store: Optional[object] = None,
                     cancel: Optional[threading.Event] = None) -> "WrittenGGUF":
    """``convert_checkpoint``, returning the ``WrittenGGUF`` (path, size, sha256 of the bytes written)."""
    from ..license import require_license
    from .hf import plan_hf
    from .meta import plan_meta
    from .metadata import LLAMA2_CHAT_TEMPLATE, add_llama_metadata, is_chat_name
    from .writer import write_gguf

    src = Path(src_dir).expanduser()
    out_type = normalize_outtype(outtype)
    layout = detect_layout(src)
    progress = cancellable(progress, cancel, f"the conversion of {src.name}")
    out = Path(out_path).expanduser() if out_path is not None else src / f"{src.name}.{out_type.lower()}.gguf"
    with (plan_meta if layout == "meta" else plan_hf)(src, out_type) as plan:
        require_license(plan.license, accept=accept_license, store=store)  # type: ignore[arg-type]
        model_name = name or plan.name
        use_chat = is_chat_name(model_name) if chat is None else chat
        template = LLAMA2_CHAT_TEMPLATE if use_chat else None

        def header(writer: object) -> None:
            add_llama_metadata(writer, plan.params, plan.vocab, name=model_name, license=plan.license,
                               out_type=out_type, chat_template=template)

        return write_gguf(out, plan.tensors, header, progress=progress, stage=f"converting {src.name}")
