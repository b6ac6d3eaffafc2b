"""The language server's settings: their camelCase names on the wire, defaults, and checks.

They come from ``initializationOptions`` and from ``workspace/didChangeConfiguration``
(either the bare object or one nested under ``"llamalab"``). ``Settings.updated`` applies
the keys it knows and returns, next to the new settings, one line per key it ignored
(unknown, or a value of the wrong type or out of range), ready to be shown to a person:
a bad setting never stops the server, it keeps the previous value.

==================  =========  ==========================================================
key                 default    meaning
==================  =========  ==========================================================
model               (default)  GGUF path or catalog name of the local model
remoteUrl           none       an OpenAI-compatible server instead (``http://host:port/v1``)
remoteModel         none       the model name to ask the remote server for
nCtx                4096       context window of the local model (tokens)
nParallel           4          requests the local model serves at once (its KV slots)
maxTokens           64         most tokens one suggestion may have
debounceMs          150        wait this long for more typing before generating
timeBudgetMs        3000       stop a generation after this long (0: no limit)
prefixTokens        1024       tokens of text before the cursor in the prompt
suffixTokens        256        tokens of text after the cursor (FIM models only)
contextTokens       512        tokens from other open documents of the same language (0: none)
languages           []         languageIds to complete (empty or ``["*"]``: all)
logStats            true       send each request's prompt statistics as window/logMessage
==================  =========  ==========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Optional

__all__ = ["Settings", "ENGINE_FIELDS"]

# Settings that need the model loaded again when they change.
ENGINE_FIELDS = ("model", "remote_url", "remote_model", "n_ctx", "n_parallel")


@dataclass(frozen=True)
class _Spec:
    field: str
    kind: type  # str, int, bool or tuple (a list of strings)
    low: int = 0
    high: int = 0


_SPECS: dict[str, _Spec] = {
    "model": _Spec("model", str),
    "remoteUrl": _Spec("remote_url", str),
    "remoteModel": _Spec("remote_model", str),
    "nCtx": _Spec("n_ctx", int, 256, 131072),
    "nParallel": _Spec("n_parallel", int, 1, 64),
    "maxTokens": _Spec("max_tokens", int, 1, 4096),
    "debounceMs": _Spec("debounce_ms", int, 0, 10000),
    "timeBudgetMs": _Spec("time_budget_ms", int, 0, 600000),
    "prefixTokens": _Spec("prefix_tokens", int, 16, 131072),
    "suffixTokens": _Spec("suffix_tokens", int, 0, 131072),
    "contextTokens": _Spec("context_tokens", int, 0, 131072),
    "languages": _Spec("languages", tuple),
    "logStats": _Spec("log_stats", bool),
}


@dataclass(frozen=True)
class Settings:
    model: Optional[str] = None
    remote_url: Optional[str] = None
    remote_model: Optional[str] = None
    n_ctx: int = 4096
    n_parallel: int = 4
    max_tokens: int = 64
    debounce_ms: int = 150
    time_budget_ms: int = 3000
    prefix_tokens: int = 1024
    suffix_tokens: int = 256
    context_tokens: int = 512
    languages: tuple[str, ...] = ()
    log_stats: bool = True

    def updated(self, options: Any) -> tuple["Settings", list[str]]:
        """These settings with the known keys of ``options`` applied, and a line for each key
        that was ignored and why."""
        if options is None:
            return self, []
        if not isinstance(options, dict):
            return self, [f"llamalab settings must be a JSON object, got {_show(options)}; ignored."]
        changes: dict[str, Any] = {}
        problems: list[str] = []
        for key, value in options.items():
            spec = _SPECS.get(key)
            if spec is None:
                problems.append(f"unknown llamalab setting {key!r} ignored; known settings: "
                                f"{', '.join(sorted(_SPECS))}.")
                continue
            if value is None:
                if spec.kind is str:
                    changes[spec.field] = None
                continue
            checked, problem = _check(key, spec, value)
            if problem:
                problems.append(f"{problem}; keeping {_show(getattr(self, spec.field))}.")
            else:
                changes[spec.field] = checked
        return replace(self, **changes), problems

    def changed(self, other: "Settings") -> list[str]:
        """The field names whose values differ between these settings and ``other``."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]

    def completes(self, language_id: Optional[str]) -> bool:
        """Whether documents of this languageId get completions."""
        return not self.languages or "*" in self.languages or (language_id or "") in self.languages


def _check(key: str, spec: _Spec, value: Any) -> tuple[Any, Optional[str]]:
    if spec.kind is bool:
        if isinstance(value, bool):
            return value, None
        return None, f"setting {key!r} must be true or false, got {_show(value)}"
    if spec.kind is str:
        if isinstance(value, str) and value.strip():
            return value.strip(), None
        return None, f"setting {key!r} must be a non-empty string, got {_show(value)}"
    if spec.kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool) and spec.low <= value <= spec.high:
            return value, None
        return None, f"setting {key!r} must be a whole number from {spec.low} to {spec.high}, got {_show(value)}"
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value), None
    return None, f"setting {key!r} must be a list of languageIds such as [\"python\"], got {_show(value)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
