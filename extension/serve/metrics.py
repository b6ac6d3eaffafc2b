"""``/metrics`` of ``llamalab serve``, in Prometheus' text format (``prometheus_client``).

Counters (per API key name, ``user``): requests by route and HTTP status, prompt and generated
tokens, prompt tokens served from a cache; a histogram of the time to the first token; and, read
from the scheduler when scraped: slots busy and in all, requests queued, KV cells used and in
all, prompt-cache entries, bytes and hits, and generated tokens per second over the last 10 s.
Each server has its own registry, so two in one process (tests) never mix their numbers.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Iterator, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from llamalab import GenerationResult, SchedulerStats

__all__ = ["ServeMetrics"]

_RATE_WINDOW_S = 10.0


class ServeMetrics:
    def __init__(self, stats: Callable[[], Optional[SchedulerStats]], active: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("llamalab_requests", "HTTP requests answered", ["user", "route", "status"],
                                registry=self.registry)
        self.prompt_tokens = Counter("llamalab_prompt_tokens", "Prompt tokens of finished generations", ["user"],
                                     registry=self.registry)
        self.cached_tokens = Counter("llamalab_prompt_tokens_cached",
                                     "Prompt tokens served from a slot or the prompt cache", ["user"],
                                     registry=self.registry)
        self.generated_tokens = Counter("llamalab_generated_tokens", "Tokens generated", ["user"],
                                        registry=self.registry)
        self.first_token = Histogram("llamalab_first_token_seconds", "Time from request to first token",
                                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=self.registry)
        self._recent: "collections.deque[tuple[float, int]]" = collections.deque()
        self._lock = threading.Lock()
        self.registry.register(_SchedulerCollector(stats, active, self.tokens_per_second))

    def generation(self, user: str, result: GenerationResult, first_token_s: Optional[float]) -> None:
        self.prompt_tokens.labels(user).inc(result.prompt_tokens)
        self.cached_tokens.labels(user).inc(result.reused_prompt_tokens or 0)
        self.generated_tokens.labels(user).inc(result.completion_tokens)
        if first_token_s is not None:
            self.first_token.observe(first_token_s)
        with self._lock:
            self._recent.append((time.monotonic(), result.completion_tokens))

    def tokens_per_second(self) -> float:
        """Generated tokens per second over the last 10 s (finished generations)."""
        now = time.monotonic()
        with self._lock:
            while self._recent and self._recent[0][0] < now - _RATE_WINDOW_S:
                self._recent.popleft()
            return sum(n for _, n in self._recent) / _RATE_WINDOW_S

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _SchedulerCollector:
    def __init__(self, stats: Callable[[], Optional[SchedulerStats]], active: Callable[[], int],
                 rate: Callable[[], float]) -> None:
        self._stats, self._active, self._rate = stats, active, rate

    def describe(self) -> list[Any]:
        return []  # collected on each scrape

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("llamalab_requests_active", "Generations running or waiting", value=self._active())
        yield GaugeMetricFamily("llamalab_tokens_per_second", "Generated tokens per second, last 10 s",
                                value=self._rate())
        stats = self._stats()
        if stats is None:  # the model is not loaded (yet)
            return
        for name, text, value in (
                ("llamalab_slots", "Parallel sequences of the model", stats.n_parallel),
                ("llamalab_slots_busy", "Sequences generating", stats.slots_busy),
                ("llamalab_queue_length", "Requests waiting for a slot", stats.queued),
                ("llamalab_kv_cells", "KV cache cells in all", stats.kv_size),
                ("llamalab_kv_cells_used", "KV cache cells holding tokens", stats.kv_used),
                ("llamalab_prompt_cache_entries", "Prompts saved in host memory", stats.prompt_cache_entries),
                ("llamalab_prompt_cache_bytes", "Bytes of saved prompts", stats.prompt_cache_bytes),
                ("llamalab_prompt_cache_hits", "Prompts restored from the prompt cache", stats.prompt_cache_hits)):
            yield GaugeMetricFamily(name, text, value=value)
