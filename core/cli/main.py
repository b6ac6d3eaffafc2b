"""The ``llamalab`` command line.

    llamalab models list|pull|info|rm|add|catalog
    llamalab generate PROMPT          stream a completion
    llamalab chat                     a terminal chat that streams
    llamalab doctor                   the llama.cpp build, GPUs and what fits
    llamalab serve                    one model for a team, behind API keys

A user mistake prints one line starting with ``error:`` and exits 1 (2 for bad usage);
``--debug`` shows tracebacks.
"""

from __future__ import annotations

import gc
import json
import sys
from dataclasses import asdict
from typing import Any, Optional

import click

from .. import __version__
from ..errors import LlamalabError
from .formatting import human_size

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Turns llamalab's errors into one line on stderr instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except LlamalabError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("\ninterrupted", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="llamalab")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Run Llama-2 family models locally with llama.cpp.

    \b
    Start here:
      llamalab chat                       chat with the default model (pulled on first use)
      llamalab models pull llama-2-7b-chat:q4_k_m
      llamalab chat -m llama-2-7b-chat:q4_k_m
      llamalab doctor                     what your GPU can hold
    \b
    From Meta's download to a quantized model:
      llamalab download --meta-url URL --models 7B-chat
      llamalab convert llama-2-7b-chat --quant Q4_K_M
      llamalab chat -m llama-2-7b-chat:q4_k_m

    Models live in ~/.cache/llamalab (set LLAMALAB_HOME to move them).
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


# -- models ----------------------------------------------------------------------------
@cli.group(cls=_Group, context_settings=CONTEXT_SETTINGS)
def models() -> None:
    """List, pull, inspect, add and remove models in the store."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def models_list(as_json: bool) -> None:
    """The models in the store."""
    from ..store import ModelStore

    entries = ModelStore().list()
    if as_json:
        click.echo(json.dumps([{k: v for k, v in asdict(m).items() if k != "chat_template"} for m in entries],
                              indent=2))
        return
    if not entries:
        click.echo("No models yet. Try `llamalab models pull default` or `llamalab models catalog`.")
        return
    click.echo(f"{'NAME':34} {'QUANT':8} {'SIZE':>9} {'CTX':>6}  ARCH")
    for m in entries:
        missing = "" if m.file.is_file() else "  (file missing)"
        click.echo(f"{m.name:34} {m.quantization:8} {human_size(m.size_bytes):>9} {m.context_length:>6}  "
                   f"{m.architecture}{missing}")


@models.command("catalog")
def models_catalog() -> None:
    """Named models that `models pull NAME[:QUANT]` knows."""
    from ..catalog import CATALOG

    for entry in CATALOG:
        aliases = f" (alias: {', '.join(entry.aliases)})" if entry.aliases else ""
        click.echo(f"{entry.name}{aliases}\n  {entry.description}; {entry.parameters}; "
                   f"licence {entry.license} <{entry.license_url}>\n"
                   f"  quantizations: {', '.join(entry.quantizations)} (default {entry.default_quant})")


def confirm_license(license_id: Optional[str], accept_flag: bool) -> bool:
    """Show the licence and ask, when needed and possible; return whether to accept it now."""
    from ..license import LICENSES, accepted_at, license_notice

    if accept_flag or not license_id or license_id not in LICENSES or accepted_at(license_id) is not None:
        return accept_flag
    if not sys.stdin.isatty():
        return False  # the library then explains --accept-license in one line
    click.echo(license_notice(license_id), err=True)
    return click.confirm("Do you accept these terms?", default=False, err=True)


@models.command("pull")
@click.argument("ref")
@click.option("--force", is_flag=True, help="Download again even if the model is already in the store.")
@click.option("--accept-license", is_flag=True,
              help="Accept the model's licence (e.g. the Llama 2 Community License) without asking.")
def models_pull(ref: str, force: bool, accept_license: bool) -> None:
    """Download REF into the store.

    \b
    REF is one of:
      default | smollm2-135m-instruct     the embedded default (98 MB)
      llama-2-7b-chat:q4_k_m               a catalog name and quantization (see `models catalog`)
      hf:OWNER/REPO/FILE.gguf[@REV]         any GGUF file on the Hugging Face Hub (HF_TOKEN for gated repos)
      https://host/path/model.gguf         any GGUF over HTTP(S); an interrupted pull resumes

    Llama 2 and Code Llama weights need the Llama 2 Community License accepted once
    (asked interactively, or --accept-license).
    """
    from ..pulls import pull
    from .progress_bar import TqdmProgress

    from ..catalog import resolve
    from ..pulls import _license_of

    accept = confirm_license(_license_of(resolve(ref)), accept_license)
    with TqdmProgress() as bar:
        model = pull(ref, progress=bar, force=force, accept_license=accept)
    click.echo(f"{model.name}: {human_size(model.size_bytes)}, {model.quantization}, sha256 {model.sha256[:16]}...")


@models.command("info")
@click.argument("name")
def models_info(name: str) -> None:
    """Everything the store knows about NAME."""
    from ..store import ModelStore

    model = ModelStore().get(name)
    for key, value in asdict(model).items():
        if key == "chat_template":
            value = "yes" if value else "no"
        click.echo(f"{key:15} {value}")


@models.command("rm")
@click.argument("name")
@click.option("--keep-file", is_flag=True, help="Forget the model but leave its file on disk.")
def models_rm(name: str, keep_file: bool) -> None:
    """Remove NAME from the store (and its file, if the store downloaded it)."""
    from ..store import ModelStore

    model = ModelStore().remove(name, delete_file=not keep_file)
    deleted = model.owned and not keep_file
    click.echo(f"removed {name}" + (f" and deleted {model.path}" if deleted else f"; {model.path} was kept"))


@models.command("add")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--name", help="Name in the store (default: the file name without .gguf).")
def models_add(path: str, name: Optional[str]) -> None:
    """Register a local GGUF file (it stays where it is)."""
    from pathlib import Path

    from ..catalog import _stem_name
    from ..store import ModelStore
    from .progress_bar import TqdmProgress

    with TqdmProgress() as bar:
        model = ModelStore().register(name or _stem_name(Path(path).name), Path(path),
                                      source=f"file:{Path(path).resolve()}", progress=bar)
    click.echo(f"added {model.name}: {model.architecture}, {model.quantization}, {human_size(model.size_bytes)}")


# -- running a model -------------------------------------------------------------------
def _engine_options(func: Any) -> Any:
    options = [
        click.option("-m", "--model", "model", default=None,
                     help="Store name, catalog name, or GGUF path (default: the embedded default model)."),
        click.option("--ctx", "n_ctx", type=int, default=4096, show_default=True, help="Context window in tokens."),
        click.option("--gpu-layers", default="auto", show_default=True,
                     help="Layers to offload to the GPU: auto, a number, or -1 for all."),
        click.option("--chat-format", type=click.Choice(["auto", "llama-2", "gguf"]), default="auto",
                     show_default=True, help="Prompt format for chat models."),
        click.option("--remote", default=None, metavar="URL",
                     help="Use an OpenAI-compatible server (llama-server, vLLM, ...) instead of a local model."),
        click.option("--api-key", envvar="LLAMALAB_API_KEY", default=None, help="Bearer token for --remote."),
        click.option("-n", "--max-tokens", type=click.IntRange(1), default=512, show_default=True),
        click.option("-t", "--temperature", type=click.FloatRange(0), default=0.7, show_default=True),
        click.option("--seed", type=int, default=None, help="Sampling seed for repeatable output."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _open_engine(model: Optional[str], n_ctx: int, gpu_layers: str, chat_format: str,
                 remote: Optional[str], api_key: Optional[str]) -> Any:
    from ..engine.opening import LocalOptions, open_engine
    from .progress_bar import TqdmProgress

    if remote:
        return open_engine(model, remote_url=remote, api_key=api_key)
    layers: int | str = int(gpu_layers) if gpu_layers.lstrip("-").isdigit() else gpu_layers
    options = LocalOptions(n_ctx=n_ctx, n_gpu_layers=layers, chat_format=chat_format)
    with TqdmProgress() as bar:  # pulling the default model on first use shows a bar
        engine = open_engine(model, options=options, progress=bar, on_notice=lambda text: click.echo(text, err=True))
    for notice in engine.plan.notices:
        click.echo(f"note: {notice}", err=True)
    return engine


def _params(max_tokens: int, temperature: float, seed: Optional[int]) -> Any:
    from ..engine.base import GenerationParams

    return GenerationParams(max_tokens=max_tokens, temperature=temperature, seed=seed)


@cli.command()
@click.argument("prompt")
@_engine_options
def generate(prompt: str, model: Optional[str], n_ctx: int, gpu_layers: str, chat_format: str,
             remote: Optional[str], api_key: Optional[str], max_tokens: int, temperature: float,
             seed: Optional[int]) -> None:
    """Continue PROMPT with the model, streaming the text (use `chat` for instructions)."""
    with _open_engine(model, n_ctx, gpu_layers, chat_format, remote, api_key) as engine:
        stream = engine.complete(prompt, _params(max_tokens, temperature, seed))
        try:
            for piece in stream:
                click.echo(piece, nl=False)
        except KeyboardInterrupt:
            stream.close()
            click.echo(" [stopped]")
            return
        click.echo()
        if stream.result and stream.result.dropped_tokens:
            click.echo(f"note: the first {stream.result.dropped_tokens} prompt tokens were cut to fit "
                       "the context window", err=True)


@cli.command()
@click.option("--system", default=None, help="System prompt.")
@_engine_options
def chat(system: Optional[str], model: Optional[str], n_ctx: int, gpu_layers: str, chat_format: str,
         remote: Optional[str], api_key: Optional[str], max_tokens: int, temperature: float,
         seed: Optional[int]) -> None:
    """Chat in the terminal; answers stream, Ctrl-C stops one, Ctrl-D quits."""
    from .chat_repl import ChatSession, run_repl

    with _open_engine(model, n_ctx, gpu_layers, chat_format, remote, api_key) as engine:
        info = engine.describe()
        where = ("remote " + info.location if info.backend == "remote"
                 else f"{info.quantization}, {info.n_gpu_layers}/{info.total_layers} layers on GPU, "
                      f"ctx {info.context_length}")
        click.echo(f"llamalab chat with {info.name} ({where})", err=True)
        run_repl(ChatSession(engine, _params(max_tokens, temperature, seed), system), sys.stdout)


@cli.command()
@click.option("--ctx", "n_ctx", type=int, default=4096, show_default=True,
              help="Context window to size the KV cache for.")
@click.option("--kv-size", type=click.IntRange(1), default=None,
              help="KV cache cells shared by all slots (the Jupyter extension's kv_size); default: --ctx.")
@click.option("--remote", default=None, metavar="URL", envvar="LLAMALAB_REMOTE_URL",
              help="Also check an OpenAI-compatible server (llamalab serve, llama-server, vLLM): its models and "
                   "what it offers [env LLAMALAB_REMOTE_URL].")
@click.option("--api-key", envvar="LLAMALAB_REMOTE_API_KEY", default=None,
              help="Bearer token for --remote [env LLAMALAB_REMOTE_API_KEY].")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
def doctor(n_ctx: int, kv_size: Optional[int], remote: Optional[str], api_key: Optional[str], as_json: bool) -> None:
    """The llama.cpp build, the GPUs and their free memory, and what fits for each model.

    A loaded model serves several requests at once (slots); they share one KV cache of
    --kv-size tokens, which is what the memory figures include."""
    from ..doctor import build_report, format_report

    report = build_report(n_ctx=n_ctx, kv_size=kv_size, remote_url=remote, remote_api_key=api_key)
    click.echo(json.dumps(asdict(report), indent=2, default=str) if as_json else format_report(report))


def _register_commands() -> None:
    from .convert_cmd import convert, quantize
    from .download_cmd import download
    from .lsp_cmd import lsp
    from .serve_cmd import serve

    cli.add_command(download)
    cli.add_command(lsp)
    cli.add_command(serve)
    cli.add_command(convert)
    cli.add_command(quantize)


_register_commands()


def main() -> None:
    try:
        cli(prog_name="llamalab")
    finally:
        # The process ends here: spare it the interpreter's last full collection, which walks
        # every object llama.cpp's bindings and a conversion left (0.4 s at the end of a convert).
        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
