#!/usr/bin/env python
"""One model shared in time: LocalEngine's slots against the old queue and llama-server.

Usage::

    python bench/bench_slots.py                  # 5 runs per scenario and side
    python bench/bench_slots.py --quick          # 1 run, short prompts and answers (CI smoke, < 3 min)
    python bench/bench_slots.py --sides engine/queue,engine/slots --only S1,S5 --runs 3 --json out.json

Scenarios, each a ratio of two medians per side (demo model, greedy, ``--threads`` decode and
prompt threads, 1 by default; ``--quick`` uses fewer tokens than said here):

S1  latency of an inline completion (16 tokens of a code prefix, priority interactive) sent once
    a chat's 400-token answer streams (then cancelled) / the same completion, model idle. <= 2x
S2  first token of a 2nd turn after another conversation's turn (A, B, A, B: the 2nd A and B
    turns) / of a 2nd turn with nothing between (C, C). A and B have different ~1,100-token
    system prompts of varied sentences, C one of them; the 1st user turn carries the run's tag,
    so no other conversation shares a 2nd turn's history. 24-token answers. <= 1.5x
S3  slowest first token of 4 chats sent at once (short different questions, tagged per run so
    not cached) / one such chat's first token alone. <= 4x
S4  tok/s of those 4 chats (all pieces / first request to last piece) / one chat's alone (its
    pieces / request to last piece), 128 tokens each. >= 0.9x
S5  decode tok/s, ``(pieces - 1) / (t_last - t_first)`` of a 128-token continuation: LocalEngine /
    llama-cpp-python's ``Llama.create_completion(stream=True)`` (same n_ctx, threads and greedy
    sampling settings), runs interleaved. Engine sides only. >= 1.05x

Sides, one after another, each loading the model itself (the targets are the slots sides'):

``engine/queue``, ``engine/slots``  ``LocalEngine(n_parallel=1, prompt_cache_mb=0)`` (the old queue:
    one sequence, priority then arrival order, no prompt cache) and ``LocalEngine`` with its
    defaults (4 slots, 1 GiB prompt cache), in this process, streams read in threads.
``jupyter/queue``, ``jupyter/slots``  the same two in a Jupyter server with the extension
    (bench_server.py's ``Server``; ``n_parallel``/``prompt_cache_mb`` in a config folder on
    ``JUPYTER_CONFIG_PATH``, checked in its log), reached as the front end reaches it: chats on
    the chat WebSocket (a connection per simultaneous chat), completions by ``POST /llamalab/complete``.
``llama-server``  llama.cpp's server, ``-c N_CTX -np 4 --kv-unified -t T -tb T`` (continuous batching,
    ``--cache-ram`` default): its 4 slots share N_CTX KV cells as ours share ``kv_size`` (= n_ctx),
    each may fill a window. Chats by ``/v1/chat/completions`` with ``stream: true``, completions by
    ``/v1/completions`` (httpx), once ``/health`` answers 200. No priorities there. The binary is
    ``$LLAMA_SERVER`` or what ``scripts/build-llama-server.sh`` built (``benchlib.llama_server_binary``),
    else the side is skipped.

Timing is the client's (``perf_counter``): a first token from just before the request to the
first non-empty piece, a completion from the request to its whole answer. Untimed warm-ups go
first. The servers have their own processes and the engine sides' thread count, but on two cores
this client takes CPU from them; shared machines are noisy (the load average is printed at the
top): compare several invocations. Exit status 0 unless ``--strict`` and a slots side misses a
target; ``--json`` writes every raw sample. A benchmark that prints tables, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from bench_server import PROMPT, Server, WebSocketSide, _print_rows
from benchlib import add_common_arguments, free_port, llama_server_binary, model_path, save_report

ALL_SIDES = ("engine/queue", "engine/slots", "jupyter/queue", "jupyter/slots", "llama-server")
QUEUE = {"n_parallel": 1, "prompt_cache_mb": 0}  # the old queue; the slots sides keep the defaults
SCENARIOS = (  # id, ratio, (numerator, its label), (denominator, its label), target
    ("S1", "completion while a chat streams / idle, p50", ("S1.busy_ms", "completion, chat streaming (ms)"),
     ("S1.idle_ms", "completion, idle (ms)"), ("<=", 2.0)),
    ("S2", "first token after a switch / without", ("S2.switch_ms", "first token after a switch (ms)"),
     ("S2.same_ms", "first token, same conversation (ms)"), ("<=", 1.5)),
    ("S3", "slowest first token of 4 chats / 1 alone", ("S3.slowest_ms", "first token, slowest of 4 (ms)"),
     ("S3.alone_ms", "first token, 1 chat (ms)"), ("<=", 4.0)),
    ("S4", "tok/s of 4 chats together / 1 alone", ("S4.together_tok_s", "tok/s, 4 chats together"),
     ("S4.alone_tok_s", "tok/s, 1 chat"), (">=", 0.9)),
    ("S5", "decode tok/s / llama-cpp-python", ("S5.engine_tok_s", "decode tok/s, engine"),
     ("S5.llama_tok_s", "decode tok/s, llama-cpp-python"), (">=", 1.05)),
)
CODE_PREFIX = "import math\n\n\ndef circle_area(radius):\n    "
QUESTIONS = ("Explain how a bicycle's gears work.", "Explain why the sky is blue.",
             "Give some tips for writing clear emails.", "Describe the life cycle of a butterfly.")
TURNS = ("In one sentence, who are you?", "Name one thing you will do tomorrow, and why.")
PERSONAS = ("a lighthouse keeper on a windy northern island", "a botanist who catalogues alpine flowers")
STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman who"
FULL = {"s1_chat": 400, "completion": 16, "s2_system": 1100, "s2_answer": 24, "s4_tokens": 128, "s5_tokens": 128}
QUICK = {"s1_chat": 96, "completion": 16, "s2_system": 300, "s2_answer": 8, "s4_tokens": 24, "s5_tokens": 32}


@dataclass
class Timed:
    """One streamed answer: when it was asked for, when each non-empty piece arrived, its text."""
    t0: float
    stamps: list[float] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)

    def add(self, text: Optional[str], ctl: Optional["Ctl"]) -> None:
        if text:
            self.stamps.append(time.perf_counter())
            self.parts.append(text)
            if ctl is not None:
                ctl.first.set()

    def check(self, side: str) -> "Timed":
        if not self.stamps:
            raise SystemExit(f"{side}: the model produced no text.")
        return self

    @property
    def ttft_ms(self) -> float:
        return (self.stamps[0] - self.t0) * 1e3

    @property
    def rate(self) -> float:  # pieces per second, from the request to the last piece
        return len(self.stamps) / (self.stamps[-1] - self.t0)


@dataclass
class Ctl:  # lets a caller see a chat's first piece and stop it, from any thread
    first: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass
class Conv:
    system: Optional[str] = None
    id: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:12]}")
    turns: list[dict[str, str]] = field(default_factory=list)  # for the sides without server-side history

    def messages(self, content: str) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns + [{"role": "user", "content": content}]

    def record(self, content: str, timed: Timed) -> Timed:
        self.turns += [{"role": "user", "content": content}, {"role": "assistant", "content": "".join(timed.parts)}]
        return timed


class EngineSide:
    """A LocalEngine in this process; its blocking streams run in threads."""

    def __init__(self, name: str, model: Path, args: argparse.Namespace, **config: Any) -> None:
        from llamalab import LocalEngine

        self.name = name
        self.engine = LocalEngine(model, n_ctx=args.n_ctx, n_threads=args.threads, n_threads_batch=args.threads,
                                  name=f"bench-{name}", **config)

    async def start(self, client: Any) -> str:
        s = self.engine.stats()
        return f"n_parallel {s.n_parallel}, kv {s.kv_size}, prompt cache {s.prompt_cache_limit_bytes >> 20} MiB"

    def _run(self, how: str, prompt: Any, max_tokens: int, ctl: Optional[Ctl] = None, **params: Any) -> Timed:
        from llamalab import GenerationParams

        timed = Timed(time.perf_counter())
        with getattr(self.engine, how)(prompt, GenerationParams(max_tokens=max_tokens, temperature=0,
                                                                **params)) as stream:
            for text in stream:
                timed.add(text, ctl)
                if ctl is not None and ctl.stop.is_set():
                    break  # leaving the with block cancels the rest
        return timed.check(self.name)

    async def chat(self, conv: Conv, content: str, max_tokens: int, ctl: Optional[Ctl] = None, lane: int = 0) -> Timed:
        return conv.record(content, await asyncio.to_thread(self._run, "chat", conv.messages(content), max_tokens, ctl))

    async def complete(self, prefix: str, max_tokens: int) -> float:
        t0 = time.perf_counter()
        await asyncio.to_thread(self._run, "complete", prefix, max_tokens, priority="interactive")
        return time.perf_counter() - t0

    async def close(self) -> None:
        self.engine.close()


class _Socket(WebSocketSide):
    """bench_server's chat WebSocket client, with conversations, system prompts and cancel."""

    async def turn(self, conv: Conv, content: str, max_tokens: int, ctl: Optional[Ctl]) -> Timed:
        assert self.conn is not None
        rid, cancelled = uuid.uuid4().hex, False
        frame = {"type": "chat", "id": rid, "conversation_id": conv.id, "content": content,
                 "params": {"max_tokens": max_tokens, "temperature": 0}, "system": conv.system}
        timed = Timed(time.perf_counter())
        await self.conn.write_message(json.dumps(frame))
        while True:
            raw = await self.conn.read_message()
            if raw is None:
                raise self.server.fail("the server closed the chat WebSocket.")
            message = json.loads(raw)
            kind = message["type"] if message.get("id") == rid else None
            if kind == "token":
                timed.add(message["text"], ctl)
            elif kind == "done":
                return timed.check("websocket")
            elif kind == "error":
                raise SystemExit(f"websocket: {message['message']}")
            if ctl is not None and ctl.stop.is_set() and not cancelled:
                cancelled = True
                await self.conn.write_message(json.dumps({"type": "cancel", "id": uuid.uuid4().hex, "target": rid}))


class JupyterSide:
    """A Jupyter server with the extension, reached by the chat WebSocket and /llamalab/complete."""

    def __init__(self, name: str, model: Path, args: argparse.Namespace, **settings: Any) -> None:
        self.name, self.expect = name, settings.get("n_parallel", 4)
        self.sockets: list[_Socket] = []
        # bench_server's Server writes its own config in JUPYTER_CONFIG_DIR; this folder's merges in.
        self.folder = Path(tempfile.mkdtemp(prefix="llamalab-bench-slots-"))
        (self.folder / "jupyter_server_config.json").write_text(json.dumps({"LlamalabExtension": settings}))
        old = os.environ.get("JUPYTER_CONFIG_PATH")
        os.environ["JUPYTER_CONFIG_PATH"] = os.pathsep.join([str(self.folder)] + ([old] if old else []))
        try:
            self.server = Server(model, args)  # copies the environment for the server process
        finally:
            if old is None:
                del os.environ["JUPYTER_CONFIG_PATH"]
            else:
                os.environ["JUPYTER_CONFIG_PATH"] = old

    async def start(self, client: Any) -> str:
        self.client = client
        await self.server.wait_ready(client)
        loads = [ln for ln in self.server.log().splitlines() if "llamalab: loading" in ln]
        if not loads or f"n_parallel={self.expect})" not in loads[-1]:
            raise self.server.fail(f"{self.name}: the model was not loaded with n_parallel={self.expect}.")
        for _ in range(4):  # one connection per simultaneous chat
            self.sockets.append(_Socket(self.server, client))
            await self.sockets[-1].connect()
        return f"server pid {self.server.pid}: {loads[-1].partition('llamalab: ')[2]}"

    async def chat(self, conv: Conv, content: str, max_tokens: int, ctl: Optional[Ctl] = None, lane: int = 0) -> Timed:
        return await self.sockets[lane].turn(conv, content, max_tokens, ctl)

    async def complete(self, prefix: str, max_tokens: int) -> float:
        body = {"prefix": prefix, "max_tokens": max_tokens, "mode": "multi"}
        t0 = time.perf_counter()
        r = await self.client.post(f"{self.server.root}/llamalab/complete", json=body, headers=self.server.headers)
        if r.status_code != 200:
            raise SystemExit(f"{self.name}: /llamalab/complete: HTTP {r.status_code}: {r.text[:300]}")
        return time.perf_counter() - t0

    async def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.server.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class LlamaServerSide:
    """llama.cpp's server over its OpenAI-compatible HTTP API."""

    name = "llama-server"

    def __init__(self, binary: Path, model: Path, args: argparse.Namespace) -> None:
        self.root = f"http://127.0.0.1:{free_port()}"
        self.log = tempfile.NamedTemporaryFile("w", prefix="llamalab-bench-llama-server-", suffix=".log", delete=False)
        self.argv = [str(binary), "-m", str(model), "-c", str(args.n_ctx), "-np", "4", "--kv-unified",
                     "-t", str(args.threads), "-tb", str(args.threads), "--host", "127.0.0.1",
                     "--port", self.root.rsplit(":", 1)[1], "--no-webui"]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def fail(self, why: str) -> SystemExit:
        tail = "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-30:])
        return SystemExit(f"llama-server: {why}\n--- its log (last lines) ---\n{tail}")

    async def start(self, client: Any, timeout: float = 180) -> str:
        self.client, deadline = client, time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self.fail(f"exited with status {self.proc.returncode}.")
            with contextlib.suppress(Exception):  # not listening yet
                if (await client.get(f"{self.root}/health")).status_code == 200:
                    return f"pid {self.proc.pid}: {' '.join(self.argv[3:12])}"
            await asyncio.sleep(0.2)
        raise self.fail(f"/health did not answer 200 within {timeout:.0f} s.")

    async def chat(self, conv: Conv, content: str, max_tokens: int, ctl: Optional[Ctl] = None, lane: int = 0) -> Timed:
        body = {"messages": conv.messages(content), "max_tokens": max_tokens, "temperature": 0, "stream": True}
        timed = Timed(time.perf_counter())
        async with self.client.stream("POST", f"{self.root}/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                raise self.fail(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
            async for line in response.aiter_lines():
                if line == "data: [DONE]" or (ctl is not None and ctl.stop.is_set()):
                    break  # closing the connection cancels the generation
                if line.startswith("data: "):
                    for choice in json.loads(line[6:]).get("choices") or ():
                        timed.add((choice.get("delta") or {}).get("content"), ctl)
        return conv.record(content, timed.check(self.name))

    async def complete(self, prefix: str, max_tokens: int) -> float:
        t0 = time.perf_counter()
        r = await self.client.post(f"{self.root}/v1/completions",
                                   json={"prompt": prefix, "max_tokens": max_tokens, "temperature": 0})
        if r.status_code != 200:
            raise self.fail(f"/v1/completions: HTTP {r.status_code}: {r.text[:300]}")
        return time.perf_counter() - t0

    async def close(self) -> None:
        self.proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        self.proc.kill()  # nothing if it has exited
        self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


def _open_side(name: str, model: Path, args: argparse.Namespace) -> Any:
    config = QUEUE if name.endswith("/queue") else {}
    if name.startswith("engine/"):
        return EngineSide(name, model, args, **config)
    if name.startswith("jupyter/"):
        return JupyterSide(name, model, args, **config)
    return LlamaServerSide(llama_server_binary(), model, args)  # type: ignore[arg-type]


async def s1_completion_under_chat(side: Any, args: argparse.Namespace, out: dict[str, list[float]]) -> None:
    n = args.budget["completion"]
    for _ in range(3):  # warm-ups: a fresh server's first few requests are slower
        await side.complete(CODE_PREFIX, n)
    for _ in range(args.runs):  # idle and busy alternate: the same slot states and drift for both
        out["S1.idle_ms"].append(await side.complete(CODE_PREFIX, n) * 1e3)
        ctl = Ctl()
        chat = asyncio.ensure_future(side.chat(Conv(), PROMPT, args.budget["s1_chat"], ctl))
        while not ctl.first.is_set() and not chat.done():
            await asyncio.sleep(0.002)
        if chat.done():  # failed (raises here), or over before the completion could start
            await chat
            print(f"warning: {side.name}: S1's chat ended before its first piece was seen", file=sys.stderr)
        out["S1.busy_ms"].append(await side.complete(CODE_PREFIX, n) * 1e3)
        ctl.stop.set()
        await chat


async def s2_conversation_switch(side: Any, args: argparse.Namespace, out: dict[str, list[float]]) -> None:
    n = args.budget["s2_answer"]
    for run in range(args.runs):  # the first turns are untimed: the system prompts' warm-up
        a, b, c = Conv(args.systems[0]), Conv(args.systems[1]), Conv(args.systems[run % 2])
        for conv, tag in ((a, "A"), (b, "B")):
            await side.chat(conv, f"({tag}{run}) {TURNS[0]}", n)
        for conv in (a, b):  # A, B, A, B: each 2nd turn follows the other conversation's turn
            out["S2.switch_ms"].append((await side.chat(conv, TURNS[1], n)).ttft_ms)
        await side.chat(c, f"(C{run}) {TURNS[0]}", n)  # C, C: nothing in between
        out["S2.same_ms"].append((await side.chat(c, TURNS[1], n)).ttft_ms)


def _question(run: int, chat: int) -> str:
    return f"(Request {run}.{chat}) {QUESTIONS[chat % len(QUESTIONS)]}"  # new every run: nothing cached


async def s34_four_chats(side: Any, args: argparse.Namespace, out: dict[str, list[float]]) -> None:
    n = args.budget["s4_tokens"]
    await asyncio.gather(*(side.chat(Conv(), _question(-1, i), 4, lane=i) for i in range(4)))  # warm-up
    for run in range(args.runs):
        alone = await side.chat(Conv(), _question(run, 4 + run), n)
        together = await asyncio.gather(*(side.chat(Conv(), _question(run, i), n, lane=i) for i in range(4)))
        out["S3.alone_ms"].append(alone.ttft_ms)
        out["S3.slowest_ms"].append(max(t.ttft_ms for t in together))
        out["S4.alone_tok_s"].append(alone.rate)
        span = max(t.stamps[-1] for t in together) - min(t.t0 for t in together)
        out["S4.together_tok_s"].append(sum(len(t.stamps) for t in together) / span)


def _decode_rate(stamps: list[float]) -> float:
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")


def _llama_rate(llm: Any, max_tokens: int) -> float:
    chunks = llm.create_completion(STORY, max_tokens=max_tokens, temperature=0, top_p=0.95, top_k=40, min_p=0.05,
                                   repeat_penalty=1.1, stream=True)  # GenerationParams' defaults
    return _decode_rate([time.perf_counter() for chunk in chunks if chunk["choices"][0]["text"]])


async def s5_decode(side: Any, args: argparse.Namespace, out: dict[str, list[float]]) -> None:
    import llama_cpp

    n, engine = args.budget["s5_tokens"], side.engine
    llm = llama_cpp.Llama(str(engine.model_path), n_ctx=args.n_ctx, n_threads=args.threads,
                          n_threads_batch=args.threads, n_gpu_layers=engine.plan.n_gpu_layers, verbose=False)
    try:
        for run in range(-1, args.runs):  # a warm-up, then interleaved runs: drift touches both
            rate = _decode_rate((await asyncio.to_thread(side._run, "complete", STORY, n)).stamps)
            llama = await asyncio.to_thread(_llama_rate, llm, n)
            if run >= 0:
                out["S5.engine_tok_s"].append(rate)
                out["S5.llama_tok_s"].append(llama)
    finally:
        llm.close()


RUNNERS = {"S1": s1_completion_under_chat, "S2": s2_conversation_switch, "S3": s34_four_chats,
           "S4": s34_four_chats, "S5": s5_decode}


def _system_prompts(model: Path, tokens: int) -> tuple[str, ...]:
    """A system prompt of about ``tokens`` tokens of varied sentences for each of PERSONAS."""
    import llama_cpp

    vocab = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    words = [w.split("|") for w in (
        "at dawn|before the storm|every Tuesday|after supper|in the long winter|on quiet afternoons|in the thaw",
        "checks|writes about|cleans|sorts|counts|sketches|mends|labels|reads aloud",
        "the tide tables|a brass telescope|the weather log|seed packets|a field notebook|old maps|pressed leaves",
        "carefully|with great patience|while humming|by lamplight|with a steady hand|before anyone wakes")]
    prompts = []
    for persona in PERSONAS:
        rng, text = random.Random(persona), f"You are {persona}. Stay in character."
        while len(vocab.tokenize(text.encode(), add_bos=False)) < tokens:
            when, verb, what, how = (rng.choice(w) for w in words)
            text += f" {when.capitalize()}, the keeper {verb} {what} {how}, and {rng.randint(2, 97)} notes follow."
        prompts.append(text)
    vocab.close()
    return tuple(prompts)


async def _measure(args: argparse.Namespace, model: Path) -> dict[str, dict[str, list[float]]]:
    import httpx

    samples: dict[str, dict[str, list[float]]] = {}
    async with httpx.AsyncClient(timeout=600, trust_env=False) as client:  # no proxy for 127.0.0.1
        for name in args.sides:
            side = _open_side(name, model, args)
            try:
                print(f"{name}: {await side.start(client)}", file=sys.stderr, flush=True)
                out: dict[str, list[float]] = defaultdict(list)
                for runner in dict.fromkeys(RUNNERS[s] for s in args.only):  # S3 and S4 share their runs
                    if runner is not s5_decode or isinstance(side, EngineSide):
                        t0 = time.monotonic()
                        await runner(side, args, out)
                        print(f"  {runner.__name__}: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
                samples[name] = dict(out)
            finally:
                await side.close()
    return samples


def _median(values: Optional[list[float]]) -> Optional[float]:
    return statistics.median(values) if values else None


def _ratios(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, Optional[float]]]:
    ratios: dict[str, dict[str, Optional[float]]] = {}
    for side, out in samples.items():
        ratios[side] = {}
        for sid, _, (num, _), (den, _), _ in SCENARIOS:
            a, b = _median(out.get(num)), _median(out.get(den))
            ratios[side][sid] = a / b if a is not None and b else None
    return ratios


def _print_tables(samples: dict[str, dict[str, list[float]]], ratios: dict[str, dict[str, Optional[float]]],
                  only: list[str]) -> bool:
    """The ratios and the raw medians; True when a slots side missed a target."""
    sides, missed = list(samples), False
    rows, raw = [("scenario: ratio of medians", "target", *sides)], [("raw medians", *sides)]
    for sid, what, num, den, (op, limit) in SCENARIOS:
        if sid not in only:
            continue
        cells = []
        for side in sides:
            ratio, verdict = ratios[side][sid], ""
            if ratio is not None and side.endswith("/slots"):
                ok = ratio <= limit if op == "<=" else ratio >= limit
                verdict, missed = (" PASS" if ok else " MISS"), missed or not ok
            cells.append("-" if ratio is None else f"{ratio:.2f}x{verdict}")
        rows.append((f"{sid} {what}", f"{op} {limit:g}x", *cells))
        for key, label in (den, num):
            raw.append((f"{sid} {label}", *(f"{m:.1f}" if (m := _median(samples[s].get(key))) is not None else "-"
                                            for s in sides)))
    _print_rows(rows, (0,))
    print()
    _print_rows(raw, (0,))
    return missed


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, home_also=", also the Jupyter servers' store_dir")
    ap.add_argument("--sides", help=f"comma list of {', '.join(ALL_SIDES)} (default: all available)")
    ap.add_argument("--only", help="comma list of scenarios, S1..S5 (default: all)")
    ap.add_argument("--runs", type=int, help="runs per scenario and side (default 5; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="1 run, short prompts and answers: a CI smoke run")
    ap.add_argument("--threads", type=int, default=1, help="decode and prompt threads, every side (default 1)")
    ap.add_argument("--n-ctx", type=int, default=4096, help="context window = KV cells, every side (default 4096)")
    args = ap.parse_args(argv)
    args.runs = args.runs if args.runs is not None else 1 if args.quick else 5
    args.budget = QUICK if args.quick else FULL
    args.only = [s.strip().upper() for s in args.only.split(",")] if args.only else list(RUNNERS)
    args.sides = [s.strip() for s in args.sides.split(",")] if args.sides else list(ALL_SIDES)
    bad = [s for s in args.only if s not in RUNNERS] + [s for s in args.sides if s not in ALL_SIDES]
    if bad or args.runs < 1:
        ap.error(f"unknown scenario or side: {', '.join(bad)}" if bad else "--runs must be at least 1")
    args.gpu_layers, args.max_tokens = "auto", args.budget["s1_chat"]  # what bench_server's Server reads
    return args


def main(argv: Optional[list[str]] = None) -> int:
    from llamalab.engine.local import default_threads

    args, notes = _parse_args(argv), []
    if "llama-server" in args.sides and llama_server_binary() is None:
        args.sides.remove("llama-server")
        notes.append("llama-server skipped: none at $LLAMA_SERVER or in the build cache; "
                     "`bash scripts/build-llama-server.sh` builds it (about 10 minutes on two cores).")
    if any(s.startswith("jupyter/") for s in args.sides) and args.threads != default_threads()[1]:
        notes.append(f"the Jupyter servers evaluate prompts with {default_threads()[1]} thread(s) (the extension "
                     "has no n_threads_batch setting), the other sides with --threads")
    model = model_path(args)
    args.systems = _system_prompts(model, args.budget["s2_system"]) if "S2" in args.only else ()
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    print(f"model {model.name} | threads {args.threads} | n_ctx = KV cells {args.n_ctx} | runs {args.runs}"
          f"{' (quick)' if args.quick else ''} | tokens {args.budget} | sides {', '.join(args.sides)}", flush=True)
    samples = asyncio.run(_measure(args, model))
    ratios = _ratios(samples)
    print()
    missed = _print_tables(samples, ratios, args.only)
    for note in notes:
        print(f"note: {note}")
    if args.json:
        config = {k: v for k, v in vars(args).items() if k not in ("json", "systems")}
        save_report(args.json, {"config": config, "model": str(model), "cpus": os.cpu_count(), "load_average": load,
                                "notes": notes, "ratios": ratios,
                                "targets": {sid: list(target) for sid, *_, target in SCENARIOS}, "samples": samples})
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
