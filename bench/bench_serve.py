#!/usr/bin/env python
"""A team's server under load: ``llamalab serve`` against llama.cpp's ``llama-server``, same run.

Both serve the same GGUF with the same slots (``--parallel P`` / ``-np P --kv-unified``), the
same KV cells (``--n-ctx N`` / ``-c N``) and threads, on 127.0.0.1. For 1, 4 and 8 clients at
once, each client sends ``--requests`` streamed chat completions one after another (its own
conversation openers, ``temperature`` 0, ``max_tokens`` M) to ``/v1/chat/completions``, as an
OpenAI client does; llamalab's side with an API key, as its users do. Measured by the client
(``perf_counter``): the first token (request sent to first non-empty piece) and the aggregate
throughput (streamed pieces of all clients / the wall time of the round). Both servers run at
once (an idle one costs nothing) and take turns, ``--repeat`` rounds each per client count: the
throughput is the median round's, the first-token times are those of every round together. llama-server gets an HTTP thread per open stream
(``--threads-http``): with its default (the core count) it drops connections beyond that.

Targets (issue 14): llamalab's aggregate throughput >= 0.9x llama-server's, and its p50 and p95
first-token times within 1/0.9 of llama-server's, at every client count.

Fairness (llamalab only: llama-server has no notion of users): user A runs 6 streams at once and
user B starts 1; B's first token against B's first token on an idle server (target <= 2x).

The llama-server binary: ``--llama-server PATH``, ``$LLAMA_SERVER``, or the cache of
``scripts/build-llama-server.sh`` (which builds it from the llama.cpp sources vendored in
llama-cpp-python's sdist); without it only llamalab's side runs. Shared two-core machines are
noisy: the load average is printed; compare ratios, and several runs. Prints tables; not a test.

    python bench/bench_serve.py [--clients 1,4,8] [--requests 3] [--max-tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx

from benchlib import add_common_arguments, free_port, llama_server_binary, model_path, save_report

OPENERS = ["Tell me about the sea.", "Write a short poem about autumn.", "Explain what a CPU does.",
           "Describe a walk in a forest.", "What makes bread rise?", "Tell a story about a cat.",
           "Why is the sky blue?", "Describe your favourite city.", "How do birds fly?", "What is music?"]


@dataclass
class Sample:
    first_token_s: float
    pieces: int


@dataclass
class Round:
    side: str
    clients: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return sum(s.pieces for s in self.samples) / self.wall_s

    def first_token(self, q: float) -> float:
        values = sorted(s.first_token_s for s in self.samples)
        return values[min(len(values) - 1, int(q * len(values)))] if q < 0.5 or q > 0.5 else statistics.median(values)


class Side:
    """A server process and how to ask it."""

    def __init__(self, name: str, argv: list[str], port: int, env: Optional[dict] = None,
                 headers: Optional[dict] = None, model: Optional[str] = None) -> None:
        self.name, self.port, self.headers, self.model = name, port, headers or {}, model
        self.log = tempfile.NamedTemporaryFile("w+", prefix=f"bench-serve-{name}-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(self, why: str) -> SystemExit:
        tail = "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-20:])
        return SystemExit(f"{self.name}: {why}\n--- its log ---\n{tail}")

    async def ready(self, client: httpx.AsyncClient, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise self.fail(f"exited with status {self.proc.returncode}")
            try:
                reply = await client.get(self.url + "/health")
                if reply.status_code == 200 and reply.json().get("status") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(0.2)
        raise self.fail("/health did not say ok")

    async def chat(self, client: httpx.AsyncClient, content: str, max_tokens: int,
                   headers: Optional[dict] = None) -> Sample:
        body = {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0,
                "stream": True}
        if self.model:
            body["model"] = self.model
        began, first, pieces = time.perf_counter(), None, 0
        async with client.stream("POST", self.url + "/v1/chat/completions", json=body,
                                 headers=headers or self.headers) as reply:
            if reply.status_code != 200:
                raise self.fail(f"HTTP {reply.status_code}: {(await reply.aread())[:300]!r}")
            async for line in reply.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                for choice in json.loads(line[6:]).get("choices") or ():
                    if (choice.get("delta") or {}).get("content"):
                        pieces += 1
                        first = first or time.perf_counter()
        if first is None:
            raise self.fail("an answer with no text")
        return Sample(first - began, pieces)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _client() -> httpx.AsyncClient:
    """A fresh connection per request, for both sides: llama-server closes a kept-alive connection
    after a few requests, which a pooled client would meet as a dropped request."""
    return httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=64, max_keepalive_connections=0))


def start_llamalab(model: Path, args: argparse.Namespace, folder: Path) -> tuple[Side, dict[str, str]]:
    """``llamalab serve`` on ``model`` registered in a store of its own, with keys for the users."""
    from llamalab import KeyRing, ModelStore

    store = ModelStore(folder / "home")
    store.register("bench", model, source=f"file:{model}")
    ring = KeyRing(folder / "keys.json")
    keys = {user: ring.add(user, max_concurrent=64, max_tokens=4096) for user in ("bench", "a", "b")}
    port = free_port()
    argv = [sys.executable, "-m", "llamalab", "serve", "-m", "bench", "--port", str(port), "--keys-file",
            str(folder / "keys.json"), "--parallel", str(args.parallel), "--n-ctx", str(args.n_ctx),
            "--threads", str(args.threads), "--max-queued", "128", "--log-level", "WARNING"]
    side = Side("llamalab serve", argv, port, env={**os.environ, "LLAMALAB_HOME": str(folder / "home")},
                headers={"Authorization": f"Bearer {keys['bench']}"}, model="bench")
    return side, keys


def start_llama_server(binary: Path, model: Path, args: argparse.Namespace) -> Side:
    port = free_port()
    argv = [str(binary), "-m", str(model), "-c", str(args.n_ctx), "-np", str(args.parallel), "--kv-unified",
            "-t", str(args.threads), "-tb", str(args.threads), "--host", "127.0.0.1", "--port", str(port),
            "--no-webui", "--threads-http", str(max(args.clients) + 4)]  # one HTTP thread per open stream
    return Side("llama-server", argv, port)


async def one_round(side: Side, clients: int, args: argparse.Namespace, repeat: int = 0) -> Round:
    """``clients`` users at once, ``--requests`` each; every prompt is one neither server has seen
    in this run (a numbered question), so no round is answered from a cache the other lacks."""
    async with _client() as client:
        async def user(i: int) -> list[Sample]:
            return [await side.chat(client, f"Question {repeat}.{clients}.{i}.{r}: {OPENERS[(i + r) % len(OPENERS)]}",
                                    args.max_tokens) for r in range(args.requests)]

        began = time.perf_counter()
        results = await asyncio.gather(*(user(i) for i in range(clients)))
        result = Round(side.name, clients, time.perf_counter() - began)
        result.samples = [s for samples in results for s in samples]
        return result


FAIRNESS_PROMPTS = ["Name a red fruit.", "Name a blue bird.", "Name a green tree.", "Name a cold country.",
                    "Name a fast animal.", "Name a loud instrument."]


async def fairness(side: Side, keys: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    """User B's first token while user A runs 6 long streams, against B's first token on the idle
    server: medians of 3 requests each, every one a prompt not seen before (none is answered from
    a cache)."""
    async with _client() as client:
        b = {"Authorization": f"Bearer {keys['b']}"}
        idle = statistics.median([(await side.chat(client, text, 8, b)).first_token_s
                                  for text in FAIRNESS_PROMPTS[:3]])
        a = {"Authorization": f"Bearer {keys['a']}"}
        streams = [asyncio.ensure_future(side.chat(client, OPENERS[i], max(args.max_tokens, 256), a))
                   for i in range(6)]
        await asyncio.sleep(1.0)  # a benchmark may pace itself: A's streams are under way
        loaded = []
        for text in FAIRNESS_PROMPTS[3:]:
            loaded.append((await side.chat(client, text, 8, b)).first_token_s)
        busy = sum(not s.done() for s in streams)
        await asyncio.gather(*streams)
    median = statistics.median(loaded)
    return {"idle_first_token_s": idle, "loaded_first_token_s": median, "ratio": median / idle,
            "a_streams_running": busy}


async def run_all(sides: list[Side], args: argparse.Namespace, keys: Optional[dict[str, str]]) -> dict[str, dict]:
    """Both servers up at once (an idle one costs nothing); for each client count the sides take
    turns, ``--repeat`` times, so a drift in the machine's load reaches both alike."""
    out: dict[str, dict] = {side.name: {"rounds": [], "all": []} for side in sides}
    try:
        async with _client() as client:
            for side in sides:
                await side.ready(client)
                await side.chat(client, "Hello!", 8)  # warm-up, untimed
        for clients in args.clients:
            tries: dict[str, list[Round]] = {side.name: [] for side in sides}
            for repeat in range(args.repeat):
                for side in sides:
                    tries[side.name].append(await one_round(side, clients, args, repeat))
            for side in sides:
                best = _pooled(tries[side.name])
                out[side.name]["rounds"].append(best)
                out[side.name]["all"] += tries[side.name]
                print(f"  {side.name:<15} {clients} clients: {best.tokens_per_s:6.1f} tok/s, first token p50 "
                      f"{1000 * best.first_token(0.5):6.0f} ms p95 {1000 * best.first_token(0.95):6.0f} ms "
                      f"(median of {args.repeat})", flush=True)
        ours = next((side for side in sides if side.name == "llamalab serve"), None)
        if ours is not None and keys is not None:
            out[ours.name]["fairness"] = await fairness(ours, keys, args)
    finally:
        for side in sides:
            side.stop()
    return out


def _pooled(tries: list[Round]) -> Round:
    """The rounds as one: the median round's throughput, every round's first tokens."""
    median = sorted(tries, key=lambda r: r.tokens_per_s)[len(tries) // 2]
    pooled = Round(median.side, median.clients, median.wall_s)
    pooled.samples = [s for r in tries for s in r.samples]
    pooled.wall_s = sum(s.pieces for s in pooled.samples) / median.tokens_per_s
    return pooled


def report(results: dict[str, dict], args: argparse.Namespace) -> bool:
    ours, theirs = results.get("llamalab serve"), results.get("llama-server")
    print("\n| clients | side | tok/s | first token p50 ms | p95 ms |\n| ---: | --- | ---: | ---: | ---: |")
    for i, clients in enumerate(args.clients):
        for name, res in results.items():
            r = res["rounds"][i]
            print(f"| {clients} | {name} | {r.tokens_per_s:.1f} | {1000 * r.first_token(0.5):.0f} | "
                  f"{1000 * r.first_token(0.95):.0f} |")
    met = True
    if ours and theirs:
        print("\n| clients | throughput llamalab/llama-server (>= 0.9) | first token p50 llama-server/llamalab "
              "(>= 0.9) | p95 (>= 0.9) |\n| ---: | ---: | ---: | ---: |")
        for i, clients in enumerate(args.clients):
            a, b = ours["rounds"][i], theirs["rounds"][i]
            ratios = (a.tokens_per_s / b.tokens_per_s, b.first_token(0.5) / a.first_token(0.5),
                      b.first_token(0.95) / a.first_token(0.95))
            met &= all(x >= 0.9 for x in ratios)
            print(f"| {clients} | " + " | ".join(f"{x:.2f} {'PASS' if x >= 0.9 else 'MISS'}" for x in ratios) + " |")
    if ours and "fairness" in ours:
        f = ours["fairness"]
        ok = f["ratio"] <= 2
        met &= ok
        print(f"\nfairness: B's first token {1000 * f['idle_first_token_s']:.0f} ms idle, "
              f"{1000 * f['loaded_first_token_s']:.0f} ms while A runs 6 streams ({f['a_streams_running']} still "
              f"running after B's): x{f['ratio']:.2f} "
              f"(target <= 2x) {'PASS' if ok else 'MISS'}")
    return met


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap)
    ap.add_argument("--clients", default="1,4,8", help="client counts, comma-separated (default 1,4,8)")
    ap.add_argument("--requests", type=int, default=3, help="requests per client per round (default 3)")
    ap.add_argument("--repeat", type=int, default=3, help="rounds per side and client count, alternating (default 3)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens per answer (default 64)")
    ap.add_argument("--parallel", type=int, default=4, help="slots of both servers (default 4)")
    ap.add_argument("--n-ctx", type=int, default=4096, help="KV cells of both servers (default 4096)")
    ap.add_argument("--threads", type=int, default=2, help="threads of both servers (default 2)")
    ap.add_argument("--llama-server", help="llama-server binary (default: $LLAMA_SERVER or the build cache)")
    ap.add_argument("--sides", default="llamalab,llama-server", help="which sides to run (default both)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 and 2 clients, 1 request, 8 tokens")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.requests, args.max_tokens, args.n_ctx, args.repeat = "1,2", 1, 8, 1024, 1
    args.clients = [int(c) for c in args.clients.split(",")]
    model = model_path(args)
    print(f"model {model.name}; slots {args.parallel}, n_ctx {args.n_ctx}, threads {args.threads}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        sides: list[Side] = []
        keys = None
        if "llamalab" in args.sides:
            side, keys = start_llamalab(model, args, Path(folder))
            sides.append(side)
        binary = llama_server_binary(args.llama_server)
        if "llama-server" in args.sides:
            if binary is None:
                print("llama-server not found (scripts/build-llama-server.sh builds it): its side is skipped")
            else:
                sides.append(start_llama_server(binary, model, args))
        results = asyncio.run(run_all(sides, args, keys))
    met = report(results, args)
    if args.json:
        def rounds(items: list[Round]) -> list[dict]:
            return [{"clients": r.clients, "wall_s": r.wall_s, "samples": [vars(s) for s in r.samples]} for r in items]

        save_report(args.json, {name: {"rounds": rounds(res["rounds"]), "all_rounds": rounds(res["all"]),
                                       "fairness": res.get("fairness")} for name, res in results.items()})
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
