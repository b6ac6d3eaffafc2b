"""The terminal chat: a read-eval-print loop that streams answers.

Ctrl-C while an answer streams stops that answer and keeps the chat; Ctrl-C or Ctrl-D at
the prompt ends it. Slash commands: /reset, /system TEXT, /help, /exit.
"""

from __future__ import annotations

from typing import Callable, Optional, TextIO

from ..engine.base import Engine, GenerationParams
from ..templates import Message

__all__ = ["ChatSession", "run_repl"]

HELP = ("Commands: /reset forgets the conversation, /system TEXT sets the system prompt, "
        "/exit quits. Ctrl-C stops an answer; Ctrl-D quits.")


class ChatSession:
    """A conversation's history and how it is sent to the engine."""

    def __init__(self, engine: Engine, params: GenerationParams, system: Optional[str] = None) -> None:
        self.engine = engine
        self.params = params
        self.system = system
        self.history: list[Message] = []

    def messages(self, user_text: str) -> list[Message]:
        head = [Message("system", self.system)] if self.system else []
        return head + self.history + [Message("user", user_text)]

    def ask(self, user_text: str, write: Callable[[str], None]) -> tuple[str, str, int]:
        """Stream the answer through ``write``; return (answer, finish reason, turns dropped)."""
        stream = self.engine.chat(self.messages(user_text), self.params)
        try:
            for piece in stream:
                write(piece)
        except KeyboardInterrupt:
            stream.cancel()
            stream.close()
            answer, finish, dropped = stream.text, "cancelled", 0
        else:
            result = stream.result
            assert result is not None
            answer, finish, dropped = result.text, result.finish_reason, result.dropped_messages
        self.history += [Message("user", user_text), Message("assistant", answer)]
        return answer, finish, dropped


def run_repl(session: ChatSession, out: TextIO, read: Callable[[str], str] = input) -> None:
    def write(text: str) -> None:
        out.write(text)
        out.flush()

    write(HELP + "\n")
    while True:
        try:
            line = read("you> ")
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/help":
            write(HELP + "\n")
            continue
        if text == "/reset":
            session.history.clear()
            write("(conversation cleared)\n")
            continue
        if text.startswith("/system"):
            session.system = text[len("/system"):].strip() or None
            write("(system prompt set)\n" if session.system else "(system prompt cleared)\n")
            continue
        write("assistant> ")
        _, finish, dropped = session.ask(text, write)
        if finish == "cancelled":
            write(" [stopped]")
        elif finish == "length":
            write(" [cut at the token limit; raise it with -n]")
        write("\n")
        if dropped:
            write(f"(the {dropped} oldest messages were left out to fit the context window)\n")
