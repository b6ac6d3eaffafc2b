"""Conversion benchmark: llamalab's Meta .pth -> GGUF converter against llama.cpp's legacy one,
as a conversion stage and as the whole ``llamalab convert`` command.

Builds Meta-format checkpoints (bf16 ``consolidated.NN.pth``, ``params.json``, a SentencePiece
``tokenizer.model``) of three sizes with Llama 2 70B's structure scaled down (``--layout 70b``,
the default: eight shards split as Meta's model-parallel layers split them, GQA 64/8 heads,
``ffn_dim_multiplier`` 1.3, ``multiple_of`` 4096; ``--layout 13b``: two shards, MHA), and
converts each to f16 GGUF three ways, each in a fresh process:

    legacy  ``examples/convert_legacy_llama.py`` from the llama.cpp sources vendored in
            llama-cpp-python's sdist (the same version as installed; fetched with
            ``pip download --no-binary``, never committed)
    stage   ``llamalab.convert.convert_checkpoint`` alone
    cli     ``python -m llamalab convert DIR --outtype f16 --out FILE``: conversion, the check that
            llama.cpp accepts the file, sha256 and registration in a fresh store

and prints throughput (input GB/s), peak RSS, the ratios to the legacy converter and the memory
bound the issue sets (512 MB plus twice the largest merged tensor), with the check line the
command printed.

    python bench/bench_convert.py                 # 0.5, 1 and 2 GB of bf16
    python bench/bench_convert.py --quick         # tiny shapes: a dry run that CI runs

All sides run on the same input in the same run, in rotating order, so the ratios are what to
read on a shared, noisy machine. After each conversion the benchmark runs ``sync`` and times it:
the legacy converter leaves its output in the page cache while llamalab fsyncs its file before
registering it, so the ``durable`` ratio compares the time until each output is on disk (and
no side's unwritten pages slow the next side down). Timing is wall clock around the child process; peak RSS is the
child's ``ru_maxrss`` (it includes any process the child waited for), measured by a small launcher
process (see ``_LAUNCHER``).
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
SIDES = ("legacy", "stage", "cli")


@dataclass
class Run:
    side: str
    size_label: str
    input_bytes: int
    seconds: float
    peak_rss_bytes: int
    output_bytes: int
    returncode: int
    flush_seconds: float = 0.0  # ``sync`` right after the run: what the side left unwritten


def _durable(run: Run) -> float:
    """Seconds until the output is on disk: the run, plus the flush of what it left in the page
    cache (llamalab fsyncs its file before registering it; the legacy converter does not)."""
    return run.seconds + run.flush_seconds


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


LAYOUTS = {"70b": dict(shards=8, heads=64, kv_heads=8, multiple_of=4096, ffn_dim_multiplier=1.3),
           "13b": dict(shards=2, heads=0, kv_heads=None, multiple_of=256, ffn_dim_multiplier=None)}


def spec_fields(layout: str, dim: int, n_layers: int) -> dict:
    """The fixture's ``Spec`` arguments for a checkpoint of this layout (13b: heads of width 128)."""
    shape = LAYOUTS[layout]
    return dict(dim=dim, n_layers=n_layers, n_heads=shape["heads"] or dim // 128, n_kv_heads=shape["kv_heads"],
                multiple_of=shape["multiple_of"], ffn_dim_multiplier=shape["ffn_dim_multiplier"])


def tensor_bytes(layout: str, dim: int, n_layers: int) -> list[int]:
    """bf16 bytes of every merged tensor of such a checkpoint (512-piece vocabulary)."""
    sys.path.insert(0, str(REPO))
    from tests.fixtures.meta_checkpoint import Spec, meta_shapes

    sizes = []
    for shape in meta_shapes(Spec(**spec_fields(layout, dim, n_layers)), 512).values():
        n = 2
        for d in shape:
            n *= d
        sizes.append(n)
    return sizes


def build_checkpoint(folder: Path, layout: str, dim: int, n_layers: int) -> tuple[int, int]:
    """A Meta-format checkpoint of random bf16 weights, built shard by shard in a child process (torch
    stays out of this one); returns (input bytes, bytes of the largest merged tensor as f16)."""
    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
            "from tests.fixtures.meta_checkpoint import Spec, train_tokenizer, write_random_checkpoint;"
            "folder = Path(sys.argv[2]); spec = Spec(**json.loads(sys.argv[3]));"
            "tok = train_tokenizer(folder.parent / 'tokenizer', vocab_size=512);"
            "write_random_checkpoint(folder, spec, int(sys.argv[4]), tok, 512)")
    fields = json.dumps(spec_fields(layout, dim, n_layers))
    subprocess.run([sys.executable, "-c", code, str(REPO), str(folder), fields, str(LAYOUTS[layout]["shards"])],
                   check=True)
    largest = max(tensor_bytes(layout, dim, n_layers))
    return sum(p.stat().st_size for p in folder.glob("consolidated.*.pth")), largest


# Runs the command as its child and reports its wall time, peak RSS and exit code. A child's
# ru_maxrss starts at the high-water mark of the memory image it was exec'ed from (the kernel keeps
# the old image's peak across exec, and posix_spawn/vfork children exec from their parent's image),
# so the measured command is started from this small launcher, not from the benchmark itself.
_LAUNCHER = ("import json, resource, subprocess, sys, time; log = open(sys.argv[1], 'wb'); t = time.perf_counter();"
             "code = subprocess.run(sys.argv[2:], stdout=log, stderr=log, stdin=subprocess.DEVNULL).returncode;"
             "print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,"
             " code]))")


def run_child(command: list[str], env: dict[str, str], log: Path) -> tuple[float, int, int]:
    """Wall seconds, peak RSS bytes and exit code of one child process (through ``_LAUNCHER``)."""
    result = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log), *command], env=env, capture_output=True,
                            text=True, check=True)
    seconds, maxrss_kb, code = json.loads(result.stdout.strip().splitlines()[-1])
    if code != 0:
        sys.stderr.write(log.read_text(errors="replace")[-2000:])
    return seconds, maxrss_kb * 1024, code


def convert_with(side: str, folder: Path, out: Path, legacy: Path, work: Path) -> tuple[float, int, int]:
    home = work / f"home-{side}"
    shutil.rmtree(home, ignore_errors=True)
    env = dict(os.environ, LLAMALAB_HOME=str(home), PYTHONPATH=str(REPO))
    if side == "stage":
        code = ("import sys; from llamalab.convert import convert_checkpoint; "
                "convert_checkpoint(sys.argv[1], sys.argv[2], outtype='f16', accept_license=True)")
        command = [sys.executable, "-c", code, str(folder), str(out)]
    elif side == "cli":
        command = [sys.executable, "-m", "llamalab", "convert", str(folder), "--outtype", "f16", "--out", str(out),
                   "--accept-license"]
    else:
        command = [sys.executable, str(legacy), str(folder), "--outtype", "f16", "--outfile", str(out)]
    out.unlink(missing_ok=True)
    try:
        return run_child(command, env, out.with_suffix(".log"))
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def _best(runs: list[Run], label: str, side: str, durable: bool = False) -> tuple[float, int]:
    """(best input GB/s, highest peak RSS) of one side at one size; ``durable``: time to the
    output on disk."""
    mine = [r for r in runs if r.size_label == label and r.side == side]
    ok = [r for r in mine if r.returncode == 0]
    rate = max(r.input_bytes / (_durable(r) if durable else r.seconds) for r in ok) if ok else float("nan")
    return rate, max(r.peak_rss_bytes for r in mine)


def print_table(runs: list[Run], bounds: dict[str, int]) -> None:
    print(f"{'size':>5} {'input GB':>8} | {'legacy GB/s':>11} {'+sync':>6} {'RSS MB':>6} | {'stage GB/s':>10} "
          f"{'RSS MB':>6} | {'cli GB/s':>8} {'RSS MB':>6} | {'stage x':>7} {'cli x':>6} {'durable':>7} | "
          f"{'RSS bound MB':>12} {'within':>6}")
    for label in dict.fromkeys(r.size_label for r in runs):
        size = next(r.input_bytes for r in runs if r.size_label == label)
        (legacy, legacy_rss), (stage, stage_rss), (cli, cli_rss) = (_best(runs, label, s) for s in SIDES)
        legacy_durable, _ = _best(runs, label, "legacy", durable=True)
        cli_durable, _ = _best(runs, label, "cli", durable=True)
        within = max(stage_rss, cli_rss) <= bounds[label]
        print(f"{label:>5} {_gb(size):>8} | {legacy / 1e9:>11.3f} {legacy_durable / 1e9:>6.3f} "
              f"{legacy_rss / 2**20:>6.0f} | {stage / 1e9:>10.3f} {stage_rss / 2**20:>6.0f} | {cli / 1e9:>8.3f} "
              f"{cli_rss / 2**20:>6.0f} | {stage / legacy:>7.2f} {cli / legacy:>6.2f} {cli_durable / legacy_durable:>7.2f} | "
              f"{bounds[label] / 2**20:>12.0f} {'yes' if within else 'NO':>6}")
    print("x = throughput / the legacy converter's (best of the runs); cli = the whole `llamalab convert` "
          "command (convert, check, sha256, registration); +sync and durable: time until the output is on "
          "disk (the run plus a `sync` right after it: llamalab fsyncs its file, the legacy converter leaves "
          "it to the page cache); targets: cli x >= 1.5 from 0.5 GB up; "
          "RSS bound = 512 MB + 2 x largest merged tensor (f16), for stage and cli")


def _sizes(args: argparse.Namespace) -> list[tuple[str, int]]:
    """(label, layer count) for each checkpoint to build."""
    if args.layers:
        return [(f"{n}L", int(n)) for n in args.layers.split(",")]
    per_layer = sum(tensor_bytes(args.layout, args.dim, 2)) - sum(tensor_bytes(args.layout, args.dim, 1))
    return [(f"{gb}G", max(1, round(float(gb) * 1e9 / per_layer))) for gb in args.sizes.split(",")]


def _check_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("checked")]
    return lines[-1] if lines else ""


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layout", choices=sorted(LAYOUTS), default="70b",
                    help="checkpoint structure (default %(default)s)")
    ap.add_argument("--sizes", default="0.5,1,2", help="checkpoint sizes in GB of bf16 (default %(default)s)")
    ap.add_argument("--layers", default="", help="layer counts instead of --sizes, one checkpoint each")
    ap.add_argument("--dim", type=int, default=1024, help="model width (default %(default)s)")
    ap.add_argument("--runs", type=int, default=2, help="conversions per side and size (default %(default)s)")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "results" / "convert-work",
                    help="where checkpoints and outputs go (default %(default)s)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one run: a dry run for CI")
    ap.add_argument("--json", type=Path, help="write every run as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.dim, args.runs = "1,2", 256, 1
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    legacy = legacy_converter(work / "legacy")
    runs: list[Run] = []
    bounds: dict[str, int] = {}
    checks: dict[str, str] = {}
    for label, layers in _sizes(args):
        folder = work / f"llama-bench-{args.layout}-{args.dim}d-{layers}l"
        shutil.rmtree(folder, ignore_errors=True)
        input_bytes, largest = build_checkpoint(folder, args.layout, args.dim, layers)
        bounds[label] = 512 * 2**20 + 2 * largest
        for attempt in range(args.runs):
            for side in SIDES[attempt % 3:] + SIDES[:attempt % 3]:
                out = work / f"{label}.{side}.gguf"
                seconds, rss, code = convert_with(side, folder, out, legacy, work)
                flush_started = time.perf_counter()
                os.sync()  # what a side left unwritten must not slow the next one down
                runs.append(Run(side, label, input_bytes, seconds, rss, out.stat().st_size if out.exists() else 0,
                                code, time.perf_counter() - flush_started))
                if side != "legacy" and code != 0:
                    print(f"llamalab ({side}) failed on {label}", file=sys.stderr)
                    return 1
                if side == "cli":
                    checks[label] = _check_line(out.with_suffix(".log"))
                out.unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
    print_table(runs, bounds)
    for label, line in checks.items():
        print(f"{label}: {line}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
