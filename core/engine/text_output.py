"""``TextAssembler``: generated token bytes to the text a client sees, with stop strings.

Tokens may end in the middle of a UTF-8 character, and a stop string may span several
tokens, so text is released only once it is certain: complete characters that cannot be
the start of a stop string. When a stop string appears, the text before it is the answer's
end and the stop string itself is never shown (OpenAI's and llama.cpp's convention).
"""

from __future__ import annotations

import codecs
from typing import Sequence

__all__ = ["TextAssembler"]


class TextAssembler:
    def __init__(self, stop: Sequence[str] = ()) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(s for s in stop if s)
        self._held = ""  # decoded text that might be the start of a stop string
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add one token's bytes; return the text now safe to show ("" if none)."""
        if self.stopped:
            return ""
        text = self._decoder.decode(data)
        if not self._stops:
            return text
        held = self._held + text
        cut = min((i for i in (held.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return held[:cut]
        keep = self._partial_stop_length(held)
        self._held = held[len(held) - keep:] if keep else ""
        return held[:len(held) - keep]

    def _partial_stop_length(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins some stop string."""
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest

    def finish(self) -> str:
        """The rest, at the end of the generation: held text and any incomplete character."""
        if self.stopped:
            return ""
        rest = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return rest
