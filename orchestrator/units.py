"""Unit parsers: rates, durations, sizes, and counts or percentages (``CountOrFraction``).

Every layer reads ``"5/s"``, ``"1h30m"``, ``"16KiB"`` or ``"10%"`` through these, so they mean
the same everywhere. Each parser raises ``ValueError`` with a message that says what was
expected; ``kind_of`` names a value's YAML kind for such messages without showing long content.
Nothing here knows about manifests or fleets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CountOrFraction:
    """Either an absolute count (``3``) or a fraction of some total (``"10%"`` is 0.1).

    Exactly one of ``count`` and ``fraction`` is set. ``resolve`` turns it into a count.
    """

    count: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.fraction is None):
            raise ValueError("CountOrFraction needs exactly one of count and fraction")

    @property
    def is_fraction(self) -> bool:
        """True for a percentage."""
        return self.fraction is not None

    def resolve(self, total: int, *, round_up: bool = True) -> int:
        """Return the count this amounts to for ``total`` items, capped at ``total``.

        Fractions round up by default (a ``"1%"`` canary of 50 VPSes is one VPS, not none);
        pass ``round_up=False`` for failure budgets, where rounding down is the safe side.
        """
        if self.count is not None:
            return min(self.count, total)
        assert self.fraction is not None
        # The epsilon keeps 0.1 * 30 == 3.0000000000000004 from rounding up to 4.
        exact = self.fraction * total
        value = math.ceil(exact - 1e-9) if round_up else math.floor(exact + 1e-9)
        return max(0, min(value, total))

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        assert self.fraction is not None
        return f"{self.fraction * 100:g}%"


CountOrFractions = tuple[CountOrFraction, ...]

_PERCENT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")


def parse_count_or_percent(value: object, *, minimum: int) -> CountOrFraction:
    """Read ``3`` or ``"10%"``; counts must be at least ``minimum``, percentages in 0..100
    (above 0 when ``minimum`` is above 0).

    Raises ``ValueError`` with a message that says what was expected.
    """
    expected = f"expected a count like {max(minimum, 1)} or a percentage like '10%'"
    if isinstance(value, bool):
        raise ValueError(f"got {kind_of(value)}, {expected}")
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"{value} is below {minimum}; {expected}")
        return CountOrFraction(count=value)
    if isinstance(value, str):
        m = _PERCENT_RE.match(value)
        if m is None:
            if value.strip().isdigit():
                raise ValueError(f"{value!r} is quoted; write a bare number, or add '%'")
            raise ValueError(f"cannot read {value!r}; {expected}")
        pct = float(m.group(1))
        if pct > 100 or (minimum > 0 and pct == 0):
            bound = "above 0% and at most 100%" if minimum > 0 else "between 0% and 100%"
            raise ValueError(f"{value!r} is out of range; a percentage must be {bound}")
        return CountOrFraction(fraction=pct / 100.0)
    raise ValueError(f"got {kind_of(value)}, {expected}")


_RATE_RE = re.compile(
    r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|sec|second|min|minute|h|hr|hour)s?\s*$", re.IGNORECASE
)
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0}
_PER |= {"h": 3600.0, "hr": 3600.0, "hour": 3600.0}


def parse_rate(value: object) -> float:
    """Read a request rate such as ``"5/s"`` or ``"300/min"``; return requests per second.

    Raises ``ValueError`` for anything else, including a bare number (the unit is required
    because ``5`` per second and ``5`` per minute differ by 60x).
    """
    expected = "expected a rate like '5/s' or '300/min'"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"got {kind_of(value)}, {expected}")
    if isinstance(value, int | float):
        raise ValueError(f"{value!r} has no unit; {expected}")
    m = _RATE_RE.match(value)
    if m is None:
        raise ValueError(f"cannot read rate {value!r}; {expected}")
    rate = float(m.group(1)) / _PER[m.group(2).lower()]
    if rate <= 0:
        raise ValueError(f"rate {value!r} must be above zero; {expected}")
    return rate


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(?:[0-9]+(?:\.[0-9]+)?\s*(?:ms|s|m|h|d)\s*)+$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Read a duration such as ``"30s"``, ``"5m"``, ``"1h30m"``; return seconds.

    A bare ``0`` is accepted (zero needs no unit); any other bare number is refused because
    ``30`` could mean seconds or minutes. Raises ``ValueError``.
    """
    expected = "expected a duration like '30s', '5m' or '1h30m'"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"got {kind_of(value)}, {expected}")
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f"{value!r} has no unit; {expected}")
    if _DURATION_RE.match(value) is None:
        raise ValueError(f"cannot read duration {value!r}; {expected}")
    return sum(float(n) * _SECONDS[u.lower()] for n, u in _DURATION_PART.findall(value))


_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)
_BYTES = {"b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}


def parse_size(value: object) -> int:
    """Read a size in bytes: ``16384``, ``"16KiB"``, ``"1MiB"`` (k and m are powers of 1024).

    Raises ``ValueError``.
    """
    expected = "expected a size like 16384 or '16KiB'"
    if isinstance(value, bool):
        raise ValueError(f"got {value!r}, {expected}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)) is not None:
        size = int(m.group(1)) * _BYTES[(m.group(2) or "b").lower()]
    else:
        raise ValueError(f"cannot read size {value!r}; {expected}")
    if size <= 0:
        raise ValueError(f"size must be above zero; {expected}")
    return size


def kind_of(value: object) -> str:
    """Name the YAML kind of a value for messages, without showing long content."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a long string"
    if isinstance(value, int | float):
        return repr(value)
    return f"a {type(value).__name__}"
