"""The JSON Schema (draft 2020-12) of the JSON report, ``edis-fleet/report/v1``.

The prose description is in the docstring of ``report.formats``; this is the same contract
in machine-readable form, so that CI jobs can validate a report and the tests prove that
``json_report`` keeps to it. A change that removes or renames a field needs a new schema id
(``v2``); adding an optional field does not.
"""

from __future__ import annotations

from typing import Any, Final

from orchestrator.journal import RunStatus
from orchestrator.model import Outcome, TargetState

SCHEMA_ID: Final = "edis-fleet/report/v1"

_STATES = [s.value for s in TargetState]
_OUTCOMES = [o.value for o in Outcome]

_COUNT: dict[str, Any] = {"type": "integer", "minimum": 0}
_TIME: dict[str, Any] = {"type": ["number", "null"]}
_SECONDS: dict[str, Any] = {"type": ["number", "null"], "minimum": 0}


def _counts(*extra: str) -> dict[str, Any]:
    """An object with one count per target state (plus ``extra`` counts), all required."""
    keys = [*extra, *_STATES]
    return {
        "type": "object",
        "required": keys,
        "properties": {k: _COUNT for k in keys},
    }


_WAVE = _counts("targets")
_WAVE["required"] = ["wave", *_WAVE["required"]]
_WAVE["properties"] = {"wave": {"type": "integer"}, **_WAVE["properties"]}
_WAVE["additionalProperties"] = False

_TARGET: dict[str, Any] = {
    "type": "object",
    "required": [
        "kvm_id", "hostname", "image", "wave", "position", "state", "reason", "sends", "timings",
    ],
    "additionalProperties": False,
    "properties": {
        "kvm_id": {"type": "string", "minLength": 1},
        "hostname": {"type": "string"},
        "image": {"type": "string"},
        "wave": {"type": "integer"},
        "position": {"type": "integer"},
        "state": {"enum": _STATES},
        "reason": {"type": "string"},
        "sends": _COUNT,
        # Optional (added in v1 without a new id): readiness mode ssh, a proven reinstall.
        "proof": {"enum": ["pinned", "key-changed", "weaker"]},
        "known_hosts": {"type": "string", "minLength": 1},
        "timings": {
            "type": "object",
            "additionalProperties": False,
            "required": [
                "queued_at", "sent_at", "accepted_at", "ready_at", "ended_at", "time_to_ready_s",
            ],
            "properties": {
                "queued_at": {"type": "number"},
                "sent_at": _TIME,
                "accepted_at": _TIME,
                "ready_at": _TIME,
                "ended_at": _TIME,
                "time_to_ready_s": _SECONDS,
            },
        },
    },
}  # fmt: skip

_SPREAD: dict[str, Any] = {
    "type": "object",
    "required": ["count", "p50", "p95", "max"],
    "additionalProperties": False,
    "properties": {"count": _COUNT, "p50": _SECONDS, "p95": _SECONDS, "max": _SECONDS},
}

# Added in v1 without a new id (optional: reports written before them stay valid).
VERDICTS = [
    "ok", "failed", "in-doubt", "aborted", "interrupted", "running", "rto-missed", "crashed",
    "busy",
]  # fmt: skip
_RECOVERY: dict[str, Any] = {
    "type": "object",
    "required": ["first_send_at", "last_ready_at", "recovery_s", "rto_s", "rto_met", "waves"],
    "additionalProperties": False,
    "properties": {
        "first_send_at": _TIME,
        "last_ready_at": _TIME,
        "recovery_s": _SECONDS,
        "rto_s": {"type": ["number", "null"], "exclusiveMinimum": 0},
        "rto_met": {"type": ["boolean", "null"]},
        "waves": {
            "type": "array",
            "items": {
                "type": "object",
                "required": [
                    "wave",
                    "first_send_at",
                    "last_ready_at",
                    "recovery_s",
                    "send_to_ready_s",
                ],
                "additionalProperties": False,
                "properties": {
                    "wave": {"type": "integer"},
                    "first_send_at": _TIME,
                    "last_ready_at": _TIME,
                    "recovery_s": _SECONDS,
                    "send_to_ready_s": _SPREAD,
                },
            },
        },
    },
}

REPORT_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "edis-fleet run report",
    "type": "object",
    "required": ["schema", "run", "totals", "waves", "targets", "percentiles", "attempts"],
    "properties": {
        "schema": {"const": SCHEMA_ID},
        "run": {
            "type": "object",
            "required": [
                "id", "status", "fleet", "manifest_path", "manifest_sha256", "plan_sha256",
                "started_at", "ended_at", "duration_s", "failures", "retries", "counters",
            ],
            "properties": {
                "id": {"type": "string", "minLength": 1},
                "status": {"enum": [s.value for s in RunStatus]},
                "fleet": {"type": "string"},
                "manifest_path": {"type": "string"},
                "manifest_sha256": {"type": "string"},
                "plan_sha256": {"type": "string"},
                "started_at": {"type": "number"},
                "ended_at": _TIME,
                "duration_s": {"type": "number", "minimum": 0},
                "failures": _COUNT,
                "retries": _COUNT,
                "counters": {"type": "object", "additionalProperties": {"type": "integer"}},
                "verdict": {"enum": VERDICTS},
                # The process exit code of the verdict (``report.contract``); null while running.
                "exit_code": {"type": ["integer", "null"]},
                # Why a crashed run stopped (redacted); empty otherwise.
                "error": {"type": "string"},
                "rto_s": {"type": ["number", "null"], "exclusiveMinimum": 0},
            },
        },
        "totals": {**_counts("targets"), "additionalProperties": False},
        "waves": {"type": "array", "items": _WAVE},
        "targets": {"type": "array", "items": _TARGET},
        "percentiles": {
            "type": "object",
            "required": ["time_to_ready_s"],
            "properties": {
                "time_to_ready_s": {
                    "type": "object",
                    "required": ["count", "p50", "p95", "max"],
                    "additionalProperties": False,
                    "properties": {
                        "count": _COUNT,
                        "p50": _SECONDS,
                        "p95": _SECONDS,
                        "max": _SECONDS,
                    },
                },
                "queue_to_ready_s": _SPREAD,
                "send_to_ready_s": _SPREAD,
                "install_s_by_image": {"type": "object", "additionalProperties": _SPREAD},
            },
        },
        "recovery": _RECOVERY,
        "attempts": {
            "type": "object",
            "required": ["total", *_OUTCOMES],
            "properties": {k: _COUNT for k in ["total", *_OUTCOMES]},
            "additionalProperties": _COUNT,
        },
    },
}  # fmt: skip
