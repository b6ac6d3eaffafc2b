"""JSON-RPC strictness pygls 2 leaves out: every malformed request gets an error reply.

pygls 2.1 drops some bad messages with only a log line, which leaves an editor waiting on a
request forever. ``LlamalabProtocol`` answers them as JSON-RPC 2.0 says:

- a body that is not JSON (or not UTF-8): ``-32700`` Parse error, id ``null``
  (``send_parse_error``; the server's error hook calls it);
- JSON that is not a request object (an array, a number, no or a wrong ``jsonrpc``, an id
  that is neither a number nor a string): ``-32600`` Invalid Request;
- a known method whose params have the wrong shape: ``-32602`` Invalid params, with the
  path of each bad field (``$.params.position.line``) so the client's author can fix it;
  a notification with bad params cannot be answered, so it is logged as a warning.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

import cattrs
from lsprotocol import types
from pygls.protocol import LanguageServerProtocol

__all__ = ["LlamalabProtocol", "InvalidMessage", "PARSE_ERROR", "INVALID_REQUEST", "INVALID_PARAMS",
           "ParseErrorLogFilter"]

log = logging.getLogger("llamalab.lsp")

PARSE_ERROR, INVALID_REQUEST, INVALID_PARAMS = -32700, -32600, -32602
_SNAKE = re.compile(r"(?<=[a-z])_([a-z])")


@dataclass(frozen=True)
class InvalidMessage:
    """A message that failed to parse into its LSP type; answered instead of handled."""

    code: int
    message: str
    id: Union[int, str, None] = None
    is_request: bool = True


def _describe(exc: Exception) -> str:
    """cattrs' reasons, with the paths in the wire's camelCase (``$.params.position.line``)."""
    if isinstance(exc, cattrs.ClassValidationError):
        return "; ".join(_SNAKE.sub(lambda m: m[1].upper(), line) for line in cattrs.transform_error(exc, path="$"))
    return str(exc) or type(exc).__name__


def _valid_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


class LlamalabProtocol(LanguageServerProtocol):
    def structure_message(self, data: dict[str, Any]) -> Any:
        if "jsonrpc" not in data:  # a nested object, or not JSON-RPC at all (judged in handle_message)
            return data
        method = data.get("method")
        if isinstance(method, str) and "id" in data and not _valid_id(data["id"]):
            return InvalidMessage(INVALID_REQUEST, f"Invalid Request: the id must be a number or a string, "
                                  f"got {data['id']!r}.")
        if not isinstance(method, str):
            return super().structure_message(data)  # a response from the client
        message_type = self.get_message_type(method)
        if message_type is None:
            return super().structure_message(data)  # unknown methods: pygls answers -32601
        try:
            return self._converter.structure(data, message_type)
        except Exception as exc:  # cattrs' validation errors, and TypeErrors from the lsprotocol hooks
            detail = _describe(exc)
            return InvalidMessage(INVALID_PARAMS,
                                  f"Invalid params for {method}: {detail}. Send params shaped as the LSP "
                                  "specification says for this method.", data.get("id"), "id" in data)

    def handle_message(self, message: Any) -> None:
        if isinstance(message, InvalidMessage):
            self.reject(message)
            return
        if getattr(message, "jsonrpc", None) != self.VERSION:
            if isinstance(message, dict):
                raw_id, notification = message.get("id"), "id" not in message and "method" in message
            else:  # a JSON array or scalar, or a typed message with another "jsonrpc"
                raw_id, notification = getattr(message, "id", None), hasattr(message, "method") and \
                    not hasattr(message, "id")
            self.reject(InvalidMessage(INVALID_REQUEST, "Invalid Request: expected a JSON-RPC 2.0 object with "
                                       "\"jsonrpc\": \"2.0\" and a \"method\".",
                                       raw_id if _valid_id(raw_id) else None, not notification))
            return
        super().handle_message(message)

    def reject(self, invalid: InvalidMessage) -> None:
        """Answer a message that cannot be handled (or log it, for a notification)."""
        if not invalid.is_request:
            log.warning("ignored a notification: %s", invalid.message)
            return
        log.warning("rejected a request (%d): %s", invalid.code, invalid.message)
        if invalid.id is None:
            self.send_error_without_id(invalid.code, invalid.message)
        else:
            self._send_response(invalid.id, error=types.ResponseError(code=invalid.code, message=invalid.message))

    def send_error_without_id(self, code: int, message: str) -> None:
        self._send_data({"jsonrpc": self.VERSION, "id": None, "error": {"code": code, "message": message}})

    def send_parse_error(self, error: Optional[BaseException] = None) -> None:
        detail = f" ({error})" if error else ""
        self.send_error_without_id(PARSE_ERROR, f"Parse error: the message body is not valid UTF-8 JSON{detail}.")


class ParseErrorLogFilter(logging.Filter):
    """Drops pygls' traceback for a body that is not JSON: the parse error reply and one
    warning line say it already."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, (ValueError,)) or record.getMessage() != "Unable to handle message"
