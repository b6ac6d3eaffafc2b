"""The JSON schema of the wire messages, for generating the front end's TypeScript types.

    python -m llamalab.extension.schema > wire-schema.json

``wire_schema()`` returns one document: every message model under ``$defs``, and the
unions ``ClientMessage`` (what a client sends on the chat WebSocket) and ``ServerMessage``
(what the server sends there) as ``oneOf`` lists discriminated by ``type``. What clients send
is described as the server validates it (fields with defaults optional); what the server
sends, as it is serialized (every field present).
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional, Sequence

from pydantic import TypeAdapter
from pydantic.json_schema import models_json_schema

from . import messages

__all__ = ["wire_schema", "main"]


def wire_schema() -> dict[str, Any]:
    client = TypeAdapter(messages.ClientMessage).json_schema(ref_template="#/$defs/{model}", mode="validation")
    server = TypeAdapter(messages.ServerMessage).json_schema(ref_template="#/$defs/{model}", mode="serialization")
    _, top = models_json_schema([(m, "validation") for m in messages.REST_REQUESTS]
                                + [(m, "serialization") for m in messages.REST_REPLIES],
                                ref_template="#/$defs/{model}")
    defs: dict[str, Any] = {}
    for part in (client, server, top):
        defs.update(part.pop("$defs", {}))
    defs["ClientMessage"] = client
    defs["ServerMessage"] = server
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "llamalab wire messages",
        "description": f"protocol version {messages.PROTOCOL_VERSION}; see llamalab/extension/messages.py",
        "protocol": messages.PROTOCOL_VERSION,
        "$defs": dict(sorted(defs.items())),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    text = json.dumps(wire_schema(), indent=2, sort_keys=False) + "\n"
    if args:
        with open(args[0], "w", encoding="utf-8") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
