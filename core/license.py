"""Model licences that must be accepted before weights are downloaded or converted.

Llama 2 and Code Llama weights are under Meta's Llama 2 Community License and its
Acceptable Use Policy. ``require_license("llama2")`` raises ``LicenseNotAcceptedError``
until the person has accepted once (``accept_license``, or ``accept=True`` for scripts,
which the CLI's ``--accept-license`` passes); the acceptance is recorded in the store's
``licenses.json`` with its date, so it is asked once per store.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Optional

from .errors import ConfigError, LicenseNotAcceptedError
from .store import ModelStore, atomic_write_text

__all__ = ["LicenseTerms", "LICENSES", "LLAMA2", "license_notice", "accepted_at", "accept_license",
           "require_license"]


@dataclass(frozen=True)
class LicenseTerms:
    id: str
    name: str
    url: str
    policy_url: str
    restrictions: tuple[str, ...]


LLAMA2 = LicenseTerms(
    id="llama2",
    name="Llama 2 Community License Agreement",
    url="https://ai.meta.com/llama/license/",
    policy_url="https://ai.meta.com/llama/use-policy/",
    restrictions=(
        "If your products or services had more than 700 million monthly active users on Llama 2's "
        "release date, you need a separate licence from Meta.",
        "You may not use Llama 2's outputs to improve any other large language model "
        "(other than Llama 2 or its derivatives).",
        "Your use must follow the Acceptable Use Policy, and redistributions must include the licence "
        "and say \"Llama 2 is licensed under the LLAMA 2 Community License\".",
    ),
)

LICENSES: dict[str, LicenseTerms] = {LLAMA2.id: LLAMA2}


def _terms(license_id: str) -> LicenseTerms:
    try:
        return LICENSES[license_id]
    except KeyError:
        raise ConfigError(f"unknown licence '{license_id}'; known: {', '.join(LICENSES)}.") from None


def license_notice(license_id: str) -> str:
    """The text shown before asking a person to accept ``license_id``."""
    terms = _terms(license_id)
    lines = [f"These weights are licensed under the {terms.name}:", f"  {terms.url}",
             f"and its Acceptable Use Policy:", f"  {terms.policy_url}", "Among its terms:"]
    lines += [f"  - {r}" for r in terms.restrictions]
    return "\n".join(lines)


def _path(store: ModelStore):
    return store.root / "licenses.json"


def _records(store: ModelStore) -> dict[str, dict]:
    try:
        return json.loads(_path(store).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:
        raise ConfigError(f"{_path(store)} is not valid JSON; delete it and accept the licence again.") from None


def accepted_at(license_id: str, store: Optional[ModelStore] = None) -> Optional[float]:
    """When ``license_id`` was accepted in this store (a Unix time), or None."""
    record = _records(store or ModelStore()).get(license_id)
    return float(record["accepted_at"]) if record else None


def accept_license(license_id: str, store: Optional[ModelStore] = None) -> None:
    """Record that the person accepted ``license_id``."""
    store = store or ModelStore()
    terms = _terms(license_id)
    records = _records(store)
    records[license_id] = {"accepted_at": time.time(), **asdict(terms)}
    atomic_write_text(_path(store), json.dumps(records, indent=2, sort_keys=True))


def require_license(license_id: Optional[str], *, accept: bool = False,
                    store: Optional[ModelStore] = None) -> None:
    """Pass when ``license_id`` needs no acceptance or was accepted; ``accept=True`` accepts now."""
    if not license_id or license_id not in LICENSES:
        return
    store = store or ModelStore()
    if accepted_at(license_id, store) is not None:
        return
    if accept:
        accept_license(license_id, store)
        return
    terms = _terms(license_id)
    raise LicenseNotAcceptedError(
        f"these weights need the {terms.name} ({terms.url}) and its Acceptable Use Policy "
        "accepted first; read them, then run the command again with --accept-license.",
        license=terms.id, license_url=terms.url,
    )
