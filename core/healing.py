"""Token healing for code suggestions: the model writes the blanks before the cursor itself.

The indentation an editor puts on a new line, or the space after ``x =``, leaves a prompt at a
boundary the model has rarely seen: tokenizers join blanks to what follows them (GPT-2 BPE
writes ``"\\n" + 11 spaces`` then ``" self"``, but ``"\\n" + 8 spaces`` then ``"4"``), so a
prompt that ends in the blanks makes the model start with a space-prefixed token and the
suggestion lands one space off (13 spaces where the buffer has 12), or stops making sense.

The same holds for a partial word at the cursor (``self.ite``): ``"ite"`` is rarely a token
of its own in ``self.items``. ``heal_prefix`` takes the trailing blanks (and the newline they
follow), or the partial word with the single space before it, out of the prompt;
the engine is asked to begin its answer with exactly that text (``GenerationParams.heal``:
``LocalEngine`` lets only tokens consistent with it be chosen until it is written, so the
model picks whichever tokenization it finds likeliest), and ``strip_healed`` keeps what the
answer adds beyond the text the buffer already has.
"""

from __future__ import annotations

import re

__all__ = ["heal_prefix", "strip_healed"]


_PARTIAL_WORD = re.compile(r"\w{1,32}$")


def heal_prefix(prefix: str) -> tuple[str, str]:
    """(the prompt's prefix, the healed text): trailing spaces and tabs with the newline they
    follow, or else the word the cursor is in (up to 32 characters, with one space before it), go
    to the model; nothing when that would leave no prompt."""
    kept = prefix.rstrip(" \t")
    if kept == prefix:
        word = _PARTIAL_WORD.search(prefix)
        kept = prefix[:word.start()] if word else prefix
        if word and kept.endswith(" ") and not kept[-2:-1].isspace():
            kept = kept[:-1]  # tokenizers write a word with the one space before it: " m", not " " + "m"
    elif kept.endswith("\n"):
        kept = kept[:-1]
    if not kept.strip():
        return prefix, ""
    return kept, prefix[len(kept):]


def strip_healed(generated: str, healed: str) -> str:
    """The part of ``generated`` (as streamed so far) that the buffer does not have yet.

    An engine that honours ``GenerationParams.heal`` writes the healed text first: only what
    follows is kept, and nothing shows while that text is not complete. One that does not
    may write other blanks: then the buffer's own indentation wins."""
    if not healed:
        return generated
    if generated.startswith(healed):
        return generated[len(healed):]
    if healed.startswith(generated):
        return ""
    return generated.lstrip(" \t\n") if healed.strip(" \t\n") == "" else generated
