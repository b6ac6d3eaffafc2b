"""``SlotScheduler``: many requests on one llama.cpp context at once (slots, continuous batching).

One worker thread owns the ``NativeModel``. The context holds ``n_parallel`` KV sequences
("slots") in one unified pool of cells. Each request goes to the idle slot whose cached
tokens share the longest prefix with its prompt (or to the prompt cache's best entry, when
that shares more), so a conversation, the notebook's ghost text and the language server each
keep a warm sequence and only their new tokens are evaluated.

A slot may also share another slot's cells for a common start (several chats with the same
system prompt): llama.cpp tags the cells with both sequences, nothing is evaluated twice.

Every step builds one ``llama_batch``: one token for every generating sequence, plus the next
chunk of a waiting prompt in the room left (``n_batch`` tokens in all), and runs a single
``llama_decode``. A long prompt therefore delays the running streams by one chunk at most.
Each sequence samples from its own logits with its own llama.cpp sampler chain.

Priorities (``GenerationParams.priority``): requests are admitted best priority first (with
``n_parallel > 1`` one more sequence is kept for interactive requests, so a completion never
waits for a slot while chats fill the others). Within a priority, users (``GenerationParams.user``)
take turns: the request whose user has the fewest sequences running goes first, and one more
sequence is kept for a user who has nothing running, so one user's many streams never keep
another's first one waiting for a slot to end. And
when the model runs on the CPU a step serves only the best priority present, so ghost text
never shares its steps with a streaming chat (on a CPU a shared step costs about as much as
two); with GPU offload, where a wider batch is nearly free, every sequence shares each step.

KV memory: the pool has ``kv_size`` cells; a sequence may use up to ``n_ctx`` of them. When a
step needs cells that are not free, idle slots are saved to the ``PromptCache`` and cleared,
least recently used first; if that is not enough, the request that needs the cells fails
with ``ContextOverflowError`` (a prompt waits instead while others run), and the rest go on.

Cancelling is checked before every step, so it takes effect within one token (or one prompt
chunk); a cancelled sequence keeps its evaluated tokens for the next prompt that shares them.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import ContextOverflowError, EngineError
from .base import GenerationParams, GenerationResult
from .native import NativeModel
from .prompt_cache import PromptCache, common_prefix
from .sampling import SequenceSampler
from .text_output import TextAssembler

__all__ = ["Request", "SchedulerStats", "SlotScheduler", "PRIORITIES", "TEXT", "DONE", "ERROR"]

log = logging.getLogger(__name__)

TEXT, DONE, ERROR = "text", "done", "error"
PRIORITIES = {"interactive": 0, "normal": 1, "background": 2}
_MIN_CACHED_TOKENS = 16  # shorter sequences are cheaper to evaluate again than to save
_MIN_BORROWED_TOKENS = 4  # sharing cells costs llama.cpp a little bookkeeping, not a copy
_arrivals = itertools.count()


@dataclass(eq=False)  # identity semantics: requests live in sets and lists
class Request:
    """A prompt to continue, and the queue its text pieces and result go to."""

    prompt: list[int]
    params: GenerationParams
    dropped_messages: int = 0
    dropped_tokens: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    out: "queue.SimpleQueue[tuple[str, Any]]" = field(default_factory=queue.SimpleQueue)
    arrival: int = field(default_factory=lambda: next(_arrivals))
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def rank(self) -> tuple[int, int]:
        return PRIORITIES.get(self.params.priority, 1), self.arrival


@dataclass(eq=False)
class _Slot:
    seq_id: int
    interactive_only: bool = False  # kept for completions, so ghost text never waits for a chat to end
    newcomer_only: bool = False  # kept for a user with nothing running, so nobody waits for another's streams
    tokens: list[int] = field(default_factory=list)  # what this sequence's KV cells hold, in order
    running: Optional["_Running"] = None
    last_used: int = 0


@dataclass(eq=False)
class _Running:
    """A request bound to a slot."""

    request: Request
    slot: _Slot
    sampler: SequenceSampler
    text: TextAssembler
    evaluated_from: int  # prompt tokens before this index were already in the slot's KV
    restored: int = 0  # of those, how many came from the prompt cache
    next_prompt: int = 0  # the next prompt token to evaluate
    pending_token: Optional[int] = None  # sampled, not yet evaluated
    logits_index: int = -1  # where this sequence's logits are in the batch just decoded
    added: int = 0  # tokens this sequence put in the current batch
    generated: int = 0
    heal_left: bytes = b""  # what the answer must still begin with (GenerationParams.heal)
    parts: list[str] = field(default_factory=list)
    first_token_at: Optional[float] = None

    @property
    def prefilling(self) -> bool:
        return self.next_prompt < len(self.request.prompt)


@dataclass(frozen=True)
class _Clear:
    done: threading.Event


@dataclass(frozen=True)
class SchedulerStats:
    n_parallel: int
    slots_busy: int
    queued: int
    kv_size: int
    kv_used: int
    prompt_cache_entries: int
    prompt_cache_bytes: int
    prompt_cache_limit_bytes: int
    prompt_cache_hits: int


class SlotScheduler:
    def __init__(self, native: NativeModel, *, n_parallel: int, n_ctx: int, prompt_cache_bytes: int,
                 share_steps: bool, name: str = "model") -> None:
        self.native = native
        self.n_ctx = n_ctx
        self.share_steps = share_steps
        self.cache = PromptCache(prompt_cache_bytes)
        self._slots = [_Slot(seq_id=i, interactive_only=i == n_parallel, newcomer_only=i > n_parallel)
                       for i in range(native.n_sequences)]
        self._inbox: "queue.Queue[Optional[Request | _Clear]]" = queue.Queue()
        self._pending: list[Request] = []
        self._running: list[_Running] = []
        self._clock = itertools.count(1)
        self._closing = False
        self._worker = threading.Thread(target=self._serve, name=f"llamalab-slots-{name}", daemon=True)
        self._worker.start()

    # -- any thread ---------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        self._inbox.put(request)

    def stats(self) -> SchedulerStats:
        slots = list(self._slots)
        return SchedulerStats(
            n_parallel=sum(not (s.interactive_only or s.newcomer_only) for s in slots), slots_busy=sum(s.running is not None for s in slots),
            queued=len(self._pending) + self._inbox.qsize(), kv_size=self.native.kv_size,
            kv_used=sum(len(s.tokens) for s in slots), prompt_cache_entries=len(self.cache),
            prompt_cache_bytes=self.cache.used_bytes, prompt_cache_limit_bytes=self.cache.limit_bytes,
            prompt_cache_hits=self.cache.hits)

    def clear(self, timeout: float = 120) -> None:
        """Forget every idle slot's KV sequence and the prompt cache (waits for the worker)."""
        done = threading.Event()
        self._inbox.put(_Clear(done))
        done.wait(timeout)

    def close(self, timeout: float = 120) -> bool:
        """Stop the worker (running and queued requests end cancelled); True once it has exited."""
        self._closing = True
        self._inbox.put(None)
        self._worker.join(timeout=timeout)
        return not self._worker.is_alive()

    # -- the worker ---------------------------------------------------------------------
    def _serve(self) -> None:
        while True:
            if not self._receive():
                break
            try:
                self._end_cancelled()
                self._admit()
                if self._running:
                    self._step()
            except Exception as exc:  # a bug or a llama.cpp failure: fail what runs, keep serving
                log.exception("the slot scheduler's step failed")
                self._reset(EngineError(f"generation failed: {exc}"))
        for request in self._pending:
            self._finish_unstarted(request)
        for running in list(self._running):
            self._finish(running, "cancelled")

    def _receive(self) -> bool:
        """Move new requests to the pending list (waiting only when there is nothing to do);
        False once the scheduler is closing."""
        block = not self._running and not self._pending
        if not block and self._inbox.empty():  # the usual case between steps
            return not self._closing
        while True:
            try:
                request = self._inbox.get(block=block)
            except queue.Empty:
                return not self._closing
            if request is None:
                return False
            if isinstance(request, _Clear):
                for slot in self._slots:
                    if slot.running is None:
                        self._truncate(slot, 0)
                self.cache.clear()
                request.done.set()
            else:
                self._pending.append(request)
            block = False

    def _end_cancelled(self) -> None:
        for request in [r for r in self._pending if r.cancelled.is_set()]:
            self._pending.remove(request)
            self._finish_unstarted(request)
        for running in [r for r in self._running if r.request.cancelled.is_set()]:
            self._finish(running, "cancelled")

    # -- admission: a slot for each waiting request ----------------------------------------
    def _admit(self) -> None:
        running = self._running_per_user()
        waiting = []
        while self._pending:  # best priority first; within one, the user with the fewest running first
            request = min(self._pending, key=lambda r: (r.rank[0], running.get(r.params.user, 0), r.arrival))
            self._pending.remove(request)
            slot = self._choose_slot(request, running.get(request.params.user, 0))
            if slot is None:
                waiting.append(request)
                continue
            try:
                self._bind(request, slot)
                running[request.params.user] = running.get(request.params.user, 0) + 1
            except Exception as exc:
                request.out.put((ERROR, exc if isinstance(exc, EngineError) else EngineError(str(exc))))
        self._pending = waiting

    def _running_per_user(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for running in self._running:
            counts[running.request.params.user] = counts.get(running.request.params.user, 0) + 1
        return counts

    def _choose_slot(self, request: Request, running_for_user: int = 0) -> Optional[_Slot]:
        """The idle slot whose sequence this prompt continues (it shares at least half of the
        slot's tokens: the same conversation, the same document's next keystroke; or the whole
        prompt: a request repeated); else an empty slot (``_borrow`` then shares any common start
        with the others); else the least recently used one. Only interactive requests use the
        slot kept for them, and only a user with nothing running the one kept for newcomers, when
        no other is idle (else that user's next streams would take the others and the slot would
        be gone for the next newcomer)."""
        prompt = request.prompt
        interactive = request.rank[0] == 0
        idle = [s for s in self._slots if s.running is None and (interactive or not s.interactive_only)
                and (running_for_user == 0 or not s.newcomer_only)]
        if any(not (s.interactive_only or s.newcomer_only) for s in idle):
            idle = [s for s in idle if not s.newcomer_only]  # the newcomers' slot is the last resort
        if not idle:
            return None

        def preference(slot: _Slot) -> tuple[bool, int, bool, int]:
            shared = common_prefix(slot.tokens, prompt)
            continues = shared > 0 and (2 * shared >= len(slot.tokens) or shared >= len(prompt) - 1)
            return continues, shared if continues else 0, not slot.tokens, -slot.last_used

        return max(idle, key=preference)

    def _bind(self, request: Request, slot: _Slot) -> None:
        prompt = request.prompt
        shared = common_prefix(slot.tokens, prompt)
        if shared < len(slot.tokens):
            self._put_aside(slot, keep=shared)
        shared = max(shared, self._borrow(slot, prompt, shared))
        restored = self._restore(slot, prompt, shared)
        # What the sequence really holds now (a failed restore leaves it empty); the last prompt
        # token is always evaluated again, for its logits.
        shared = min(common_prefix(slot.tokens, prompt), len(prompt) - 1)
        self._truncate(slot, shared)
        native = self.native
        running = _Running(request=request, slot=slot,
                           sampler=SequenceSampler(native._lib, native.n_vocab, request.params),
                           text=TextAssembler(request.params.stop), evaluated_from=shared,
                           restored=min(restored, shared), next_prompt=shared,
                           heal_left=request.params.heal.encode("utf-8"))
        slot.running = running
        slot.last_used = next(self._clock)
        self._running.append(running)

    def _borrow(self, slot: _Slot, prompt: list[int], shared: int) -> int:
        """Share the cells of another slot that holds a longer start of ``prompt`` (a system
        prompt several chats have in common): llama.cpp tags those cells with this sequence too,
        nothing is copied or evaluated. Returns the tokens gained this way (0 if none)."""
        best, n = None, shared + _MIN_BORROWED_TOKENS - 1
        for other in self._slots:
            if other is not slot:
                k = common_prefix(other.tokens, prompt)
                if k > n:
                    best, n = other, k
        if best is None:
            return 0
        self._truncate(slot, 0)
        self.native.copy_prefix(best.seq_id, slot.seq_id, n)
        slot.tokens = best.tokens[:n]
        return n

    def _put_aside(self, slot: _Slot, keep: int = 0) -> None:
        """Save ``slot``'s sequence to the prompt cache before its cells after ``keep`` go (when
        what goes is worth keeping)."""
        if len(slot.tokens) - keep >= _MIN_CACHED_TOKENS and self.cache.limit_bytes:
            self.cache.put(slot.tokens, self.native.save_sequence(slot.seq_id))
        self._truncate(slot, keep)

    def _truncate(self, slot: _Slot, keep: int) -> None:
        if keep < len(slot.tokens):
            self.native.remove(slot.seq_id, keep)
            del slot.tokens[keep:]

    def _restore(self, slot: _Slot, prompt: list[int], shared: int) -> int:
        """Load the cached state that shares more of ``prompt`` than ``slot`` does; returns how
        many prompt tokens it supplies (0 if none)."""
        if not self.cache.limit_bytes or len(self.cache) == 0:
            return 0
        found = self.cache.best(prompt, at_least=shared + _MIN_CACHED_TOKENS - 1)
        if found is None:
            return 0
        entry, n = found
        self._truncate(slot, 0)
        if not self._make_room(len(entry.tokens), keep=slot) or not self.native.restore_sequence(slot.seq_id, entry.state):
            self.native.remove(slot.seq_id, 0)
            return 0
        self.cache.take(entry)
        slot.tokens = list(entry.tokens)
        return n

    # -- memory ---------------------------------------------------------------------------
    def _free_cells(self) -> int:
        return self.native.kv_size - sum(len(s.tokens) for s in self._slots)

    def _make_room(self, cells: int, keep: Optional[_Slot] = None) -> bool:
        """Free idle slots' cells (least recently used first, saved to the prompt cache) until
        ``cells`` are free; whether they are."""
        if self._free_cells() >= cells:  # the usual case, every step: nothing to sort
            return True
        idle = sorted((s for s in self._slots if s.running is None and s.tokens and s is not keep),
                      key=lambda s: s.last_used)
        while self._free_cells() < cells and idle:
            self._put_aside(idle.pop(0))
        return self._free_cells() >= cells

    # -- one decoding step --------------------------------------------------------------------
    def _participants(self) -> list[_Running]:
        ranked = sorted(self._running, key=lambda r: r.request.rank)
        if self.share_steps:
            return ranked
        best = ranked[0].request.rank[0]
        chosen = [r for r in ranked if r.request.rank[0] == best]
        # On a CPU a step costs about its token count, so a prompt that one step can finish goes
        # alone: its first token then waits for nobody's next token (the others lose no time, they
        # would have shared that step), and a longer prompt still shares, delaying them one chunk.
        room = self.native.batch.capacity if self.native.batch is not None else 0
        short = [r for r in chosen if r.prefilling and len(r.request.prompt) - r.next_prompt <= room]
        return short or chosen

    def _step(self) -> None:
        batch = self.native.batch
        assert batch is not None
        for participants in (self._participants(), sorted(self._running, key=lambda r: r.request.rank)):
            generating = [r for r in participants if not r.prefilling]
            if not self._make_room(len(generating)):
                self._fail_for_room(self._running)
                return
            batch.clear()
            for running in participants:
                running.logits_index, running.added = -1, 0
            for running in generating:
                self._add(running, running.pending_token, logits=True)  # type: ignore[arg-type]
            for running in (r for r in participants if r.prefilling):
                self._add_prompt_chunk(running)
            if batch.n_tokens:
                break
        else:  # every sequence waits for a prompt's cells that the others hold: the newest gives way
            self._fail_for_room(self._running)
            return
        code = self.native.decode()
        if code != 0:
            self._decode_failed(code, participants)
            return
        for running in participants:
            if running.logits_index >= 0:
                self._sample(running)

    def _add(self, running: _Running, token: int, logits: bool) -> None:
        slot = running.slot
        index = self.native.batch.add(token, len(slot.tokens), slot.seq_id, logits)  # type: ignore[union-attr]
        slot.tokens.append(token)
        running.added += 1
        if logits:
            running.logits_index = index

    def _add_prompt_chunk(self, running: _Running) -> None:
        batch = self.native.batch
        assert batch is not None
        prompt = running.request.prompt
        want = min(len(prompt) - running.next_prompt, batch.room)
        if want <= 0:
            return
        self._make_room(want)
        n = min(want, self._free_cells())
        last = len(prompt) - 1
        for i in range(running.next_prompt, running.next_prompt + n):
            self._add(running, prompt[i], logits=i == last)
        running.next_prompt += n

    def _sample(self, running: _Running) -> None:
        native = self.native
        token = self._healing_token(running) if running.heal_left else None
        if token is None:
            token = native.sample(running.sampler.chain, running.logits_index)
        running.logits_index = -1
        if native.is_end_of_generation(token):
            self._finish(running, "stop")
            return
        running.generated += 1
        self._emit(running, running.text.feed(native.piece(token)))
        if running.text.stopped:
            self._finish(running, "stop")
        elif running.generated >= running.request.params.max_tokens or len(running.slot.tokens) >= self.n_ctx:
            self._finish(running, "length")
        else:
            running.pending_token = token

    def _healing_token(self, running: _Running) -> Optional[int]:
        """While the answer must begin with ``heal_left``: the likeliest token consistent with it
        (its bytes start with it, or are a start of it), told to the sampler chain as sampled."""
        native = self.native
        allowed = native.tokens_continuing(running.heal_left)
        if not allowed:
            running.heal_left = b""
            return None
        logits = native.logits(running.logits_index)
        token = max(allowed, key=lambda t: logits[t])
        native._lib.llama_sampler_accept(running.sampler.chain, token)
        piece = native.piece(token)
        running.heal_left = b"" if piece.startswith(running.heal_left) else running.heal_left[len(piece):]
        return token

    def _emit(self, running: _Running, text: str) -> None:
        if text:
            if running.first_token_at is None:
                running.first_token_at = time.perf_counter()
            running.parts.append(text)
            running.request.out.put((TEXT, text))

    # -- failures ---------------------------------------------------------------------------
    def _fail_for_room(self, candidates: list[_Running]) -> None:
        """Not enough free cells for the step: the newest request fails, the rest go on."""
        victim = max(candidates, key=lambda r: r.request.rank[1])
        self._fail(victim, ContextOverflowError(
            f"the KV cache is full ({self.native.kv_size} tokens shared by {len(self._slots)} slots), so this "
            "request was stopped and the others go on; load the model with a larger kv_size (or n_ctx), "
            "or a smaller n_parallel."))

    def _decode_failed(self, code: int, participants: list[_Running]) -> None:
        """Undo the step's tokens; fail the newest request (no room) or all of them (an error)."""
        for running in participants:
            if running.added:
                slot = running.slot
                self._truncate(slot, len(slot.tokens) - running.added)
                if running.pending_token is None:  # still in its prompt: evaluate those tokens again
                    running.next_prompt = len(slot.tokens)
                running.added, running.logits_index = 0, -1
        if code == 1:
            self._fail_for_room(participants)
            return
        for running in participants:
            self._fail(running, EngineError(f"llama.cpp could not evaluate the batch (llama_decode returned {code}); "
                                            "the model may be damaged or out of memory."))

    def _reset(self, error: EngineError) -> None:
        for running in list(self._running):
            self._fail(running, error)
        for slot in self._slots:
            self._truncate(slot, 0)

    # -- endings ----------------------------------------------------------------------------
    def _release(self, running: _Running) -> None:
        running.sampler.free()
        running.slot.running = None
        running.slot.last_used = next(self._clock)
        if running in self._running:
            self._running.remove(running)

    def _fail(self, running: _Running, error: EngineError) -> None:
        self._release(running)
        running.request.out.put((ERROR, error))

    def _finish(self, running: _Running, reason: str) -> None:
        if reason != "cancelled":
            self._emit(running, running.text.finish())
        self._release(running)
        request = running.request
        reused = running.evaluated_from
        now = time.perf_counter()
        request.out.put((DONE, GenerationResult(
            text="".join(running.parts), finish_reason=reason,  # type: ignore[arg-type]
            prompt_tokens=len(request.prompt), completion_tokens=running.generated,
            dropped_messages=request.dropped_messages, dropped_tokens=request.dropped_tokens,
            time_to_first_token_s=None if running.first_token_at is None else running.first_token_at - request.submitted,
            duration_s=now - request.submitted, reused_prompt_tokens=reused,
            restored_prompt_tokens=running.restored)))

    @staticmethod
    def _finish_unstarted(request: Request) -> None:
        request.out.put((DONE, GenerationResult(
            text="", finish_reason="cancelled", prompt_tokens=len(request.prompt), completion_tokens=0,
            dropped_messages=request.dropped_messages, dropped_tokens=request.dropped_tokens,
            duration_s=time.perf_counter() - request.submitted, reused_prompt_tokens=0, restored_prompt_tokens=0)))
