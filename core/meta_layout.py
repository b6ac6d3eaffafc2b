"""What Meta's ``download.sh`` fetches for Llama 2 and Code Llama, as data.

Owns the model tables (download.sh's names, folders and shard counts), the folder tree a
download produces, the signed URL from Meta's email (``*`` stands for each file's path) and
the md5 checklists (``md5sum`` format) that come with the weights. A checklist may only name
files Meta's release has for its folder (``release_names``: the model's shards, params.json,
its tokenizer, the checklist itself); anything else (``.bashrc``, hidden files, subfolders)
is refused with the line that names it, before any file it lists is requested. No I/O: ``meta_download``
does the transfers.

The layout mirrors meta-llama/llama's and meta-llama/codellama's ``download.sh``::

    LICENSE  USE_POLICY.md                    always, at the top
    tokenizer.model  tokenizer_checklist.chk  at the top, for Llama 2 models
    llama-2-7b-chat/                          Llama 2: consolidated.NN.pth, params.json, checklist.chk
    CodeLlama-7b-Instruct/                    Code Llama: the same plus its own tokenizer.model
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection, Optional, Sequence
from urllib.parse import parse_qs, quote, urlsplit

from .errors import ConfigError, ModelNotFoundError, PullError, SignedUrlExpiredError

__all__ = ["FAMILIES", "LICENSE_ID", "META_FORM_URL", "MetaModel", "MetaFile", "DownloadPlan", "SignedUrl", "MODELS",
           "resolve_models", "plan_download", "parse_signed_url", "parse_checklist", "looks_like_html",
           "html_page_error", "release_names"]

META_FORM_URL = "https://ai.meta.com/resources/models-and-libraries/llama-downloads/"
FAMILIES = {"llama2": "Llama 2", "codellama": "Code Llama"}
LICENSE_ID = "llama2"  # Code Llama is under the Llama 2 Community License too

_GB = 1_000_000_000
_APPROX_BYTES = {"7": int(13.5 * _GB), "13": int(26.0 * _GB), "34": int(67.5 * _GB), "70": int(138.0 * _GB)}
_SHARDS = {"7": 1, "13": 2, "34": 4, "70": 8}
_SMALL_FILE = 16_000
_TOKENIZER_BYTES = 500_000


@dataclass(frozen=True)
class MetaModel:
    """One model as download.sh names it: ``7B-chat`` in folder ``llama-2-7b-chat`` with 1 shard."""

    family: str  # "llama2" | "codellama"
    name: str
    folder: str
    shards: int
    approx_bytes: int

    @property
    def weight_files(self) -> tuple[str, ...]:
        """The files of the model folder in download.sh's order, without the checklist."""
        shards = tuple(f"consolidated.{i:02d}.pth" for i in range(self.shards))
        own_tokenizer = ("tokenizer.model",) if self.family == "codellama" else ()
        return shards + ("params.json",) + own_tokenizer


def _llama2(name: str) -> MetaModel:
    size = name.split("B")[0]
    folder = f"llama-2-{size}b" + ("-chat" if name.endswith("-chat") else "")
    return MetaModel("llama2", name, folder, _SHARDS[size], _APPROX_BYTES[size])


def _codellama(name: str) -> MetaModel:
    size = name.split("b")[0]
    return MetaModel("codellama", name, f"CodeLlama-{name}", _SHARDS[size], _APPROX_BYTES[size])


# The order of each download.sh's "press Enter for all".
MODELS: tuple[MetaModel, ...] = (
    tuple(_llama2(n) for n in ("7B", "13B", "70B", "7B-chat", "13B-chat", "70B-chat"))
    + tuple(_codellama(f"{size}b{variant}") for variant in ("", "-Python", "-Instruct")
            for size in ("7", "13", "34", "70"))
)


@dataclass(frozen=True)
class MetaFile:
    """A file to fetch: its path under the output folder and the checklist holding its md5."""

    path: str
    checklist: Optional[str]  # None: Meta publishes no md5 for it (LICENSE, USE_POLICY.md)
    approx_bytes: int


@dataclass(frozen=True)
class DownloadPlan:
    models: tuple[MetaModel, ...]
    checklists: tuple[str, ...]
    files: tuple[MetaFile, ...]  # everything but the checklists, in download.sh's order


def _model_list(family: Optional[str] = None) -> str:
    return ", ".join(m.name for m in MODELS if family is None or m.family == family)


def _find_model(name: str, family: str) -> Optional[MetaModel]:
    key = name.lower()
    for model in MODELS:
        if model.folder.lower() == key:
            return model
    matches = [m for m in MODELS if m.name.lower() == key]
    if len(matches) > 1:  # 7b, 13b, 70b exist in both families: --family decides
        matches = [m for m in matches if m.family == family]
    return matches[0] if len(matches) == 1 else None


def resolve_models(names: Optional[Sequence[str]] = None, family: str = "llama2") -> tuple[MetaModel, ...]:
    """Models from download.sh's names (``7B-chat``, ``34b-Python``) or folder names (``llama-2-7b``).

    No names means every model of ``family``, as download.sh does when you press Enter. Bare
    sizes (``7b``, ``13B``) exist in both families; ``family`` says which one is meant.
    """
    if family not in FAMILIES:
        raise ConfigError(f"unknown model family '{family}'; choose {' or '.join(FAMILIES)}.")
    if not names:
        return tuple(m for m in MODELS if m.family == family)
    if isinstance(names, str):
        names = [names]
    chosen: list[MetaModel] = []
    for raw in names:
        for name in (part.strip() for part in raw.split(",")):
            if not name:
                continue
            model = _find_model(name, family)
            if model is None:
                raise ModelNotFoundError(
                    f"unknown model '{name}'; Llama 2 has {_model_list('llama2')}; Code Llama has "
                    f"{_model_list('codellama')} (folder names like llama-2-7b-chat work too)."
                )
            if model not in chosen:
                chosen.append(model)
    if not chosen:
        raise ConfigError("no model named; give --models like 7B-chat,13B.")
    return tuple(chosen)


def plan_download(models: Sequence[MetaModel]) -> DownloadPlan:
    """The checklists and files download.sh would fetch for ``models``."""
    files = [MetaFile("LICENSE", None, _SMALL_FILE), MetaFile("USE_POLICY.md", None, _SMALL_FILE)]
    checklists: list[str] = []
    if any(m.family == "llama2" for m in models):
        checklists.append("tokenizer_checklist.chk")
        files.append(MetaFile("tokenizer.model", "tokenizer_checklist.chk", _TOKENIZER_BYTES))
    for model in models:
        checklist = f"{model.folder}/checklist.chk"
        checklists.append(checklist)
        for name in model.weight_files:
            size = (model.approx_bytes // model.shards if name.endswith(".pth")
                    else _TOKENIZER_BYTES if name == "tokenizer.model" else _SMALL_FILE)
            files.append(MetaFile(f"{model.folder}/{name}", checklist, size))
    return DownloadPlan(tuple(models), tuple(checklists), tuple(files))


# -- the signed URL --------------------------------------------------------------------------
@dataclass(frozen=True)
class SignedUrl:
    """Meta's presigned URL; ``*`` in it stands for a file's path (download.sh's ``${URL/'*'/path}``)."""

    template: str

    def for_path(self, path: str) -> str:
        return self.template.replace("*", quote(path), 1)

    @property
    def display(self) -> str:
        """The URL without its signature, for messages and logs."""
        parts = urlsplit(self.template)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"


def parse_signed_url(text: str) -> SignedUrl:
    """Check and tidy the URL pasted from Meta's email (quotes, line breaks, a wrapping redirect link)."""
    url = "".join(text.split()).strip("'\"<>")
    query = parse_qs(urlsplit(url).query)
    wrapped = query.get("u", [""])[0]
    if "*" not in url.split("?")[0] and wrapped.startswith(("http://", "https://")):
        url = wrapped  # a mail client's or Facebook's redirect link around the real URL
    head = url.split("?")[0]
    if "*" not in head and "%2A" in head.upper():
        url = re.sub("%2a", "*", url, count=1, flags=re.IGNORECASE)
    if not url.lower().startswith(("https://", "http://")) or "*" not in url.split("?")[0]:
        raise ConfigError(
            "that is not the URL from Meta's email: it must start with https:// and contain a '*' where each "
            "file's path goes (copy the URL's text, not the link); request one at " + META_FORM_URL
        )
    return SignedUrl(url)


# -- checklists and error pages -------------------------------------------------------------
_CHECK_LINE = re.compile(r"^([0-9a-fA-F]{32})\s+\*?(?:\./)?(\S(?:.*\S)?)\s*$")
_HTML_STARTS = (b"<!doctype", b"<html", b"<?xml", b"<error", b"<head", b"<body")


def looks_like_html(head: bytes) -> bool:
    """True for the start of a web page or an XML error document (what a refused download returns)."""
    return head.lstrip()[:64].lower().startswith(_HTML_STARTS)


def html_page_error(path: str) -> SignedUrlExpiredError:
    return SignedUrlExpiredError(
        f"Meta's server sent a web page instead of {path}: the signed URL has expired, was used too many "
        f"times, or was copied as a link instead of as text; request a new URL from Meta's form at "
        f"{META_FORM_URL} and run the command again with it (verified files are kept)."
    )


def release_names(checklist: str, models: Sequence[MetaModel]) -> frozenset[str]:
    """The names the checklist at ``checklist`` may list: files Meta's release has in its folder."""
    if "/" not in checklist:
        return frozenset({"tokenizer.model"})
    folder = checklist.rsplit("/", 1)[0]
    model = next((m for m in models if m.folder == folder), None)
    if model is None:
        return frozenset()
    # Every shard name of the release: a checklist naming another model's shards is caught
    # (with a clearer message) by the download's check that the expected shards are listed.
    shards = {f"consolidated.{i:02d}.pth" for i in range(100)}
    return frozenset(set(model.weight_files) | shards | {"params.json", "tokenizer.model", "checklist.chk"})


def parse_checklist(data: bytes, path: str, allowed: Optional[Collection[str]] = None) -> dict[str, str]:
    """``{relative path: md5}`` from an ``md5sum`` checklist at ``path`` (names are relative to its folder).

    With ``allowed``, a line naming any other file is refused: a checklist must not make the
    download fetch (and overwrite) files that are not Meta's.
    """
    if looks_like_html(data[:512]):
        raise html_page_error(path)
    folder = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    sums: dict[str, str] = {}
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        match = _CHECK_LINE.match(line)
        name = match.group(2) if match else ""
        if not match or name.startswith("/") or ".." in name.split("/") or "/" in name:
            raise PullError(f"{path} line {number} is not an md5sum line ('{line[:60]}'); delete {path} "
                            "and run the command again.")
        if allowed is not None and name not in allowed:
            raise PullError(f"{path} line {number} names '{name[:60]}', which is not a file of Meta's release "
                            f"for {path.rsplit('/', 1)[0] if '/' in path else 'the tokenizer'}; nothing was "
                            f"fetched: delete {path} and run the command again with a URL from Meta.")
        sums[folder + name] = match.group(1).lower()
    if not sums:
        raise PullError(f"{path} is empty; delete it and run the command again.")
    return sums
