"""``SequenceSampler``: one llama.cpp sampler chain per generating sequence.

``GenerationParams`` become a chain llama.cpp runs on the sequence's logits in place (no copy
of the vocabulary's logits into Python): the repeat penalty over the last 64 generated tokens
(as llama-cpp-python applies it: the prompt is not penalized, so a completion may reuse the
names it was shown), then at ``temperature == 0`` the argmax (deterministic), otherwise
top-k, top-p, min-p, temperature and a seeded draw. Each sequence owns its chain, so
concurrent requests never share penalty history or random state.
"""

from __future__ import annotations

import random
from typing import Any

from .base import GenerationParams

__all__ = ["SequenceSampler", "PENALTY_LAST_N"]

PENALTY_LAST_N = 64


class SequenceSampler:
    def __init__(self, llama_cpp: Any, n_vocab: int, params: GenerationParams) -> None:
        lib = self._lib = llama_cpp
        chain_params = lib.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.chain = lib.llama_sampler_chain_init(chain_params)
        self.greedy = params.temperature == 0
        add = lambda sampler: lib.llama_sampler_chain_add(self.chain, sampler)  # noqa: E731
        if params.repeat_penalty != 1.0:
            add(lib.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, params.repeat_penalty, 0.0, 0.0))
        if self.greedy:
            add(lib.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(lib.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(lib.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0.0:
            add(lib.llama_sampler_init_min_p(params.min_p, 1))
        add(lib.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        add(lib.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def free(self) -> None:
        if self.chain is not None:
            self._lib.llama_sampler_free(self.chain)
            self.chain = None
