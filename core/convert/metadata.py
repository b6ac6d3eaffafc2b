"""The GGUF key-value header of a converted Llama model.

``add_llama_metadata`` writes everything llama.cpp's ``llama`` architecture reads
(context length, embedding and feed-forward sizes, block and head counts, rope dimension
and base, RMS epsilon), the SentencePiece vocabulary with scores and token types, the
special token ids and add-BOS, ``general.name``/``general.license``/``general.file_type``,
Meta's Llama-2 chat format as a Jinja template for -chat/-Instruct models, and Code
Llama's fill-in-the-middle token ids. Keys come from ``gguf.Keys`` through the writer's
typed ``add_*`` methods, never as string literals.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from .params import LlamaParams
from .vocab import SpmVocab

__all__ = ["add_llama_metadata", "LLAMA2_CHAT_TEMPLATE", "is_chat_name", "file_type"]

# Meta's Llama-2 chat construction (generation.py's chat_completion): each user turn is
# BOS + "[INST] {user} [/INST]", each answer " {answer} " + EOS, and a system prompt is
# folded into the first user turn between <<SYS>> markers. Contents are stripped as Meta does.
LLAMA2_CHAT_TEMPLATE = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system = none -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for m in turns -%}"
    "{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Llama 2 chats alternate user and assistant turns after an optional system prompt') -}}"
    "{%- endif -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- if loop.first and system is not none -%}"
    "{%- set text = '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + m['content'] -%}"
    "{%- else -%}{%- set text = m['content'] -%}{%- endif -%}"
    "{{- bos_token + '[INST] ' + text.strip() + ' [/INST]' -}}"
    "{%- else -%}"
    "{{- ' ' + m['content'].strip() + ' ' + eos_token -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

_CHAT_RE = re.compile(r"(^|[-_. ])(chat|instruct)($|[-_. ])", re.IGNORECASE)


def is_chat_name(name: str) -> bool:
    """'llama-2-7b-chat', 'CodeLlama-7b-Instruct' -> True; 'llama-2-7b' -> False."""
    return bool(_CHAT_RE.search(name))


def file_type(out_type: str) -> int:
    """``general.file_type`` (llama.cpp's ``llama_ftype``) of an F32/F16/BF16 conversion."""
    import gguf

    return {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
            "BF16": gguf.LlamaFileType.MOSTLY_BF16}[out_type]


def add_llama_metadata(writer: Any, params: LlamaParams, vocab: SpmVocab, *, name: str,
                       license: Optional[str], out_type: str, chat_template: Optional[str]) -> None:
    """Add the header of a ``llama`` GGUF to ``writer`` (a ``gguf.GGUFWriter``)."""
    import gguf

    writer.add_name(name)
    if license:
        writer.add_license(license)
    writer.add_file_type(file_type(out_type))
    writer.add_vocab_size(params.vocab_size)
    writer.add_context_length(params.context_length)
    writer.add_embedding_length(params.dim)
    writer.add_feed_forward_length(params.hidden_dim)
    writer.add_block_count(params.n_layers)
    writer.add_head_count(params.n_heads)
    writer.add_head_count_kv(params.n_kv_heads)
    writer.add_rope_dimension_count(params.head_dim)
    writer.add_rope_freq_base(params.rope_theta)
    writer.add_layer_norm_rms_eps(params.norm_eps)

    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(list(vocab.tokens))
    writer.add_token_scores(list(vocab.scores))
    writer.add_token_types(list(vocab.types))
    for token_id, add in ((vocab.bos_id, writer.add_bos_token_id), (vocab.eos_id, writer.add_eos_token_id),
                          (vocab.unk_id, writer.add_unk_token_id), (vocab.pad_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(token_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    fim_keys = {"pre": gguf.Keys.Tokenizer.FIM_PRE_ID, "suf": gguf.Keys.Tokenizer.FIM_SUF_ID,
                "mid": gguf.Keys.Tokenizer.FIM_MID_ID, "eot": gguf.Keys.Tokenizer.EOT_ID}
    for role, token_id in vocab.fim.items():
        writer.add_uint32(fim_keys[role], token_id)
    if chat_template:
        writer.add_chat_template(chat_template)
