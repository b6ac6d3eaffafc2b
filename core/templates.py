"""Chat messages and turning them into prompt tokens.

Two formats, both producing token ids (never text that gets re-tokenized):

- ``Llama2ChatFormat``: Meta's exact Llama-2-chat construction from ``generation.py``:
  per finished turn ``<s>`` + encode("[INST] {user} [/INST] {answer} ") + ``</s>``, the
  last turn ``<s>`` + encode("[INST] {user} [/INST]``"), a system prompt folded into the
  first user turn between ``<<SYS>>\\n`` and ``\\n<</SYS>>\\n\\n``. BOS/EOS are ids, never
  parsed from text, so a user typing ``</s>`` cannot end a turn. (llama-cpp-python's own
  "llama-2" format builds a string and differs in whitespace.)
- ``JinjaChatFormat``: the GGUF's own ``tokenizer.chat_template`` rendered in a sandbox, as
  Hugging Face's ``apply_chat_template`` does, then tokenized with special tokens parsed.

``choose_chat_format`` picks one for a model; ``fit_messages`` drops the oldest turns
(keeping the system prompt and the last user message) until the prompt fits a budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Optional, Protocol, Sequence

from .errors import ChatTemplateError, ContextOverflowError

__all__ = [
    "Message",
    "Tokenizer",
    "ChatFormat",
    "Llama2ChatFormat",
    "JinjaChatFormat",
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


class JinjaChatFormat:
    """A model's own Jinja chat template, rendered in a sandbox."""

    name = "gguf"

    def __init__(self, template: str, tokenizer: Tokenizer, add_bos: bool = False) -> None:
        from jinja2 import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        self.tokenizer = tokenizer
        self.add_bos = add_bos
        self.bos_text = tokenizer.token_text(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
        self.eos_text = tokenizer.token_text(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                           extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = self._raise
        try:
            self._template = env.from_string(template)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not parse ({exc}); "
                                    "pass chat_format='llama-2' or fix the GGUF's template.") from None

    @staticmethod
    def _raise(message: str) -> None:
        raise ChatTemplateError(f"the model's chat template refused the messages: {message}")

    def render(self, messages: Sequence[Message | dict]) -> str:
        from jinja2 import TemplateError

        dialog = [{"role": m.role, "content": m.content} for m in _coerce(messages)]
        try:
            return self._template.render(messages=dialog, add_generation_prompt=True,
                                         bos_token=self.bos_text, eos_token=self.eos_text)
        except TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template failed: {exc}") from None

    def format(self, messages: Sequence[Message | dict]) -> list[int]:
        text = self.render(messages)
        tokens = self.tokenizer.encode(text, special=True)
        bos = self.tokenizer.bos_id
        if self.add_bos and bos is not None and (not tokens or tokens[0] != bos):
            tokens = [bos, *tokens]
        return tokens


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
