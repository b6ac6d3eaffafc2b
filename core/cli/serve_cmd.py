"""``llamalab serve``: one model for a team (a JupyterHub, several editors), behind API keys.

The server itself lives in ``llamalab.extension.serve`` (it needs the ``jupyter`` extra's tornado)
and is imported only when the command runs; ``llamalab serve keys ...`` needs only the core.
"""

from __future__ import annotations

import datetime
import logging
import sys
from pathlib import Path
from typing import Optional

import click

from ..api_keys import ROLES, KeyRing
from .extras import import_extra

__all__ = ["serve"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
_KEYS_OPTION = click.option(
    "--keys-file", type=click.Path(dir_okay=False, path_type=Path), envvar="LLAMALAB_SERVE_KEYS", default=None,
    help="The keys file [default: $LLAMALAB_HOME/serve-keys.json; env LLAMALAB_SERVE_KEYS].")


@click.group("serve", invoke_without_command=True, context_settings=CONTEXT_SETTINGS)
@click.option("-m", "--model", default="default", show_default=True,
              help="The model to serve: a store name or catalog reference (pulled on first use).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; put TLS in front, see --certfile).")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port (0: any free one).")
@_KEYS_OPTION
@click.option("--n-ctx", default=4096, show_default=True, type=click.IntRange(256), help="Context per request.")
@click.option("--parallel", "n_parallel", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Requests decoded together (slots).")
@click.option("--threads", "n_threads", default=None, type=click.IntRange(1), help="CPU threads [default: auto].")
@click.option("--gpu-layers", default="auto", show_default=True,
              help="Layers on the GPU: auto (what fits the free VRAM), a number, or all.")
@click.option("--max-queued", default=64, show_default=True, type=click.IntRange(1),
              help="Requests running or waiting in all; more get 429.")
@click.option("--max-tokens-limit", default=4096, show_default=True, type=click.IntRange(1),
              help="The most tokens any request may generate (a key may have a lower limit).")
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Serve HTTPS with this PEM certificate (or put a reverse proxy in front).")
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The certificate's private key, if not in --certfile.")
@click.option("--stop-grace", "stop_grace_s", default=30.0, show_default=True, type=click.FloatRange(0),
              help="Seconds a stop (Ctrl-C, SIGTERM) lets running answers finish before cancelling them.")
@click.option("--stream-timeout", "stream_write_timeout_s", default=60.0, show_default=True,
              type=click.FloatRange(0.1), help="Seconds a client may stop reading its stream before it is let go.")
@click.option("--log-level", default="INFO", show_default=True, help="Logging level (stderr).")
@click.pass_context
def serve(ctx: click.Context, model: str, host: str, port: int, keys_file: Optional[Path], n_ctx: int,
          n_parallel: int, n_threads: Optional[int], gpu_layers: str, max_queued: int, max_tokens_limit: int,
          certfile: Optional[Path], keyfile: Optional[Path], stop_grace_s: float, stream_write_timeout_s: float,
          log_level: str) -> None:
    """Serve one model to a team: OpenAI-compatible routes behind API keys.

    \b
      llamalab serve keys add alice          make a key (printed once)
      llamalab serve -m llama-2-7b-chat:q4_k_m --host 0.0.0.0 --port 8080
      curl -H "Authorization: Bearer llk-..." http://HOST:8080/v1/models
    \b
    Routes: /v1/models, /v1/completions, /v1/chat/completions, /tokenize, /detokenize,
    /infill, /metrics (Prometheus), /health (no key). Point JupyterLab at it with
    LLAMALAB_REMOTE_URL=http://HOST:8080 and LLAMALAB_REMOTE_API_KEY=llk-... (see the README's
    team section)."""
    if ctx.invoked_subcommand is not None:
        return
    serving = import_extra("llamalab.extension.serve", "jupyter", "llamalab serve")
    layers: object = gpu_layers if gpu_layers in ("auto", "all") else _int(gpu_layers, "--gpu-layers")
    keys = KeyRing(keys_file)
    if not [k for k in keys.keys() if k.active]:
        click.echo(f"warning: {keys.path} has no keys yet, so every request will be refused; "
                   "make one with `llamalab serve keys add NAME`.", err=True)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    config = serving.ServeConfig(model=model, host=host, port=port, keys_file=keys_file, n_ctx=n_ctx,
                                 n_parallel=n_parallel, n_threads=n_threads, n_gpu_layers=layers,
                                 max_queued=max_queued, max_tokens_limit=max_tokens_limit, certfile=certfile,
                                 keyfile=keyfile, stop_grace_s=stop_grace_s,
                                 stream_write_timeout_s=stream_write_timeout_s)
    serving.run(config, on_ready=lambda server: click.echo(
        f"llamalab serve: {server.state.model_name} at {server.url} (keys: {keys.path}); Ctrl-C stops", err=True))


def _int(value: str, option: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not auto, all or a number", param_hint=option) from None


@serve.group("keys", context_settings=CONTEXT_SETTINGS)
def keys() -> None:
    """Make, list and revoke the API keys of `llamalab serve` (a running server sees changes at once)."""


@keys.command("add")
@click.argument("name")
@click.option("--max-concurrent", default=4, show_default=True, type=click.IntRange(1, 1024),
              help="Requests this key may have running at once; more get 429.")
@click.option("--max-tokens", default=2048, show_default=True, type=click.IntRange(1, 1_000_000),
              help="The most tokens one request of this key may ask for.")
@click.option("--role", type=click.Choice(ROLES), default="user", show_default=True,
              help="user: the model's routes; metrics: /metrics only (for Prometheus: it shows every "
                   "user's usage); admin: both.")
@_KEYS_OPTION
def keys_add(name: str, max_concurrent: int, max_tokens: int, role: str, keys_file: Optional[Path]) -> None:
    """Make a key for NAME (a user; the name shows in metrics) and print it, once, on stdout.

    \b
      llamalab serve keys add alice                       a person's key
      llamalab serve keys add prometheus --role metrics   the scraper's key for /metrics"""
    ring = KeyRing(keys_file)
    key = ring.add(name, max_concurrent=max_concurrent, max_tokens=max_tokens, role=role)
    click.echo(key)
    use = "as LLAMALAB_REMOTE_API_KEY" if role == "user" else "as Prometheus' bearer token" \
        if role == "metrics" else "as an administrator's bearer token"
    click.echo(f"{role} key for {name} added to {ring.path}; it is shown only now: give it to {name} "
               f"(e.g. {use}).", err=True)


@keys.command("list")
@_KEYS_OPTION
def keys_list(keys_file: Optional[Path]) -> None:
    """The keys: name, how they begin, role, limits, when made, whether revoked."""
    ring = KeyRing(keys_file)
    entries = ring.keys()
    if not entries:
        click.echo(f"no keys in {ring.path}; make one with `llamalab serve keys add NAME`.")
        return
    click.echo(f"{'NAME':<20} {'KEY':<12} {'ROLE':<8} {'CONCURRENT':>10} {'MAX TOKENS':>10}  {'CREATED':<16} STATUS")
    for k in entries:
        created = datetime.datetime.fromtimestamp(k.created).strftime("%Y-%m-%d %H:%M")
        status = "active" if k.active else "revoked " + datetime.datetime.fromtimestamp(k.revoked or 0) \
            .strftime("%Y-%m-%d %H:%M")
        click.echo(f"{k.name:<20} {k.shown + '...':<12} {k.role:<8} {k.max_concurrent:>10} {k.max_tokens:>10}  "
                   f"{created:<16} {status}")


@keys.command("revoke")
@click.argument("name")
@_KEYS_OPTION
def keys_revoke(name: str, keys_file: Optional[Path]) -> None:
    """Revoke NAME's key: a running server refuses it from its next request."""
    ring = KeyRing(keys_file)
    ring.revoke(name)
    click.echo(f"revoked the key of {name} in {ring.path}")

