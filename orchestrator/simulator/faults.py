"""What goes wrong, and when: fault kinds, per-endpoint rules and scripts (named rule sets are
in ``profiles.py``).

This module only *decides*; the middleware (``middleware.py``) applies the decision. Two ways to
ask for faults, both per endpoint (``"set/reinstall"`` ... or ``"*"`` for every endpoint without
rules of its own):

* **rules** (``FaultRules``): a probability per fault kind, drawn for each request from a random
  generator seeded by ``(seed, endpoint)`` — the same seed and the same requests per endpoint give
  the same faults, whatever other endpoints see;
* **scripts**: an explicit sequence for the next requests of an endpoint, optionally of one
  kvm_id (``None`` entries pass a request through untouched). Scripts win over a running 429
  burst, which wins over rules. Entries are ``Fault`` objects or the short notation of
  ``parse_fault`` (``"429:5"``, ``"503"``, ``"drop"``, ``"lost"``, ``"latency:1.0"``).

Fault kinds:

=======================  ========================================================================
``throttle``             429 without ``Retry-After``
``throttle_retry_after`` 429 with ``Retry-After: N`` (whole seconds)
``throttle_burst``       429 for this and the next N-1 API requests of the account (any endpoint)
``http500`` ... 504      that status with the endpoint's JSON error body; the request is ignored
``drop``                 the connection is closed before the request is processed
``lost_response``        the request is processed, then the connection is closed unanswered
``invalidate_sessions``  every signature of the account is revoked, then the request is processed
``install_fail``         (set/reinstall) an accepted install ends ``failed``
``install_hang``         (set/reinstall) an accepted install never finishes
``latency``              the request waits (fixed or uniform in a range), then is processed
=======================  ========================================================================
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

API_PREFIX = "/kvm/v2/"
ENDPOINTS: tuple[str, ...] = (
    "get/auth",
    "get/images",
    "set/reinstall",
    "get/power",
    "get/details",
)
ANY_ENDPOINT = "*"

# Exclusive kinds (at most one per request), in the order a random draw walks them.
EXCLUSIVE_KINDS: tuple[str, ...] = (
    "throttle",
    "throttle_retry_after",
    "throttle_burst",
    "http500",
    "http502",
    "http503",
    "http504",
    "drop",
    "lost_response",
    "invalidate_sessions",
    "install_fail",
    "install_hang",
)
FAULT_KINDS: tuple[str, ...] = (*EXCLUSIVE_KINDS, "latency")
INSTALL_KINDS = frozenset({"install_fail", "install_hang"})
HTTP_FAULT_STATUS: Mapping[str, int] = {
    "throttle": 429,
    "throttle_retry_after": 429,
    "throttle_burst": 429,
    "http500": 500,
    "http502": 502,
    "http503": 503,
    "http504": 504,
}
# Used when a scripted fault does not say.
DEFAULT_SCRIPT_RETRY_AFTER = 1
DEFAULT_SCRIPT_BURST = 5
DEFAULT_SCRIPT_LATENCY = 0.1


def endpoint_name(name: str) -> str:
    """Normalise ``"set/reinstall"``, ``"/kvm/v2/set/reinstall"`` or ``"*"``; raises
    ``ValueError`` for anything else."""
    short = name.removeprefix(API_PREFIX).strip("/") if name != ANY_ENDPOINT else name
    if short != ANY_ENDPOINT and short not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {name!r} (known: {', '.join(ENDPOINTS)} or '*')")
    return short


@dataclass(frozen=True)
class Fault:
    """One scripted fault. ``retry_after`` (seconds) for ``throttle_retry_after``, ``burst``
    (total 429s) for ``throttle_burst``, ``latency`` (seconds to wait first) for ``latency`` or
    added to any other kind."""

    kind: str
    retry_after: int | None = None
    latency: float | None = None
    burst: int | None = None

    def __post_init__(self) -> None:
        """Raises ``ValueError`` for an unknown kind or a negative number."""
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r} (known: {', '.join(FAULT_KINDS)})")
        for name in ("retry_after", "latency", "burst"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, kw_only=True)
class FaultRules:
    """Random faults for one endpoint: ``rates`` maps exclusive kinds to a per-request
    probability (their sum at most 1); ``latency_rate`` is the independent chance of waiting
    ``uniform(*latency)`` seconds first; ``retry_after`` and ``burst`` are inclusive integer
    ranges for throttles."""

    rates: Mapping[str, float] = field(default_factory=dict)
    latency_rate: float = 0.0
    latency: tuple[float, float] = (0.0, 0.0)
    retry_after: tuple[int, int] = (1, 3)
    burst: tuple[int, int] = (3, 8)

    def __post_init__(self) -> None:
        """Raises ``ValueError`` for unknown kinds, probabilities outside 0..1 or bad ranges."""
        for kind, p in self.rates.items():
            if kind not in EXCLUSIVE_KINDS:
                hint = " (use latency_rate)" if kind == "latency" else ""
                raise ValueError(f"unknown fault kind {kind!r}{hint}")
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"rate of {kind} must be within 0..1")
        if sum(self.rates.values()) > 1.0 + 1e-9:
            raise ValueError("fault rates add up to more than 1")
        if not 0.0 <= self.latency_rate <= 1.0:
            raise ValueError("latency_rate must be within 0..1")
        for name in ("latency", "retry_after", "burst"):
            lo, hi = getattr(self, name)
            if lo < 0 or hi < lo:
                raise ValueError(f"{name} must be a range (low, high) with 0 <= low <= high")
        if self.burst[0] < 1:
            raise ValueError("burst must be at least 1")


# Short names accepted by parse_fault, besides the kinds themselves.
_ALIASES: Mapping[str, str] = {
    "429": "throttle",
    "500": "http500",
    "502": "http502",
    "503": "http503",
    "504": "http504",
    "lost": "lost_response",
    "burst": "throttle_burst",
    "invalidate": "invalidate_sessions",
    "fail": "install_fail",
    "hang": "install_hang",
}
# The kinds that take a ":N" argument, and the Fault field it sets.
_ARGUMENT: Mapping[str, str] = {
    "throttle_retry_after": "retry_after",
    "throttle_burst": "burst",
    "latency": "latency",
}


def parse_fault(text: str) -> Fault | None:
    """Parse the short script notation: a kind (``"drop"``), an alias (``"429"``, ``"503"``,
    ``"lost"``, ``"burst"``, ``"invalidate"``, ``"fail"``, ``"hang"``), optionally with an
    argument: ``"429:5"`` (429 with ``Retry-After: 5``), ``"burst:4"`` (four 429s),
    ``"latency:0.5"`` (wait 0.5 s). ``"ok"`` or ``"none"`` is no fault. Raises ``ValueError``
    for anything else."""
    name, _, arg = text.strip().partition(":")
    if name in ("ok", "none") and not arg:
        return None
    kind = _ALIASES.get(name, name)
    if kind == "throttle" and arg:
        kind = "throttle_retry_after"
    if not arg:
        return Fault(kind)
    field_name = _ARGUMENT.get(kind)
    if field_name is None:
        raise ValueError(f"fault {text!r} takes no argument")
    try:
        number = float(arg)
    except ValueError:
        raise ValueError(f"fault {text!r}: {arg!r} is not a number") from None
    if field_name == "latency":
        return Fault(kind, latency=number)
    if not number.is_integer():
        raise ValueError(f"fault {text!r}: {arg!r} must be a whole number")
    return Fault(kind, **{field_name: int(number)})


class Decision(NamedTuple):
    """What to do to one request: an exclusive fault kind (or ``None``), seconds to wait first,
    the ``Retry-After`` to send with a 429."""

    kind: str | None
    latency: float
    retry_after: int | None


_NO_FAULT = Decision(None, 0.0, None)


class FaultPlan:
    """The faults in force: rules per endpoint, scripts, and a running 429 burst."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._rules: dict[str, FaultRules] = {}
        self._scripts: dict[tuple[str, str | None], deque[Fault | None]] = {}
        self._rngs: dict[str, random.Random] = {}
        self.burst_remaining = 0

    @property
    def active(self) -> bool:
        """Whether any fault could be injected (false: the middleware skips ``decide``)."""
        return bool(self._rules or self._scripts or self.burst_remaining)

    def set_rules(self, endpoint: str, rules: FaultRules | None) -> None:
        """Set (or with ``None`` remove) the random rules of ``endpoint`` or ``"*"``; raises
        ``ValueError`` for an unknown endpoint."""
        name = endpoint_name(endpoint)
        if rules is None:
            self._rules.pop(name, None)
        else:
            self._rules[name] = rules

    def add_script(
        self, endpoint: str, faults: Iterable[Fault | str | None], kvm_id: str | None = None
    ) -> None:
        """Append faults for the next requests of ``endpoint`` (of ``kvm_id`` only, if given).
        Strings are parsed by ``parse_fault``; ``None`` lets one request through. Raises
        ``ValueError`` for an unknown endpoint or fault."""
        name = endpoint_name(endpoint)
        parsed = [f if f is None or isinstance(f, Fault) else parse_fault(f) for f in faults]
        self._scripts.setdefault((name, kvm_id), deque()).extend(parsed)

    def pending(self, endpoint: str, kvm_id: str | None = None) -> int:
        """Return how many scripted entries wait for ``endpoint`` (and ``kvm_id``)."""
        return len(self._scripts.get((endpoint_name(endpoint), kvm_id), ()))

    def clear(self) -> None:
        """Remove every rule and script and end a running burst."""
        self._rules.clear()
        self._scripts.clear()
        self.burst_remaining = 0

    def load_rules(self, rules: Mapping[str, FaultRules]) -> None:
        """Replace every endpoint's rules with ``rules`` (scripts stay) and end a running burst;
        raises ``ValueError`` for an unknown endpoint."""
        new = {endpoint_name(ep): r for ep, r in rules.items()}
        self._rules = new
        self.burst_remaining = 0

    def describe(self) -> dict[str, object]:
        """Return the plan as plain data (for ``/_sim/state``)."""
        return {
            "seed": self.seed,
            "rules": {
                ep: {
                    "rates": dict(r.rates),
                    "latency_rate": r.latency_rate,
                    "latency": list(r.latency),
                    "retry_after": list(r.retry_after),
                    "burst": list(r.burst),
                }
                for ep, r in self._rules.items()
            },
            "scripts": {
                f"{ep}:{kvm or '*'}": [f.kind if f else None for f in q]
                for (ep, kvm), q in self._scripts.items()
                if q
            },
            "burst_remaining": self.burst_remaining,
        }

    def decide(self, endpoint: str, kvm_id: str | None) -> Decision:
        """Return what to do to the next request of ``endpoint`` for ``kvm_id``."""
        scripted = self._next_scripted(endpoint, kvm_id)
        if scripted is not None:
            return scripted
        if self.burst_remaining > 0:
            self.burst_remaining -= 1
            return Decision("throttle_burst", 0.0, None)
        rules = self._rules.get(endpoint) or self._rules.get(ANY_ENDPOINT)
        if rules is None:
            return _NO_FAULT
        return self._draw(endpoint, rules)

    def _next_scripted(self, endpoint: str, kvm_id: str | None) -> Decision | None:
        if not self._scripts:
            return None
        # Most specific first: this VPS on this endpoint, this endpoint, every endpoint.
        for key in ((endpoint, kvm_id), (endpoint, None), (ANY_ENDPOINT, None)):
            queue = self._scripts.get(key)
            if queue:
                fault = queue.popleft()
                if not queue:
                    del self._scripts[key]
                return self._from_fault(fault, endpoint)
        return None

    def _from_fault(self, fault: Fault | None, endpoint: str) -> Decision:
        if fault is None:
            return _NO_FAULT
        kind: str | None = fault.kind
        if kind == "latency":
            wait = DEFAULT_SCRIPT_LATENCY if fault.latency is None else fault.latency
            return Decision(None, wait, None)
        if kind in INSTALL_KINDS and endpoint != "set/reinstall":
            kind = None
        retry_after = None
        if kind == "throttle_retry_after":
            retry_after = (
                DEFAULT_SCRIPT_RETRY_AFTER if fault.retry_after is None else fault.retry_after
            )
        elif kind == "throttle_burst":
            burst = DEFAULT_SCRIPT_BURST if fault.burst is None else fault.burst
            self.burst_remaining = max(0, burst - 1)
        return Decision(kind, fault.latency or 0.0, retry_after)

    def _draw(self, endpoint: str, rules: FaultRules) -> Decision:
        rng = self._rngs.get(endpoint)
        if rng is None:
            # String seeds hash deterministically (unlike hash() of a str).
            rng = self._rngs[endpoint] = random.Random(f"{self.seed}:{endpoint}")
        # Always two draws per request, so one request's outcome does not shift the next's.
        u, v = rng.random(), rng.random()
        kind: str | None = None
        acc = 0.0
        for k in EXCLUSIVE_KINDS:
            acc += rules.rates.get(k, 0.0)
            if u < acc:
                kind = k
                break
        if kind in INSTALL_KINDS and endpoint != "set/reinstall":
            kind = None
        latency = rng.uniform(*rules.latency) if v < rules.latency_rate else 0.0
        retry_after = None
        if kind == "throttle_retry_after":
            retry_after = rng.randint(*rules.retry_after)
        elif kind == "throttle_burst":
            self.burst_remaining = rng.randint(*rules.burst) - 1
        return Decision(kind, latency, retry_after)
