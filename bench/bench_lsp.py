#!/usr/bin/env python
"""The language server in a simulated typing session against llama-cpp-python called directly.

Usage::

    python bench/bench_lsp.py                    # 6 lines of textwrap.py typed, 32 tokens max
    python bench/bench_lsp.py --quick            # 1 line, 8 bursts, 8 tokens (CI smoke)
    python bench/bench_lsp.py --module json.decoder --json out.json

The session: a module of the running Python's standard library (``textwrap`` by default) is
opened in ``llamalab lsp`` (a real subprocess, JSON-RPC over stdio). For each of ``--lines``
lines inside function bodies, spread over the file, the line's code is blanked (its indentation
kept) and then typed back in bursts of 1 to 4 characters (a fixed pseudo-random pattern): each
burst is one ``textDocument/didChange`` and one ``textDocument/inlineCompletion`` at the cursor,
as an editor sends after its debounce (the server's own ``debounceMs`` is 0 here).

For every request, the same generation runs through a separate ``llama_cpp.Llama`` in this
process: the exact prompt ids the server used (``llamalab/prompt``, checked against the count in
its statistics), the same ``max_tokens``, the same greedy sampling and the same stop string, and
the same token healing (a logits processor keeps its first tokens to the prompt's ``healed`` text). The
two sides run one after the other, never at once.

* latency: llamalab from just before the ``didChange`` is written to the reply read back (the
  client's view: JSON-RPC, document sync, prompt building, the engine's queue and threads);
  direct from just before ``create_completion`` to its last chunk. Which side runs first
  alternates from request to request; when the direct side goes first it needs the prompt
  first, so the ``didChange`` is sent before the clock starts for the server's request.
* prompt tokens re-evaluated: from the server's ``window/logMessage`` statistics
  (``prompt N tokens, reused M, evaluated K``), i.e. what llama.cpp's KV cache did not keep.

Targets: p50 latency overhead <= 10% over direct; after a one-character edit, at most 10% of
the prompt re-evaluated (median). They are printed as PASS/MISS; the exit status is 0 either
way unless ``--strict``. A benchmark that prints a table, not a test: nothing asserts on timings.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import itertools
import json
import os
import platform
import queue
import random
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from benchlib import add_common_arguments, model_path, save_report

OVERHEAD_TARGET = 0.10  # p50 latency through the server at most this much above direct
REEVAL_TARGET = 0.10  # after a one-character edit, at most this fraction of the prompt evaluated
STATS = re.compile(r"prompt (\d+) tokens, reused (\d+), evaluated (\d+); generated (\d+) tokens, ended by ([a-z ]+),"
                   r" \d+ ms \((\S+)\)")


@dataclass
class Request:
    line: int  # the line being typed (0-based)
    burst: int  # characters typed since the previous request
    first: bool  # the first request at this line (the cursor just moved there)
    lsp_ms: float
    direct_ms: float
    prompt_tokens: int
    reused_tokens: int
    evaluated_tokens: int
    generated_tokens: int
    ended_by: str
    same_text: bool  # the server's suggestion equals the direct generation, post-processed alike
    direct_first: bool  # the direct side ran first this time (its didChange then is not timed)
    type_ahead: bool = False  # answered from the last suggestion (the user typed what it said): no generation


class Client:
    """JSON-RPC 2.0 with LSP framing over the server's stdin/stdout; log messages are kept."""

    def __init__(self, command: list[str], env: dict[str, str], stderr: Any) -> None:
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env)
        self.replies: dict[Any, "queue.Queue[dict]"] = {}
        self.logs: "queue.Queue[str]" = queue.Queue()
        self.lock = threading.Lock()
        self.next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        assert out is not None
        while True:
            length = 0
            while (line := out.readline()).strip():
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if not line:
                return
            message = json.loads(out.read(length))
            if "method" not in message:
                self._box(message.get("id")).put(message)
            elif message["method"] == "window/logMessage":
                self.logs.put(message["params"]["message"])

    def _box(self, request_id: Any) -> "queue.Queue[dict]":
        with self.lock:
            return self.replies.setdefault(request_id, queue.Queue())

    def send(self, message: dict) -> None:
        body = json.dumps({"jsonrpc": "2.0", **message}).encode()
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.proc.stdin.flush()

    def notify(self, method: str, params: Any) -> None:
        self.send({"method": method, "params": params})

    def request(self, method: str, params: Any) -> int:
        self.next_id += 1
        self.send({"id": self.next_id, "method": method, "params": params})
        return self.next_id

    def wait(self, request_id: int, timeout: float = 300) -> Any:
        reply = self._box(request_id).get(timeout=timeout)
        if "error" in reply:
            raise RuntimeError(f"the server answered an error: {reply['error']}")
        return reply["result"]

    def call(self, method: str, params: Any, timeout: float = 300) -> Any:
        return self.wait(self.request(method, params), timeout)

    def stats(self, uri: str, timeout: float = 60) -> Optional[re.Match]:
        """The statistics of the generation for ``uri``; None when the server answered from its
        last suggestion (type-ahead) and generated nothing."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.logs.get(timeout=max(0.01, deadline - time.monotonic()))
            if (match := STATS.search(message)) is not None and match[6] == uri:
                return match
            if message == f"{uri}: no generation (type-ahead)":
                return None

    def close(self) -> None:
        try:
            self.call("shutdown", None, timeout=30)
            self.notify("exit", None)
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, json_help="write every request's numbers as JSON to PATH")
    ap.add_argument("--module", default="textwrap", help="standard-library module to type into (default %(default)s)")
    ap.add_argument("--lines", type=int, help="lines to type (default 6; 1 with --quick)")
    ap.add_argument("--max-bursts", type=int, help="requests per line at most (default: the whole line; 8 quick)")
    ap.add_argument("--max-tokens", type=int, help="tokens per suggestion at most (default 32; 8 with --quick)")
    ap.add_argument("--prefix-tokens", type=int, help="the server's prefix window (default 1024; 256 quick)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="context window (default %(default)s)")
    ap.add_argument("--seed", type=int, default=7, help="seed of the burst pattern (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="one short line, for a CI smoke run")
    args = ap.parse_args(argv)
    quick = args.quick
    args.lines = args.lines or (1 if quick else 6)
    args.max_bursts = args.max_bursts or (8 if quick else 10_000)
    args.max_tokens = args.max_tokens or (8 if quick else 32)
    args.prefix_tokens = args.prefix_tokens or (256 if quick else 1024)
    if args.lines < 1 or args.max_bursts < 1 or args.max_tokens < 1:
        ap.error("--lines, --max-bursts and --max-tokens must be at least 1")
    return args


def target_lines(source: str, count: int) -> list[int]:
    """``count`` lines of code inside function bodies, spread evenly over the file."""
    lines = source.split("\n")
    in_string = False
    candidates = []
    for i, line in enumerate(lines):
        if line.count('"""') % 2 or line.count("'''") % 2:
            in_string = not in_string
            continue
        code = line.strip()
        if (not in_string and line.startswith("        ") and 20 <= len(code) <= 64 and not code.startswith("#")
                and '"""' not in line and "'''" not in line):
            candidates.append(i)
    if not candidates:
        raise SystemExit("no line to type in this module; pick another with --module")
    step = len(candidates) / count
    return [candidates[int(step * k + step / 2)] for k in range(count)]


def bursts(text: str, rng: random.Random, limit: int) -> list[str]:
    """``text`` cut into keystroke bursts of 1 to 4 characters (at most ``limit`` of them)."""
    out: list[str] = []
    while text and len(out) < limit:
        n = rng.choice((1, 1, 1, 2, 3, 4))
        out.append(text[:n])
        text = text[n:]
    return out


def _load() -> Optional[float]:
    """The 1-minute load average (the machine may be shared), None where the OS has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _utf16(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


class _Healing:
    """A llama-cpp-python logits processor doing what ``GenerationParams.heal`` does in LocalEngine:
    until the answer has written ``healed``, only tokens consistent with it can be chosen."""

    _pieces: dict[int, list[bytes]] = {}

    def __init__(self, llama: Any, prompt_len: int, healed: str) -> None:
        import numpy as np

        self.llama, self.start, self.healed = llama, prompt_len, healed.encode("utf-8")
        key = id(llama)
        if key not in self._pieces:
            self._pieces[key] = [llama.detokenize([i]) for i in range(llama.n_vocab())]
        self.pieces, self.np = self._pieces[key], np

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        written = b"".join(self.pieces[int(t)] for t in input_ids[self.start:])
        left = self.healed[len(written):] if self.healed.startswith(written) else b""
        if not left:
            return scores
        allowed = self.np.array([bool(p) and (p.startswith(left) or left.startswith(p)) for p in self.pieces])
        return self.np.where(allowed, scores, -self.np.inf)


def _direct(llama: Any, tokens: list[int], max_tokens: int, stop: list[str], healed: str) -> tuple[float, str]:
    """The generation LocalEngine runs for the server, called directly."""
    import llama_cpp

    processors = llama_cpp.LogitsProcessorList([_Healing(llama, len(tokens), healed)]) if healed else None
    started = time.perf_counter()
    text = ""
    for chunk in llama.create_completion(tokens, max_tokens=max_tokens, temperature=0.0, top_p=0.95, top_k=40,
                                         min_p=0.05, repeat_penalty=1.0, stop=stop or None, stream=True,
                                         logits_processor=processors):
        text += chunk["choices"][0]["text"]
    return (time.perf_counter() - started) * 1000, text


def _type_line(client: Client, llama: Any, uri: str, lines: list[str], index: int, args: argparse.Namespace,
               rng: random.Random, turn: Iterator[int]) -> list[Request]:
    from llamalab import CursorContext, postprocess_completion, strip_healed

    line = lines[index]
    indent = line[:len(line) - len(line.lstrip())]
    blanked = lines[:index] + [indent] + lines[index + 1:]
    client.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                           "text": "\n".join(blanked)}})
    typed, results = indent, []
    for n, burst in enumerate(bursts(line[len(indent):], rng, args.max_bursts)):
        start = {"line": index, "character": _utf16(typed)}
        typed += burst
        cursor = {"line": index, "character": _utf16(typed)}
        ctx = CursorContext.at("\n".join(lines[:index] + [typed] + lines[index + 1:]),
                               len("\n".join(lines[:index] + [typed])))
        stop = ["\n"] if ctx.mode == "single" and ctx.line_prefix.strip() else []
        change = {"textDocument": {"uri": uri, "version": n + 2},
                  "contentChanges": [{"range": {"start": start, "end": start}, "text": burst}]}
        request = {"textDocument": {"uri": uri}, "position": cursor, "context": {"triggerKind": 2}}
        direct_first = next(turn) % 2 == 1  # alternate which side runs first
        t0 = time.perf_counter()
        client.notify("textDocument/didChange", change)
        if direct_first:  # the prompt the server will use, asked for before it generates
            info = client.call("llamalab/prompt", {"textDocument": {"uri": uri}, "position": cursor})
            direct_ms, direct_text = _direct(llama, info["tokens"], args.max_tokens, stop, info["healed"])
            t0 = time.perf_counter()
        reply = client.call("textDocument/inlineCompletion", request)
        lsp_ms = (time.perf_counter() - t0) * 1000
        stats = client.stats(uri)
        if stats is None:  # type-ahead: nothing to compare with a generation
            results.append(Request(index, len(burst), n == 0, lsp_ms, float("nan"), 0, 0, 0, 0, "type-ahead", True,
                                   direct_first, type_ahead=True))
            continue
        if not direct_first:
            info = client.call("llamalab/prompt", {"textDocument": {"uri": uri}, "position": cursor})
            direct_ms, direct_text = _direct(llama, info["tokens"], args.max_tokens, stop, info["healed"])
        if len(info["tokens"]) != int(stats[1]):
            print(f"warning: llamalab/prompt gave {len(info['tokens'])} tokens, the generation had {stats[1]}",
                  file=sys.stderr)
        suggestion = reply["items"][0]["insertText"] if reply["items"] else ""
        results.append(Request(index, len(burst), n == 0, lsp_ms, direct_ms, int(stats[1]), int(stats[2]),
                               int(stats[3]), int(stats[4]), stats[5],
                               suggestion == postprocess_completion(strip_healed(direct_text, info["healed"]), ctx),
                               direct_first))
    client.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    return results


def _measure(args: argparse.Namespace, path: Path) -> tuple[list[Request], dict[str, Any]]:
    import llama_cpp

    from llamalab.engine.local import default_threads

    module = importlib.import_module(args.module)
    source_path = Path(inspect.getsourcefile(module) or "")
    source = source_path.read_text(encoding="utf-8")
    lines = source.split("\n")
    threads, threads_batch = default_threads()
    load_before = _load()
    llama = llama_cpp.Llama(model_path=str(path), n_ctx=args.n_ctx, n_gpu_layers=0, n_threads=threads,
                            n_threads_batch=threads_batch, n_batch=512, seed=0, verbose=False)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    client = Client([sys.executable, "-m", "llamalab.lsp", "--log-level", "WARNING"], env, subprocess.DEVNULL)
    try:
        client.call("initialize", {"processId": os.getpid(), "rootUri": source_path.parent.as_uri(),
                                   "capabilities": {}, "initializationOptions": {
                                       "model": str(path), "nCtx": args.n_ctx, "maxTokens": args.max_tokens,
                                       "debounceMs": 0, "timeBudgetMs": 0, "prefixTokens": args.prefix_tokens,
                                       "contextTokens": 0, "logStats": True}})
        client.notify("initialized", {})
        warm = source_path.with_name("warm_up.py").as_uri()  # the model loads before the clock starts
        client.notify("textDocument/didOpen", {"textDocument": {"uri": warm, "languageId": "python", "version": 1,
                                                               "text": "import os\n"}})
        client.call("llamalab/prompt", {"textDocument": {"uri": warm}, "position": {"line": 1, "character": 0}})
        client.notify("textDocument/didClose", {"textDocument": {"uri": warm}})
        targets = target_lines(source, args.lines)
        print(f"model {path.name} | llama-cpp-python {llama_cpp.__version__} | threads {threads} | n_ctx "
              f"{args.n_ctx} | {source_path.name}, lines {', '.join(str(t + 1) for t in targets)} | max_tokens "
              f"{args.max_tokens} | prefix window {args.prefix_tokens} tokens", flush=True)
        rng = random.Random(args.seed)
        turn = itertools.count()
        requests: list[Request] = []
        for k, index in enumerate(targets):
            requests += _type_line(client, llama, source_path.with_name(f"typed_{k}.py").as_uri(), lines, index,
                                   args, rng, turn)
    finally:
        client.close()
        llama.close()
    info = {"llama_cpp": llama_cpp.__version__, "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average_before": load_before, "load_average_after": _load(),
            "threads": threads, "model": str(path), "module": str(source_path), "lines": targets}
    return requests, info


# ------------------------------------------------------------------------------ report


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summarize(all_requests: list[Request]) -> dict[str, Any]:
    requests = [r for r in all_requests if not r.type_ahead]  # the ones that generated, on both sides
    typed_ahead = [r.lsp_ms for r in all_requests if r.type_ahead]
    lsp = [r.lsp_ms for r in requests]
    direct = [r.direct_ms for r in requests]
    edits = [r for r in requests if not r.first]
    one_char = [r.evaluated_tokens / r.prompt_tokens for r in edits if r.burst == 1]
    any_burst = [r.evaluated_tokens / r.prompt_tokens for r in edits]
    paired = [a / b for a, b in zip(lsp, direct) if b > 0]
    p50_ratio = _pct(lsp, 0.5) / _pct(direct, 0.5)
    one_char_median = statistics.median(one_char) if one_char else float("nan")
    return {
        "requests": len(requests), "one_char_requests": len(one_char),
        "lsp_p50_ms": _pct(lsp, 0.5), "lsp_p95_ms": _pct(lsp, 0.95),
        "direct_p50_ms": _pct(direct, 0.5), "direct_p95_ms": _pct(direct, 0.95),
        "p50_ratio": p50_ratio, "p95_ratio": _pct(lsp, 0.95) / _pct(direct, 0.95),
        "paired_ratio_median": statistics.median(paired) if paired else float("nan"),
        "overhead_ms_median": statistics.median([a - b for a, b in zip(lsp, direct)]) if lsp else float("nan"),
        "prompt_tokens_median": statistics.median([r.prompt_tokens for r in requests]) if requests else 0,
        "evaluated_median": statistics.median([r.evaluated_tokens for r in edits]) if edits else float("nan"),
        "evaluated_p95": _pct([float(r.evaluated_tokens) for r in edits], 0.95),
        "reeval_one_char_median": one_char_median, "reeval_one_char_p95": _pct(one_char, 0.95),
        "reeval_any_burst_median": statistics.median(any_burst) if any_burst else float("nan"),
        "first_request_evaluated_median": statistics.median(
            [r.evaluated_tokens for r in requests if r.first]) if requests else float("nan"),
        "generated_median": statistics.median([r.generated_tokens for r in requests]) if requests else 0,
        "same_text": sum(r.same_text for r in requests),
        "type_ahead": len(typed_ahead),
        "type_ahead_p50_ms": _pct(typed_ahead, 0.5),
        "overhead_pass": p50_ratio <= 1 + OVERHEAD_TARGET,
        "reeval_pass": one_char_median <= REEVAL_TARGET,
    }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(s: dict[str, Any]) -> None:
    rows = [
        ("measure", "llamalab lsp", "llama_cpp direct", "ratio / share", "target"),
        ("latency p50 (ms)", f"{s['lsp_p50_ms']:.1f}", f"{s['direct_p50_ms']:.1f}", f"x{s['p50_ratio']:.3f}",
         f"<= x{1 + OVERHEAD_TARGET:.2f} {_verdict(s['overhead_pass'])}"),
        ("latency p95 (ms)", f"{s['lsp_p95_ms']:.1f}", f"{s['direct_p95_ms']:.1f}", f"x{s['p95_ratio']:.3f}", ""),
        ("prompt tokens (median)", f"{s['prompt_tokens_median']:.0f}", "same ids", "", ""),
        ("re-evaluated after a 1-char edit (median)", f"{s['reeval_one_char_median']:.1%}", "", "",
         f"<= {REEVAL_TARGET:.0%} {_verdict(s['reeval_pass'])}"),
        ("re-evaluated after a 1-char edit (p95)", f"{s['reeval_one_char_p95']:.1%}", "", "", ""),
        ("re-evaluated tokens per request after an edit (median / p95)",
         f"{s['evaluated_median']:.0f} / {s['evaluated_p95']:.0f}", "", "", ""),
        ("re-evaluated at the first request on a line (median)", f"{s['first_request_evaluated_median']:.0f}",
         "", "", ""),
    ]
    print("| " + " | ".join(rows[0]) + " |")
    print("|" + "|".join([" --- "] + [" ---: "] * (len(rows[0]) - 1)) + "|")
    for row in rows[1:]:
        print("| " + " | ".join(row) + " |")
    print(f"\n{s['requests']} requests ({s['one_char_requests']} after a one-character burst); paired latency ratio "
          f"median x{s['paired_ratio_median']:.3f}, server overhead median {s['overhead_ms_median']:+.1f} ms; "
          f"generated tokens median {s['generated_median']:.0f}; the server's suggestion matched the direct "
          f"generation post-processed alike in {s['same_text']}/{s['requests']} requests")
    if s["type_ahead"]:
        print(f"{s['type_ahead']} more requests typed what the last suggestion said and were answered from it "
              f"without a generation (type-ahead, p50 {s['type_ahead_p50_ms']:.1f} ms); they are not in the table")


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    path = model_path(args)
    requests, info = _measure(args, path)
    summary = summarize(requests)
    print()
    print_table(summary)
    print(f"load average (1 min) before / after: {info['load_average_before']} / {info['load_average_after']} "
          f"on {info['cpus']} CPUs")
    if args.json:
        report = {"config": {k: v for k, v in vars(args).items() if k != "json"}, "environment": info,
                  "targets": {"p50_overhead_max": OVERHEAD_TARGET, "reevaluated_share_max": REEVAL_TARGET},
                  "summary": summary, "requests": [asdict(r) for r in requests]}
        save_report(args.json, report)
    missed = not (summary["overhead_pass"] and summary["reeval_pass"])
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
