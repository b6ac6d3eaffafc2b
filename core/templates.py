"""Chat messages and turning them into prompt tokens.

Two formats, both producing token ids (never text that gets re-tokenized):

- ``Llama2ChatFormat``: Meta's exact Llama-2-chat construction from ``generation.py``:
  per finished turn ``<s>`` + encode("[INST] {user} [/INST] {answer} ") + ``</s>``, the
  last turn ``<s>`` + encode("[INST] {user} [/INST]``"), a system prompt folded into the
  first user turn between ``<<SYS>>\\n`` and ``\\n<</SYS>>\\n\\n``. BOS/EOS are ids, never
  parsed from text, so a user typing ``</s>`` cannot end a turn. (llama-cpp-python's own
  "llama-2" format builds a string and differs in whitespace.)
- ``JinjaChatFormat``: the GGUF's own ``tokenizer.chat_template`` rendered in a sandbox, as
  Hugging Face's ``apply_chat_template`` does, then tokenized so that only the template's own
  text can become special tokens: message contents are always plain text (see below).

Safety of the chat path:

- **Text stays text.** A user (or text pasted from a notebook) typing ``</s>``, ``<s>`` or
  ``<|im_end|>`` gets those characters, never the end/start-of-sequence or turn tokens. The
  Llama-2 format never parses special tokens. A GGUF template's rendering is tokenized with
  special tokens parsed only when no message contains special-token text (then the result is
  exactly llama.cpp's); otherwise the template is rendered a second time with placeholders in
  place of the contents, the template's own pieces are tokenized as special and the contents
  as plain text. A template that reshapes contents beyond trimming them cannot be split so;
  such a message is then refused with a ``ChatTemplateError``.
- **Llama-2 markers are refused, as Meta's reference does.** Meta's ``chat_completion``
  answers "special tags are not allowed as part of the prompt" for a dialog whose messages
  contain ``[INST]``, ``[/INST]``, ``<<SYS>>`` or ``<</SYS>>``; ``check_markers`` (called on
  every chat by the engine) raises ``ChatTemplateError`` naming the message instead, for the
  Llama-2 format and for GGUF templates that use ``[INST]`` themselves (Llama-2, Mistral).
  ``format`` alone stays Meta's plain prompt construction.
- **Templates run on a budget.** The sandbox counts loop iterations and calls
  (``TemplateBudget.max_steps`` plus a few per message), bounds the output's length and
  string arithmetic (``max_chars`` plus four times the messages' text) and the time a
  render takes (``max_seconds``). A template over budget is refused with one line: when the
  format is created (a test render of a small chat) and on any render after.

``choose_chat_format`` picks one for a model; ``fit_messages`` drops the oldest turns
(keeping the system prompt and the last user message) until the prompt fits a budget.
"""

from __future__ import annotations

import functools
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal, Optional, Protocol, Sequence

from .errors import ChatTemplateError, ContextOverflowError

__all__ = [
    "Message",
    "Tokenizer",
    "ChatFormat",
    "Llama2ChatFormat",
    "JinjaChatFormat",
    "TemplateBudget",
    "check_markers",
    "choose_chat_format",
    "fit_messages",
    "is_llama2_chat_name",
    "B_INST",
    "E_INST",
    "B_SYS",
    "E_SYS",
]

Role = Literal["system", "user", "assistant"]
B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"
LLAMA2_MARKERS = (B_INST, E_INST, "<<SYS>>", "<</SYS>>")  # Meta's SPECIAL_TAGS in generation.py


@dataclass(frozen=True)
class Message:
    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ChatTemplateError(f"unknown role '{self.role}'; use system, user or assistant.")


class Tokenizer(Protocol):
    """What a chat format needs from a model's tokenizer."""

    bos_id: Optional[int]
    eos_id: Optional[int]

    def encode(self, text: str, *, special: bool) -> list[int]:
        """Token ids of ``text`` without BOS; ``special`` parses special-token text."""
        ...

    def token_text(self, token_id: int) -> str: ...


class ChatFormat(Protocol):
    name: str

    def format(self, messages: Sequence[Message]) -> list[int]: ...


def _coerce(messages: Sequence[Message | dict]) -> list[Message]:
    result = []
    for message in messages:
        if isinstance(message, Message):
            result.append(message)
        elif isinstance(message, dict) and "role" in message and "content" in message:
            result.append(Message(role=message["role"], content=str(message["content"])))
        else:
            raise ChatTemplateError(f"a chat message must have a role and content, got {message!r}.")
    if not result:
        raise ChatTemplateError("the chat has no messages; send at least one user message.")
    return result


class Llama2ChatFormat:
    """Meta's Llama-2-chat prompt, built token by token as ``generation.py`` does."""

    name = "llama-2"
    refuses_llama2_markers = True

    def __init__(self, tokenizer: Tokenizer) -> None:
        if tokenizer.bos_id is None or tokenizer.eos_id is None:
            raise ChatTemplateError("the Llama-2 chat format needs a model with BOS and EOS tokens.")
        self.tokenizer = tokenizer

    def format(self, messages: Sequence[Message | dict]) -> list[int]:
        dialog = _coerce(messages)
        if dialog[0].role == "system":
            if len(dialog) < 2:
                raise ChatTemplateError("a system prompt needs a user message after it.")
            dialog = [Message(dialog[1].role, B_SYS + dialog[0].content + E_SYS + dialog[1].content)] + dialog[2:]
        for position, message in enumerate(dialog):
            expected = "user" if position % 2 == 0 else "assistant"
            if message.role != expected:
                raise ChatTemplateError(
                    "Llama-2 chats alternate user and assistant turns after an optional system prompt; "
                    f"message {position + 1} is '{message.role}' where '{expected}' was expected."
                )
        if dialog[-1].role != "user":
            raise ChatTemplateError("the last message must be the user's, for the model to answer it.")
        bos, eos = self.tokenizer.bos_id, self.tokenizer.eos_id
        tokens: list[int] = []
        for prompt, answer in zip(dialog[:-1:2], dialog[1::2]):
            text = f"{B_INST} {prompt.content.strip()} {E_INST} {answer.content.strip()} "
            tokens += [bos, *self.tokenizer.encode(text, special=False), eos]  # type: ignore[list-item]
        tokens += [bos, *self.tokenizer.encode(f"{B_INST} {dialog[-1].content.strip()} {E_INST}",  # type: ignore[list-item]
                                               special=False)]
        return tokens


@dataclass(frozen=True)
class TemplateBudget:
    """What one render of a GGUF chat template may spend (per render, on top of the messages)."""

    max_steps: int = 100_000  # loop iterations plus calls, plus 64 per message
    max_chars: int = 1_000_000  # output and string results, plus 4x the messages' text
    max_seconds: float = 2.0


class _OverBudget(ChatTemplateError):
    pass


class _Meter:
    """One render's spending; lives in a thread-local while the render runs."""

    def __init__(self, budget: TemplateBudget, messages: Sequence[Message]) -> None:
        self.steps_left = budget.max_steps + 64 * len(messages)
        self.max_chars = budget.max_chars + 4 * sum(len(m.content) for m in messages)
        self.deadline = time.monotonic() + budget.max_seconds
        self.budget = budget

    def step(self) -> None:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise _OverBudget(f"the model's chat template was stopped after {self.budget.max_steps} loop "
                              "iterations and calls (its budget); pass chat_format='llama-2' or fix the GGUF's template.")
        if time.monotonic() > self.deadline:
            raise _OverBudget(f"the model's chat template ran longer than {self.budget.max_seconds:g} s (its "
                              "budget); pass chat_format='llama-2' or fix the GGUF's template.")

    def size(self, n: int) -> None:
        if n > self.max_chars:
            raise _OverBudget(f"the model's chat template built a text of {n} characters, over its budget of "
                              f"{self.max_chars}; pass chat_format='llama-2' or fix the GGUF's template.")


_current = threading.local()


def _meter() -> _Meter:
    meter = getattr(_current, "meter", None)
    if meter is None:  # rendered outside JinjaChatFormat.render: no budget to spend from
        raise _OverBudget("the chat template was rendered without a budget.")
    return meter


def _sized(value: object) -> int:
    return len(value) if isinstance(value, (str, bytes, list, tuple)) else 0


def _budgeted_environment():  # type: ignore[no-untyped-def]
    """An immutable sandbox whose loops, calls and string arithmetic spend the render's budget."""
    from jinja2 import nodes
    from jinja2.runtime import LoopContext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def budgeted_iter(iterable):  # type: ignore[no-untyped-def]
        meter = _meter()
        for item in iterable:
            meter.step()
            yield item

    class BudgetedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset(["*", "**", "+"])

        def _parse(self, source, name, filename):  # type: ignore[no-untyped-def]
            tree = super()._parse(source, name, filename)
            for loop in tree.find_all(nodes.For):  # every for loop iterates through budgeted_iter
                loop.iter = nodes.Call(nodes.EnvironmentAttribute("llamalab_budgeted_iter"), [loop.iter], [],
                                       None, None, lineno=loop.iter.lineno)
            tree.set_environment(self)
            return tree

        def call(__self, __context, __obj, *args, **kwargs):  # type: ignore[no-untyped-def]
            meter = _meter()
            meter.step()
            if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
                args = (budgeted_iter(args[0]), *args[1:])
            for value in (*args, *kwargs.values()):  # padding widths and repeat counts
                if isinstance(value, int) and not isinstance(value, bool):
                    meter.size(abs(value))
            result = super().call(__context, __obj, *args, **kwargs)
            meter.size(_sized(result))
            return result

        def call_binop(self, context, operator, left, right):  # type: ignore[no-untyped-def]
            meter = _meter()
            meter.step()
            if operator == "*":
                for seq, count in ((left, right), (right, left)):
                    if _sized(seq) and isinstance(count, int):
                        meter.size(_sized(seq) * max(count, 0))
            elif operator == "**" and isinstance(left, int) and isinstance(right, int) and abs(left) > 1:
                meter.size(abs(left).bit_length() * max(right, 0) // 8)
            elif operator == "+":
                meter.size(_sized(left) + _sized(right))
            return super().call_binop(context, operator, left, right)

    def budgeted_filter(function):  # type: ignore[no-untyped-def]
        @functools.wraps(function)  # keeps jinja's pass_context/pass_environment marks
        def run(*args, **kwargs):  # type: ignore[no-untyped-def]
            meter = _meter()
            meter.step()
            for value in (*args, *kwargs.values()):  # center(10**9), indent(10**9)
                if isinstance(value, int) and not isinstance(value, bool):
                    meter.size(abs(value))
            result = function(*args, **kwargs)
            meter.size(_sized(result))
            return result
        return run

    env = BudgetedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters = {name: budgeted_filter(f) for name, f in env.filters.items()}
    env.llamalab_budgeted_iter = budgeted_iter  # type: ignore[attr-defined]
    return env


# A small chat rendered once when the format is created: a template over budget on it is refused then.
_PROBE_CHAT = (Message("system", "You are helpful."), Message("user", "Hello."),
               Message("assistant", "Hi."), Message("user", "Thanks."))


class JinjaChatFormat:
    """A model's own Jinja chat template, rendered in a budgeted sandbox."""

    name = "gguf"

    def __init__(self, template: str, tokenizer: Tokenizer, add_bos: bool = False,
                 budget: Optional[TemplateBudget] = None) -> None:
        from jinja2 import TemplateError

        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self.budget = budget or TemplateBudget()
        self.bos_text = tokenizer.token_text(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
        self.eos_text = tokenizer.token_text(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
        self.refuses_llama2_markers = B_INST in template  # the template writes Llama-2's markers itself
        env = _budgeted_environment()
        env.globals["raise_exception"] = self._raise
        try:
            self._template = env.from_string(template)
        except (TemplateError, RecursionError, MemoryError) as exc:
            raise ChatTemplateError(f"the model's chat template does not parse ({exc}); "
                                    "pass chat_format='llama-2' or fix the GGUF's template.") from None
        for probe in (_PROBE_CHAT, _PROBE_CHAT[1:]):
            try:
                self.render(probe)
            except _OverBudget:
                raise
            except ChatTemplateError:  # the template may refuse a system prompt, say: not our business here
                continue

    @staticmethod
    def _raise(message: str) -> None:
        raise ChatTemplateError(f"the model's chat template refused the messages: {message}")

    def render(self, messages: Sequence[Message | dict]) -> str:
        dialog = _coerce(messages)
        return self._render(dialog, [m.content for m in dialog])

    def _render(self, dialog: list[Message], contents: Sequence[str]) -> str:
        meter = _Meter(self.budget, dialog)
        _current.meter = meter
        pieces: list[str] = []
        size = 0
        try:
            for piece in self._template.generate(
                    messages=[{"role": m.role, "content": c} for m, c in zip(dialog, contents)],
                    add_generation_prompt=True, bos_token=self.bos_text, eos_token=self.eos_text):
                size += len(piece)
                meter.size(size)
                pieces.append(piece)
        except ChatTemplateError:
            raise
        except RecursionError:
            raise _OverBudget("the model's chat template recursed too deeply; pass chat_format='llama-2' "
                              "or fix the GGUF's template.") from None
        except Exception as exc:  # a TemplateError, or a TypeError or ZeroDivisionError from the template's code
            raise ChatTemplateError(f"the model's chat template failed: {type(exc).__name__}: {exc}") from None
        finally:
            _current.meter = None
        return "".join(pieces)

    def format(self, messages: Sequence[Message | dict]) -> list[int]:
        dialog = _coerce(messages)
        text = self._render(dialog, [m.content for m in dialog])
        if any(self._has_special_text(m.content) for m in dialog):
            tokens = self._encode_keeping_contents_plain(dialog, text)
        else:
            tokens = self.tokenizer.encode(text, special=True)  # exactly llama.cpp's tokenization
        bos = self.tokenizer.bos_id
        if self.add_bos and bos is not None and (not tokens or tokens[0] != bos):
            tokens = [bos, *tokens]
        return tokens

    # -- keeping message contents plain text ------------------------------------------------
    def _has_special_text(self, text: str) -> bool:
        return bool(text) and self.tokenizer.encode(text, special=True) != self.tokenizer.encode(text, special=False)

    def _encode_keeping_contents_plain(self, dialog: list[Message], text: str) -> list[int]:
        """Tokens of ``text`` (the real rendering) with each content as plain text and the
        template's own pieces parsed for special tokens, found by rendering with placeholders."""
        nonce = f"{secrets.randbelow(10 ** 16):016d}"
        marks = [f"\ue000{nonce}:{i}\ue001" for i in range(len(dialog))]
        skeleton = re.split(f"\ue000{nonce}:(\\d+)\ue001", self._render(dialog, marks))
        pieces: list[tuple[str, bool]] = []  # (text, is the template's)
        position = 0
        for index, part in enumerate(skeleton):
            if index % 2 == 0:
                if not text.startswith(part, position):
                    break
                pieces.append((part, True))
                position += len(part)
                continue
            content = dialog[int(part)].content
            following = skeleton[index + 1]
            choices = sorted({content, content.strip(), content.lstrip(), content.rstrip()}, key=len, reverse=True)
            match = next((c for c in choices if text.startswith(c + following, position)), None)
            if match is None:
                break
            pieces.append((match, False))
            position += len(match)
        else:
            if position == len(text):
                return self._encode_pieces(pieces)
        culprit = next(i for i, m in enumerate(dialog) if self._has_special_text(m.content))
        raise ChatTemplateError(
            f"message {culprit + 1} contains special-token text (such as {self.eos_text or '</s>'!r}), and this "
            "model's chat template reshapes messages too much to keep it plain text; remove it.")

    def _encode_pieces(self, pieces: list[tuple[str, bool]]) -> list[int]:
        """Split the template's pieces at the special-token texts they contain, then tokenize
        each run of plain text in one go (as llama.cpp does between special tokens)."""
        specials: dict[str, int] = {}
        for piece, ours in pieces:
            if not ours or not piece:
                continue
            parsed = self.tokenizer.encode(piece, special=True)
            if parsed == self.tokenizer.encode(piece, special=False):
                continue
            for token in parsed:
                word = self.tokenizer.token_text(token)
                if word and word in piece and self.tokenizer.encode(word, special=False) != [token]:
                    specials[word] = token
        splitter = (re.compile("|".join(re.escape(w) for w in sorted(specials, key=len, reverse=True)))
                    if specials else None)
        tokens: list[int] = []
        run: list[str] = []

        def flush() -> None:
            if run:
                tokens.extend(self.tokenizer.encode("".join(run), special=False))
                run.clear()

        for piece, ours in pieces:
            if not ours or splitter is None:
                run.append(piece)
                continue
            last = 0
            for found in splitter.finditer(piece):
                run.append(piece[last:found.start()])
                flush()
                tokens.append(specials[found.group()])
                last = found.end()
            run.append(piece[last:])
        flush()
        return tokens


def check_markers(fmt: ChatFormat, messages: Sequence[Message | dict]) -> None:
    """Refuse messages containing Llama-2's ``[INST]``, ``[/INST]``, ``<<SYS>>`` or ``<</SYS>>``
    when ``fmt`` uses them as structure (as Meta's ``chat_completion`` refuses them)."""
    if not getattr(fmt, "refuses_llama2_markers", False):
        return
    for position, message in enumerate(_coerce(messages)):
        found = next((m for m in LLAMA2_MARKERS if m in message.content), None)
        if found is not None:
            raise ChatTemplateError(
                f"message {position + 1} contains the Llama-2 marker '{found}', which could forge a turn; "
                "Meta's reference refuses such messages too: remove or reword it.")


_LLAMA2_CHAT_RE = re.compile(r"(llama[-_ ]?2|code[-_ ]?llama).*(chat|instruct)", re.IGNORECASE)


def is_llama2_chat_name(name: str) -> bool:
    """True for names like 'Llama-2-7b-chat' or 'CodeLlama 13B Instruct'."""
    return bool(_LLAMA2_CHAT_RE.search(name))


def choose_chat_format(requested: str, *, model_name: str, chat_template: Optional[str],
                       tokenizer: Tokenizer, add_bos: bool) -> Optional[ChatFormat]:
    """The chat format for a model: ``auto``, ``llama-2`` or ``gguf``; None when it has none."""
    if requested not in ("auto", "llama-2", "gguf"):
        raise ChatTemplateError(f"unknown chat format '{requested}'; use auto, llama-2 or gguf.")
    if requested == "llama-2" or (requested == "auto" and is_llama2_chat_name(model_name)):
        return Llama2ChatFormat(tokenizer)
    if chat_template:
        return JinjaChatFormat(chat_template, tokenizer, add_bos=add_bos)
    if requested == "gguf":
        raise ChatTemplateError(f"{model_name} has no chat template in its GGUF; use chat_format='llama-2'.")
    return None


@dataclass(frozen=True)
class FittedPrompt:
    tokens: list[int]
    dropped_messages: int


def fit_messages(fmt: ChatFormat, messages: Sequence[Message | dict], budget: int) -> FittedPrompt:
    """Format ``messages``, dropping the oldest turns (never the system prompt or the last
    message) until the tokens fit ``budget``; raise ``ContextOverflowError`` if they never do.

    The kept turns always start with a user message. The cut point is found by binary search
    (fewer turns never need more tokens), so a long chat is formatted O(log n) times."""
    dialog = _coerce(messages)
    system = [dialog[0]] if dialog[0].role == "system" else []
    turns = dialog[len(system):]
    tokens = fmt.format(system + turns)
    if len(tokens) <= budget:
        return FittedPrompt(tokens=tokens, dropped_messages=0)
    starts = [i for i in range(1, len(turns)) if turns[i].role == "user"] or [len(turns) - 1]
    if starts[-1] != len(turns) - 1 and turns[-1].role != "user":
        starts.append(len(turns) - 1)
    low, high, best = 0, len(starts) - 1, None
    while low <= high:
        middle = (low + high) // 2
        candidate = fmt.format(system + turns[starts[middle]:])
        if len(candidate) <= budget:
            best, high = (starts[middle], candidate), middle - 1
        else:
            low = middle + 1
    if best is None:
        alone = len(fmt.format(system + turns[starts[-1]:]))
        raise ContextOverflowError(
            f"the last message alone needs {alone} tokens but only {budget} fit the context "
            "window; shorten it, lower max_tokens or load the model with a larger n_ctx."
        )
    return FittedPrompt(tokens=best[1], dropped_messages=best[0])
