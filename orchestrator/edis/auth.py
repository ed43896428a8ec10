"""The session answer: per-VPS credentials read from one auth call's ``data``.

Every entry is checked before anything is sent with it, and a bad entry never hides the
others: it goes to ``unusable`` with a clean, one-line reason. An entry is unusable when it is
not an object, lacks an ``api_host``/``signature``/``valid_until``, names an ``api_host``
outside the allowlist, has a ``valid_until`` outside ``0..MAX_VALID_UNTIL`` (a 400-digit
number, a float infinity), or carries an inner ``kvm_id`` that disagrees with the key it sits
under: the key is what we selected by, and a request only ever carries the selected id.
Keys that cannot be kvm ids (control characters, thousands of characters) are dropped.
Never raises for any JSON value.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from orchestrator.edis.hosts import HostPolicy
from orchestrator.edis.text import clean
from orchestrator.errors import HostNotAllowedError
from orchestrator.secrets import Secret

MAX_VALID_UNTIL = 10**11
"""The latest ``valid_until`` accepted (Unix seconds, year ~5100): anything later is nonsense
and would overflow the arithmetic on expiry."""

# What a key of the session answer may look like to be a kvm id at all (the manifest checks
# the exact form); anything else cannot be selected, so it is dropped.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


@dataclass(frozen=True)
class VpsCredentials:
    """What one VPS's entry of the auth answer gives: where to call and with what signature.

    ``base_url`` is ``scheme://api_host``, already checked against the host allowlist.
    ``kvm_id`` is always the key the entry was selected by.
    """

    kvm_id: str
    api_host: str
    base_url: str
    signature: Secret
    valid_until: int
    suspended: bool
    description: str = ""

    def form(self) -> dict[str, str]:
        """Return the session fields every per-VPS call sends."""
        return {
            "signature": self.signature.reveal(),
            "kvm_id": self.kvm_id,
            "valid_until": str(self.valid_until),
        }


@dataclass(frozen=True)
class AuthResult:
    """The answer of one auth call.

    ``credentials`` holds the usable entries; ``unusable`` maps the kvm ids whose entry could
    not be used (api_host not allowed, malformed entry, inner kvm_id disagreeing with its key)
    to the reason. ``server_time`` is the answer's ``Date`` header as Unix seconds (None when
    absent or unreadable), ``local_time`` our clock when the answer arrived: together they give
    the clock skew.
    """

    credentials: Mapping[str, VpsCredentials]
    unusable: Mapping[str, str]
    server_time: float | None
    local_time: float


def parse_entries(
    data: Mapping[object, object], policy: HostPolicy
) -> tuple[dict[str, VpsCredentials], dict[str, str]]:
    """Return the usable credentials and the unusable ids (with reasons) of a session answer's
    ``data`` object. Never raises."""
    credentials: dict[str, VpsCredentials] = {}
    unusable: dict[str, str] = {}
    for key, entry in data.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            continue
        try:
            credentials[key] = parse_entry(key, entry, policy)
        except (ValueError, HostNotAllowedError) as exc:
            # One bad entry must not hide the others; asking for it later says why.
            unusable[key] = clean(str(exc), 200)
    return credentials, unusable


def parse_entry(kvm_id: str, entry: object, policy: HostPolicy) -> VpsCredentials:
    """Return the credentials of the entry found under ``kvm_id``.

    Raises ``ValueError`` for a malformed entry or one whose inner ``kvm_id`` disagrees with
    ``kvm_id``, and ``HostNotAllowedError`` for an ``api_host`` outside the allowlist.
    """
    if not isinstance(entry, dict):
        raise ValueError("entry is not an object")
    inner = entry.get("kvm_id")
    if inner not in (None, "", kvm_id):
        named = clean(inner, 60) if isinstance(inner, str) else f"a {type(inner).__name__}"
        raise ValueError(
            f"the entry under {kvm_id} names another VPS (kvm_id {named}); refusing to use it"
        )
    api_host = entry.get("api_host")
    signature = entry.get("signature")
    if not isinstance(api_host, str) or not api_host:
        raise ValueError("entry has no api_host")
    if not isinstance(signature, str) or not signature:
        raise ValueError("entry has no signature")
    valid_until = _valid_until(entry.get("valid_until"))
    base = policy.api_base(api_host)  # raises HostNotAllowedError
    description = entry.get("description")
    return VpsCredentials(
        kvm_id=kvm_id,
        api_host=api_host,
        base_url=base,
        signature=Secret(signature),
        valid_until=valid_until,
        suspended=entry.get("suspended", "n") != "n",
        description=clean(description, 200) if isinstance(description, str) else "",
    )


def _valid_until(value: object) -> int:
    """Return ``valid_until`` as whole Unix seconds; raise ``ValueError`` unless it is a
    number (or a text of ASCII digits) within ``0..MAX_VALID_UNTIL``."""
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = int(value) if math.isfinite(value) else None
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        number = int(value)
    if number is None:
        raise ValueError("entry has no readable valid_until")
    if not 0 <= number <= MAX_VALID_UNTIL:
        raise ValueError(f"entry's valid_until is out of range (0..{MAX_VALID_UNTIL})")
    return number


def http_date(value: str | None) -> float | None:
    """Return an HTTP ``Date`` header as Unix seconds, or None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return seconds if math.isfinite(seconds) else None
