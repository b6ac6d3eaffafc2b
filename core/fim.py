"""Fill-in-the-middle prompts built from token ids.

Code Llama was trained on infilling prompts laid out as
``<s>▁<PRE> {prefix}▁<SUF>{suffix}▁<MID>``: the beginning-of-sequence token, the prefix
sentinel, the prefix encoded as ordinary text (so with SentencePiece's leading space), the
suffix sentinel, the suffix encoded *without* that leading space, and the middle sentinel;
the model then writes the middle and ends it with ``▁<EOT>``. Meta's reference code builds
this list of ids directly rather than tokenizing a string with the sentinels inside, and so
do we: llama-cpp-python's own ``suffix=`` infill has used token id 0 for every sentinel since
0.3.7.

``FimTokens.from_info`` reads the sentinel ids from a GGUF header (``None`` when the model
has none); ``build_fim_prompt`` trims the prefix and suffix to token windows (the end of the
prefix and the start of the suffix are kept, the text nearest the cursor) and falls back to
a prefix-only prompt for models without FIM tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from .gguf_info import GGUFInfo
from .healing import heal_prefix

__all__ = ["FimTokens", "FimPrompt", "Tokenizes", "build_fim_prompt", "encode_without_space_prefix"]

# Encoded in front of a text and then dropped, so the text gets no SentencePiece dummy-prefix
# space (Meta's ``encode_infilling`` does the same with this character).
_SENTINEL = "\u263a"


class Tokenizes(Protocol):
    """What ``build_fim_prompt`` needs: ``LocalEngine`` (and any ``Engine``) has it."""

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]: ...


@dataclass(frozen=True)
class FimTokens:
    """A model's fill-in-the-middle token ids; ``pre``/``suf``/``mid`` are None without FIM."""

    bos: Optional[int] = None
    pre: Optional[int] = None
    suf: Optional[int] = None
    mid: Optional[int] = None
    eot: Optional[int] = None

    @property
    def supported(self) -> bool:
        return None not in (self.pre, self.suf, self.mid)

    @classmethod
    def from_info(cls, info: GGUFInfo) -> "FimTokens":
        bos = info.bos_token_id if info.add_bos_token is not False else None
        return cls(bos=bos, pre=info.fim_pre_id, suf=info.fim_suf_id, mid=info.fim_mid_id, eot=info.eot_id)


@dataclass(frozen=True)
class FimPrompt:
    """The prompt's ids, whether it is an infilling prompt, and how many tokens were cut."""

    tokens: list[int]
    infill: bool
    dropped_prefix_tokens: int = 0
    dropped_suffix_tokens: int = 0
    healed: str = ""  # the prefix's trailing whitespace, left for the model to write (``healing``)


def encode_without_space_prefix(tokenizer: Tokenizes, text: str) -> list[int]:
    """``text``'s ids without the leading ``▁`` a SentencePiece tokenizer adds to a text's start."""
    if not text:
        return []
    head = tokenizer.tokenize(_SENTINEL)
    both = tokenizer.tokenize(_SENTINEL + text)
    if both[:len(head)] == head:
        return both[len(head):]
    return tokenizer.tokenize(text)  # the sentinel merged with the text: no better answer


def build_fim_prompt(tokenizer: Tokenizes, prefix: str, suffix: str, fim: FimTokens, *,
                     max_prefix_tokens: int = 1024, max_suffix_tokens: int = 256) -> FimPrompt:
    """The ids of Code Llama's ``<s>▁<PRE> {prefix}▁<SUF>{suffix}▁<MID>``, or of
    ``<s>{prefix}`` when the model has no FIM tokens (the suffix is then unused).

    The prefix keeps its last ``max_prefix_tokens`` tokens, the suffix its first
    ``max_suffix_tokens``. Its trailing blanks are left out (token healing, see
    ``llamalab.healing``): ``healed`` is the text the answer must begin with
    (``GenerationParams.heal``) and that ``strip_healed`` takes off it."""
    if max_prefix_tokens < 0 or max_suffix_tokens < 0:
        raise ValueError("token windows cannot be negative")
    prefix, healed = heal_prefix(prefix)
    head = [fim.bos] if fim.bos is not None else []
    prefix_ids = tokenizer.tokenize(prefix) if prefix else []
    dropped_prefix = max(0, len(prefix_ids) - max_prefix_tokens)
    prefix_ids = prefix_ids[dropped_prefix:]
    if not fim.supported:
        return FimPrompt(tokens=head + prefix_ids, infill=False, dropped_prefix_tokens=dropped_prefix, healed=healed)
    suffix_ids = encode_without_space_prefix(tokenizer, suffix)
    dropped_suffix = max(0, len(suffix_ids) - max_suffix_tokens)
    suffix_ids = suffix_ids[:max_suffix_tokens]
    tokens = head + [fim.pre] + prefix_ids + [fim.suf] + suffix_ids + [fim.mid]  # type: ignore[list-item]
    return FimPrompt(tokens=tokens, infill=True, dropped_prefix_tokens=dropped_prefix,
                     dropped_suffix_tokens=dropped_suffix, healed=healed)
