"""The Engine interface every face of llamalab talks to, and the types it speaks.

An ``Engine`` streams a completion or a chat as a ``TokenStream`` (an iterator of text
pieces whose ``result`` holds the finish reason, token counts and any trimming once it
ends), tokenizes, describes its model and cancels. ``LocalEngine`` runs llama.cpp in this
process; ``RemoteEngine`` speaks to an OpenAI-compatible server.

Engines whose prompts can be token ids (``accepts_token_prompts``) also offer
``complete_tokens``, ``detokenize`` and the model's fill-in-the-middle ids (``fim_tokens``):
code suggestions build their prompts from ids there, and from text elsewhere.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Generator, Iterator, Literal, Optional, Sequence

from ..errors import ConfigError
from ..fim import FimTokens
from ..templates import Message

if TYPE_CHECKING:
    from .slots import SchedulerStats

__all__ = [
    "Engine",
    "GenerationParams",
    "GenerationResult",
    "ModelDescription",
    "Priority",
    "TokenStream",
    "FinishReason",
]

FinishReason = Literal["stop", "length", "cancelled"]
Priority = Literal["interactive", "normal", "background"]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling settings; ``temperature=0`` is greedy and deterministic.

    ``priority`` tells a shared model what to serve first: ``interactive`` (inline completions,
    the language server: a person waits for each keystroke), ``normal`` (chats, magics) or
    ``background`` (benchmarks, smoke tests). Engines that cannot schedule ignore it.
    ``heal`` is the text the answer must start with (token healing). ``user`` is who asked (an
    API key's name on a team server): a shared model admits users in turn, so one user's many
    streams never keep another user's first one waiting for a slot."""

    max_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    stop: tuple[str, ...] = ()
    seed: Optional[int] = None
    overflow: Literal["trim", "error"] = "trim"
    priority: Priority = "normal"
    # Text the answer must begin with: the end of the prompt that was left out so the model writes
    # it in its own tokens (token healing, ``llamalab.healing``); engines that cannot constrain
    # their first tokens ignore it.
    heal: str = ""
    user: str = ""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.temperature < 0:
            raise ConfigError(f"temperature must be 0 or more, got {self.temperature}.")
        if self.overflow not in ("trim", "error"):
            raise ConfigError(f"overflow must be 'trim' or 'error', got {self.overflow!r}.")
        if self.priority not in ("interactive", "normal", "background"):
            raise ConfigError(f"priority must be 'interactive', 'normal' or 'background', got {self.priority!r}.")


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    dropped_messages: int = 0  # chat turns left out so the prompt fits the context window
    dropped_tokens: int = 0  # prompt tokens cut from the front of a completion prompt
    time_to_first_token_s: Optional[float] = None
    duration_s: float = 0.0
    # Prompt tokens whose keys and values were already in the KV cache (a slot's sequence sharing
    # the prompt's start, or a prompt-cache entry restored into it), so were not evaluated again;
    # None when the backend does not say.
    reused_prompt_tokens: Optional[int] = None
    # Of those, how many came from the host-memory prompt cache (None when the backend does not say).
    restored_prompt_tokens: Optional[int] = None

    @property
    def trimmed(self) -> bool:
        return bool(self.dropped_messages or self.dropped_tokens)

    @property
    def evaluated_prompt_tokens(self) -> Optional[int]:
        """Prompt tokens the model actually evaluated for this generation (None if unknown)."""
        if self.reused_prompt_tokens is None:
            return None
        return max(0, self.prompt_tokens - self.reused_prompt_tokens)


@dataclass(frozen=True)
class ModelDescription:
    name: str
    backend: Literal["local", "remote"]
    location: str  # file path or server URL
    architecture: Optional[str] = None
    quantization: Optional[str] = None
    context_length: Optional[int] = None  # the n_ctx in use
    train_context_length: Optional[int] = None
    n_gpu_layers: Optional[int] = None
    total_layers: Optional[int] = None
    chat_format: Optional[str] = None
    notices: tuple[str, ...] = field(default=())
    n_parallel: Optional[int] = None  # requests served at once (local slots)
    kv_size: Optional[int] = None  # KV cache cells shared by those requests


class TokenStream(Iterator[str]):
    """Text pieces as they are generated. ``result`` is set once the stream ends;
    ``cancel()`` stops it early from any thread (the stream then ends with
    ``finish_reason == "cancelled"``). Use it as a context manager to cancel on exit."""

    def __init__(self, pieces: Generator[str, None, GenerationResult],
                 on_cancel: Callable[[], None]) -> None:
        self._pieces = pieces
        self._on_cancel = on_cancel
        self._parts: list[str] = []
        self._lock = threading.Lock()
        self.result: Optional[GenerationResult] = None

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> str:
        if self.result is not None:
            raise StopIteration
        try:
            piece = next(self._pieces)
        except StopIteration as stop:
            self.result = stop.value
            raise
        self._parts.append(piece)
        return piece

    @property
    def text(self) -> str:
        """Everything streamed so far."""
        return "".join(self._parts)

    def cancel(self) -> None:
        self._on_cancel()

    def collect(self) -> GenerationResult:
        """Consume the rest of the stream and return its result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result

    def close(self) -> None:
        if self.result is None:
            self.cancel()
            self._pieces.close()

    def __enter__(self) -> "TokenStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Engine(abc.ABC):
    """One model behind one small interface."""

    @abc.abstractmethod
    def complete(self, prompt: str, params: Optional[GenerationParams] = None) -> TokenStream:
        """Stream a plain continuation of ``prompt``."""

    @abc.abstractmethod
    def chat(self, messages: Sequence[Message | dict], params: Optional[GenerationParams] = None) -> TokenStream:
        """Stream the assistant's answer to ``messages`` (system, user, assistant, ..., user)."""

    @abc.abstractmethod
    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = False) -> list[int]:
        """The model's token ids for ``text``."""

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    # -- token-level prompts (engines that run the model themselves) -----------------------
    @property
    def accepts_token_prompts(self) -> bool:
        """Whether ``complete_tokens`` takes a prompt of token ids (and ``detokenize`` works)."""
        return False

    def complete_tokens(self, tokens: Sequence[int], params: Optional[GenerationParams] = None) -> TokenStream:
        """Stream a continuation of a prompt given as token ids (see ``accepts_token_prompts``)."""
        raise NotImplementedError(f"{type(self).__name__} takes prompts as text only")

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of ``tokens`` (see ``accepts_token_prompts``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot turn token ids into text")

    def fim_tokens(self) -> FimTokens:
        """The model's fill-in-the-middle token ids; none (``FimTokens()``) when it has none or
        the engine takes text prompts only."""
        return FimTokens()

    @property
    def context_size(self) -> Optional[int]:
        """Tokens a prompt and its answer may take together (the n_ctx in use); None if unknown."""
        return self.describe().context_length

    def stats(self) -> Optional["SchedulerStats"]:
        """Slots busy, requests queued, KV cells used, prompt-cache use (a snapshot, for metrics);
        None when the engine does not schedule requests itself (a remote server)."""
        return None

    @abc.abstractmethod
    def describe(self) -> ModelDescription:
        """What is loaded, where, and how."""

    @abc.abstractmethod
    def cancel(self) -> None:
        """Cancel every running and queued generation of this engine."""

    def close(self) -> None:
        """Release the model; the engine is unusable afterwards."""

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
