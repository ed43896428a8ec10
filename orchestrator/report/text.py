"""The report formats meant for people and CI systems: the text summary and JUnit XML.

Both are folded from a ``Summary`` (``report_summary``); ``orchestrator.report.formats`` re-exports
them and documents the time definitions (time to ready, phases).
"""

from __future__ import annotations

import re
import textwrap
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from orchestrator.journal import AttemptRecord, RunRecord, TargetRecord
from orchestrator.model import TargetState
from orchestrator.report.recovery import Recovery, recovery
from orchestrator.report.summary import Redact, Summary, TargetRow, summarize

IN_DOUBT_ADVICE = (
    "In doubt means the reinstall request may have reached EDIS: the VPS may have been "
    "reinstalled, may still be installing, or may be untouched. edis-fleet did not resend it, "
    "because another reinstall would wipe the disk again (or interrupt a running install). "
    "Check each of these VPSes by hand (the EDIS console, or SSH: a fresh system with your "
    "cloud-init applied?). If one was not reinstalled, reinstall it deliberately by running "
    "again with --limit KVM_ID."
)
NOT_READY = "reinstall accepted; readiness not confirmed when the run stopped"
UNRESOLVED = "sent, but no outcome was recorded before the run stopped: in doubt"
NEVER_SENT = "never sent: the run stopped before it"

LABELS: dict[TargetState, str] = {
    TargetState.READY: "ready",
    TargetState.FAILED: "failed",
    TargetState.IN_DOUBT: "in doubt",
    TargetState.SKIPPED: "skipped",
    TargetState.ACCEPTED: "accepted",
    TargetState.INTENT: "sent",
    TargetState.PENDING: "pending",
}
# Final states always get a row of the table; the others only when a VPS is in them.
_ALWAYS = (TargetState.READY, TargetState.FAILED, TargetState.IN_DOUBT, TargetState.SKIPPED)
_UNFINISHED = (TargetState.ACCEPTED, TargetState.INTENT, TargetState.PENDING)

# Characters XML 1.0 cannot carry at all, not even escaped: control characters, lone
# surrogates, U+FFFE/U+FFFF. A server message may contain them; the report must still parse.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def duration(seconds: float | None) -> str:
    """Return ``seconds`` for people: ``0.4s``, ``12.3s``, ``4m12s``, ``1h02m03s``; ``-`` for
    None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def clock_time(at: float | None) -> str:
    """Return Unix time ``at`` as ``2026-11-27 23:15:02 UTC`` (``-`` for None)."""
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _span(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else max(0.0, end - start)


def _columns(rows: Sequence[Sequence[str]], right: int = 1) -> list[str]:
    """Lay ``rows`` out in columns; the columns from index ``right`` on are right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(w) if i >= right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _who(row: TargetRow) -> str:
    t = row.record
    return f"{t.kvm_id} {t.hostname} (wave {t.wave})"


def text_report(
    run: RunRecord,
    targets: Sequence[TargetRecord],
    attempts: Sequence[AttemptRecord] = (),
    *,
    redact: Redact | None = None,
    per_vps: bool = True,
) -> str:
    """Return the summary for people: the run, a table of final states per wave, the time to
    ready percentiles, failures with the server's reason, in-doubt VPSes with what to do,
    skipped and unfinished VPSes with why, and (``per_vps``) each VPS's phase timings.
    Raises nothing for consistent records."""
    s = summarize(run, targets, attempts, redact=redact)
    out = [f"edis-fleet run {run.id}: {run.status.value}"]
    out.append(
        f"fleet {s.fleet} ({run.manifest_path}), manifest sha256 {run.manifest_sha256[:12]}, "
        f"plan sha256 {run.plan_sha256[:12]}"
    )
    ended = "still running" if run.ended_at is None else f"ended {clock_time(run.ended_at)}"
    out.append(f"started {clock_time(run.started_at)}, {ended}, took {duration(s.duration_s)}")
    counters = [f"retries {run.retries}", *(f"{k} {v}" for k, v in sorted(run.counters.items()))]
    out.append(", ".join(counters))
    provider = _provider_line(run.counters)
    if provider:
        out.append(provider)
    if sum(s.attempts.values()):
        calls = ", ".join(f"{k} {v}" for k, v in s.attempts.items() if v)
        out.append(f"API calls: {sum(s.attempts.values())}" + (f" ({calls})" if calls else ""))
    out += ["", *_state_table(s), ""]
    out += _recovery_lines(recovery(run, targets), len(s.rows))
    out += _sections(s)
    if per_vps and s.rows:
        out += [
            "",
            "Timings per VPS (wait: queued → sent, send: sent → accepted,",
            "  install: accepted → ready, to ready: queued → ready):",
        ]
        out += ["  " + line for line in _timings(s.rows)]
    return "\n".join(out) + "\n"


def _recovery_lines(rec: Recovery, total: int) -> list[str]:
    """Recovery time (first send → last ready) with the RTO, then per VPS send → ready and
    queue → ready (the latter includes waiting for earlier waves and soaks)."""
    if rec.recovery_s is None:
        out = ["Recovery: no VPS became ready."]
    else:
        out = [f"Recovery (first send → last ready): {duration(rec.recovery_s)}"]
    if rec.rto_s is not None:
        met = rec.rto_met
        target = f"RTO {duration(rec.rto_s)}: "
        if met is None:
            out.append(target + "not judged (the run did not reach its end, or nothing was ready)")
        elif met:
            out.append(target + "met")
        else:
            over = duration((rec.recovery_s or 0.0) - rec.rto_s)
            out.append(target + f"MISSED by {over} (verdict {rec.verdict.value})")
    if len(rec.waves) > 1 and rec.recovery_s is not None:
        out.append("Per wave (first send → last ready): " + ", ".join(
            f"wave {w.wave} {duration(w.recovery_s)}" for w in rec.waves))  # fmt: skip
    for name, sp in (("send → ready", rec.send_to_ready), ("queue → ready", rec.queue_to_ready)):
        if sp.count:
            out.append(
                f"Per VPS, {name} ({sp.count} of {total}): p50 {duration(sp.p50)}, "
                f"p95 {duration(sp.p95)}, max {duration(sp.max)}"
            )
    return out


def _state_table(s: Summary) -> list[str]:
    waves = list(s.waves)
    rows = [["state", "total", *(f"wave {w}" for w in waves)]]
    for state in (*_ALWAYS, *_UNFINISHED):
        if state in _ALWAYS or s.totals[state.value]:
            counts = [str(s.waves[w][state.value]) for w in waves]
            rows.append([LABELS[state], str(s.totals[state.value]), *counts])
    rows.append(["all", str(len(s.rows)), *(str(sum(s.waves[w].values())) for w in waves)])
    return _columns(rows)


def _sections(s: Summary) -> list[str]:
    out: list[str] = []
    failed = s.in_state(TargetState.FAILED)
    if failed:
        out += ["", f"Failed ({len(failed)}):"]
        out += [f"  {_who(r)}: {r.reason or 'failed'}" for r in failed]
    doubt = s.in_state(TargetState.IN_DOUBT, TargetState.INTENT)
    if doubt:
        out += ["", f"In doubt ({len(doubt)}): the reinstall may have run; it was not resent."]
        out += [
            f"  {_who(r)}: {r.reason if r.record.state is TargetState.IN_DOUBT else UNRESOLVED}"
            for r in doubt
        ]
        out += textwrap.wrap(
            "What to do: " + IN_DOUBT_ADVICE, width=96, initial_indent="  ",
            subsequent_indent="    ", break_on_hyphens=False,
        )  # fmt: skip
    skipped = s.in_state(TargetState.SKIPPED)
    if skipped:
        out += ["", f"Skipped ({len(skipped)}): never sent."]
        out += [f"  {_who(r)}: {r.reason or 'skipped'}" for r in skipped]
    unfinished = s.in_state(TargetState.ACCEPTED, TargetState.PENDING)
    if unfinished:
        out += ["", f"Not finished ({len(unfinished)}): the run stopped before these ended."]
        out += [
            f"  {_who(r)}: " + (NOT_READY if r.record.state is TargetState.ACCEPTED else NEVER_SENT)
            for r in unfinished
        ]
    return out


def _timings(rows: Sequence[TargetRow]) -> list[str]:
    table = [["kvm_id", "hostname", "wave", "state", "sends", "wait", "send", "install",
              "to ready"]]  # fmt: skip
    for r in rows:
        t = r.record
        table.append([
            t.kvm_id, t.hostname, str(t.wave), LABELS[t.state], str(t.sends),
            duration(_span(t.queued_at, t.sent_at)),
            duration(_span(t.sent_at, t.accepted_at)),
            duration(_span(t.accepted_at, t.ready_at)),
            duration(r.time_to_ready_s),
        ])  # fmt: skip
    return _columns(table, right=4)


# --------------------------------------------------------------------------- JUnit XML


def _x(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold (each becomes U+FFFD)."""
    return _NOT_XML.sub("\ufffd", text)


def _outcome(row: TargetRow) -> tuple[str, str, str, str] | None:
    """``(element, type, message, body)`` for a VPS that did not end ready, else None."""
    state = row.record.state
    if state is TargetState.FAILED:
        return "failure", "failed", row.reason or "failed", row.reason
    if state is TargetState.IN_DOUBT:
        message = row.reason or "in doubt"
        return "failure", "in_doubt", message, f"{message}\n\n{IN_DOUBT_ADVICE}"
    if state is TargetState.INTENT:
        return "failure", "in_doubt", UNRESOLVED, f"{UNRESOLVED}\n\n{IN_DOUBT_ADVICE}"
    if state is TargetState.ACCEPTED:
        return "failure", "not_ready", NOT_READY, NOT_READY
    if state is TargetState.SKIPPED:
        return "skipped", "skipped", row.reason or "skipped", ""
    if state is TargetState.PENDING:
        return "skipped", "pending", row.reason or NEVER_SENT, ""
    return None


def _rto_outcome(rec: Recovery) -> tuple[str, str, str, str] | None:
    """The RTO case's ``(element, type, message, body)``, None when it was met."""
    target = duration(rec.rto_s)
    if rec.rto_met is None:
        return "skipped", "", f"RTO {target} not judged: the run did not reach its end", ""
    if rec.rto_met:
        return None
    message = f"recovery took {duration(rec.recovery_s)}, over the RTO of {target}"
    return "failure", "rto_missed", message, f"{message} (first send → last ready)"


def junit_report(
    run: RunRecord,
    targets: Sequence[TargetRecord],
    attempts: Sequence[AttemptRecord] = (),
    *,
    redact: Redact | None = None,
    fleet: str | None = None,
) -> str:
    """Return JUnit XML for CI test-report parsers (GitHub, GitLab, Jenkins).

    One ``<testsuite>`` named ``FLEET`` (``fleet`` defaults to the manifest's file name
    without suffix) with one ``<testcase>`` per VPS (``classname`` ``FLEET.waveN``, ``name``
    ``"KVM_ID HOSTNAME"``, ``time`` its time to ready, or queued → final state when it did
    not become ready). Names and class names never carry the run id (it is a property), so
    a CI server keeps one history per VPS across runs. A run with an RTO gets one more
    case, ``FLEET.rto`` / ``recovery within RTO``: a ``<failure type="rto_missed">`` when
    the recovery time exceeded it, ``<skipped>`` when it could not be judged.
    ``failed`` is a ``<failure type="failed">`` with the server's reason;
    ``in_doubt`` — and a send without a recorded outcome — a ``<failure type="in_doubt">``
    with what to do; accepted but not confirmed ready, ``<failure type="not_ready">``;
    ``skipped`` and never sent, ``<skipped>``. ``errors`` is always 0. Text is escaped by
    ElementTree; characters XML cannot hold are replaced. Raises nothing.
    """
    s = summarize(run, targets, attempts, redact=redact)
    rec = recovery(run, targets)
    suite_name = _x(fleet or s.fleet)
    outcomes = [_outcome(r) for r in s.rows]
    cases = [(f"{suite_name}.wave{r.record.wave}", f"{r.record.kvm_id} {r.record.hostname}",
              r.elapsed_s or 0.0, o) for r, o in zip(s.rows, outcomes, strict=True)]  # fmt: skip
    if rec.rto_s is not None:
        cases.append((f"{suite_name}.rto", "recovery within RTO", rec.recovery_s or 0.0,
                      _rto_outcome(rec)))  # fmt: skip
    outcomes = [c[3] for c in cases]
    failures = sum(1 for o in outcomes if o is not None and o[0] == "failure")
    skipped = sum(1 for o in outcomes if o is not None and o[0] == "skipped")
    counts = {
        "tests": str(len(cases)),
        "failures": str(failures),
        "errors": "0",
        "skipped": str(skipped),
        "time": f"{s.duration_s:.3f}",
    }
    root = ET.Element("testsuites", {"name": "edis-fleet", **counts})
    started = datetime.fromtimestamp(run.started_at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    suite = ET.SubElement(
        root, "testsuite", {"name": suite_name, **counts, "timestamp": started,
                            "hostname": _x(run.hostname)},
    )  # fmt: skip
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("run_id", run.id),
        ("status", run.status.value),
        ("manifest_sha256", run.manifest_sha256),
        ("plan_sha256", run.plan_sha256),
        ("verdict", rec.verdict.value),
        ("recovery_s", "" if rec.recovery_s is None else f"{rec.recovery_s:.3f}"),
        ("rto_s", "" if rec.rto_s is None else f"{rec.rto_s:g}"),
    ):
        ET.SubElement(props, "property", name=name, value=_x(value))
    for classname, name, seconds, outcome in cases:
        case = ET.SubElement(
            suite, "testcase", classname=classname, name=_x(name), time=f"{seconds:.3f}"
        )
        if outcome is not None:
            element, kind, message, body = outcome
            attrs = {"message": _x(message)}
            if element == "failure":  # <skipped> has no type in the JUnit schema
                attrs["type"] = kind
            node = ET.SubElement(case, element, attrs)
            if body:
                node.text = _x(body)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _provider_line(counters: Mapping[str, int]) -> str:
    """Return a line saying the provider was the bottleneck (paused the fleet, or held the
    rate under 90% of the configured one), or "" when it was not."""
    pauses = counters.get("fleet_pauses", 0)
    lowest = counters.get("lowest_rate_pct", 100)
    if not pauses and lowest >= 90:
        return ""
    return (
        f"the provider was the bottleneck: {pauses} fleet-wide pauses "
        f"({counters.get('cooldown_s', 0)} s), rate down to {lowest}% of the configured, "
        f"{counters.get('throttles', 0)} 429s, {counters.get('server_errors', 0)} server errors"
    )
