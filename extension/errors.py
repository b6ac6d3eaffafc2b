"""The extension's own errors, and how any error becomes a wire ``ErrorMessage``.

    LlamalabError (llamalab)
     ├── ModelNotAllowedError   the server's allowed_models does not list the model
     ├── BusyError              the queue is full, or a conversation is still answering
     ├── NoInfillError          /infill for a model without fill-in-the-middle tokens (HTTP 501)
     └── PromptTooLongError     over the server's max_prompt_chars (HTTP 413, like a context overflow)

llamalab's errors carry one-line messages meant for people; they are passed on as they
are. Anything else is a bug: the client gets ``internal`` and the log the traceback.
"""

from __future__ import annotations

import logging
from typing import Optional

from pydantic import ValidationError

from llamalab import (ConfigError, ContextOverflowError, EngineBusyError, EngineError, LicenseNotAcceptedError,
                      LlamalabError, ModelError, ModelNotFoundError, PullError, license_notice)

from .messages import ErrorCode, ErrorMessage

__all__ = ["BusyError", "ModelNotAllowedError", "NoInfillError", "PromptTooLongError", "error_message", "http_status",
           "validation_message"]


class ModelNotAllowedError(LlamalabError):
    pass


class BusyError(LlamalabError):
    pass


class PromptTooLongError(LlamalabError):
    pass


class NoInfillError(LlamalabError):
    pass


_CODES: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (ModelNotAllowedError, "model_not_allowed"),
    (BusyError, "busy"),
    (EngineBusyError, "busy"),
    (PromptTooLongError, "prompt_too_long"),
    (NoInfillError, "bad_request"),
    (ContextOverflowError, "prompt_too_long"),
    (ModelNotFoundError, "model_not_found"),
    (LicenseNotAcceptedError, "license_required"),
    (ConfigError, "bad_request"),
    (ModelError, "engine_error"),
    (EngineError, "engine_error"),
    (PullError, "engine_error"),
    (LlamalabError, "engine_error"),
)

_STATUS: dict[str, int] = {
    "bad_request": 400, "forbidden": 403, "unknown_type": 400, "not_found": 404, "model_not_found": 404,
    "model_not_allowed": 403, "prompt_too_long": 413, "busy": 429, "license_required": 403,
    "conflict": 409, "too_large": 413,
    "engine_error": 500, "internal": 500,
}


def error_message(exc: BaseException, request_id: Optional[str] = None,
                  log: Optional[logging.Logger] = None) -> ErrorMessage:
    """The wire form of ``exc``; unexpected exceptions are logged with their traceback."""
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return ErrorMessage(id=request_id, code=code, message=" ".join(str(exc).split()), detail=_detail(exc))
    (log or logging.getLogger(__name__)).error("unexpected error", exc_info=exc)
    return ErrorMessage(id=request_id, code="internal",
                        message=f"internal error ({type(exc).__name__}); see the Jupyter server's log.")


def _detail(exc: BaseException) -> Optional[dict]:
    """What a client needs beyond the message: for a licence, which one and where to read it."""
    if isinstance(exc, LicenseNotAcceptedError) and exc.license:
        return {"license": exc.license, "license_url": exc.license_url, "notice": license_notice(exc.license)}
    return None


def validation_message(exc: ValidationError, request_id: Optional[str] = None,
                       code: ErrorCode = "bad_request") -> ErrorMessage:
    """One line naming the first problem; every problem in ``detail``."""
    problems = exc.errors(include_url=False, include_context=False, include_input=False)
    first = problems[0] if problems else {"loc": (), "msg": str(exc)}
    where = ".".join(str(p) for p in first["loc"]) or "message"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return ErrorMessage(id=request_id, code=code, message=f"invalid {where}: {first['msg']}{more}",
                        detail=problems)


def http_status(code: str) -> int:
    return _STATUS.get(code, 500)
