#!/usr/bin/env python
"""Ghost text in a real notebook: latency per keystroke through a real Jupyter server.

Usage::

    python bench/bench_notebook.py                  # 240 keystrokes per notebook and side
    python bench/bench_notebook.py --quick          # 40 keystrokes, no chat (CI smoke, < 3 min)
    python bench/bench_notebook.py --chat --json out.json --strict

One run starts a Jupyter server with the llamalab extension preloading the model (the same
private setup as ``bench_server.py``) and types a new cell, one character at a time, at the
end of two notebooks: a short one (one cell above the cursor) and one of 40 cells (about
11 kB above the cursor). Each keystroke sends ``POST /llamalab/complete`` as JupyterLab's
inline completer does, and waits for its answer before the next keystroke (so each latency
is one request's own). Two sides, in the same run, against the same server:

``old``
    the request the front end sent before issue 12: ``prefix`` = the last 6,000 characters
    of the cells above and the cell's text, joined by blank lines and cut at a line start
    (a window that slides with every keystroke), no ``path``, no ``cells``. With
    ``--baseline-rev REV`` these go to a second Jupyter server running llamalab as of the git
    revision REV (``git archive`` of its ``core/``, ``extension/`` and ``lsp/`` put first on
    the server's ``PYTHONPATH``; e.g. ``9042e87``, the last one before the suggestion service),
    so the table compares the old path as a whole with the new; without it they go to the
    same server as ``new`` (the old request shape on today's server).
``new``
    what it sends now: the cells (``cells``, ``cell_index``), the cursor's cell text as
    ``prefix``/``suffix``, the notebook's ``path``, one ``warm`` request when the cell is
    entered (not timed: the user is still moving the cursor), and the front end's
    type-ahead: a keystroke that types the next character of the suggestion on screen
    sends nothing (counted as "type-ahead"; its latency is not in the percentiles).

Per keystroke the table reports the p50 and p90 latency of the requests sent and the share
of the prompt the model evaluated again (``1 - reused_prompt_tokens / prompt_tokens``, from
the reply's usage). Targets (issue 12): with ``new``, p50 in the 40-cell notebook at most
1.5x the short notebook's, and a median re-evaluated share of at most 10 %. With ``--chat``
the 40-cell ``new`` session runs again while a chat answer streams on the chat WebSocket
(the slot engine serves both). Ratios are from the same run: the machines are shared.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import add_common_arguments, model_path, save_report  # noqa: E402
from bench_server import Server  # noqa: E402

TAIL_CHARS = 6000  # the old front end's prefix bound
TARGET_RATIO = 1.5
TARGET_REEVALUATED = 0.10

SETUP = "import math\nimport statistics\n\nvalues = [3.5, 1.25, 9.0, 4.75, 2.5, 8.0]\n"
TYPED = ('def describe(data):\n    """Summary statistics of a list of numbers."""\n'
         "    mean = statistics.mean(data)\n    spread = statistics.pstdev(data)\n"
         "    largest = max(data)\n    smallest = min(data)\n"
         "    return {\"mean\": mean, \"spread\": spread, \"range\": largest - smallest}\n\n"
         "summary = describe(values)\nprint(summary[\"mean\"], summary[\"range\"])\n"
         "scaled = [math.sqrt(v) for v in values if v > 2]\n")


def forty_cells() -> list[dict[str, str]]:
    """A notebook of 40 ordinary cells, about 11 kB: a setup cell and 39 small functions."""
    cells = [{"id": "cell-0", "source": SETUP, "kind": "code"}]
    for i in range(1, 40):
        cells.append({"id": f"cell-{i}", "kind": "code", "source": (
            f"def step_{i}(data, scale={i}):\n    \"\"\"Scale, then average ({i}).\"\"\"\n    total = 0.0\n"
            f"    for item in data:\n        total += item * scale\n    return round(total / len(data), 3)\n\n"
            f"result_{i} = step_{i}(values)\nprint(result_{i})\n")})
    return cells


def keep_tail(text: str, limit: int) -> str:
    """The old front end's ``keepTail``: the last ``limit`` characters from a line start."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    newline = text.find("\n", cut)
    return text[newline + 1:] if newline >= 0 else text[cut:]


@dataclass
class Session:
    notebook: str
    side: str
    latencies_ms: list[float] = field(default_factory=list)
    reevaluated: list[float] = field(default_factory=list)
    type_ahead: int = 0
    keystrokes: int = 0

    def p(self, q: float) -> Optional[float]:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    @property
    def median_reevaluated(self) -> Optional[float]:
        return statistics.median(self.reevaluated) if self.reevaluated else None


class Typist:
    def __init__(self, server: Server, client: Any, max_tokens: int) -> None:
        self.server, self.client, self.max_tokens = server, client, max_tokens

    async def complete(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        r = await self.client.post(f"{self.server.root}/llamalab/complete", headers=self.server.headers,
                                   json={**body, "max_tokens": self.max_tokens}, timeout=120)
        elapsed = 1000 * (time.perf_counter() - t0)
        if r.status_code != 200:
            raise self.server.fail(f"/llamalab/complete answered {r.status_code}: {r.text[:300]}")
        return elapsed, r.json()

    async def session(self, notebook: str, cells_above: list[dict[str, str]], side: str, keystrokes: int,
                      path: str) -> Session:
        out = Session(notebook, side)
        cell_id = f"typed-{uuid.uuid4().hex[:8]}"
        cells = cells_above + [{"id": cell_id, "source": "", "kind": "code"}]
        above = "\n\n".join(c["source"].rstrip() for c in cells_above)
        text = (TYPED * (1 + keystrokes // len(TYPED)))[:keystrokes]
        shown: Optional[tuple[str, str]] = None  # (the cell's text when shown, the suggestion)
        if side == "new":
            await self.complete({"prefix": "", "cells": cells, "cell_index": len(cells) - 1, "path": path,
                                 "language": "python", "warm": True})
        for n in range(1, len(text) + 1):
            typed = text[:n]
            out.keystrokes += 1
            if side == "new" and shown is not None and typed.startswith(shown[0]) \
                    and len(typed) > len(shown[0]) and shown[1].startswith(typed[len(shown[0]):]) \
                    and len(typed) - len(shown[0]) < len(shown[1]):
                out.type_ahead += 1  # the front end shows the rest of the suggestion: no request
                continue
            if side == "new":
                body = {"prefix": typed, "suffix": "", "cells": cells, "cell_index": len(cells) - 1, "path": path,
                        "language": "python"}
            else:
                body = {"prefix": keep_tail(above + "\n\n" + typed, TAIL_CHARS), "suffix": "", "language": "python"}
            elapsed, reply = await self.complete(body)
            out.latencies_ms.append(elapsed)
            usage = reply["usage"]
            if usage.get("reused_prompt_tokens") is not None and usage["prompt_tokens"]:
                out.reevaluated.append(1 - usage["reused_prompt_tokens"] / usage["prompt_tokens"])
            shown = (typed, reply["text"]) if reply["text"] else None
        return out


async def stream_chat(server: Server, stop: asyncio.Event) -> int:
    """Chat answers, one after another, on the chat WebSocket until ``stop``; tokens received."""
    from tornado.httpclient import HTTPRequest
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(HTTPRequest(f"ws://127.0.0.1:{server.port}/llamalab/chat",
                                               headers=server.headers))
    tokens = 0
    try:
        await conn.read_message()  # hello
        while not stop.is_set():
            rid = uuid.uuid4().hex
            await conn.write_message(json.dumps({
                "type": "chat", "id": rid, "conversation_id": f"bench-{rid}",
                "content": "Write a long story about a llama who learns to program.",
                "params": {"max_tokens": 400, "temperature": 0}}))
            while True:
                message = json.loads(await conn.read_message())
                if message.get("id") != rid:
                    continue
                if message["type"] == "token":
                    tokens += 1
                    if stop.is_set():
                        await conn.write_message(json.dumps({"type": "cancel", "id": uuid.uuid4().hex,
                                                             "target": rid}))
                if message["type"] in ("done", "error"):
                    break
    finally:
        conn.close()
    return tokens


def baseline_code(rev: str) -> Path:
    """llamalab's packages as of git revision ``rev``, laid out for ``PYTHONPATH`` (a temp folder)."""
    repo = Path(__file__).resolve().parent.parent
    root = Path(tempfile.mkdtemp(prefix="llamalab-baseline-"))
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", rev, "core", "extension", "lsp"],
                             capture_output=True)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {rev} failed: {archive.stderr.decode(errors='replace').strip()}")
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    package = root / "pkg" / "llamalab"
    shutil.copytree(root / "core", package)
    shutil.copytree(root / "extension", package / "extension")
    shutil.copytree(root / "lsp", package / "lsp")
    return root / "pkg"


def _ms(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def report(sessions: list[Session]) -> tuple[list[str], dict[str, Any], bool]:
    lines = ["| notebook | side | requests | type-ahead | p50 ms | p90 ms | re-evaluated (median) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in sessions:
        lines.append(f"| {s.notebook} | {s.side} | {len(s.latencies_ms)} | {s.type_ahead} | {_ms(s.p(0.5))} | "
                     f"{_ms(s.p(0.9))} | {_pct(s.median_reevaluated)} |")
    by = {(s.notebook, s.side): s for s in sessions}
    verdicts: dict[str, Any] = {}
    ok = True
    lines.append("")
    for side in ("old", "new"):
        short, long = by.get(("short", side)), by.get(("40 cells", side))
        if short and long and short.p(0.5) and long.p(0.5):
            ratio = long.p(0.5) / short.p(0.5)
            verdicts[f"{side}_ratio"] = ratio
            target = f" (target <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'MISSED'})" \
                if side == "new" else ""
            lines.append(f"{side}: p50 40 cells / short = {ratio:.2f}x{target}")
            if side == "new":
                ok &= ratio <= TARGET_RATIO
    long_new = by.get(("40 cells", "new"))
    if long_new and long_new.median_reevaluated is not None:
        met = long_new.median_reevaluated <= TARGET_REEVALUATED
        ok &= met
        verdicts["new_reevaluated"] = long_new.median_reevaluated
        lines.append(f"new, 40 cells: median re-evaluated {_pct(long_new.median_reevaluated)} "
                     f"(target <= {_pct(TARGET_REEVALUATED)}: {'met' if met else 'MISSED'})")
    long_old = by.get(("40 cells", "old"))
    if long_old and long_new and long_old.p(0.5) and long_new.p(0.5):
        verdicts["speedup_40_cells"] = long_old.p(0.5) / long_new.p(0.5)
        lines.append(f"40 cells: new is {verdicts['speedup_40_cells']:.1f}x faster than old at p50")
    return lines, verdicts, ok


async def run(args: argparse.Namespace) -> int:
    import httpx

    model = model_path(args)
    server = Server(model, args)
    baseline: Optional[Server] = None
    code: Optional[Path] = None
    try:
        if args.baseline_rev:
            code = baseline_code(args.baseline_rev)
            baseline_args = copy.copy(args)
            baseline_args.pythonpath = code
            baseline = Server(model, baseline_args)
        async with httpx.AsyncClient() as client:
            loaded = await server.wait_ready(client)
            typist = Typist(server, client, args.max_tokens)
            old_typist = typist
            if baseline is not None:
                await baseline.wait_ready(client)
                old_typist = Typist(baseline, client, args.max_tokens)
                await old_typist.session("short", [{"id": "setup", "source": SETUP, "kind": "code"}], "old", 8,
                                         "warmup.ipynb")
            notebooks = {"short": [{"id": "setup", "source": SETUP, "kind": "code"}], "40 cells": forty_cells()}
            sessions: list[Session] = []
            await typist.session("short", notebooks["short"], "new", 8, "warmup.ipynb")  # load, first-call costs
            for side in ("new", "old"):  # old sessions leave long prompts in the KV cache: they go last
                for name, cells in notebooks.items():
                    path = f"{name.replace(' ', '-')}-{side}.ipynb"
                    who = old_typist if side == "old" else typist
                    sessions.append(await who.session(name, cells, side, args.keystrokes, path))
            if args.chat:
                stop = asyncio.Event()
                chat = asyncio.ensure_future(stream_chat(server, stop))
                session = await typist.session("40 cells", notebooks["40 cells"], "new", args.keystrokes,
                                               "40-cells-chat.ipynb")
                session.notebook = "40 cells, chat streaming"
                stop.set()
                chat_tokens = await chat
                sessions.append(session)
            lines, verdicts, ok = report(sessions)
    finally:
        server.close()
        if baseline is not None:
            baseline.close()
        if code is not None:
            shutil.rmtree(code.parent, ignore_errors=True)
    print(f"model: {loaded.get('name')} - n_ctx {args.n_ctx}, {args.threads} thread(s), "
          f"{args.keystrokes} keystrokes per session, max_tokens {args.max_tokens}"
          + (f", server settings {args.extension}" if args.extension else "")
          + (f"; old: llamalab {args.baseline_rev} in its own server" if args.baseline_rev else
             "; old: the old request shape on the same server"))
    print("\n".join(lines))
    if args.chat:
        print(f"(the chat streamed {chat_tokens} tokens meanwhile)")
    if args.json:
        save_report(args.json, {"sessions": [s.__dict__ for s in sessions], "verdicts": verdicts,
                                "keystrokes": args.keystrokes, "n_ctx": args.n_ctx})
    return 1 if args.strict and not ok else 0


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    from llamalab.engine.local import default_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, home_also=", also the server's store_dir")
    ap.add_argument("--keystrokes", type=int, help="characters typed per session (default 240; 40 with --quick)")
    ap.add_argument("--max-tokens", type=int, default=16, help="longest suggestion (default %(default)s)")
    ap.add_argument("--threads", type=int, default=default_threads()[0], help="decode threads (default %(default)s)")
    ap.add_argument("--n-ctx", type=int, default=4096, help="the server's context window (default %(default)s)")
    ap.add_argument("--gpu-layers", default="auto", help="n_gpu_layers (default %(default)s)")
    ap.add_argument("--prefix-tokens", type=int, help="the server's completion_prefix_tokens (default: its own)")
    ap.add_argument("--context-tokens", type=int, help="the server's completion_context_tokens (default: its own)")
    ap.add_argument("--baseline-rev", metavar="REV",
                    help="send the old requests to llamalab as of this git revision (see above)")
    ap.add_argument("--chat", action="store_true", help="also type the 40-cell session while a chat streams")
    ap.add_argument("--quick", action="store_true", help="40 keystrokes per session, for a CI smoke run")
    args = ap.parse_args(argv)
    args.keystrokes = args.keystrokes if args.keystrokes is not None else 40 if args.quick else 240
    if args.keystrokes < 1:
        ap.error("--keystrokes must be at least 1")
    args.extension = {key: value for key, value in (("completion_prefix_tokens", args.prefix_tokens),
                                                    ("completion_context_tokens", args.context_tokens))
                      if value is not None}
    return args


if __name__ == "__main__":
    sys.exit(asyncio.run(run(parse_args())))
