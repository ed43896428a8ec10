"""The end of a run on screen: the verdict first and last, never buried under a table.

``closing_summary`` is what ``apply``, ``resume`` and ``retry-failed`` print when a run ends:
the status and verdict with the exit code, the counts, the recovery time (and the RTO), the
failed and in-doubt VPSes with their reasons (at most ``cap`` of each, then "and N more"),
why the run stopped early if it did, and the exact next command. Every line fits ``width``
columns (80 by default): a terminal of 80 columns wraps nothing. The per-VPS table is the
text report's (``edis-fleet report RUN_ID``, or ``--details``).

The verdict and exit code come from the run's ``Tally`` (``report.contract.judge``): the one
place that judges a run.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from orchestrator.journal import AttemptRecord, RunRecord, TargetRecord
from orchestrator.model import TargetState
from orchestrator.report.contract import Tally
from orchestrator.report.headline import VERDICT_WORDS, in_doubt_step, next_command, rto_text
from orchestrator.report.recovery import recovery
from orchestrator.report.summary import Redact, Summary, TargetRow, summarize
from orchestrator.report.text import LABELS, duration

WIDTH = 80
CAP = 10
_COUNTED = (
    TargetState.READY,
    TargetState.FAILED,
    TargetState.IN_DOUBT,
    TargetState.INTENT,
    TargetState.SKIPPED,
    TargetState.ACCEPTED,
    TargetState.PENDING,
)


def closing_summary(
    run: RunRecord,
    targets: Sequence[TargetRecord],
    tally: Tally,
    attempts: Sequence[AttemptRecord] = (),
    *,
    redact: Redact | None = None,
    aborted: str | None = None,
    width: int = WIDTH,
    cap: int = CAP,
) -> str:
    """Return the closing lines of a run (see the module docstring), ending with a newline.
    ``aborted`` is why this invocation stopped early (a failure budget), when it did."""
    s = summarize(run, targets, attempts, redact=redact)
    code = "-" if tally.exit_code is None else str(tally.exit_code)
    words = VERDICT_WORDS[tally.verdict]
    lines = [
        "",
        f"edis-fleet run {run.id}: {tally.status.value} (exit {code})",
        f"  {words}",
        "  " + _counts(s),
    ]
    rec = recovery(run, targets)
    if rec.recovery_s is not None or rec.rto_s is not None:
        line = f"  recovery {duration(rec.recovery_s)} (first send → last ready)"
        lines.append(line if rec.rto_s is None else f"{line}; RTO {rto_text(rec)}")
    if aborted:
        lines.append(f"  stopped early: {aborted}")
    lines += _listing("failed", s.in_state(TargetState.FAILED), cap, width, run.id)
    doubt = s.in_state(TargetState.IN_DOUBT, TargetState.INTENT)
    lines += _listing("in doubt", doubt, cap, width, run.id)
    step = in_doubt_step(s)
    if step:
        lines.append(f"next: {step}")
    command = next_command(run, s)
    if command:
        lines.append(f"next: {command}")
    lines.append(f"details: edis-fleet report {run.id}")
    return "".join(wrapped + "\n" for line in lines for wrapped in _wrap(line, width))


def _counts(s: Summary) -> str:
    """``200 VPSes: 195 ready, 3 failed, 2 in doubt`` (states with none left out)."""
    total = len(s.rows)
    parts = [f"{s.totals[st.value]} {LABELS[st]}" for st in _COUNTED if s.totals[st.value]]
    return f"{total} VPS(es): " + (", ".join(parts) or "none")


def _listing(title: str, rows: Sequence[TargetRow], cap: int, width: int, run_id: str) -> list[str]:
    """The first ``cap`` rows as ``  kvm_id hostname: reason`` (the reason on the next line
    when both do not fit), then ``and N more``."""
    if not rows:
        return []
    out = [f"{title} ({len(rows)}):"]
    for row in rows[:cap]:
        t = row.record
        who = f"{t.kvm_id} {t.hostname}".strip()
        reason = " ".join(row.reason.split()) or "no reason recorded"
        line = f"  {who}: {reason}"
        if len(line) <= width:
            out.append(line)
        else:
            # The reason on a line of its own: a long host name must not hide it.
            out += [_fit(f"  {who}:", width), _fit(f"      {reason}", width)]
    if len(rows) > cap:
        out.append(f"  and {len(rows) - cap} more (edis-fleet report {run_id})")
    return out


def _wrap(line: str, width: int) -> list[str]:
    """``line`` wrapped to ``width`` columns, continued with an indent (instructions are
    wrapped, never cut)."""
    if len(line) <= width:
        return [line]
    indent = " " * (len(line) - len(line.lstrip()) + 2)
    return textwrap.wrap(line, width, subsequent_indent=indent, break_on_hyphens=False)


def _fit(line: str, width: int) -> str:
    """``line`` cut to ``width`` columns with an ellipsis (reasons can be long)."""
    return line if len(line) <= width else line[: width - 1] + "…"
