"""What the simulator counts and remembers, for tests and drills.

Nothing here ever holds a signature, a password or cloud-init user data: log entries have a
fixed set of fields, and none of them is a request parameter other than the kvm_id.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

from orchestrator.simulator.faults import ENDPOINTS
from orchestrator.simulator.sessions import REJECT_REASONS
from orchestrator.simulator.vps import Vps

# Requests to a path that is no endpoint are counted under this name.
OTHER = "other"
# Longest kvm_id kept in the log: it is client input.
_MAX_LOGGED_ID = 64


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One request as the simulator saw it.

    ``time`` is simulator Unix time, ``host`` ``"session"`` or ``"node-N"``, ``status`` the HTTP
    status sent (``None`` when no answer was sent), ``fault`` the injected fault kind or
    ``"rate_limit"``, ``reason`` why a signature was refused (see ``sessions.REJECT_REASONS``).
    """

    time: float
    host: str
    endpoint: str
    kvm_id: str | None
    status: int | None
    fault: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, object]:
        """Return the entry as plain JSON-able data."""
        return asdict(self)


class RequestLog:
    """The last ``size`` requests, oldest first."""

    def __init__(self, size: int) -> None:
        self._entries: deque[LogEntry] = deque(maxlen=size)

    def add(self, entry: LogEntry) -> None:
        """Append an entry, dropping the oldest when full."""
        self._entries.append(entry)

    def __iter__(self) -> Iterator[LogEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[LogEntry]:
        """Return a copy of the entries, oldest first."""
        return list(self._entries)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()


def log_kvm_id(value: str | None) -> str | None:
    """Return client-sent ``value`` trimmed to a size fit for the log."""
    return value if value is None or len(value) <= _MAX_LOGGED_ID else value[:_MAX_LOGGED_ID]


class Counters:
    """Counts since start.

    Live dicts: ``requests`` (per endpoint, every request that arrived, ``"other"`` for unknown
    paths), ``faults`` (per fault kind), ``faults_by_endpoint`` (endpoint → kind → count),
    ``bad_signature_reasons`` (reason → count). Integers: ``auth_calls`` (auth requests
    processed), ``auth_failures`` (of those, refused), ``throttled`` (429s of the own rate
    limit). Per-VPS dicts, computed on access from the VPS objects: ``reinstall_received``,
    ``reinstall_accepted``, ``bad_signature``.
    """

    def __init__(self, vpses: Callable[[], list[Vps]]) -> None:
        self._vpses = vpses
        self.requests: dict[str, int] = dict.fromkeys((*ENDPOINTS, OTHER), 0)
        self.faults: dict[str, int] = {}
        self.faults_by_endpoint: dict[str, dict[str, int]] = {}
        self.bad_signature_reasons: dict[str, int] = dict.fromkeys(REJECT_REASONS, 0)
        self.auth_calls = 0
        self.auth_failures = 0
        self.throttled = 0

    def count_fault(self, endpoint: str, kind: str) -> None:
        """Count one injected fault of ``kind`` on ``endpoint``."""
        self.faults[kind] = self.faults.get(kind, 0) + 1
        per = self.faults_by_endpoint.setdefault(endpoint, {})
        per[kind] = per.get(kind, 0) + 1

    @property
    def reinstall_received(self) -> dict[str, int]:
        """kvm_id → reinstall requests that reached the handler for that VPS."""
        return {v.kvm_id: v.reinstalls_received for v in self._vpses()}

    @property
    def reinstall_accepted(self) -> dict[str, int]:
        """kvm_id → reinstalls answered with success (each one wipes the disk)."""
        return {v.kvm_id: v.reinstalls_accepted for v in self._vpses()}

    @property
    def bad_signature(self) -> dict[str, int]:
        """kvm_id → requests refused with 401 for a bad, expired or misplaced signature."""
        return {v.kvm_id: v.bad_signature for v in self._vpses()}

    def as_dict(self) -> dict[str, object]:
        """Return every counter as plain JSON-able data."""
        return {
            "auth_calls": self.auth_calls,
            "auth_failures": self.auth_failures,
            "throttled": self.throttled,
            "requests": dict(self.requests),
            "faults": dict(self.faults),
            "faults_by_endpoint": {k: dict(v) for k, v in self.faults_by_endpoint.items()},
            "bad_signature_reasons": dict(self.bad_signature_reasons),
            "reinstall_received": self.reinstall_received,
            "reinstall_accepted": self.reinstall_accepted,
            "bad_signature": self.bad_signature,
        }
