"""``NativeModel``: one llama.cpp model and context over llama-cpp-python's low-level bindings.

It owns the ``llama_model``, the ``llama_context`` (with ``n_sequences`` KV sequences in one
unified cache of ``kv_size`` cells), the vocabulary and one reusable ``llama_batch``, and
exposes what the slot scheduler needs and nothing more: tokenize and detokenize, token
pieces (cached per id), end-of-generation tests, ``decode``, per-sequence KV edits and
per-sequence state save/restore. Every method but the vocabulary ones must be called from
the one thread that owns the context (the scheduler's worker); tokenizing only reads the
vocabulary and is safe from any thread.

llama.cpp's log lines go to the ``llamalab.llama_cpp`` logger (debug level; warnings and
errors at theirs) instead of the process's stderr.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from typing import Any, Optional, Sequence

from ..errors import ConfigError, ModelLoadError

__all__ = ["NativeModel", "NativeBatch", "max_parallel_sequences"]

log = logging.getLogger("llamalab.llama_cpp")

_LOG_LEVELS = {3: logging.WARNING, 4: logging.ERROR}  # ggml: 1 debug, 2 info, 3 warn, 4 error, 5 cont
_log_callback: Any = None  # kept alive for as long as llama.cpp may call it
_init_lock = threading.Lock()
_initialized = False


def _init_backend() -> Any:
    """Import llama_cpp, initialise its backend once and route its log into ``logging``."""
    global _log_callback, _initialized
    import llama_cpp

    with _init_lock:
        if not _initialized:
            @llama_cpp.llama_log_callback
            def forward(level: int, text: bytes, _user: Any) -> None:
                try:
                    message = text.decode("utf-8", errors="replace").rstrip()
                    if message:
                        log.log(_LOG_LEVELS.get(level, logging.DEBUG), "%s", message)
                except Exception:  # never raise into C
                    pass

            _log_callback = forward
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _initialized = True
    return llama_cpp


def max_parallel_sequences() -> int:
    """The most KV sequences one llama.cpp context can hold (``LLAMA_MAX_SEQ``)."""
    return int(_init_backend().llama_max_parallel_sequences())


class NativeBatch:
    """A reusable ``llama_batch`` of up to ``capacity`` tokens, one sequence id per token."""

    def __init__(self, llama_cpp: Any, capacity: int) -> None:
        self._lib = llama_cpp
        self.capacity = capacity
        self.raw = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n_tokens = 0

    def clear(self) -> None:
        self.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append one token; returns its index in the batch (where its logits will be)."""
        i = self.n_tokens
        raw = self.raw
        raw.token[i] = token
        raw.pos[i] = pos
        raw.n_seq_id[i] = 1
        raw.seq_id[i][0] = seq_id
        raw.logits[i] = logits
        self.n_tokens = i + 1
        return i

    @property
    def room(self) -> int:
        return self.capacity - self.n_tokens

    def free(self) -> None:
        if self.raw is not None:
            self._lib.llama_batch_free(self.raw)
            self.raw = None


class NativeModel:
    """A GGUF loaded by llama.cpp with a multi-sequence context (see the module docstring)."""

    def __init__(self, path: "os.PathLike[str] | str", *, n_gpu_layers: int, kv_size: int, n_parallel: int,
                 n_batch: int, n_threads: int, n_threads_batch: int) -> None:
        lib = _init_backend()
        self._lib = lib
        limit = int(lib.llama_max_parallel_sequences()) - 2
        if not 1 <= n_parallel <= limit:
            raise ConfigError(f"n_parallel must be between 1 and {limit} (llama.cpp's limit, less two sequences "
                              f"kept for completions and for a user with nothing running), got {n_parallel}.")
        # Two more sequences than n_parallel: one kept for interactive requests, one for a user who has
        # nothing running while others fill the slots (see slots.py).
        self.n_sequences = n_parallel + 2 if n_parallel > 1 else 1
        self.path = os.fspath(path)
        self.model: Any = None
        self.ctx: Any = None
        self.batch: Optional[NativeBatch] = None
        model_params = lib.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        self.model = lib.llama_model_load_from_file(self.path.encode("utf-8"), model_params)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load {os.path.basename(self.path)}; check the file "
                                 "(llamalab doctor), or update llama-cpp-python.")
        self.vocab = lib.llama_model_get_vocab(self.model)
        params = lib.llama_context_default_params()
        params.n_ctx = kv_size
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = self.n_sequences
        params.kv_unified = True  # one pool of cells: any sequence may use the whole window
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, params)
        if not self.ctx:
            self.close()
            raise ModelLoadError(f"llama.cpp could not create a context of {kv_size} tokens for "
                                 f"{os.path.basename(self.path)}; lower n_ctx or n_parallel.")
        self.memory = lib.llama_get_memory(self.ctx)
        self.kv_size = int(lib.llama_n_ctx(self.ctx))
        self.n_batch = int(lib.llama_n_batch(self.ctx))
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.batch = NativeBatch(lib, self.n_batch)
        self._pieces: dict[int, bytes] = {}
        self._by_first_byte: Optional[dict[int, list[tuple[int, bytes]]]] = None
        self._piece_buffer = ctypes.create_string_buffer(256)
        bos, eos = int(lib.llama_vocab_bos(self.vocab)), int(lib.llama_vocab_eos(self.vocab))
        self.bos_id: Optional[int] = bos if bos >= 0 else None
        self.eos_id: Optional[int] = eos if eos >= 0 else None

    # -- vocabulary (any thread) ----------------------------------------------------------
    def tokenize(self, text: bytes, *, add_bos: bool, special: bool) -> list[int]:
        lib = self._lib
        capacity = len(text) + 8
        buffer = (lib.llama_token * capacity)()
        n = lib.llama_tokenize(self.vocab, text, len(text), buffer, capacity, add_bos, special)
        if n < 0:  # cannot happen with one slot per byte, but llama.cpp says how many it needs
            capacity = -n
            buffer = (lib.llama_token * capacity)()
            n = lib.llama_tokenize(self.vocab, text, len(text), buffer, capacity, add_bos, special)
        return list(buffer[:n])

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for when generated (special tokens render as nothing)."""
        cached = self._pieces.get(token)
        if cached is None:
            buffer = self._piece_buffer
            n = self._lib.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            if n < 0:
                buffer = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self.vocab, token, buffer, len(buffer), 0, False)
            cached = self._pieces[token] = buffer.raw[:n]
        return cached

    def tokens_continuing(self, text: bytes) -> list[int]:
        """The ids whose bytes start with ``text`` or are a start of it (non-empty pieces only):
        the tokens a generation that must begin with ``text`` may take next (token healing)."""
        if not text:
            return []
        if self._by_first_byte is None:
            table: dict[int, list[tuple[int, bytes]]] = {}
            for token in range(self.n_vocab):
                piece = self.piece(token)
                if piece:
                    table.setdefault(piece[0], []).append((token, piece))
            self._by_first_byte = table
        return [token for token, piece in self._by_first_byte.get(text[0], ())
                if piece.startswith(text) or text.startswith(piece)]

    def logits(self, index: int) -> Any:
        """The logits of the batch's ``index``-th output, as a numpy view (no copy)."""
        import numpy as np

        row = self._lib.llama_get_logits_ith(self.ctx, index)
        return np.ctypeslib.as_array(row, shape=(self.n_vocab,))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(int(t)) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        raw = self._lib.llama_vocab_get_text(self.vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def is_end_of_generation(self, token: int) -> bool:
        return bool(self._lib.llama_vocab_is_eog(self.vocab, token))

    # -- the context (owner thread) -------------------------------------------------------
    def decode(self) -> int:
        """Evaluate the batch; 0 on success, 1 when the KV cache has no room, <0 on errors."""
        assert self.batch is not None
        self.batch.raw.n_tokens = self.batch.n_tokens
        return int(self._lib.llama_decode(self.ctx, self.batch.raw))

    def remove(self, seq_id: int, start: int = 0) -> None:
        """Drop ``seq_id``'s cells from position ``start`` on."""
        self._lib.llama_memory_seq_rm(self.memory, seq_id, start, -1)

    def copy_prefix(self, source: int, target: int, n_tokens: int) -> None:
        """Give ``target`` the cells of ``source``'s first ``n_tokens`` positions (shared, not copied)."""
        self._lib.llama_memory_seq_cp(self.memory, source, target, 0, n_tokens)

    def save_sequence(self, seq_id: int) -> Any:
        """``seq_id``'s state (its cells' keys and values, positions and tokens) as a buffer."""
        lib = self._lib
        size = int(lib.llama_state_seq_get_size(self.ctx, seq_id))
        buffer = (ctypes.c_uint8 * size)()
        written = int(lib.llama_state_seq_get_data(self.ctx, buffer, size, seq_id))
        return buffer if written == size else (ctypes.c_uint8 * written).from_buffer_copy(buffer)

    def restore_sequence(self, seq_id: int, state: Any) -> bool:
        """Load a state saved by ``save_sequence`` into ``seq_id``; False if llama.cpp refused it
        (no room in the cache)."""
        if isinstance(state, (bytes, bytearray)):
            state = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        return int(self._lib.llama_state_seq_set_data(self.ctx, state, len(state), seq_id)) > 0

    def sample(self, sampler: Any, index: int) -> int:
        return int(self._lib.llama_sampler_sample(sampler, self.ctx, index))

    def close(self) -> None:
        lib = self._lib
        if self.batch is not None:
            self.batch.free()
            self.batch = None
        if self.ctx:
            lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            lib.llama_model_free(self.model)
            self.model = None
