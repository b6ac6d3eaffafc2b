"""``LocalEngine``: one llama.cpp model in this process, shared by many requests at once.

The model and its context belong to a ``SlotScheduler`` (``slots.py``) whose one worker
thread serves up to ``n_parallel`` requests together: each in its own KV sequence ("slot"),
decoded in one batch per step, interactive requests first, with a host-memory prompt cache
for sequences put aside. Callers on any thread get a ``TokenStream`` fed through a
per-request queue. Cancelling (``stream.cancel()``, abandoning the stream, or
``engine.cancel()``) takes effect before the next step, so within one token, and leaves the
other requests running. Each ``GenerationResult`` says how many prompt tokens were reused
from a slot or restored from the prompt cache (``reused_prompt_tokens``,
``restored_prompt_tokens``) rather than evaluated.

Prompts that do not fit the context window (``n_ctx`` tokens per request) are trimmed
(chat: oldest turns, keeping the system prompt; completion: oldest tokens) or refused, as
``GenerationParams.overflow`` says, and the ``GenerationResult`` reports what was dropped.

Sizing: the KV cache has ``kv_size`` cells (default ``n_ctx``: the memory of one full
window) shared by every slot; when it fills up, idle slots move to the prompt cache
(``prompt_cache_mb`` of host memory) before any request is refused. ``n_parallel=1`` runs
one sequence at a time, in priority then arrival order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import Generator, Optional, Sequence, Union

from ..errors import ConfigError, ContextOverflowError, EngineBusyError, EngineError
from ..fim import FimTokens
from ..gguf_info import GGUFInfo, read_gguf_info
from ..templates import ChatFormat, Message, check_markers, choose_chat_format, fit_messages
from .base import Engine, GenerationParams, GenerationResult, ModelDescription, TokenStream
from .native import NativeModel
from .slots import DONE, TEXT, Request, SchedulerStats, SlotScheduler

__all__ = ["LocalEngine", "DEFAULT_N_PARALLEL", "DEFAULT_PROMPT_CACHE_MB"]

log = logging.getLogger(__name__)

DEFAULT_N_PARALLEL = 4
DEFAULT_PROMPT_CACHE_MB = 1024
_MIB = 1024 * 1024


class _NativeTokenizer:
    """The ``templates.Tokenizer`` view of a ``NativeModel``."""

    def __init__(self, native: NativeModel) -> None:
        self._native = native
        self.bos_id: Optional[int] = native.bos_id
        self.eos_id: Optional[int] = native.eos_id

    def encode(self, text: str, *, special: bool) -> list[int]:
        return self._native.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def token_text(self, token_id: int) -> str:
        return self._native.token_text(token_id)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def _host_memory_bytes() -> Optional[int]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def default_threads() -> tuple[int, int]:
    """(decode threads, prompt threads): about the physical cores (half the logical CPUs) for
    both, as llama.cpp's own tools default. Decoding is memory-bound and gains nothing from
    hyper-threads; and with every CPU in llama.cpp's thread team, any other busy process (a
    kernel, the browser) stalls the team's barriers: on two cores that turned a 0.2 s prompt
    evaluation into seconds."""
    threads = max(1, _cpu_count() // 2)
    return threads, threads


def _check_sizes(n_parallel: object, kv_size: int, n_ctx: int, prompt_cache_mb: object) -> None:
    if isinstance(n_parallel, bool) or not isinstance(n_parallel, int) or n_parallel < 1:
        raise ConfigError(f"n_parallel must be a whole number of slots, 1 or more, got {n_parallel!r}.")
    if kv_size < n_ctx:
        raise ConfigError(f"kv_size ({kv_size}) must be at least n_ctx ({n_ctx}): one request may fill "
                          "a whole window; raise kv_size or lower n_ctx.")
    if isinstance(prompt_cache_mb, bool) or not isinstance(prompt_cache_mb, (int, float)) or prompt_cache_mb < 0:
        raise ConfigError(f"prompt_cache_mb must be 0 (off) or more, got {prompt_cache_mb!r}.")
    host = _host_memory_bytes()
    if host is not None and prompt_cache_mb * _MIB > host // 2:
        raise ConfigError(f"prompt_cache_mb={prompt_cache_mb:g} is more than half of this machine's memory "
                          f"({host // _MIB} MiB); choose a smaller prompt cache.")


class LocalEngine(Engine):
    """A GGUF model run by llama.cpp (llama-cpp-python), CPU or CUDA offload."""

    def __init__(self, model_path: Union[str, os.PathLike[str]], *, n_ctx: int = 4096,
                 n_gpu_layers: Union[int, str] = "auto", n_threads: Optional[int] = None,
                 n_threads_batch: Optional[int] = None, n_batch: int = 512, chat_format: str = "auto",
                 seed: Optional[int] = None, name: Optional[str] = None, max_queued: int = 64,
                 n_parallel: int = DEFAULT_N_PARALLEL, kv_size: Optional[int] = None,
                 prompt_cache_mb: float = DEFAULT_PROMPT_CACHE_MB) -> None:
        from .. import hardware

        self.info: GGUFInfo = read_gguf_info(model_path)
        if n_ctx <= 0:
            n_ctx = self.info.context_length or 4096
        self.n_ctx = min(n_ctx, self.info.context_length) if self.info.context_length else n_ctx
        self.kv_size = int(kv_size) if kv_size else self.n_ctx
        _check_sizes(n_parallel, self.kv_size, self.n_ctx, prompt_cache_mb)
        if n_batch < 1:
            raise ConfigError(f"n_batch must be 1 or more, got {n_batch}.")
        self.n_parallel = n_parallel
        self.plan = hardware.plan_offload(self.info, self.n_ctx, n_gpu_layers, kv_size=self.kv_size)
        for notice in self.plan.notices:
            log.info(notice)
        self.name = name or self.info.name
        self._seed = seed
        self._max_queued = max_queued
        decode_threads, prompt_threads = default_threads()
        self._native = NativeModel(self.info.path, n_gpu_layers=self.plan.n_gpu_layers, kv_size=self.kv_size,
                                   n_parallel=n_parallel, n_batch=min(n_batch, self.kv_size),
                                   n_threads=n_threads or decode_threads,
                                   # as llama.cpp's -tb follows -t: a step of several sequences is a batch,
                                   # so slots decode with n_threads_batch threads
                                   n_threads_batch=n_threads_batch or n_threads or prompt_threads)
        self.tokenizer = _NativeTokenizer(self._native)
        try:
            self.chat_format: Optional[ChatFormat] = choose_chat_format(
                chat_format, model_name=self.name, chat_template=self.info.chat_template,
                tokenizer=self.tokenizer, add_bos=bool(self.info.add_bos_token))
        except BaseException:
            self._native.close()
            raise
        self._active: set[Request] = set()
        self._active_lock = threading.Lock()
        self._closed = False
        self._scheduler = SlotScheduler(
            self._native, n_parallel=n_parallel, n_ctx=self.n_ctx,
            prompt_cache_bytes=int(prompt_cache_mb * _MIB), share_steps=self.plan.n_gpu_layers > 0, name=self.name)

    def clear_cache(self) -> None:
        """Forget the KV of idle slots and the prompt cache: the next prompts are evaluated in full
        (running requests are not touched)."""
        self._check_open()
        self._scheduler.clear()

    def stats(self) -> SchedulerStats:
        """Slots busy, requests queued, KV cells used, prompt-cache use: a snapshot."""
        return self._scheduler.stats()

    # -- submitting -------------------------------------------------------------------
    def _reserve(self, params: GenerationParams) -> int:
        """Prompt tokens allowed: the window less the answer's room (at most half the window)."""
        return self.n_ctx - min(params.max_tokens, self.n_ctx // 2)

    def _check_open(self) -> None:
        if self._closed:  # the llama.cpp model is freed: touching it would crash the process
            raise EngineError("this engine is closed; create a new one to use the model again.")

    def _submit(self, prompt: list[int], params: GenerationParams, dropped_messages: int = 0,
                dropped_tokens: int = 0) -> TokenStream:
        self._check_open()
        if params.seed is None and self._seed is not None and params.temperature > 0:
            params = dataclasses.replace(params, seed=self._seed)
        request = Request(prompt=prompt, params=params, dropped_messages=dropped_messages,
                          dropped_tokens=dropped_tokens)
        with self._active_lock:
            if len(self._active) >= self._max_queued:
                raise EngineBusyError(f"{len(self._active)} requests are already queued on this model; "
                                      "wait for some to finish or cancel them.")
            self._active.add(request)
        self._scheduler.submit(request)
        return TokenStream(self._pieces(request), request.cancelled.set)

    def _pieces(self, request: Request) -> Generator[str, None, GenerationResult]:
        try:
            while True:
                kind, payload = request.out.get()
                if kind == TEXT:
                    yield payload
                elif kind == DONE:
                    return payload
                else:
                    raise payload
        finally:
            request.cancelled.set()  # a stream dropped half-way frees its slot for the next request
            with self._active_lock:
                self._active.discard(request)

    def _fit_prompt(self, tokens: list[int], params: GenerationParams, keep_head: int) -> tuple[list[int], int]:
        """Trim the oldest tokens after the first ``keep_head`` so the prompt fits, or refuse,
        as ``params.overflow`` says; return the tokens and how many were dropped."""
        budget = self._reserve(params)
        if len(tokens) <= budget:
            return tokens, 0
        if params.overflow == "error":
            raise ContextOverflowError(
                f"the prompt is {len(tokens)} tokens but only {budget} fit the context window "
                f"({self.n_ctx} less room for {params.max_tokens} new tokens); shorten it, lower "
                "max_tokens or load the model with a larger n_ctx."
            )
        dropped = len(tokens) - budget
        return tokens[:keep_head] + tokens[keep_head + dropped:], dropped

    def complete(self, prompt: str, params: Optional[GenerationParams] = None) -> TokenStream:
        params = params or GenerationParams()
        # plain text: a prompt that contains "</s>" or "<|im_end|>" (pasted from a notebook, say)
        # cannot end a turn or forge one; only the beginning-of-sequence token is added as a token
        tokens = self.tokenize(prompt, add_bos=bool(self.info.add_bos_token), special=False)
        starts_with_bos = bool(self.info.add_bos_token) and tokens[:1] == [self.tokenizer.bos_id]
        tokens, dropped = self._fit_prompt(tokens, params, keep_head=1 if starts_with_bos else 0)
        return self._submit(tokens, params, dropped_tokens=dropped)

    def complete_tokens(self, tokens: Sequence[int], params: Optional[GenerationParams] = None) -> TokenStream:
        """Continue a prompt given as token ids (a fill-in-the-middle prompt, say), sent as is:
        no beginning-of-sequence token is added. Too long a prompt loses its oldest tokens after
        the first one, or raises, as ``params.overflow`` says."""
        params = params or GenerationParams()
        self._check_open()
        ids = self._valid_ids(tokens)
        if not ids:
            raise ConfigError("the prompt has no tokens; send at least one.")
        ids, dropped = self._fit_prompt(ids, params, keep_head=1)
        return self._submit(ids, params, dropped_tokens=dropped)

    def chat(self, messages: Sequence[Message | dict], params: Optional[GenerationParams] = None) -> TokenStream:
        params = params or GenerationParams()
        self._check_open()
        fmt = self._require_chat_format()
        check_markers(fmt, messages)  # Llama-2's [INST]/<<SYS>> in a message would forge a turn
        budget = self._reserve(params)
        if params.overflow == "error":
            tokens = fmt.format(messages)
            if len(tokens) > budget:
                raise ContextOverflowError(
                    f"the chat is {len(tokens)} tokens but only {budget} fit the context window; "
                    "start a new chat, lower max_tokens or load the model with a larger n_ctx."
                )
            return self._submit(tokens, params)
        fitted = fit_messages(fmt, messages, budget)
        return self._submit(fitted.tokens, params, dropped_messages=fitted.dropped_messages)

    def _require_chat_format(self) -> ChatFormat:
        if self.chat_format is None:
            raise EngineError(
                f"{self.name} is a base model with no chat template; use `generate`/complete(), "
                "or pass chat_format='llama-2' if it was trained on Llama-2's chat format."
            )
        return self.chat_format

    def format_chat(self, messages: Sequence[Message | dict]) -> list[int]:
        """The prompt tokens ``chat`` would send for ``messages`` (before any trimming)."""
        self._check_open()
        return self._require_chat_format().format(messages)

    # -- the rest of the interface ----------------------------------------------------
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        # Tokenizing only reads the vocabulary, so it need not wait behind a generation.
        self._check_open()
        tokens = self.tokenizer.encode(text, special=special)
        if add_bos and self.tokenizer.bos_id is not None:
            tokens = [self.tokenizer.bos_id, *tokens]
        return tokens

    def detokenize(self, tokens: Sequence[int]) -> str:
        self._check_open()
        return self._native.detokenize(self._valid_ids(tokens))

    def _valid_ids(self, tokens: Sequence[int]) -> list[int]:
        """``tokens`` as ints, each a token of this model's vocabulary (llama.cpp aborts the
        process on an id outside it), else ``ConfigError``."""
        ids = [int(t) for t in tokens]
        n_vocab = self._native.n_vocab
        bad = next((t for t in ids if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise ConfigError(f"token id {bad} is not in {self.name}'s vocabulary (0 to {n_vocab - 1}).")
        return ids

    @property
    def accepts_token_prompts(self) -> bool:
        return True

    def fim_tokens(self) -> FimTokens:
        return FimTokens.from_info(self.info)

    @property
    def context_size(self) -> int:
        return self.n_ctx

    def describe(self) -> ModelDescription:
        return ModelDescription(
            name=self.name, backend="local", location=str(self.info.path),
            architecture=self.info.architecture, quantization=self.info.quantization,
            context_length=self.n_ctx, train_context_length=self.info.context_length,
            n_gpu_layers=self.plan.n_gpu_layers, total_layers=self.plan.total_layers,
            chat_format=self.chat_format.name if self.chat_format else None,
            notices=tuple(self.plan.notices), n_parallel=self.n_parallel, kv_size=self.kv_size,
        )

    def cancel(self) -> None:
        with self._active_lock:
            for job in self._active:
                job.cancelled.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.cancel()
        # Cancelling is seen between steps; a step (one prompt chunk at most) cannot be cut short,
        # so wait for the worker. Freeing the model under a running worker would crash the process:
        # if it is still busy after the wait, leave the model to the process's exit.
        if not self._scheduler.close(timeout=120):
            log.warning("the engine's worker is still busy; the model will be freed when the process exits")
            return
        self._native.close()

    @property
    def model_path(self) -> Path:
        return self.info.path
