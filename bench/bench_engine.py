#!/usr/bin/env python
"""LocalEngine (its slot scheduler, one stream) against llama-cpp-python's high-level API called
directly: decode throughput and time to first token (issue 11's S5).

Usage::

    python bench/bench_engine.py                 # 7 runs of 128 tokens per side
    python bench/bench_engine.py --quick         # 3 runs of 32 tokens (CI smoke)
    python bench/bench_engine.py --json out.json --strict

Both sides load the same GGUF with the same settings (LocalEngine's context size, batch and
threads, mirrored for a separate high-level ``llama_cpp.Llama``), get the same prompt and the same greedy
sampling parameters, and are timed the same way from the caller's side of the iterator:

* TTFT: ``perf_counter`` from just before the call (``engine.complete`` / ``create_completion``)
  to the first non-empty text piece. LocalEngine's TTFT therefore includes its tokenizing, the
  hand-off to its worker thread and the queue back; that is the overhead being measured.
* decode tok/s: ``(pieces - 1) / (t_last_piece - t_first_piece)``, i.e. the intervals between
  the streamed pieces. Greedy decoding of the same prompt gives both sides the same text, which
  the script checks; it also reports the token counts and finish reasons.

Runs alternate between the sides (the side that goes first swaps every round) after one
warm-up run each; medians and ratios are printed because the machine may be shared and noisy.
The targets (decode >= 1.05x direct: the slot scheduler samples in llama.cpp and skips the
high-level API's per-token Python work; <= 10 ms added to the first token) are reported as
PASS/MISS; the exit status is 0 either way unless ``--strict``.

This is a benchmark that prints a table, not a test: nothing here asserts on timings.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
try:
    import resource
except ImportError:  # Windows
    resource = None  # type: ignore[assignment]
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from benchlib import add_common_arguments, model_path, save_report

THROUGHPUT_TARGET = 1.05  # LocalEngine decode tok/s at least this multiple of direct
TTFT_TARGET_MS = 10.0  # LocalEngine adds at most this much to the first token

# A completion prompt that the demo model (SmolLM2-135M-Instruct) continues greedily for well
# over 512 tokens without emitting EOS, so every run produces exactly --max-tokens tokens.
DEFAULT_PROMPT = (
    "The following is a detailed, step-by-step guide to baking sourdough bread at home, covering "
    "the starter, the dough, shaping, proofing and baking.\n\nStep 1:"
)


@dataclass
class Sample:
    side: str
    run: int  # -1 for the warm-up
    ttft_s: float
    decode_tok_s: float
    pieces: int  # non-empty text pieces seen by the caller
    finish_reason: Optional[str]
    total_s: float
    cpu_s: Optional[float]  # user + system CPU of this whole process during the run, all threads
    text: str = field(repr=False)
    engine_completion_tokens: Optional[int] = None  # LocalEngine's own GenerationResult fields
    engine_ttft_s: Optional[float] = None
    engine_duration_s: Optional[float] = None


def _default_threads() -> tuple[int, int]:
    from llamalab.engine.local import default_threads

    return default_threads()


def _cpu_s() -> Optional[float]:
    if resource is None:
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _timed(iterate: Callable[[], Any]) -> tuple[float, list[float], list[str], float, Optional[float]]:
    """Run ``iterate`` (returns an iterator of text pieces); time every non-empty piece."""
    gc.collect()
    c0 = _cpu_s()
    t0 = time.perf_counter()
    stamps: list[float] = []
    texts: list[str] = []
    it = iterate()
    for piece in it:
        if piece:
            stamps.append(time.perf_counter())
            texts.append(piece)
    t_end = time.perf_counter()
    c1 = _cpu_s()
    return t0, stamps, texts, t_end, (c1 - c0 if c0 is not None and c1 is not None else None)


def _sample(side: str, run: int, t0: float, stamps: list[float], texts: list[str], t_end: float,
            cpu_s: Optional[float], finish: Optional[str], **extra: Any) -> Sample:
    if not stamps:
        raise SystemExit(f"{side}: the model produced no text; choose another --prompt.")
    span = stamps[-1] - stamps[0]
    rate = (len(stamps) - 1) / span if span > 0 else float("nan")
    return Sample(side=side, run=run, ttft_s=stamps[0] - t0, decode_tok_s=rate, pieces=len(stamps),
                  finish_reason=finish, total_s=t_end - t0, cpu_s=cpu_s, text="".join(texts), **extra)


class EngineSide:
    """llamalab's LocalEngine, consumed as a caller would: iterate the TokenStream."""

    name = "llamalab"

    def __init__(self, engine: Any, prompt: str, params: Any) -> None:
        self.engine, self.prompt, self.params = engine, prompt, params

    def run(self, index: int) -> Sample:
        # Forget the KV cache before each run (see DirectSide.run): the slots and the prompt cache.
        self.engine.clear_cache()
        holder: dict[str, Any] = {}

        def iterate() -> Any:
            holder["stream"] = stream = self.engine.complete(self.prompt, self.params)
            return stream

        t0, stamps, texts, t_end, cpu = _timed(iterate)
        result = holder["stream"].result
        return _sample(self.name, index, t0, stamps, texts, t_end, cpu, result.finish_reason,
                       engine_completion_tokens=result.completion_tokens,
                       engine_ttft_s=result.time_to_first_token_s, engine_duration_s=result.duration_s)


class DirectSide:
    """A separate ``llama_cpp.Llama``, called as LocalEngine calls it, on the caller's thread."""

    name = "direct"

    def __init__(self, llama: Any, prompt: str, params: Any) -> None:
        self.llama, self.prompt, self.params = llama, prompt, params
        self.finish: Optional[str] = None

    def run(self, index: int) -> Sample:
        # Why reset: llama-cpp-python keeps the longest common prompt prefix in the KV cache, so
        # repeating a prompt would evaluate one token instead of the whole prompt and the TTFT
        # would measure almost nothing. Varying the prompt per run (a run-number prefix) avoids
        # that but changes the greedy continuation, which may then stop at EOS before
        # --max-tokens and make runs differ. ``reset()`` on both sides before every run keeps
        # the prompt and the output identical run after run, and each run evaluates the whole
        # prompt, as for a new, unrelated request.
        self.llama.reset()
        p = self.params
        self.finish = None

        def pieces() -> Any:
            chunks = self.llama.create_completion(
                self.prompt, max_tokens=p.max_tokens, temperature=p.temperature, top_p=p.top_p,
                top_k=p.top_k, min_p=p.min_p, repeat_penalty=p.repeat_penalty,
                stop=list(p.stop) or None, seed=p.seed, stream=True,
            )
            for chunk in chunks:
                choice = chunk["choices"][0]
                self.finish = choice.get("finish_reason") or self.finish
                yield choice["text"]

        t0, stamps, texts, t_end, cpu = _timed(pieces)
        return _sample(self.name, index, t0, stamps, texts, t_end, cpu, self.finish)


# ------------------------------------------------------------------------------ setup


def _parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(ap)
    ap.add_argument("--runs", type=int, help="timed runs per side (default 7; 3 with --quick)")
    ap.add_argument("--max-tokens", type=int, help="tokens per run (default 128; 32 with --quick)")
    ap.add_argument("--threads", type=int, default=_default_threads()[0],
                    help="llama.cpp decode threads (default: LocalEngine's, %(default)s)")
    ap.add_argument("--threads-batch", type=int, default=_default_threads()[1],
                    help="llama.cpp prompt-evaluation threads (default: LocalEngine's, %(default)s)")
    ap.add_argument("--n-ctx", type=int, default=2048, help="context window (default %(default)s)")
    ap.add_argument("--n-batch", type=int, default=512, help="prompt batch size (default %(default)s)")
    ap.add_argument("--gpu-layers", default="auto",
                    help="LocalEngine's n_gpu_layers ('auto', a count, -1 = all); the direct side "
                    "uses the count LocalEngine settled on (default %(default)s)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT, help="completion prompt (default: a baking guide)")
    ap.add_argument("--quick", action="store_true", help="3 runs of 32 tokens, for a CI smoke run")
    args = ap.parse_args(argv)
    if args.runs is None:
        args.runs = 3 if args.quick else 7
    if args.max_tokens is None:
        args.max_tokens = 32 if args.quick else 128
    if args.runs < 1 or args.max_tokens < 2:
        ap.error("--runs must be at least 1 and --max-tokens at least 2")
    return args


def _gpu_layers(value: str) -> Any:
    try:
        return int(value)
    except ValueError:
        return value


def _direct_llama(engine: Any, threads: int, threads_batch: int, n_batch: int) -> Any:
    """A high-level Llama with the context size, batch and threads LocalEngine uses."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(engine.info.path), n_ctx=engine.n_ctx, n_gpu_layers=engine.plan.n_gpu_layers,
        n_threads=threads, n_threads_batch=threads_batch, n_batch=n_batch, seed=0, verbose=False,
    )


# ------------------------------------------------------------------------------ report


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _summary(samples: list[Sample]) -> dict[str, Any]:
    timed = [s for s in samples if s.run >= 0]
    cpu = [s.cpu_s / s.pieces * 1e3 for s in timed if s.cpu_s is not None]
    return {
        "runs": len(timed),
        "median_decode_tok_s": _median([s.decode_tok_s for s in timed]),
        "median_ttft_ms": _median([s.ttft_s * 1e3 for s in timed]),
        "min_decode_tok_s": min(s.decode_tok_s for s in timed),
        "max_decode_tok_s": max(s.decode_tok_s for s in timed),
        "min_ttft_ms": min(s.ttft_s * 1e3 for s in timed),
        "max_ttft_ms": max(s.ttft_s * 1e3 for s in timed),
        "median_cpu_ms_per_token": _median(cpu) if cpu else None,
        "pieces": sorted({s.pieces for s in timed}),
        "finish_reasons": sorted({str(s.finish_reason) for s in timed}),
    }


def _compare(timed: dict[str, list[Sample]], sums: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours, direct = sums["llamalab"], sums["direct"]
    pairs = list(zip(timed["llamalab"], timed["direct"]))  # run i of each side, back to back
    handoff = [(s.ttft_s - s.engine_ttft_s) * 1e3 for s in timed["llamalab"] if s.engine_ttft_s is not None]
    ratio = ours["median_decode_tok_s"] / direct["median_decode_tok_s"]
    ttft_diff = ours["median_ttft_ms"] - direct["median_ttft_ms"]
    return {
        "throughput_ratio": ratio,
        "ttft_diff_ms": ttft_diff,
        "throughput_pass": ratio >= THROUGHPUT_TARGET,
        "ttft_pass": ttft_diff <= TTFT_TARGET_MS,
        "paired_throughput_ratio": _median([a.decode_tok_s / b.decode_tok_s for a, b in pairs]),
        "paired_ttft_diff_ms": _median([(a.ttft_s - b.ttft_s) * 1e3 for a, b in pairs]),
        # The part of LocalEngine's TTFT spent outside llama.cpp: tokenizing, the job queue,
        # and handing the first piece back from the worker thread.
        "engine_first_token_handoff_ms": _median(handoff) if handoff else None,
        "engine_completion_tokens": sorted({s.engine_completion_tokens for s in timed["llamalab"]
                                            if s.engine_completion_tokens is not None}),
    }


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def _print_table(sums: dict[str, dict[str, Any]], cmp: dict[str, Any]) -> None:
    rows = [("side", "runs", "tokens", "decode tok/s", "(min-max)", "TTFT ms", "(min-max)")]
    for side in ("llamalab", "direct"):
        s = sums[side]
        rows.append((side, str(s["runs"]), "/".join(str(n) for n in s["pieces"]),
                     f"{s['median_decode_tok_s']:.1f}", f"{s['min_decode_tok_s']:.1f}-{s['max_decode_tok_s']:.1f}",
                     f"{s['median_ttft_ms']:.1f}", f"{s['min_ttft_ms']:.1f}-{s['max_ttft_ms']:.1f}"))
    rows.append(("llamalab/direct", "", "", f"x{cmp['throughput_ratio']:.3f}",
                 f">= {THROUGHPUT_TARGET} {_verdict(cmp['throughput_pass'])}",
                 f"{cmp['ttft_diff_ms']:+.1f}", f"<= {TTFT_TARGET_MS:g} {_verdict(cmp['ttft_pass'])}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if n == 0 or n == len(rows) - 2:
            print("  ".join("-" * w for w in widths))
    print(f"\npaired by round: throughput ratio median x{cmp['paired_throughput_ratio']:.3f}, "
          f"TTFT difference median {cmp['paired_ttft_diff_ms']:+.1f} ms")
    if cmp["engine_first_token_handoff_ms"] is not None:
        print(f"LocalEngine's TTFT outside llama.cpp (caller's TTFT - worker's TTFT): median "
              f"{cmp['engine_first_token_handoff_ms']:.2f} ms")
    cpu = {k: v["median_cpu_ms_per_token"] for k, v in sums.items()}
    if None not in cpu.values():
        print(f"process CPU per token (all threads): llamalab {cpu['llamalab']:.2f} ms, direct {cpu['direct']:.2f} ms")
    print(f"tokens = streamed pieces per run; finish: llamalab {'/'.join(sums['llamalab']['finish_reasons'])}, "
          f"direct {'/'.join(sums['direct']['finish_reasons'])}; LocalEngine's completion_tokens: "
          f"{'/'.join(str(n) for n in cmp['engine_completion_tokens'])}")


def _measure(args: argparse.Namespace, path: Path) -> tuple[dict[str, list[Sample]], dict[str, Any]]:
    """Warm up each side once, then alternate them ``args.runs`` times."""
    import llama_cpp

    from llamalab import GenerationParams, LocalEngine

    params = GenerationParams(max_tokens=args.max_tokens, temperature=0)
    engine = LocalEngine(path, n_ctx=args.n_ctx, n_gpu_layers=_gpu_layers(args.gpu_layers),
                         n_threads=args.threads, n_threads_batch=args.threads_batch, n_batch=args.n_batch,
                         seed=0, name="bench")
    try:
        llama = _direct_llama(engine, args.threads, args.threads_batch, args.n_batch)
    except BaseException:
        engine.close()
        raise
    try:
        ours = engine.tokenize(args.prompt, add_bos=bool(engine.info.add_bos_token), special=True)
        theirs = llama.tokenize(args.prompt.encode("utf-8"), special=True)
        if ours != theirs:
            print(f"warning: the prompt tokenizes differently ({len(ours)} tokens in llamalab, "
                  f"{len(theirs)} in llama-cpp-python); the sides do not see the same input.",
                  file=sys.stderr)
        env = {"llama_cpp": llama_cpp.__version__, "python": platform.python_version(),
               "machine": platform.machine(), "cpus": os.cpu_count(), "model": str(path),
               "threads": args.threads, "n_ctx": engine.n_ctx, "n_gpu_layers": engine.plan.n_gpu_layers,
               "total_layers": engine.plan.total_layers, "prompt_tokens": len(ours)}
        print(f"model {path.name} | llama-cpp-python {env['llama_cpp']} | threads {args.threads} | "
              f"n_ctx {env['n_ctx']} | n_gpu_layers {env['n_gpu_layers']}/{env['total_layers']} | "
              f"prompt {len(ours)} tokens | max_tokens {args.max_tokens} | runs {args.runs} + 1 warm-up",
              flush=True)
        sides = {"llamalab": EngineSide(engine, args.prompt, params), "direct": DirectSide(llama, args.prompt, params)}
        samples: dict[str, list[Sample]] = {name: [side.run(-1)] for name, side in sides.items()}  # warm-up
        for i in range(args.runs):
            # Alternate, and swap which side goes first every round, so that neither side
            # always runs right after the other (caches, CPU frequency, a neighbour's load).
            for name in (("llamalab", "direct") if i % 2 == 0 else ("direct", "llamalab")):
                samples[name].append(sides[name].run(i))
    finally:
        engine.close()
        llama.close()
    return samples, env


def main(argv: Optional[list[str]] = None) -> int:
    args = _parse_args(argv)
    path = model_path(args)
    samples, env = _measure(args, path)
    timed = {name: [s for s in ss if s.run >= 0] for name, ss in samples.items()}
    texts = {s.text for ss in timed.values() for s in ss}
    if len(texts) != 1:
        print("warning: the runs did not all produce the same text; the comparison is not like for like.",
              file=sys.stderr)
    sums = {name: _summary(ss) for name, ss in samples.items()}
    cmp = _compare(timed, sums)
    print()
    _print_table(sums, cmp)
    if args.json:
        report = {
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "environment": env,
            "targets": {"throughput_ratio_min": THROUGHPUT_TARGET, "ttft_added_ms_max": TTFT_TARGET_MS},
            "summary": {**sums, **cmp},
            "samples": [{k: v for k, v in asdict(s).items() if k != "text"} for ss in samples.values() for s in ss],
            "text": next(iter(texts)) if len(texts) == 1 else sorted(texts),
        }
        save_report(args.json, report)
    missed = not (cmp["throughput_pass"] and cmp["ttft_pass"])
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
