"""Conversion benchmark: llamalab's Meta .pth -> GGUF converter against llama.cpp's legacy one.

Builds Meta-format checkpoints (bf16 ``consolidated.00.pth``, ``params.json``, a SentencePiece
``tokenizer.model``) of several sizes, converts each to f16 GGUF with
``llamalab.convert.convert_checkpoint`` and with ``examples/convert_legacy_llama.py`` from the
llama.cpp sources vendored in llama-cpp-python's sdist (the same version as installed; fetched
with ``pip download --no-binary``, never committed), each in a fresh subprocess, and prints
throughput (input GB/s) and peak RSS side by side, with the ratio and the memory bound the
issue sets (512 MB plus twice the largest merged tensor).

    python bench/bench_convert.py                 # three sizes, the largest above 1 GB
    python bench/bench_convert.py --quick         # tiny shapes: a dry run that CI runs

Both converters run on the same input in the same run, alternately, so the ratio is what to
read on a shared, noisy machine. Timing is wall clock around the child process; peak RSS is the
child's ``ru_maxrss`` from ``os.wait4``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    side: str
    size_label: str
    input_bytes: int
    seconds: float
    peak_rss_bytes: int
    output_bytes: int
    returncode: int


def legacy_converter(cache: Path) -> Path:
    """convert_legacy_llama.py (and its gguf-py) from the installed llama-cpp-python's sdist."""
    import llama_cpp

    version = llama_cpp.__version__
    root = cache / f"llama-cpp-python-{version}"
    script = root / "examples" / "convert_legacy_llama.py"
    if script.exists():
        return script
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "--disable-pip-version-check", "-q", "-d", tmp, f"llama-cpp-python=={version}"],
                       check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"{sdist.name[: -len('.tar.gz')]}/vendor/llama.cpp/"
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                if member.name.startswith(prefix + "gguf-py/") or member.name == prefix + "examples/convert_legacy_llama.py":
                    member.name = member.name[len(prefix):]
                    archive.extract(member, root, filter="data")
    return script


def build_checkpoint(folder: Path, dim: int, n_layers: int, n_heads: int) -> tuple[int, int]:
    """A Meta-format checkpoint, built in a child process so this one stays small; returns
    (input bytes, bytes of the largest tensor as f16)."""
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
            "from tests.fixtures.meta_checkpoint import Spec, make_weights, train_tokenizer, write_meta_checkpoint;"
            "folder = Path(sys.argv[2]); dim, layers, heads = map(int, sys.argv[3:6]);"
            "tok = train_tokenizer(folder.parent / 'tokenizer', vocab_size=512);"
            "spec = Spec(dim=dim, n_layers=layers, n_heads=heads, multiple_of=256);"
            "w = make_weights(spec, n_vocab=512);"
            "print(json.dumps(max(v.size for v in w.values()) * 2));"
            "write_meta_checkpoint(folder, w, spec, n_shards=1, tokenizer=tok)")
    result = subprocess.run([sys.executable, "-c", code, str(REPO), str(folder), str(dim), str(n_layers),
                             str(n_heads)], capture_output=True, text=True, check=True)
    largest = int(result.stdout.strip().splitlines()[-1])
    return sum(p.stat().st_size for p in folder.glob("consolidated.*.pth")), largest


def run_child(command: list[str], env: dict[str, str], log: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS bytes and exit code of one child process.

    The child is started with posix_spawn (vfork semantics), not fork: a forked child's
    ``ru_maxrss`` would start at the parent's resident size and hide the converter's own peak.
    """
    started = time.perf_counter()
    with open(log, "wb") as out:
        actions = [(os.POSIX_SPAWN_DUP2, out.fileno(), 1), (os.POSIX_SPAWN_DUP2, out.fileno(), 2)]
        pid = os.posix_spawn(command[0], command, env, file_actions=actions)
        _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(log.read_text(errors="replace")[-2000:])
    return seconds, usage.ru_maxrss * 1024, code


def convert_with(side: str, folder: Path, out: Path, legacy: Path, home: Path) -> tuple[float, int, int]:
    env = dict(os.environ, LLAMALAB_HOME=str(home), PYTHONPATH=str(REPO))
    if side == "llamalab":
        code = ("import sys; from llamalab.convert import convert_checkpoint; "
                "convert_checkpoint(sys.argv[1], sys.argv[2], outtype='f16', accept_license=True)")
        command = [sys.executable, "-c", code, str(folder), str(out)]
    else:
        command = [sys.executable, str(legacy), str(folder), "--outtype", "f16", "--outfile", str(out)]
    out.unlink(missing_ok=True)
    return run_child(command, env, out.with_suffix(".log"))


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def print_table(runs: list[Run], bounds: dict[str, int]) -> None:
    print(f"{'size':>6} {'input GB':>8} | {'llamalab GB/s':>13} {'peak RSS MB':>11} | "
          f"{'legacy GB/s':>11} {'peak RSS MB':>11} | {'speed x':>7} {'RSS bound MB':>12} {'within':>6}")
    for label in dict.fromkeys(r.size_label for r in runs):
        ours = [r for r in runs if r.size_label == label and r.side == "llamalab"]
        theirs = [r for r in runs if r.size_label == label and r.side == "legacy"]
        best_ours = min(ours, key=lambda r: r.seconds)
        best_theirs = min(theirs, key=lambda r: r.seconds)
        ours_rate = best_ours.input_bytes / best_ours.seconds
        theirs_rate = best_theirs.input_bytes / best_theirs.seconds if best_theirs.returncode == 0 else float("nan")
        peak = max(r.peak_rss_bytes for r in ours)
        print(f"{label:>6} {_gb(best_ours.input_bytes):>8} | {ours_rate / 1e9:>13.3f} {peak / 2**20:>11.0f} | "
              f"{theirs_rate / 1e9:>11.3f} {max(r.peak_rss_bytes for r in theirs) / 2**20:>11.0f} | "
              f"{ours_rate / theirs_rate:>7.2f} {bounds[label] / 2**20:>12.0f} "
              f"{'yes' if peak <= bounds[label] else 'NO':>6}")
    print("speed x = llamalab throughput / legacy throughput (best of the runs); target >= 2; "
          "RSS bound = 512 MB + 2 x largest merged tensor (f16)")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", default="2,5,11", help="layer counts, one checkpoint each (default %(default)s)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--runs", type=int, default=2, help="conversions per side and size (default %(default)s)")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "convert-work",
                    help="where checkpoints and outputs go (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one run: a dry run for CI")
    ap.add_argument("--json", type=Path, help="write every run as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.dim, args.heads, args.runs = "1,2", 256, 4, 1
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    legacy = legacy_converter(work / "legacy")
    runs: list[Run] = []
    bounds: dict[str, int] = {}
    for layers in (int(x) for x in args.layers.split(",")):
        label = f"{layers}L"
        folder = work / f"llama-bench-{args.dim}d-{layers}l"
        shutil.rmtree(folder, ignore_errors=True)
        input_bytes, largest = build_checkpoint(folder, args.dim, layers, args.heads)
        bounds[label] = 512 * 2**20 + 2 * largest
        for attempt in range(args.runs):
            for side in (("llamalab", "legacy") if attempt % 2 == 0 else ("legacy", "llamalab")):
                out = work / f"{label}.{side}.gguf"
                seconds, rss, code = convert_with(side, folder, out, legacy, work / "home")
                runs.append(Run(side, label, input_bytes, seconds, rss, out.stat().st_size if out.exists() else 0,
                                code))
                if side == "llamalab" and code != 0:
                    print(f"llamalab's converter failed on {label}", file=sys.stderr)
                    return 1
                out.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    print_table(runs, bounds)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
