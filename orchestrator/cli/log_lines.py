"""The text modes' lines: a plain line per state change, the plain summary of a busy second,
the JSON object per state change for log shippers, and pre-flight's JSON line.

Pure formatting: ``cli/progress.py`` decides when a line is written and where.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime

from orchestrator.cli.live_view import COLUMNS
from orchestrator.model import TargetEvent, TargetState
from orchestrator.report import LABELS, iso_time
from orchestrator.run.stats import StatsSnapshot

_LEVELS = {
    TargetState.FAILED: "error",
    TargetState.IN_DOUBT: "warning",
    TargetState.SKIPPED: "warning",
}


def hms(at: float) -> str:
    """``at`` (wall clock) as ``HH:MM:SS`` in UTC."""
    return datetime.fromtimestamp(at, tz=UTC).strftime("%H:%M:%S")


def plain_line(event: TargetEvent, host: str | None, wave: int, reason: str) -> str:
    """``12:03:04 kvm_100001 vps-001 accepted (wave 1): reason`` (``reason`` redacted)."""
    who = f"{event.kvm_id} {host}" if host else event.kvm_id
    line = f"{hms(event.at)} {who} {LABELS[event.state]} (wave {wave})"
    return f"{line}: {reason}" if reason else line


def summary_line(
    now: float, wave: int, counts: Mapping[TargetState, int], size: int, snap: StatsSnapshot
) -> str:
    """One busy second of ``wave`` folded into a line: its counts of ``size``, the request
    rate, the 429s and, when the provider bounds the run, why."""
    parts = [f"{counts[s]} {LABELS[s]}" for s in COLUMNS[1:] if counts[s]]
    line = (
        f"{hms(now)} wave {wave}: {', '.join(parts) or 'nothing yet'}"
        f" of {size} — {snap.rate:.1f} req/s, {snap.throttles} throttled"
    )
    if snap.provider_bound:
        line += f" ({snap.provider_text()})"
    return line


def json_line(
    event: TargetEvent, *, run_id: str | None, host: str | None, wave: int, reason: str
) -> str:
    """The JSON object of a state change (``reason`` redacted), on one line."""
    obj = {
        "ts": iso_time(event.at),
        "level": _LEVELS.get(event.state, "info"),
        "event": "target_state",
        "run_id": run_id,
        "kvm_id": event.kvm_id,
        "hostname": host,
        "state": event.state.value,
        "wave": wave,
        "reason": reason,
    }
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def preflight_json(now: float, run_id: str | None, done: int, total: int) -> str:
    """Pre-flight's progress (``done`` of ``total`` VPSes checked) as a JSON line."""
    obj = {"ts": iso_time(now), "level": "info",
           "event": "preflight", "run_id": run_id, "done": done,
           "total": total}  # fmt: skip
    return json.dumps(obj, separators=(",", ":"))
