"""``llamalab convert`` and ``llamalab quantize``: checkpoints to GGUF, GGUF to smaller GGUF.

Both end with a check that llama.cpp accepts the result (running one short prompt when the
model fits in memory, a structural load otherwise: ``--check``), a line saying which check was
done, and its registration in the store, so the printed ``llamalab chat -m NAME`` works at once.
Errors are ``LlamalabError``s, which the ``llamalab`` group prints as one ``error:`` line with
exit code 1.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import click

from ..progress import Progress
from .formatting import human_size

__all__ = ["convert", "quantize"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _with_licence_prompt(run: Callable[[bool], Any], accept: bool) -> Any:
    """Run; if the licence is not accepted yet and a person is at the terminal, show it and ask."""
    from ..errors import LicenseNotAcceptedError
    from ..license import license_notice

    try:
        return run(accept)
    except LicenseNotAcceptedError:
        if accept or not sys.stdin.isatty():
            raise
        click.echo(license_notice("llama2"), err=True)
        if not click.confirm("Do you accept the licence and the Acceptable Use Policy?", err=True):
            raise
        return run(True)


class _CheckLine:
    """Passes progress events on to the bar and keeps the check's closing line to print."""

    def __init__(self, bar: Callable[[Progress], None]) -> None:
        self.bar = bar
        self.line = ""

    def __call__(self, event: Progress) -> None:
        self.bar(event)
        if event.stage.startswith("checking ") and event.message:
            self.line = event.message


def _report(model: Any, check: _CheckLine) -> None:
    if check.line:
        click.echo(check.line)
    click.echo(f"{model.name}: {model.quantization}, {human_size(model.size_bytes)}, {model.path}")
    click.echo(f"chat with it: llamalab chat -m {model.name}")


_CHECK_HELP = ("How to check the result: auto (run one prompt when the model fits in memory, else a "
               "structural load that reads no weights), run, or structure.")


@click.command("convert", context_settings=CONTEXT_SETTINGS)
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--outtype", type=click.Choice(["f32", "f16", "bf16"], case_sensitive=False), default="f16",
              show_default=True, help="Float type of the converted weights (norms stay f32).")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Output GGUF file (default: in the store's models folder).")
@click.option("--quant", default=None, metavar="TYPE",
              help="Also quantize with llama.cpp, e.g. Q4_K_M or Q8_0 (the f16 file is not kept).")
@click.option("--name", default=None, help="Name in the store (default: FOLDER:TYPE, e.g. llama-2-7b-chat:q4_k_m).")
@click.option("--accept-license", is_flag=True, help="Accept the Llama 2 Community License (for scripts).")
@click.option("--check", type=click.Choice(["auto", "run", "structure"]), default="auto", show_default=True,
              help=_CHECK_HELP)
def convert(directory: str, outtype: str, out: Optional[str], quant: Optional[str], name: Optional[str],
            accept_license: bool, check: str) -> None:
    """Convert a Llama 2 / Code Llama checkpoint folder to GGUF and add it to the store.

    \b
    DIRECTORY is a model folder of Meta's download (consolidated.NN.pth, params.json;
    tokenizer.model beside it or in its parent) or a Hugging Face Llama folder
    (config.json, *.safetensors, tokenizer.model).
    \b
    Examples:
      llamalab convert llama-2-7b-chat --quant Q4_K_M
      llamalab convert CodeLlama-13b-Instruct --outtype bf16 --out codellama-13b.bf16.gguf
    """
    from ..convert.pipeline import convert_and_register
    from .progress_bar import TqdmProgress

    line = _CheckLine(lambda event: None)

    def run(accept: bool) -> Any:
        with TqdmProgress() as bar:
            line.bar = bar
            return convert_and_register(directory, outtype=outtype, quant=quant, out=out, name=name,
                                        accept_license=accept, progress=line, check=check)

    _report(_with_licence_prompt(run, accept_license), line)


@click.command("quantize", context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--type", "qtype", required=True, metavar="TYPE",
              help="llama.cpp quantization type: Q4_K_M, Q5_K_M, Q8_0, Q4_0, IQ4_XS, ...")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Output GGUF file (default: in the store's models folder).")
@click.option("--name", default=None, help="Name in the store (default: BASE:TYPE).")
@click.option("--check", type=click.Choice(["auto", "run", "structure"]), default="auto", show_default=True,
              help=_CHECK_HELP)
def quantize(source: str, qtype: str, out: Optional[str], name: Optional[str], check: str) -> None:
    """Quantize an F32/F16/BF16 GGUF with llama.cpp's quantizer and add it to the store."""
    from ..convert.pipeline import quantize_and_register
    from .progress_bar import TqdmProgress

    with TqdmProgress() as bar:
        line = _CheckLine(bar)
        model = quantize_and_register(source, qtype, out=out, name=name, progress=line, check=check)
    _report(model, line)
