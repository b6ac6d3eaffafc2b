"""``llamalab convert`` and ``llamalab quantize``: checkpoints to GGUF, GGUF to smaller GGUF.

Both end with a short test run of the result and its registration in the store, so the
printed ``llamalab chat -m NAME`` works at once. Errors are ``LlamalabError``s, which the
``llamalab`` group prints as one ``error:`` line with exit code 1.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional

import click

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


def _report(model: Any) -> None:
    click.echo(f"{model.name}: {model.quantization}, {human_size(model.size_bytes)}, {model.path}")
    click.echo(f"chat with it: llamalab chat -m {model.name}")


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
def convert(directory: str, outtype: str, out: Optional[str], quant: Optional[str], name: Optional[str],
            accept_license: bool) -> None:
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

    def run(accept: bool) -> Any:
        with TqdmProgress() as bar:
            return convert_and_register(directory, outtype=outtype, quant=quant, out=out, name=name,
                                        accept_license=accept, progress=bar)

    _report(_with_licence_prompt(run, accept_license))


@click.command("quantize", context_settings=CONTEXT_SETTINGS)
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--type", "qtype", required=True, metavar="TYPE",
              help="llama.cpp quantization type: Q4_K_M, Q5_K_M, Q8_0, Q4_0, IQ4_XS, ...")
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Output GGUF file (default: in the store's models folder).")
@click.option("--name", default=None, help="Name in the store (default: BASE:TYPE).")
def quantize(source: str, qtype: str, out: Optional[str], name: Optional[str]) -> None:
    """Quantize an F32/F16/BF16 GGUF with llama.cpp's quantizer and add it to the store."""
    from ..convert.pipeline import quantize_and_register
    from .progress_bar import TqdmProgress

    with TqdmProgress() as bar:
        model = quantize_and_register(source, qtype, out=out, name=name, progress=bar)
    _report(model)
