"""``LocalEngine``: one llama.cpp model in this process, shared safely between threads.

A ``llama_cpp.Llama`` is not thread-safe, so one worker thread owns it and runs the
queued generations in arrival order (FIFO); callers on any thread get a ``TokenStream``
fed through a per-request queue. Cancelling (``stream.cancel()``, abandoning the stream,
or ``engine.cancel()``) is checked after every sampled token through llama-cpp-python's
stopping-criteria hook, so it takes effect within one token and leaves the model ready
for the next request. llama-cpp-python keeps the longest common prompt prefix in the KV
cache, so a chat's next turn only evaluates its new tokens; each ``GenerationResult`` says
how many prompt tokens were reused that way (``reused_prompt_tokens``), counted at
``Llama.eval`` itself (``_PromptCounter``) rather than guessed from the token lists.

Prompts that do not fit the context window are trimmed (chat: oldest turns, keeping the
system prompt; completion: oldest tokens) or refused, as ``GenerationParams.overflow``
says, and the ``GenerationResult`` reports what was dropped.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generator, Optional, Sequence, Union

from ..errors import ContextOverflowError, EngineBusyError, EngineError, ModelLoadError
from ..gguf_info import GGUFInfo, read_gguf_info
from ..templates import ChatFormat, Message, choose_chat_format, fit_messages
from .base import Engine, GenerationParams, GenerationResult, ModelDescription, TokenStream

__all__ = ["LocalEngine"]

log = logging.getLogger(__name__)

_TEXT, _DONE, _ERROR = "text", "done", "error"


@dataclass(eq=False)  # identity semantics: jobs live in a set
class _Job:
    prompt: list[int]
    params: GenerationParams
    dropped_messages: int = 0
    dropped_tokens: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    out: "queue.SimpleQueue[tuple[str, Any]]" = field(default_factory=queue.SimpleQueue)


class _LlamaTokenizer:
    """The ``templates.Tokenizer`` view of a ``llama_cpp.Llama``."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama
        self.bos_id: Optional[int] = self._valid(llama.token_bos())
        self.eos_id: Optional[int] = self._valid(llama.token_eos())

    @staticmethod
    def _valid(token: int) -> Optional[int]:
        return token if token is not None and token >= 0 else None

    def encode(self, text: str, *, special: bool) -> list[int]:
        return self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def token_text(self, token_id: int) -> str:
        return self._llama._model.token_get_text(token_id)


class _PromptCounter:
    """Wraps a ``Llama``'s ``eval`` to record, per generation, where its first call started:
    ``Llama.generate`` first truncates the KV cache to the prefix it shares with the new prompt
    (``n_tokens``) and then evaluates the rest of the prompt in that first call."""

    def __init__(self, llama: Any) -> None:
        self._llama = llama
        self._eval = llama.eval
        self.reused: Optional[int] = None
        llama.eval = self  # an instance attribute: ``generate``'s ``self.eval(...)`` finds it first

    def start(self) -> None:
        self.reused = None

    def __call__(self, tokens: Sequence[int]) -> None:
        if self.reused is None:
            self.reused = int(self._llama.n_tokens)
        self._eval(tokens)


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def default_threads() -> tuple[int, int]:
    """(decode threads, prompt threads): about the physical cores (half the logical CPUs) for
    both, as llama.cpp's own tools default. Decoding is memory-bound and gains nothing from
    hyper-threads; and with every CPU in llama.cpp's thread team, any other busy process (a
    kernel, the browser) stalls the team's barriers: on two cores that turned a 0.2 s prompt
    evaluation into seconds."""
    threads = max(1, _cpu_count() // 2)
    return threads, threads


class LocalEngine(Engine):
    """A GGUF model run by llama.cpp (llama-cpp-python), CPU or CUDA offload."""

    def __init__(self, model_path: Union[str, os.PathLike[str]], *, n_ctx: int = 4096,
                 n_gpu_layers: Union[int, str] = "auto", n_threads: Optional[int] = None,
                 n_threads_batch: Optional[int] = None, n_batch: int = 512, chat_format: str = "auto", seed: int = 0,
                 name: Optional[str] = None, max_queued: int = 64) -> None:
        from .. import hardware

        self.info: GGUFInfo = read_gguf_info(model_path)
        if n_ctx <= 0:
            n_ctx = self.info.context_length or 4096
        self.n_ctx = min(n_ctx, self.info.context_length) if self.info.context_length else n_ctx
        self.plan = hardware.plan_offload(self.info, self.n_ctx, n_gpu_layers)
        for notice in self.plan.notices:
            log.info(notice)
        self.name = name or self.info.name
        self._max_queued = max_queued
        decode_threads, prompt_threads = default_threads()
        self._llama = self._load(n_threads or decode_threads, n_threads_batch or prompt_threads, n_batch, seed)
        self.tokenizer = _LlamaTokenizer(self._llama)
        self._prompt_counter = _PromptCounter(self._llama)
        self.chat_format: Optional[ChatFormat] = choose_chat_format(
            chat_format, model_name=self.name, chat_template=self.info.chat_template,
            tokenizer=self.tokenizer, add_bos=bool(self.info.add_bos_token))
        self._jobs: "queue.Queue[Optional[_Job]]" = queue.Queue()
        self._active: set[_Job] = set()
        self._active_lock = threading.Lock()
        self._closed = False
        self._worker = threading.Thread(target=self._serve, name=f"llamalab-engine-{self.name}", daemon=True)
        self._worker.start()

    def _load(self, threads: int, threads_batch: int, n_batch: int, seed: int) -> Any:
        import llama_cpp

        try:
            return llama_cpp.Llama(
                model_path=str(self.info.path), n_ctx=self.n_ctx, n_gpu_layers=self.plan.n_gpu_layers,
                n_threads=threads, n_threads_batch=threads_batch, n_batch=n_batch, seed=seed, verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelLoadError(
                f"llama.cpp could not load {self.info.path.name} ({self.info.architecture}, "
                f"{self.info.quantization}): {exc}; check the file, or update llama-cpp-python."
            ) from None

    # -- the worker thread ------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.out.put((_DONE, self._generate(job)))
            except Exception as exc:  # report to the caller; the worker lives on
                log.exception("generation failed")
                job.out.put((_ERROR, EngineError(f"generation failed: {exc}")))
            finally:
                with self._active_lock:
                    self._active.discard(job)

    def _generate(self, job: _Job) -> GenerationResult:
        start = time.perf_counter()
        first: Optional[float] = None
        parts: list[str] = []
        sampled = 0
        finish = "stop"
        reused: Optional[int] = None

        def stop_when_cancelled(_ids: Any, _logits: Any) -> bool:
            return job.cancelled.is_set()  # checked after every sampled token

        if not job.cancelled.is_set():
            import llama_cpp

            p = job.params
            self._prompt_counter.start()
            chunks = self._llama.create_completion(
                job.prompt, max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                top_k=p.top_k, min_p=p.min_p, repeat_penalty=p.repeat_penalty,
                stop=list(p.stop) or None, seed=p.seed, stream=True,
                stopping_criteria=llama_cpp.StoppingCriteriaList([stop_when_cancelled]),
            )
            try:
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    if choice["text"]:
                        if first is None:
                            first = time.perf_counter() - start
                        parts.append(choice["text"])
                        job.out.put((_TEXT, choice["text"]))
                    finish = choice.get("finish_reason") or finish
                    if job.cancelled.is_set():
                        break
            finally:
                chunks.close()
            # Every sampled token is evaluated before the next is sampled, except the last one
            # (a length stop keeps it; an end-of-generation token is not part of the answer).
            sampled = max(0, self._llama.n_tokens - len(job.prompt)) + (finish == "length")
            if self._prompt_counter.reused is not None:
                reused = min(self._prompt_counter.reused, len(job.prompt))
        if job.cancelled.is_set():
            finish = "cancelled"
        return GenerationResult(
            text="".join(parts), finish_reason=finish,  # type: ignore[arg-type]
            prompt_tokens=len(job.prompt), completion_tokens=sampled,
            dropped_messages=job.dropped_messages, dropped_tokens=job.dropped_tokens,
            time_to_first_token_s=first, duration_s=time.perf_counter() - start,
            reused_prompt_tokens=reused,
        )

    # -- submitting -------------------------------------------------------------------
    def _reserve(self, params: GenerationParams) -> int:
        """Prompt tokens allowed: the window less the answer's room (at most half the window)."""
        return self.n_ctx - min(params.max_tokens, self.n_ctx // 2)

    def _check_open(self) -> None:
        if self._closed:  # the llama.cpp model is freed: touching it would crash the process
            raise EngineError("this engine is closed; create a new one to use the model again.")

    def _submit(self, job: _Job) -> TokenStream:
        self._check_open()
        with self._active_lock:
            if len(self._active) >= self._max_queued:
                raise EngineBusyError(f"{len(self._active)} requests are already queued on this model; "
                                      "wait for some to finish or cancel them.")
            self._active.add(job)
        self._jobs.put(job)
        return TokenStream(self._pieces(job), job.cancelled.set)

    @staticmethod
    def _pieces(job: _Job) -> Generator[str, None, GenerationResult]:
        try:
            while True:
                kind, payload = job.out.get()
                if kind == _TEXT:
                    yield payload
                elif kind == _DONE:
                    return payload
                else:
                    raise payload
        finally:
            job.cancelled.set()  # a stream dropped half-way frees the model for the next request

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
        tokens = self.tokenize(prompt, add_bos=bool(self.info.add_bos_token), special=True)
        starts_with_bos = bool(self.info.add_bos_token) and tokens[:1] == [self.tokenizer.bos_id]
        tokens, dropped = self._fit_prompt(tokens, params, keep_head=1 if starts_with_bos else 0)
        return self._submit(_Job(prompt=tokens, params=params, dropped_tokens=dropped))

    def complete_tokens(self, tokens: Sequence[int], params: Optional[GenerationParams] = None) -> TokenStream:
        """Continue a prompt given as token ids (a fill-in-the-middle prompt, say), sent as is:
        no beginning-of-sequence token is added. Too long a prompt loses its oldest tokens after
        the first one, or raises, as ``params.overflow`` says."""
        params = params or GenerationParams()
        self._check_open()
        ids = [int(t) for t in tokens]
        if not ids:
            raise EngineError("the prompt has no tokens.")
        ids, dropped = self._fit_prompt(ids, params, keep_head=1)
        return self._submit(_Job(prompt=ids, params=params, dropped_tokens=dropped))

    def chat(self, messages: Sequence[Message | dict], params: Optional[GenerationParams] = None) -> TokenStream:
        params = params or GenerationParams()
        self._check_open()
        fmt = self._require_chat_format()
        budget = self._reserve(params)
        if params.overflow == "error":
            tokens = fmt.format(messages)
            if len(tokens) > budget:
                raise ContextOverflowError(
                    f"the chat is {len(tokens)} tokens but only {budget} fit the context window; "
                    "start a new chat, lower max_tokens or load the model with a larger n_ctx."
                )
            return self._submit(_Job(prompt=tokens, params=params))
        fitted = fit_messages(fmt, messages, budget)
        return self._submit(_Job(prompt=fitted.tokens, params=params, dropped_messages=fitted.dropped_messages))

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
        return self._llama.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def describe(self) -> ModelDescription:
        return ModelDescription(
            name=self.name, backend="local", location=str(self.info.path),
            architecture=self.info.architecture, quantization=self.info.quantization,
            context_length=self.n_ctx, train_context_length=self.info.context_length,
            n_gpu_layers=self.plan.n_gpu_layers, total_layers=self.plan.total_layers,
            chat_format=self.chat_format.name if self.chat_format else None,
            notices=tuple(self.plan.notices),
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
        self._jobs.put(None)
        # Cancellation is checked between tokens; a long prompt evaluation cannot be cut short,
        # so wait for the worker. Freeing the model under a running worker would crash the process:
        # if it is still busy after the wait, leave the model to the worker (it exits after the job).
        self._worker.join(timeout=120)
        if self._worker.is_alive():
            log.warning("the engine's worker is still busy; the model will be freed when the process exits")
            return
        self._llama.close()

    @property
    def model_path(self) -> Path:
        return self.info.path
