"""The headline of a run, shared by the Markdown and HTML reports: what was selected, the
verdict in words, the RTO line and the exact next command.

Plain text only (no markup): each format escapes it for itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchestrator.journal import RunRecord, RunStatus
from orchestrator.model import TargetState
from orchestrator.report.recovery import Recovery, Verdict
from orchestrator.report.summary import Summary
from orchestrator.report.text import duration

VERDICT_WORDS: dict[Verdict, str] = {
    Verdict.OK: "every selected VPS is back",
    Verdict.FAILED: "some VPSes failed",
    Verdict.IN_DOUBT: "some VPSes are in doubt: their reinstall may have run",
    Verdict.ABORTED: "aborted: a failure budget tripped or the account was refused",
    Verdict.INTERRUPTED: "interrupted before the end; resumable",
    Verdict.RUNNING: "still running (or stopped without recording its end)",
    Verdict.RTO_MISSED: "every selected VPS is back, but later than the RTO",
    Verdict.CRASHED: "stopped by an internal error or a fault of this machine; resumable",
    Verdict.BUSY: "refused: another run holds some of these VPSes; nothing was sent",
}
# Symbols for chat and CI summaries: the verdict at a glance.
VERDICT_MARK: dict[Verdict, str] = {
    Verdict.OK: "✅",
    Verdict.FAILED: "❌",
    Verdict.IN_DOUBT: "⚠️",
    Verdict.ABORTED: "🛑",
    Verdict.INTERRUPTED: "⏸️",
    Verdict.RUNNING: "⏳",
    Verdict.RTO_MISSED: "⏱️",
    Verdict.CRASHED: "💥",
    Verdict.BUSY: "⛔",
}


def selection_text(options: Mapping[str, Any]) -> str:
    """Describe the run's recorded selection (``options["selection"]``) in one line."""
    chosen = options.get("selection")
    if not isinstance(chosen, Mapping):
        return "not recorded"
    parts: list[str] = []
    for item in chosen.get("only") or []:
        if isinstance(item, list | tuple) and len(item) == 2:
            key, values = item
            parts.append(f"{key}={','.join(str(v) for v in values)}")
    limit = chosen.get("limit")
    if limit:
        parts.append(f"limit {_ids(limit)}")
    exclude = chosen.get("exclude")
    if exclude:
        parts.append(f"exclude {_ids(exclude)}")
    if chosen.get("include_protected"):
        parts.append("protected included")
    return "; ".join(parts) if parts else "every VPS but the protected ones"


def _ids(values: object) -> str:
    ids = [str(v) for v in values] if isinstance(values, list | tuple) else [str(values)]
    shown = ", ".join(ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def rto_text(rec: Recovery) -> str:
    """The RTO line: ``no RTO set``, ``met: 12m04s of 30m00s``, ``MISSED: ...``, or why it was
    not judged."""
    if rec.rto_s is None:
        return "no RTO set"
    target = duration(rec.rto_s)
    met = rec.rto_met
    if met is None:
        return f"{target}: not judged (" + (
            "nothing recovered)" if rec.recovery_s is None else "the run did not reach its end)"
        )
    took = duration(rec.recovery_s)
    if met:
        return f"{target}: met ({took})"
    over = duration((rec.recovery_s or 0.0) - rec.rto_s)
    return f"{target}: MISSED ({took}, over by {over})"


def next_command(run: RunRecord, s: Summary) -> str | None:
    """The command that continues from here, or None when nothing is left to do.

    Unfinished VPSes (never sent, accepted but not confirmed ready, sent without an outcome)
    need ``resume``; failed ones ``retry-failed`` (a new run); in-doubt ones a check by hand
    first, so they get no command of their own.
    """
    unfinished = s.totals[TargetState.PENDING.value] + s.totals[TargetState.ACCEPTED.value]
    unfinished += s.totals[TargetState.INTENT.value]
    if run.status in (RunStatus.ABORTED, RunStatus.INTERRUPTED, RunStatus.CRASHED):
        # Skipped because the run stopped: resume sends them once the cause is fixed.
        unfinished += s.totals[TargetState.SKIPPED.value]
    if (run.ended_at is not None or run.status is RunStatus.CRASHED) and unfinished:
        return f"edis-fleet resume {run.id}"
    if s.totals[TargetState.FAILED.value]:
        return f"edis-fleet retry-failed {run.id}"
    return None


def in_doubt_step(s: Summary) -> str | None:
    """What to do about in-doubt VPSes (they get no command: a resend could wipe twice), or
    None when there are none."""
    doubt = s.totals[TargetState.IN_DOUBT.value] + s.totals[TargetState.INTENT.value]
    if not doubt:
        return None
    return (
        f"check the {doubt} in-doubt VPS(es) by hand before anything else; reinstall one "
        "deliberately with --limit KVM_ID only if it was not reinstalled"
    )
