"""``llamalab download``: Llama 2 / Code Llama from the signed URL in Meta's email.

Owns the command (its options, the licence prompt, the summary) and ``DownloadBars``, the
tqdm view of parallel transfers: one bar for all bytes and one per file in flight. The
work is ``meta_download.download_meta``; errors are llamalab errors, which the CLI group
turns into one ``error:`` line, and the warnings it logs (a size the server would not tell)
are shown as ``warning:`` lines while it runs.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterator, Optional

import click

from ..progress import Progress

__all__ = ["download", "DownloadBars"]

_LICENSE_ID = "llama2"


class DownloadBars:
    """A ``ProgressCallback`` with a total bar and a bar per file while it transfers or is verified."""

    def __init__(self, enabled: Optional[bool] = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._bars: dict[str, Any] = {}

    def __call__(self, event: Progress) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        from ..meta_download import TOTAL_STAGE

        is_total = event.stage == TOTAL_STAGE
        finished = bool(event.total) and event.done >= (event.total or 0)
        if TOTAL_STAGE not in self._bars:  # the total bar first, so it stays on top
            self._bars[TOTAL_STAGE] = tqdm(total=None, desc="total", unit="B", unit_scale=True, unit_divisor=1024,
                                           file=sys.stderr, dynamic_ncols=True)
        bar = self._bars.get(event.stage)
        if bar is None:
            if finished:
                return
            bar = tqdm(total=event.total, desc=event.stage, unit="B", unit_scale=True, unit_divisor=1024,
                       leave=False, file=sys.stderr, dynamic_ncols=True)
            self._bars[event.stage] = bar
        if event.total and bar.total != event.total:
            bar.total = event.total
        bar.update(event.done - bar.n)
        if finished and not is_total:
            bar.close()
            del self._bars[event.stage]

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> "DownloadBars":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _WarningLines(logging.Handler):
    """Log records of ``llamalab.meta_download`` as ``warning:`` lines on stderr, above the bars."""

    def __init__(self, bars: DownloadBars) -> None:
        super().__init__(logging.WARNING)
        self._bars = bars

    def emit(self, record: logging.LogRecord) -> None:
        line = f"warning: {record.getMessage()}"
        if self._bars.enabled:
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr)
        else:
            click.echo(line, err=True)


@contextlib.contextmanager
def _warnings_shown(bars: DownloadBars) -> Iterator[None]:
    logger = logging.getLogger("llamalab.meta_download")
    handler = _WarningLines(bars)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _licence_gate(accept_license: bool) -> bool:
    """Show the terms and ask when they were never accepted; return the ``accept`` to pass on."""
    from ..errors import LicenseNotAcceptedError
    from ..license import accepted_at, license_notice

    if accepted_at(_LICENSE_ID) is not None:
        return accept_license
    if accept_license:
        click.echo(license_notice(_LICENSE_ID), err=True)
        click.echo("Accepted with --accept-license.", err=True)
        return True
    if not _stdin_is_terminal():
        return False  # download_meta raises the one-line error saying to pass --accept-license
    click.echo(license_notice(_LICENSE_ID), err=True)
    if not click.confirm("Do you accept the licence and the Acceptable Use Policy?", default=False, err=True):
        raise LicenseNotAcceptedError("the licence was not accepted; nothing was downloaded.")
    return True


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@click.command("download", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--meta-url", envvar="LLAMALAB_META_URL", metavar="URL",
              help="The URL from Meta's email (or set LLAMALAB_META_URL); asked for when omitted on a terminal.")
@click.option("--models", default=None, metavar="LIST",
              help="Comma-separated, as download.sh names them: 7B,13B,70B,7B-chat,13B-chat,70B-chat (Llama 2) or "
                   "7b,13b,34b,70b and their -Python/-Instruct variants (Code Llama). Default: all of --family.")
@click.option("--family", type=click.Choice(["llama2", "codellama"]), default="llama2", show_default=True,
              help="The family the URL is for: picks the default model list and what bare sizes like 7b mean.")
@click.option("--out", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Folder that receives download.sh's tree (LICENSE, tokenizer, one folder per model).")
@click.option("--accept-license", is_flag=True,
              help="Accept the Llama 2 Community License and Acceptable Use Policy (for scripts).")
@click.option("--jobs", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Files downloaded at the same time.")
def download(meta_url: Optional[str], models: Optional[str], family: str, out: str, accept_license: bool,
             jobs: int) -> None:
    """Download Llama 2 or Code Llama weights from Meta, as download.sh does, verified by md5.

    \b
    Request a URL at https://ai.meta.com/resources/models-and-libraries/llama-downloads/
    then, for example:
      llamalab download --meta-url 'URL' --models 7B-chat --out ~/llama
      llamalab download --meta-url 'URL' --family codellama --models 7b-Instruct
    Interrupted or failed runs resume when run again; verified files are not fetched twice.
    """
    from ..meta_download import download_meta
    from ..meta_layout import parse_signed_url, resolve_models

    if not meta_url:
        if not _stdin_is_terminal():
            raise click.UsageError("--meta-url is required (the URL from Meta's email).")
        meta_url = click.prompt("Enter the URL from Meta's email", err=True)
    names = [models] if models else None
    parse_signed_url(meta_url)  # mistakes in the URL or the names are reported before the licence question
    chosen = resolve_models(names, family)
    accept = _licence_gate(accept_license)
    click.echo(f"Downloading {', '.join(m.folder for m in chosen)} into {out}", err=True)
    with DownloadBars() as bars, _warnings_shown(bars):
        result = download_meta(meta_url, names, family=family, out=out, jobs=jobs, accept_license=accept,
                               progress=bars)
    for path in result.unverified:
        click.echo(f"note: no checklist lists an md5 for {path}; it was not verified", err=True)
    fetched = len(result.downloaded) + len(result.unverified)
    click.echo(f"{fetched} files downloaded ({_size(result.bytes_downloaded)}), {len(result.skipped)} already "
               "present; weights, params and tokenizers match Meta's md5 checklists.")
    for folder in result.model_dirs:
        click.echo(f"  {folder}")
    click.echo(f"Next: llamalab convert {result.model_dirs[0]} --quant Q4_K_M")
