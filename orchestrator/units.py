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

# Every pattern here is ASCII-only (``[0-9]``, ``re.ASCII``: no Unicode digits or spaces) and
# used with ``fullmatch`` (``$`` would let a trailing newline through). A number has at most
# 9 digits before and 6 after the point, so no text can become ``inf`` or a huge integer.
_NUMBER = r"([0-9]{1,9}(?:\.[0-9]{1,6})?)"
_PERCENT_RE = re.compile(rf"[ \t]*{_NUMBER}[ \t]*%[ \t]*", re.ASCII)
# The largest count (waves, failure budgets): far above any fleet this tool can run.
MAX_COUNT = 1_000_000


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
            raise ValueError(f"{shorten(value)} is below {minimum}; {expected}")
        if value > MAX_COUNT:
            raise ValueError(f"{shorten(value)} is above the maximum of {MAX_COUNT:,}; {expected}")
        return CountOrFraction(count=value)
    if isinstance(value, str):
        m = _PERCENT_RE.fullmatch(value)
        if m is None:
            if _DIGITS_RE.fullmatch(value.strip()):
                raise ValueError(f"{value!r} is quoted; write a bare number, or add '%'")
            raise ValueError(f"cannot read {value!r}; {expected}")
        pct = float(m.group(1))
        if pct > 100 or (minimum > 0 and pct == 0):
            bound = "above 0% and at most 100%" if minimum > 0 else "between 0% and 100%"
            raise ValueError(f"{value!r} is out of range; a percentage must be {bound}")
        return CountOrFraction(fraction=pct / 100.0)
    raise ValueError(f"got {kind_of(value)}, {expected}")


_RATE_RE = re.compile(
    rf"[ \t]*{_NUMBER}[ \t]*/[ \t]*(s|sec|second|min|minute|h|hr|hour)s?[ \t]*",
    re.IGNORECASE | re.ASCII,
)
_DIGITS_RE = re.compile(r"[0-9]+", re.ASCII)
_LONG_NUMBER_RE = re.compile(r"[0-9]{10,}|\.[0-9]{7,}", re.ASCII)


def _too_many_digits(text: str) -> None:
    if _LONG_NUMBER_RE.search(text):
        raise ValueError(
            f"{shorten(text)} is out of range: a number here has at most 9 digits "
            "(and 6 after the point)"
        )


# Rates: at least one request an hour, at most 100,000 a second (a limit that never binds,
# for benchmarks; the API itself allows far fewer).
MIN_RATE_PER_S = 1 / 3600
MAX_RATE_PER_S = 100_000.0
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
    m = _RATE_RE.fullmatch(value)
    if m is None:
        _too_many_digits(value)
        raise ValueError(f"cannot read rate {shorten(value)}; {expected}")
    rate = float(m.group(1)) / _PER[m.group(2).lower()]
    if rate <= 0:
        raise ValueError(f"rate {value!r} must be above zero; {expected}")
    if not MIN_RATE_PER_S * (1 - 1e-9) <= rate <= MAX_RATE_PER_S:
        raise ValueError(
            f"rate {value!r} is out of range; a rate must be between 1/h and {MAX_RATE_PER_S:g}/s"
        )
    return rate


_DURATION_PART = re.compile(rf"{_NUMBER}[ \t]*(ms|s|m|h|d)", re.IGNORECASE | re.ASCII)
_DURATION_RE = re.compile(
    r"[ \t]*(?:[0-9]{1,9}(?:\.[0-9]{1,6})?[ \t]*(?:ms|s|m|h|d)[ \t]*){1,5}",
    re.IGNORECASE | re.ASCII,
)
# The longest duration any setting takes (a soak, a deadline): 30 days.
MAX_DURATION_S = 30 * 86400.0
ONE_HOUR_S = 3600.0
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(
    value: object, *, minimum: float = 0.0, maximum: float = MAX_DURATION_S
) -> float:
    """Read a duration such as ``"30s"``, ``"5m"``, ``"1h30m"``; return seconds.

    A bare ``0`` is accepted (zero needs no unit); any other bare number is refused because
    ``30`` could mean seconds or minutes. The result must lie in ``minimum..maximum``
    seconds (by default up to 30 days). Raises ``ValueError``.
    """
    expected = "expected a duration like '30s', '5m' or '1h30m'"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"got {kind_of(value)}, {expected}")
    if isinstance(value, int | float):
        if value == 0:
            seconds = 0.0
        else:
            raise ValueError(f"{shorten(value)} has no unit; {expected}")
    elif _DURATION_RE.fullmatch(value) is None:
        _too_many_digits(value)
        raise ValueError(f"cannot read duration {shorten(value)}; {expected}")
    else:
        seconds = sum(float(n) * _SECONDS[u.lower()] for n, u in _DURATION_PART.findall(value))
    if not minimum <= seconds <= maximum:
        raise ValueError(
            f"duration {shorten(value)} is out of range; expected between "
            f"{format_duration(minimum)} and {format_duration(maximum)}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """Write a number of seconds the way the manifest would (``30d``, ``1h``, ``250ms``)."""
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return "0" if seconds == 0 else f"{seconds:g}s"


_SIZE_RE = re.compile(
    r"[ \t]*([0-9]{1,9})[ \t]*(b|k|kb|kib|m|mb|mib)?[ \t]*", re.IGNORECASE | re.ASCII
)
# The largest size setting (user_data_limit): 1 MiB, far above what the API takes.
MAX_SIZE = 1 << 20
_BYTES = {"b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}


def parse_size(value: object, *, maximum: int = MAX_SIZE) -> int:
    """Read a size in bytes: ``16384``, ``"16KiB"``, ``"1MiB"`` (k and m are powers of 1024),
    from 1 byte to ``maximum`` (1 MiB unless given).

    Raises ``ValueError``.
    """
    expected = "expected a size like 16384 or '16KiB'"
    if isinstance(value, bool):
        raise ValueError(f"got {value!r}, {expected}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.fullmatch(value)) is not None:
        size = int(m.group(1)) * _BYTES[(m.group(2) or "b").lower()]
    else:
        raise ValueError(f"cannot read size {shorten(value)}; {expected}")
    if size <= 0:
        raise ValueError(f"size must be above zero; {expected}")
    if size > maximum:
        raise ValueError(f"size {shorten(value)} is above the maximum of {maximum} bytes")
    return size


def shorten(value: object) -> str:
    """Return ``repr`` of a value for a message, cut short (a 5,000-digit id is not echoed)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        return "a number of over 30 digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


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
        return shorten(value)
    return f"a {type(value).__name__}"
