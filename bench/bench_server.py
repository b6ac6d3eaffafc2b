#!/usr/bin/env python
"""The Jupyter server's routes against LocalEngine directly: throughput, first token, memory.

Usage::

    python bench/bench_server.py                 # 7 runs of 128 tokens per side
    python bench/bench_server.py --quick         # 3 runs of 32 tokens (CI smoke)
    python bench/bench_server.py --json out.json --strict

One run starts a real Jupyter server (``python -m jupyter_server`` on 127.0.0.1, a free port,
a random token, a private Jupyter config/runtime folder) with the llamalab extension
preloading the model, and a plain Python process holding a ``LocalEngine`` with the same
model, ``n_ctx``, threads and GPU layers. Three sides then answer the same chat:

``direct``
    ``LocalEngine.chat`` in that separate process, timed there by its caller with
    ``perf_counter`` (the numbers ``bench_engine.py`` compares with llama.cpp itself).
``websocket``
    a ``chat`` message on ``/llamalab/chat``, timed here on arrival of each ``token`` message.
``openai-sse``
    ``POST /llamalab/v1/chat/completions`` with ``"stream": true``, timed here on arrival of
    each server-sent event that carries text (httpx).

Why a separate process for the direct side: the server's engine runs in the server process,
so an engine inside this process would share the benchmark's interpreter and event loop
while the server's would not. With the direct engine in its own process, each side's
engine has a process to itself, and what the server sides add (the event loop, the
thread hand-off, JSON, HTTP/WebSocket framing, the loopback socket and the client's
parsing) is exactly the difference. The machine is shared all the same: while a server
side runs, this process (the client) needs CPU too, as any real client does; while the
direct side runs, the server and this process sit idle. With the default of one decode
thread per physical core, a two-core machine keeps a core for the event loops.

Like with like: the WebSocket only chats, so every side chats: the same single user
message (no system prompt, so the model's template adds its default one), greedy
sampling (``temperature=0``; the other sampling fields left to ``GenerationParams``'
defaults on every side), the same ``max_tokens``, a prompt that the demo model answers
for well over 512 tokens, so every run streams the same text of the same length, which
the script checks. Each WebSocket run uses a new conversation, so no history builds up.

Prompt caching: llama-cpp-python reuses the longest common prompt prefix in its KV cache,
and a repeated prompt would evaluate a single token. The server's engine cannot be
``reset()`` from outside, so before every timed run, on every side, an untimed one-token
chat with another user message goes first (the server's through its OpenAI route, the
direct one in its process). Each timed run then finds the same cached prefix on every
side and evaluates the same tokens after it. By default (``--cached-prefix turn``) that
message is the prompt with its last word changed, so about 8 tokens are evaluated, as in
a conversation's next turn (LocalEngine reuses the history): with the demo model on the
two-core development machine the first token then costs about 40 ms, steady enough to
show a few milliseconds added by a route. With ``--cached-prefix head`` it is "Hi.", so
only the template's head is cached and about 40 tokens are evaluated, as for a new
conversation: about 150 ms there, but that prompt evaluation varies by +-50 ms from run to
run (llama.cpp runs it on every core and stalls when anything else wants one), which hides
what the routes add.

Timing: TTFT runs from just before the request is sent (the ``chat`` frame written, the
POST begun, ``engine.chat`` called) to the first non-empty piece; decode tok/s is
``(pieces - 1) / (t_last - t_first)``. One warm-up run per side, then rounds in which the
three sides take turns, the first one rotating. The verdicts use the medians of the
per-round ratios and differences (a side against the direct run of the same round), which
cancel the drift in speed a shared machine shows over a minute; the ratio and difference
of the plain medians are printed below them. Also shown: the server's engine-level TTFT
(from the WebSocket's ``done.usage``), so TTFT less the engine's own gives what the route
adds without the prompt evaluation's noise; the engine process's CPU time per token; and
the CPU that other processes took meanwhile (anything above a few percent makes the
timings noise). Even on a quiet two-core VM the decode speed of one run differs from the
next by up to +-15% on every side, so a single invocation's throughput verdict against a
5% target is uncertain: compare several invocations, or use more ``--runs``.

Memory: afterwards the server's model is unloaded (``POST /llamalab/models/unload``) and its
``VmRSS`` read; then a chat over the WebSocket (which loads the model again), ``%%llama`` in
a kernel started through ``/api/kernels`` (driven with jupyter_client over its connection
file) and a ``/v1/completions`` request all use it, reading ``VmRSS`` after each and
``VmHWM`` at the end. The RSS the model added is set against the model file and against
what one ``LocalEngine`` added to the direct process; the server's log must show one load
for the three consumers, and the kernel must have neither ``llama_cpp`` imported nor
``libllama`` or the GGUF mapped. That is "the weights counted once". (The baseline is taken
after an unload rather than before the first load, which ``preload`` makes too early to
catch; the allocator may keep some freed memory, so it can read a little high. The GGUF's
resident pages in the server's mappings, from ``/proc/PID/smaps``, are shown as well: the
weights are mapped from the file, once.)

Targets (PASS/MISS beside them): decode >= 0.95 of direct, <= 20 ms added to the first token,
the weights once. The exit status is 0 either way unless ``--strict``. This is a benchmark
that prints a table, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from benchlib import add_common_arguments, free_port, model_path, save_report

THROUGHPUT_TARGET = 0.95  # server-side decode tok/s at least this fraction of direct
TTFT_TARGET_MS = 20.0  # the server adds at most this much to the first token
MEMORY_TARGET = 1.5  # RSS the model adds to the server, three consumers, / one load in a plain process

PROMPT = ("Write a long, detailed, step-by-step guide to baking sourdough bread at home, covering the "
          "starter, the dough, shaping, proofing and baking.")
FLUSH_PROMPTS = {  # see "Prompt caching" above
    "turn": PROMPT[:-len("baking.")] + "cooling.",  # differs from PROMPT in its last word
    "head": "Hi.",  # differs from PROMPT at its first word
}
SIDES = ("direct", "websocket", "openai-sse")
_REPLY = "@bench "  # the direct worker's reply lines on stdout start with this


@dataclass
class Sample:
    side: str
    run: int  # -1 for the warm-up
    ttft_s: float
    decode_tok_s: float
    pieces: int  # non-empty text pieces received
    finish_reason: Optional[str]
    total_s: float
    completion_tokens: Optional[int]  # as the engine (or the route's usage) reports it
    engine_ttft_s: Optional[float]  # the engine's own, where the side reports it
    engine_duration_s: Optional[float]  # likewise
    engine_cpu_s: Optional[float]  # CPU of the engine's process (server or direct) during the run
    text: str = field(repr=False)


# ------------------------------------------------------------------------------ /proc


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes ({} where there is no /proc)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return {}
    return {k: int(v.split()[0]) * 1024 for k, _, v in (ln.partition(":") for ln in lines) if k in ("VmRSS", "VmHWM")}


def _mapped(pid: int, needle: str) -> tuple[int, int]:
    """(resident bytes, mappings) of the files whose path contains ``needle`` in ``pid``."""
    rss = maps = 0
    current = False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                first = line.split(maxsplit=1)[0]
                if "-" in first and not first.endswith(":"):  # a mapping's header line
                    current = needle in line
                    maps += current
                elif current and first == "Rss:":
                    rss += int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, maps


def _machine_cpu() -> Optional[tuple[float, float]]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    try:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


def _cpu_s(pid: int) -> Optional[float]:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ the direct side


def _worker(config: dict[str, Any]) -> None:
    """The direct side's process: one LocalEngine, chats on request (JSON lines in, out)."""
    import llama_cpp  # noqa: F401 - loaded before the "before" RSS, as in the server's baseline

    from llamalab import GenerationParams, LocalEngine

    def reply(**data: Any) -> None:
        print(_REPLY + json.dumps(data), flush=True)

    before = _status(os.getpid()).get("VmRSS")
    engine = LocalEngine(config["model"], n_ctx=config["n_ctx"], n_gpu_layers=config["n_gpu_layers"],
                         n_threads=config["threads"], name="bench-direct")
    reply(rss_before=before, rss_loaded=_status(os.getpid()).get("VmRSS"), n_ctx=engine.n_ctx,
          n_gpu_layers=engine.plan.n_gpu_layers, total_layers=engine.plan.total_layers)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "quit":
            break
        params = GenerationParams(max_tokens=request["max_tokens"], temperature=0)
        stamps, texts = [], []
        t0 = time.perf_counter()
        stream = engine.chat([{"role": "user", "content": request["content"]}], params)
        for piece in stream:
            if piece:
                stamps.append(time.perf_counter() - t0)
                texts.append(piece)
        total = time.perf_counter() - t0
        result = stream.result
        reply(stamps=stamps, text="".join(texts), total=total, finish=result.finish_reason,
              completion_tokens=result.completion_tokens, engine_ttft=result.time_to_first_token_s,
              engine_duration=result.duration_s,
              rss=_status(os.getpid()).get("VmRSS"))
    engine.close()


class DirectSide:
    name = "direct"

    def __init__(self, model: Path, args: argparse.Namespace) -> None:
        config = {"model": str(model), "n_ctx": args.n_ctx, "threads": args.threads,
                  "n_gpu_layers": _gpu_layers(args.gpu_layers)}
        self.proc = subprocess.Popen([sys.executable, __file__, "--direct-worker", json.dumps(config)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.ready: Optional[dict[str, Any]] = None
        self.rss_after: Optional[int] = None

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(_REPLY):
                return json.loads(line[len(_REPLY):])
        raise SystemExit(f"the direct worker stopped (exit status {self.proc.wait()}); see its messages above.")

    def wait_ready(self) -> dict[str, Any]:
        if self.ready is None:
            self.ready = self._read()
        return self.ready

    def _chat(self, content: str, max_tokens: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "chat", "content": content, "max_tokens": max_tokens}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self, index: int, max_tokens: int, flush: str) -> Sample:
        self._chat(flush, 1)
        c0 = _cpu_s(self.proc.pid)
        r = self._chat(PROMPT, max_tokens)
        c1 = _cpu_s(self.proc.pid)
        self.rss_after = r["rss"]
        return _sample(self.name, index, 0.0, r["stamps"], r["text"], r["total"], r["finish"],
                       r["completion_tokens"], r["engine_ttft"], r["engine_duration"], _diff(c0, c1))

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


def _diff(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return b - a if a is not None and b is not None else None


def _sample(side: str, run: int, t0: float, stamps: list[float], text: str, t_end: float, finish: Optional[str],
            completion_tokens: Optional[int], engine_ttft: Optional[float], engine_duration: Optional[float],
            cpu: Optional[float]) -> Sample:
    if not stamps:
        raise SystemExit(f"{side}: the model produced no text.")
    span = stamps[-1] - stamps[0]
    return Sample(side=side, run=run, ttft_s=stamps[0] - t0,
                  decode_tok_s=(len(stamps) - 1) / span if span > 0 else float("nan"), pieces=len(stamps),
                  finish_reason=finish, total_s=t_end - t0, completion_tokens=completion_tokens,
                  engine_ttft_s=engine_ttft, engine_duration_s=engine_duration, engine_cpu_s=cpu, text=text)


# ------------------------------------------------------------------------------ the server


class Server:
    """``python -m jupyter_server`` with the extension preloading the model, in a private config."""

    def __init__(self, model: Path, args: argparse.Namespace) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="llamalab-bench-server-"))
        self.port = free_port()
        self.token = secrets.token_hex(24)
        self.root = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"token {self.token}"}
        self.runtime = self.tmp / "runtime"
        dirs = {name: self.tmp / name for name in ("config", "data", "runtime", "ipython", "root")}
        for folder in dirs.values():
            folder.mkdir()
        extension = {"default_model": str(model), "n_ctx": args.n_ctx, "n_threads": args.threads,
                     "n_gpu_layers": _gpu_layers(args.gpu_layers), "preload": True,
                     "max_tokens_limit": max(4096, args.max_tokens)}
        extension.update(getattr(args, "extension", None) or {})  # a benchmark's own settings
        if args.home:
            extension["store_dir"] = str(Path(args.home).expanduser().resolve())
        config = {"ServerApp": {"jpserver_extensions": {"llamalab.extension": True, "jupyter_server_terminals": False}},
                  "LlamalabExtension": extension}
        (dirs["config"] / "jupyter_server_config.json").write_text(json.dumps(config, indent=1))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMALAB_SERVER_")}
        env.update(JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
                   JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), IPYTHONDIR=str(dirs["ipython"]), PYTHONUNBUFFERED="1")
        if args.home:
            env["LLAMALAB_HOME"] = extension["store_dir"]
        if getattr(args, "pythonpath", None):  # another llamalab's code (a benchmark's baseline)
            env["PYTHONPATH"] = os.pathsep.join([str(args.pythonpath), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.log_path = self.tmp / "server.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
             "--ServerApp.port_retries=0", "--ServerApp.open_browser=False", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={dirs['root']}"]
            + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []),  # containers, CI
            env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fail(self, why: str) -> SystemExit:
        tail = "\n".join(self.log().splitlines()[-40:])
        return SystemExit(f"{why}\n--- the server's log (last lines) ---\n{tail}")

    async def wait_ready(self, client: Any, timeout: float = 180.0) -> dict[str, Any]:
        """Until the server answers and the preloaded model is in; returns the loaded model."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self.fail(f"the Jupyter server exited with status {self.proc.returncode}.")
            try:
                r = await client.get(f"{self.root}/llamalab/models", headers=self.headers)
                if r.status_code == 200 and r.json().get("loaded"):
                    return r.json()["loaded"]
            except Exception:  # noqa: BLE001 - not listening yet
                pass
            await asyncio.sleep(0.2)
        raise self.fail(f"the Jupyter server did not serve the model within {timeout:.0f} s.")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # jupyter_server stops its kernels and extensions on SIGTERM
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class WebSocketSide:
    name = "websocket"

    def __init__(self, server: Server, client: Any) -> None:
        self.server, self.client, self.conn = server, client, None

    async def connect(self) -> None:
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        url = f"ws://127.0.0.1:{self.server.port}/llamalab/chat"
        self.conn = await websocket_connect(HTTPRequest(url, headers=self.server.headers))
        hello = json.loads(await self.conn.read_message())
        if hello.get("type") != "hello":
            raise SystemExit(f"the chat WebSocket opened with {hello} instead of hello.")

    async def chat(self, content: str, max_tokens: int) -> tuple[float, list[float], str, float, dict[str, Any]]:
        assert self.conn is not None
        rid = uuid.uuid4().hex
        frame = json.dumps({"type": "chat", "id": rid, "conversation_id": f"bench-{rid}", "content": content,
                            "params": {"max_tokens": max_tokens, "temperature": 0}})
        stamps: list[float] = []
        texts: list[str] = []
        t0 = time.perf_counter()
        await self.conn.write_message(frame)
        while True:
            raw = await self.conn.read_message()
            now = time.perf_counter()
            if raw is None:
                raise self.server.fail("the server closed the chat WebSocket.")
            message = json.loads(raw)
            if message.get("id") != rid:
                continue  # model_changed and the like
            if message["type"] == "token" and message["text"]:
                stamps.append(now)
                texts.append(message["text"])
            elif message["type"] == "done":
                return t0, stamps, "".join(texts), now, message
            elif message["type"] == "error":
                raise SystemExit(f"websocket: {message['message']}")

    async def run(self, index: int, max_tokens: int, flush: str) -> Sample:
        await _flush(self.server, self.client, flush)
        c0 = _cpu_s(self.server.pid)
        t0, stamps, text, t_end, done = await self.chat(PROMPT, max_tokens)
        usage = done["usage"]
        return _sample(self.name, index, t0, stamps, text, t_end, done["finish_reason"], usage["completion_tokens"],
                       usage.get("time_to_first_token_s"), usage.get("duration_s"), _diff(c0, _cpu_s(self.server.pid)))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class OpenAISide:
    name = "openai-sse"

    def __init__(self, server: Server, client: Any) -> None:
        self.server, self.client = server, client

    async def run(self, index: int, max_tokens: int, flush: str) -> Sample:
        await _flush(self.server, self.client, flush)
        body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        stamps: list[float] = []
        texts: list[str] = []
        finish = tokens = None
        c0 = _cpu_s(self.server.pid)
        t0 = time.perf_counter()
        async with self.client.stream("POST", f"{self.server.root}/llamalab/v1/chat/completions", json=body,
                                      headers=self.server.headers) as response:
            if response.status_code != 200:
                raise SystemExit(f"openai-sse: HTTP {response.status_code}: {(await response.aread())[:500]!r}")
            async for line in response.aiter_lines():
                now = time.perf_counter()
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    break
                event = json.loads(line[6:])
                if "error" in event:
                    raise SystemExit(f"openai-sse: {event['error']}")
                for choice in event.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        stamps.append(now)
                        texts.append(piece)
                    finish = choice.get("finish_reason") or finish
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
        t_end = time.perf_counter()
        return _sample(self.name, index, t0, stamps, "".join(texts), t_end, finish, tokens, None, None,
                       _diff(c0, _cpu_s(self.server.pid)))


async def _flush(server: Server, client: Any, flush: str) -> None:
    """An untimed one-token chat with another message, so the next run finds the same cached
    prefix as on every side (see "Prompt caching" in the module docstring)."""
    body = {"messages": [{"role": "user", "content": flush}], "max_tokens": 1, "temperature": 0}
    r = await client.post(f"{server.root}/llamalab/v1/chat/completions", json=body, headers=server.headers)
    if r.status_code != 200:
        raise SystemExit(f"flush: HTTP {r.status_code}: {r.text[:500]}")


# ------------------------------------------------------------------------------ memory


async def _memory(server: Server, client: Any, ws: WebSocketSide, model: Path, tokens: int,
                  one_load: Optional[int]) -> dict[str, Any]:
    """The server's RSS with no model, then as a chat, a kernel's magic and a completion use it."""
    r = await client.post(f"{server.root}/llamalab/models/unload", headers=server.headers)
    if r.status_code != 200:
        raise SystemExit(f"unload: HTTP {r.status_code}: {r.text[:500]}")
    await asyncio.sleep(0.5)
    mark = len(server.log())
    rss = {"unloaded": _status(server.pid).get("VmRSS")}
    *_, done = await ws.chat("Say hello to a llama.", tokens)
    rss["chat"] = _status(server.pid).get("VmRSS")
    kernel = await _kernel_magic(server, client, model, tokens)
    rss["magic"] = _status(server.pid).get("VmRSS")
    body = {"prompt": "A llama is", "max_tokens": tokens, "temperature": 0}
    r = await client.post(f"{server.root}/llamalab/v1/completions", json=body, headers=server.headers)
    if r.status_code != 200 or not r.json()["choices"][0]["text"]:
        raise SystemExit(f"completion: HTTP {r.status_code}: {r.text[:500]}")
    rss["completion"] = _status(server.pid).get("VmRSS")
    status = _status(server.pid)
    file_rss, file_maps = _mapped(server.pid, os.path.realpath(model))
    added = rss["completion"] - rss["unloaded"] if None not in (rss["completion"], rss["unloaded"]) else None
    loads = server.log()[mark:].count("llamalab: loading")
    ratio = added / one_load if added is not None and one_load else None
    clean = not (kernel["llama_cpp_imported"] or kernel["libllama_maps"] or kernel["model_maps"])
    return {
        "model_file_bytes": model.stat().st_size, "server_rss_bytes": rss, "server_hwm_bytes": status.get("VmHWM"),
        "server_added_bytes": added, "one_load_in_plain_process_bytes": one_load, "added_per_one_load": ratio,
        "model_file_resident_bytes": file_rss, "model_file_mappings": file_maps,
        "server_loads_for_the_three": loads, "chat_finish": done["finish_reason"], "kernel": kernel,
        "weights_once_pass": bool(ratio is not None and ratio <= MEMORY_TARGET and loads == 1 and clean),
    }


async def _kernel_magic(server: Server, client: Any, model: Path, tokens: int) -> dict[str, Any]:
    """``%load_ext llamalab`` + ``%%llama`` in a kernel the server starts, as JupyterLab starts one."""
    from jupyter_client.asynchronous import AsyncKernelClient

    for attempt in (1, 2):  # a kernel can die at start when another process takes one of its ports
        r = await client.post(f"{server.root}/api/kernels", json={"name": "python3"}, headers=server.headers)
        if r.status_code != 201:
            raise SystemExit(f"starting a kernel: HTTP {r.status_code}: {r.text[:500]}")
        kernel_id = r.json()["id"]
        kc = AsyncKernelClient(connection_file=str(server.runtime / f"kernel-{kernel_id}.json"))
        kc.load_connection_file()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=120)
            break
        except RuntimeError:
            kc.stop_channels()
            await client.delete(f"{server.root}/api/kernels/{kernel_id}", headers=server.headers)
            if attempt == 2:
                raise
    try:

        async def run(code: str) -> list[dict[str, Any]]:
            outputs: list[dict[str, Any]] = []
            reply = await kc.execute_interactive(code, output_hook=outputs.append, timeout=300)
            if reply["content"]["status"] != "ok":
                raise SystemExit(f"kernel: {code.splitlines()[0]!r} failed: {reply['content'].get('evalue')}")
            return outputs

        printed = "".join(m["content"]["text"] for m in await run("import os; print(os.getpid())")
                          if m["msg_type"] == "stream")
        pid = int(printed.split()[-1])
        before = _status(pid).get("VmRSS")
        await run("%load_ext llamalab")
        shown = [m["content"]["data"] for m in await run(f"%%llama -n {tokens} -t 0\nSay one sentence about a llama.")
                 if m["msg_type"] in ("display_data", "update_display_data")]
        answer = shown[-1].get("text/plain", "") if shown else ""
        if not answer.strip():
            raise SystemExit("kernel: %%llama showed no answer.")
        imported = "".join(m["content"]["text"] for m in await run("import sys; print('llama_cpp' in sys.modules)")
                           if m["msg_type"] == "stream").strip() == "True"
        status = _status(pid)
        return {"rss_before_bytes": before, "rss_after_bytes": status.get("VmRSS"), "hwm_bytes": status.get("VmHWM"),
                "llama_cpp_imported": imported, "libllama_maps": _mapped(pid, "libllama")[1],
                "model_maps": _mapped(pid, os.path.realpath(model))[1], "answer": answer}
    finally:
        kc.stop_channels()
        await client.delete(f"{server.root}/api/kernels/{kernel_id}", headers=server.headers)


# ------------------------------------------------------------------------------ setup


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    from llamalab.engine.local import default_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap, home_also=", also the server's store_dir")
    ap.add_argument("--runs", type=int, help="timed runs per side (default 7; 3 with --quick)")
    ap.add_argument("--max-tokens", type=int, help="tokens per run (default 128; 32 with --quick)")
    ap.add_argument("--threads", type=int, default=default_threads()[0],
                    help="decode threads, both engines (default: LocalEngine's, %(default)s)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="context window, both engines (default %(default)s)")
    ap.add_argument("--gpu-layers", default="auto", help="n_gpu_layers, both engines (default %(default)s)")
    ap.add_argument("--cached-prefix", choices=sorted(FLUSH_PROMPTS), default="turn",
                    help="what each run finds in the KV cache: all but the last words of its message "
                    "(turn, the default) or the chat template's head (head); see the module docstring")
    ap.add_argument("--quick", action="store_true", help="3 runs of 32 tokens, for a CI smoke run")
    ap.add_argument("--direct-worker", help=argparse.SUPPRESS)  # the direct side's own process
    args = ap.parse_args(argv)
    if args.direct_worker:
        return args
    args.runs = args.runs if args.runs is not None else 3 if args.quick else 7
    args.max_tokens = args.max_tokens if args.max_tokens is not None else 32 if args.quick else 128
    if args.runs < 1 or args.max_tokens < 2:
        ap.error("--runs must be at least 1 and --max-tokens at least 2")
    return args


def _gpu_layers(value: Any) -> Any:
    try:
        return int(value)
    except ValueError:
        return value


async def _measure(args: argparse.Namespace,
                   model: Path) -> tuple[dict[str, list[Sample]], dict[str, Any], dict[str, Any]]:
    import httpx

    server = Server(model, args)  # both load at once; neither is timed
    direct: Optional[DirectSide] = None
    ws: Optional[WebSocketSide] = None
    try:
        direct = DirectSide(model, args)
        async with httpx.AsyncClient(timeout=300, trust_env=False) as client:  # no proxy for 127.0.0.1
            loaded = await server.wait_ready(client)
            ready = await asyncio.to_thread(direct.wait_ready)
            ws = WebSocketSide(server, client)
            await ws.connect()
            env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
                   "model": str(model), "threads": args.threads, "n_ctx": ready["n_ctx"],
                   "n_gpu_layers": ready["n_gpu_layers"], "total_layers": ready["total_layers"],
                   "server_model": loaded}
            if (loaded.get("context_length"), loaded.get("n_gpu_layers")) != (ready["n_ctx"], ready["n_gpu_layers"]):
                print(f"warning: the engines differ: server {loaded}, direct {ready}", file=sys.stderr)
            print(f"model {model.name} | threads {args.threads} | n_ctx {ready['n_ctx']} | n_gpu_layers "
                  f"{ready['n_gpu_layers']}/{ready['total_layers']} | chat, max_tokens {args.max_tokens}, cached prefix "
                  f"{args.cached_prefix} | runs {args.runs} + 1 warm-up per side | server pid {server.pid}, direct pid "
                  f"{direct.proc.pid}", flush=True)
            sides = {"direct": direct, "websocket": ws, "openai-sse": OpenAISide(server, client)}
            samples = await _rounds(args, sides, env, (server.pid, direct.proc.pid, os.getpid()))
            one_load = direct.rss_after - ready["rss_before"] if direct.rss_after and ready["rss_before"] else None
            env["direct_rss_bytes"] = {"before_load": ready["rss_before"], "loaded": ready["rss_loaded"],
                                       "after_runs": direct.rss_after}
            direct.close()  # its copy of the model is not the server's business any more
            memory = await _memory(server, client, ws, model, min(args.max_tokens, 16), one_load)
    finally:
        if ws is not None:
            ws.close()
        if direct is not None:
            direct.close()
        server.close()
    return samples, env, memory


async def _rounds(args: argparse.Namespace, sides: dict[str, Any], env: dict[str, Any],
                  pids: tuple[int, ...]) -> dict[str, list[Sample]]:
    """One warm-up run per side, then ``args.runs`` rounds in which the sides take turns."""
    flush = FLUSH_PROMPTS[args.cached_prefix]

    async def one(name: str, index: int) -> Sample:
        if name == "direct":  # blocking pipe I/O: off the event loop
            return await asyncio.to_thread(sides[name].run, index, args.max_tokens, flush)
        return await sides[name].run(index, args.max_tokens, flush)

    samples = {name: [await one(name, -1)] for name in SIDES}
    start = (time.monotonic(), _machine_cpu(), [_cpu_s(pid) for pid in pids])
    for i in range(args.runs):
        # The first side rotates, so that none always follows the same one.
        for name in SIDES[i % 3:] + SIDES[:i % 3]:
            samples[name].append(await one(name, i))
    env["neighbours"] = _neighbours(start, (time.monotonic(), _machine_cpu(), [_cpu_s(pid) for pid in pids]))
    return samples


def _neighbours(start: tuple[Any, ...], end: tuple[Any, ...]) -> Optional[dict[str, float]]:
    """The share of the machine's CPUs that other processes (and the hypervisor) took during
    the timed runs. llama.cpp evaluates prompts on every core, so on a small machine anything
    else that wants a core stalls it, often for seconds: the numbers are then noise."""
    (t0, m0, ours0), (t1, m1, ours1) = start, end
    if m0 is None or m1 is None or None in ours0 + ours1:
        return None
    capacity = (t1 - t0) * (os.cpu_count() or 1)
    ours = sum(b - a for a, b in zip(ours0, ours1))
    return {"other_processes": max(0.0, (m1[0] - m0[0] - ours) / capacity), "steal": (m1[1] - m0[1]) / capacity}


# ------------------------------------------------------------------------------ report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _summary(samples: list[Sample]) -> dict[str, Any]:
    timed = [s for s in samples if s.run >= 0]
    engine = [s.engine_ttft_s * 1e3 for s in timed if s.engine_ttft_s is not None]
    # The part of the TTFT spent outside the engine's generation (formatting, queues, hand-offs,
    # the route and the transport): less noisy than TTFT, whose prompt evaluation varies run to run.
    outside = [(s.ttft_s - s.engine_ttft_s) * 1e3 for s in timed if s.engine_ttft_s is not None]
    # The engine's own decode rate, from its result: the first token to the end of the generation.
    rate = [(s.completion_tokens - 1) / (s.engine_duration_s - s.engine_ttft_s) for s in timed
            if s.engine_ttft_s is not None and s.engine_duration_s and s.completion_tokens]
    cpu = [s.engine_cpu_s / s.pieces * 1e3 for s in timed if s.engine_cpu_s is not None]
    return {
        "runs": len(timed),
        "median_decode_tok_s": _median([s.decode_tok_s for s in timed]),
        "median_ttft_ms": _median([s.ttft_s * 1e3 for s in timed]),
        "min_decode_tok_s": min(s.decode_tok_s for s in timed), "max_decode_tok_s": max(s.decode_tok_s for s in timed),
        "min_ttft_ms": min(s.ttft_s * 1e3 for s in timed), "max_ttft_ms": max(s.ttft_s * 1e3 for s in timed),
        "median_engine_ttft_ms": _median(engine) if engine else None,
        "median_ttft_outside_engine_ms": _median(outside) if outside else None,
        "median_engine_decode_tok_s": _median(rate) if rate else None,
        "median_engine_cpu_ms_per_token": _median(cpu) if cpu else None,
        "pieces": sorted({s.pieces for s in timed}),
        "completion_tokens": sorted({s.completion_tokens for s in timed if s.completion_tokens is not None}),
        "finish_reasons": sorted({str(s.finish_reason) for s in timed}),
    }


def _compare(timed: dict[str, list[Sample]], sums: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out = {}
    base = sums["direct"]
    for name in SIDES[1:]:
        s = sums[name]
        pairs = list(zip(timed[name], timed["direct"]))  # the same round
        ratio = _median([a.decode_tok_s / b.decode_tok_s for a, b in pairs])
        diff = _median([(a.ttft_s - b.ttft_s) * 1e3 for a, b in pairs])
        out[name] = {"paired_throughput_ratio": ratio, "paired_ttft_diff_ms": diff,
                     "throughput_pass": ratio >= THROUGHPUT_TARGET, "ttft_pass": diff <= TTFT_TARGET_MS,
                     "throughput_ratio": s["median_decode_tok_s"] / base["median_decode_tok_s"],
                     "ttft_diff_ms": s["median_ttft_ms"] - base["median_ttft_ms"]}
        if s["median_ttft_outside_engine_ms"] is not None:
            # What the route adds beyond the engine's own prompt evaluation: the same TTFT
            # difference, without the run-to-run noise of the prompt evaluation in it.
            out[name]["ttft_added_outside_engine_ms"] = (s["median_ttft_outside_engine_ms"]
                                                         - base["median_ttft_outside_engine_ms"])
    return out


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _mb(value: Optional[int]) -> str:
    return f"{value / 2**20:.1f}" if value is not None else "n/a"


def _print_rows(rows: list[tuple[str, ...]], rules: tuple[int, ...]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if n in rules:
            print("  ".join("-" * w for w in widths))


def _print_table(sums: dict[str, dict[str, Any]], cmp: dict[str, Any], mem: dict[str, Any],
                 env: dict[str, Any]) -> None:
    """The timing table, its notes, then the memory table."""
    def opt(value: Optional[float], fmt: str) -> str:
        return format(value, fmt) if value is not None else "-"

    rows = [("side", "runs", "tokens", "decode tok/s", "(min-max)", "TTFT ms", "(min-max)", "engine tok/s",
             "engine TTFT ms", "outside engine ms", "engine CPU ms/tok")]
    for side in SIDES:
        s = sums[side]
        rows.append((side, str(s["runs"]), "/".join(str(n) for n in s["pieces"]), f"{s['median_decode_tok_s']:.1f}",
                     f"{s['min_decode_tok_s']:.1f}-{s['max_decode_tok_s']:.1f}", f"{s['median_ttft_ms']:.1f}",
                     f"{s['min_ttft_ms']:.1f}-{s['max_ttft_ms']:.1f}", opt(s["median_engine_decode_tok_s"], ".1f"),
                     opt(s["median_engine_ttft_ms"], ".1f"),
                     opt(s["median_ttft_outside_engine_ms"], ".2f"), opt(s["median_engine_cpu_ms_per_token"], ".2f")))
    for side in SIDES[1:]:
        c = cmp[side]
        rows.append((f"{side}/direct", "", "", f"x{c['paired_throughput_ratio']:.3f}",
                     f">= {THROUGHPUT_TARGET} {_verdict(c['throughput_pass'])}", f"{c['paired_ttft_diff_ms']:+.1f}",
                     f"<= {TTFT_TARGET_MS:g} {_verdict(c['ttft_pass'])}", "", "", "", ""))
    _print_rows(rows, (0, len(SIDES)))
    print("side/direct rows: medians of the per-round ratios and differences; of the plain medians: " + "; ".join(
        f"{side} x{cmp[side]['throughput_ratio']:.3f}, {cmp[side]['ttft_diff_ms']:+.1f} ms" for side in SIDES[1:]))
    print("tokens = text pieces received per run; engine completion_tokens " + ", ".join(
        f"{side} {'/'.join(map(str, sums[side]['completion_tokens'])) or '-'}" for side in SIDES)
        + "; finish " + ", ".join(f"{side} {'/'.join(sums[side]['finish_reasons'])}" for side in SIDES))
    for side in SIDES[1:]:
        if "ttft_added_outside_engine_ms" in cmp[side]:
            print(f"{side} adds {cmp[side]['ttft_added_outside_engine_ms']:+.2f} ms to the first token outside the "
                  f"engine's generation (TTFT - engine TTFT, {side} minus direct; medians)")
    load = env.get("neighbours")
    if load is not None:
        print(f"CPU taken by other processes during the timed runs: {load['other_processes']:.0%} of "
              f"{os.cpu_count()} CPUs, steal {load['steal']:.0%}"
              + ("; llama.cpp's prompt evaluation stalls when a core is taken: the TTFT and tok/s above are noisy."
                 if load["other_processes"] + load["steal"] > 0.05 else ""))
    print()
    _print_memory(mem)


def _print_memory(mem: dict[str, Any]) -> None:
    rss, kernel = mem["server_rss_bytes"], mem["kernel"]
    ratio = mem["added_per_one_load"]
    rows = [("memory (VmRSS of the server)", "MB", "note"),
            ("model file", _mb(mem["model_file_bytes"]), ""),
            ("server, model unloaded", _mb(rss["unloaded"]), "POST /llamalab/models/unload"),
            ("+ chat over the WebSocket", _mb(rss["chat"]), "loads the model again"),
            ("+ %%llama in a kernel", _mb(rss["magic"]), "through LLAMALAB_SERVER_URL"),
            ("+ /v1/completions", _mb(rss["completion"]), f"peak VmHWM {_mb(mem['server_hwm_bytes'])}"),
            ("added by the model, three consumers", _mb(mem["server_added_bytes"]),
             f"x{ratio:.2f} of one LocalEngine in a plain process ({_mb(mem['one_load_in_plain_process_bytes'])}),"
             f" <= {MEMORY_TARGET:g} {_verdict(mem['weights_once_pass'])}" if ratio is not None else "n/a"),
            ("model file resident in the server", _mb(mem["model_file_resident_bytes"]),
             f"{mem['model_file_mappings']} mapping(s); model loads for the three: {mem['server_loads_for_the_three']}"),
            ("kernel before -> after %%llama", f"{_mb(kernel['rss_before_bytes'])} -> {_mb(kernel['rss_after_bytes'])}",
             f"llama_cpp imported: {'yes' if kernel['llama_cpp_imported'] else 'no'}, libllama mapped: "
             f"{'yes' if kernel['libllama_maps'] else 'no'}, model mapped: {'yes' if kernel['model_maps'] else 'no'}")]
    _print_rows(rows, (0,))


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    if args.direct_worker:
        _worker(json.loads(args.direct_worker))
        return 0
    model = model_path(args)
    samples, env, mem = asyncio.run(_measure(args, model))
    timed = {name: [s for s in ss if s.run >= 0] for name, ss in samples.items()}
    texts = {s.text for ss in timed.values() for s in ss}
    if len(texts) != 1:
        print("warning: the runs did not all stream the same text; the comparison is not like for like.",
              file=sys.stderr)
    sums = {name: _summary(ss) for name, ss in samples.items()}
    cmp = _compare(timed, sums)
    print()
    _print_table(sums, cmp, mem, env)
    if args.json:
        report = {
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "direct_worker")},
            "environment": env,
            "targets": {"throughput_ratio_min": THROUGHPUT_TARGET, "ttft_added_ms_max": TTFT_TARGET_MS,
                        "memory_added_per_one_load_max": MEMORY_TARGET},
            "summary": sums, "compare": cmp, "memory": mem,
            "samples": [{k: v for k, v in asdict(s).items() if k != "text"} for ss in samples.values() for s in ss],
            "text": next(iter(texts)) if len(texts) == 1 else sorted(texts),
        }
        save_report(args.json, report)
    missed = not (all(c["throughput_pass"] and c["ttft_pass"] for c in cmp.values()) and mem["weights_once_pass"])
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
