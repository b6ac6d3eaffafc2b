"""``PromptCache``: KV states of sequences put aside, in host memory, bounded in bytes.

Before the slot scheduler gives a slot's KV sequence to an unrelated prompt (or frees its
cells because the KV cache is full), it saves the sequence's state here, keyed by the
tokens it holds. A later prompt that starts with a cached entry's tokens restores that state
instead of evaluating them again (llama-server's ``--cache-ram`` does the same). The cache
never holds more than ``limit_bytes``: the least recently used entries go first, and an
entry larger than the whole limit is not kept. An entry whose tokens are a prefix of a newer
one is dropped (the newer one serves every prompt the older one could).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

__all__ = ["PromptCache", "CachedPrompt", "common_prefix"]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(frozen=True)
class CachedPrompt:
    tokens: tuple[int, ...]
    state: Any  # a buffer (bytes, or the ctypes array llama.cpp wrote): ``len`` is its size


class PromptCache:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = max(0, int(limit_bytes))
        self._entries: "OrderedDict[tuple[int, ...], CachedPrompt]" = OrderedDict()
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: Sequence[int], state: Any) -> bool:
        """Keep ``state`` for ``tokens``; False when it cannot be kept (larger than the limit)."""
        key = tuple(tokens)
        if not key or len(state) > self.limit_bytes:
            return False
        for old in [k for k in self._entries if len(k) <= len(key) and key[:len(k)] == k]:
            self._drop(old)  # the same tokens, or a prefix of them: superseded
        self._entries[key] = CachedPrompt(key, state)
        self.used_bytes += len(state)
        while self.used_bytes > self.limit_bytes:
            self._drop(next(iter(self._entries)))
        return True

    def best(self, prompt: Sequence[int], at_least: int = 0) -> Optional[tuple[CachedPrompt, int]]:
        """The entry sharing the longest prefix with ``prompt`` (more than ``at_least`` tokens)
        and that length, or None. Restoring an entry restores all its tokens, so an entry
        that goes beyond the shared prefix still serves: the rest is cut after restoring."""
        found: Optional[tuple[CachedPrompt, int]] = None
        for entry in self._entries.values():
            n = common_prefix(entry.tokens, prompt)
            if n > at_least and (found is None or n > found[1]):
                found = (entry, n)
        if found is None:
            self.misses += 1
        return found

    def take(self, entry: CachedPrompt) -> None:
        """Mark ``entry`` used (most recently), counting a hit."""
        self.hits += 1
        if entry.tokens in self._entries:
            self._entries.move_to_end(entry.tokens)

    def discard(self, entry: CachedPrompt) -> None:
        if entry.tokens in self._entries:
            self._drop(entry.tokens)

    def _drop(self, key: tuple[int, ...]) -> None:
        entry = self._entries.pop(key)
        self.used_bytes -= len(entry.state)

    def clear(self) -> None:
        self._entries.clear()
        self.used_bytes = 0
