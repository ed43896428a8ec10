"""The Markdown report: for CI job summaries (``$GITHUB_STEP_SUMMARY``) and chat.

Headline with the verdict, the key figures (counts, recovery time, RTO, send → ready and
queue → ready), a table per wave, failures and in-doubt VPSes with their reasons, and the
next command. Text from the records is escaped for Markdown and HTML (GitHub renders inline
HTML in step summaries), so a hostile reason cannot change the page.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from orchestrator.journal import AttemptRecord, RunRecord, TargetRecord
from orchestrator.model import TargetState
from orchestrator.report.headline import (
    VERDICT_MARK,
    VERDICT_WORDS,
    in_doubt_step,
    next_command,
    rto_text,
    selection_text,
)
from orchestrator.report.recovery import Spread, recovery
from orchestrator.report.summary import Redact, TargetRow, summarize
from orchestrator.report.text import UNRESOLVED, clock_time, duration
from orchestrator.version import __version__

# Rows per list in a summary; the rest are counted (the JSON report has them all).
MAX_LISTED = 50
# Inline Markdown in the middle of a line: emphasis, code, links, tables, strike-through.
# (Line-start syntax cannot occur: record text never starts a line.)
# An underscore inside a word (kvm_100_200) is no emphasis in GFM: left alone, for chat.
_SPECIAL = re.compile(r"([\\`*\[\]|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
_SPACE = re.compile(r"\s+")


def md(text: object) -> str:
    """``text`` safe inside a Markdown table cell or line: HTML characters as entities,
    Markdown punctuation backslash-escaped, line breaks and control characters as spaces."""
    plain = _SPACE.sub(" ", "".join(c if c.isprintable() else " " for c in str(text))).strip()
    plain = plain.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _SPECIAL.sub(r"\\\1", plain)


def _cap(text: str) -> str:
    """``text`` with its first letter upper-case (the rest as it is: VPS stays VPS)."""
    return text[:1].upper() + text[1:]


def _spread(sp: Spread) -> str:
    if not sp.count:
        return "-"
    return f"p50 {duration(sp.p50)}, p95 {duration(sp.p95)}, max {duration(sp.max)}"


def markdown_report(
    run: RunRecord,
    targets: Sequence[TargetRecord],
    attempts: Sequence[AttemptRecord] = (),
    *,
    redact: Redact | None = None,
) -> str:
    """Return the Markdown summary of a run. Raises nothing for consistent records."""
    s = summarize(run, targets, attempts, redact=redact)
    rec = recovery(run, targets)
    v = rec.verdict
    t = s.totals
    out = [
        f"## {VERDICT_MARK[v]} edis-fleet {md(s.fleet)}: {v.value}",
        "",
        f"{md(_cap(VERDICT_WORDS[v]))}. Run `{run.id}`, started {md(clock_time(run.started_at))}.",
        "",
        "| | |",
        "|---|---|",
        f"| Selection | {len(s.rows)} VPSes: {md(selection_text(run.options))} |",
        f"| Outcome | {t['ready']} ready, {t['failed']} failed, "
        f"{t['in_doubt'] + t['intent']} in doubt, {t['skipped']} skipped"
        + (f", {t['pending'] + t['accepted']} not finished" if t["pending"] + t["accepted"] else "")
        + " |",
        f"| Recovery time (first send → last ready) | {md(duration(rec.recovery_s))} |",
        f"| RTO | {md(rto_text(rec))} |",
        f"| Send → ready per VPS | {md(_spread(rec.send_to_ready))} |",
        f"| Queue → ready per VPS | {md(_spread(rec.queue_to_ready))} |",
        f"| Run duration | {md(duration(s.duration_s))}, {run.retries} retries |",
        "",
        "| wave | VPSes | ready | failed | in doubt | not sent | recovery | send → ready p50 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in rec.waves:
        c = s.waves[w.wave]
        out.append(
            f"| {w.wave} | {w.targets} | {c['ready']} | {c['failed']} | "
            f"{c['in_doubt'] + c['intent']} | {c['skipped'] + c['pending']} | "
            f"{md(duration(w.recovery_s))} | {md(duration(w.send_to_ready.p50))} |"
        )
    failed = s.in_state(TargetState.FAILED)
    doubt = s.in_state(TargetState.IN_DOUBT, TargetState.INTENT)
    if failed:
        out += ["", f"### Failed ({len(failed)})", "", *_listing(failed)]
    if doubt:
        out += ["", f"### In doubt ({len(doubt)})", "",
                "The reinstall may have run; it was not resent. Check each by hand before "
                "sending it again (`--limit KVM_ID`).", "", *_listing(doubt)]  # fmt: skip
    command = next_command(run, s)
    step = in_doubt_step(s)
    out.append("")
    if command:
        out.append(f"**Next:** `{command}`")
    if step:
        out.append(f"**{'Then' if command else 'Next'}:** {md(step)}.")
    if not command and not step:
        out.append("**Next:** nothing left to do.")
    out += [
        "",
        f"<sub>edis-fleet {md(__version__)} · manifest sha256 `{run.manifest_sha256[:12]}` · "
        f"plan sha256 `{run.plan_sha256[:12]}`</sub>",
    ]
    return "\n".join(out) + "\n"


def _listing(rows: Sequence[TargetRow]) -> list[str]:
    out = ["| kvm_id | hostname | wave | reason |", "|---|---|---:|---|"]
    for r in rows[:MAX_LISTED]:
        t = r.record
        why = UNRESOLVED if t.state is TargetState.INTENT else (r.reason or t.state.value)
        out.append(f"| {md(t.kvm_id)} | {md(t.hostname)} | {t.wave} | {md(why)} |")
    if len(rows) > MAX_LISTED:
        out.append(f"\n… and {len(rows) - MAX_LISTED} more (see the JSON or HTML report).")
    return out
