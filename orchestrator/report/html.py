"""The drill record: one self-contained HTML page for a team lead or an auditor.

Headline (fleet, selection, verdict, recovery time first send → last ready, the RTO), the
waves, a timeline picture (``report.timeline``), install times per image, failures and
in-doubt VPSes with their reasons, and the provenance (tool version, manifest and plan
hashes, run id). No external assets: the CSS is inline, the picture an inline SVG, and the
page links nowhere. Every piece of text is escaped with ``html.escape`` here (the records are
secret-free by construction, and ``redact`` is applied to every reason besides).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from orchestrator.journal import AttemptRecord, RunRecord, TargetRecord
from orchestrator.model import TargetState
from orchestrator.report.headline import (
    VERDICT_WORDS,
    in_doubt_step,
    next_command,
    rto_text,
    selection_text,
)
from orchestrator.report.recovery import Recovery, Spread, Verdict, recovery
from orchestrator.report.summary import Redact, Summary, TargetRow, summarize
from orchestrator.report.text import (
    IN_DOUBT_ADVICE,
    NEVER_SENT,
    NOT_READY,
    UNRESOLVED,
    clock_time,
    duration,
)
from orchestrator.report.timeline import COLOURS, LEGEND, build_timeline, timeline_svg
from orchestrator.version import __version__

_BADGE = {
    Verdict.OK: "#15803d",
    Verdict.FAILED: "#b91c1c",
    Verdict.IN_DOUBT: "#c2410c",
    Verdict.ABORTED: "#7f1d1d",
    Verdict.INTERRUPTED: "#4b5563",
    Verdict.RUNNING: "#1d4ed8",
    Verdict.RTO_MISSED: "#a16207",
    Verdict.CRASHED: "#581c87",
    Verdict.BUSY: "#92400e",
}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#111827;
margin:0;background:#f9fafb}
main{max-width:1200px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.sub{color:#4b5563;margin:0 0 16px}
.badge{display:inline-block;color:#fff;border-radius:4px;padding:2px 10px;font-weight:600;
vertical-align:middle;margin-left:8px;font-size:15px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:10px}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:10px 12px;margin:0}
.card dt{color:#6b7280;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card dd{margin:2px 0 0;font-size:17px;font-weight:600;overflow-wrap:anywhere}
.card dd small{display:block;font-size:12px;font-weight:400;color:#4b5563}
.missed{color:#b91c1c}.met{color:#15803d}
table{border-collapse:collapse;background:#fff;border:1px solid #e5e7eb;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600}td{white-space:nowrap}td:last-child{white-space:normal}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.reason{max-width:640px;overflow-wrap:anywhere}
.next{background:#111827;color:#f9fafb;padding:8px 12px;border-radius:6px;display:inline-block;
font-family:ui-monospace,monospace}
.advice{max-width:900px;color:#374151}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-2px;
border:1px solid #9ca3af}
.pic{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:8px;overflow-x:auto}
svg.timeline text{font:11px ui-monospace,monospace;fill:#374151}
svg.timeline .tick{fill:#6b7280}svg.timeline .grid{stroke:#e5e7eb}
svg.timeline .wave{stroke:#1f2937;stroke-dasharray:4 3}
svg.timeline rect.soak{fill:#a78bfa;fill-opacity:.22}svg.timeline text.soak{fill:#6d28d9}
svg.timeline line.rto{stroke:#b91c1c;stroke-width:2;stroke-dasharray:6 3}
svg.timeline line.recovered{stroke:#15803d;stroke-width:2}
svg.timeline text.rto{fill:#b91c1c;font-weight:700}
svg.timeline text.recovered{fill:#15803d;font-weight:700}
svg.timeline .stripbg{fill:#f3f4f6}svg.timeline .throttle{stroke:#dc2626}
svg.timeline .refresh{stroke:#2563eb}
svg.timeline .mark{font-weight:600}
dl.prov{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;background:#fff;
border:1px solid #e5e7eb;padding:10px 12px;border-radius:6px}
dl.prov dt{color:#6b7280}dl.prov dd{margin:0;font-family:ui-monospace,monospace;
overflow-wrap:anywhere}
footer{color:#6b7280;font-size:12px;margin-top:28px}
"""

# More rows than this in one list are cut (the JSON report and `status` have them all).
MAX_LISTED = 500


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def html_report(
    run: RunRecord,
    targets: Sequence[TargetRecord],
    attempts: Sequence[AttemptRecord] = (),
    *,
    redact: Redact | None = None,
) -> str:
    """Return the drill record of a run as one self-contained HTML document. Raises nothing
    for consistent records."""
    s = summarize(run, targets, attempts, redact=redact)
    rec = recovery(run, targets)
    title = f"edis-fleet drill record: {s.fleet}"
    verdict = rec.verdict
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)} ({_e(verdict)})</title>",
        f"<style>{_CSS}</style></head><body><main>",
        f'<h1>{_e(title)}<span class="badge" id="verdict" style="background:'
        f'{_BADGE[verdict]}">{_e(verdict)}</span></h1>',
        f'<p class="sub">{_e(_cap(VERDICT_WORDS[verdict]))}. Run <code>{_e(run.id)}</code>, '
        "started "
        f"{_e(clock_time(run.started_at))}, "
        + (_e("still running") if run.ended_at is None else f"ended {_e(clock_time(run.ended_at))}")
        + "</p>",
        *_cards(s, rec),
    ]
    command = next_command(run, s)
    if command:
        parts.append(f'<p>Next: <span class="next" id="next">{_e(command)}</span></p>')
    step = in_doubt_step(s)
    if step:
        parts.append(f'<p id="doubt-step"><b>{"Then" if command else "Next"}:</b> {_e(step)}.</p>')
    parts += _waves(s, rec)
    parts += _picture(run, targets, attempts, rec)
    parts += _images(rec)
    parts += _problems(s)
    parts += _provenance(run, s)
    parts.append(
        f"<footer>Folded from the run's journal records by edis-fleet {_e(__version__)}. "
        "Times are UTC.</footer></main></body></html>"
    )
    return "\n".join(parts) + "\n"


def _card(key: str, label: str, value: str, small: str = "", cls: str = "") -> str:
    extra = f"<small>{_e(small)}</small>" if small else ""
    klass = f' class="{cls}"' if cls else ""
    return (f'<dl class="card" id="{key}"><dt>{_e(label)}</dt><dd{klass}>{_e(value)}{extra}'
            "</dd></dl>")  # fmt: skip


def _cap(text: str) -> str:
    """``text`` with its first letter upper-case (the rest as it is: VPS stays VPS)."""
    return text[:1].upper() + text[1:]


def _spread(sp: Spread) -> str:
    if not sp.count:
        return "-"
    return f"p50 {duration(sp.p50)} · p95 {duration(sp.p95)}"


def _cards(s: Summary, rec: Recovery) -> list[str]:
    t = s.totals
    counts = (f"{t['ready']} ready, {t['failed']} failed, {t['in_doubt'] + t['intent']} in doubt"
              + (f", {t['skipped']} skipped" if t["skipped"] else ""))  # fmt: skip
    met = rec.rto_met
    rto_cls = "" if met is None else ("met" if met else "missed")
    recovered = "-" if rec.recovery_s is None else duration(rec.recovery_s)
    span = (f"{clock_time(rec.first_send_at)} → {clock_time(rec.last_ready_at)}"
            if rec.recovery_s is not None else "no VPS became ready")  # fmt: skip
    return [
        '<div class="cards">',
        _card("fleet", "Fleet", s.fleet, s.run.manifest_path),
        _card("selection", "Selection", f"{len(s.rows)} VPSes", selection_text(s.run.options)),
        _card("outcome", "Outcome", counts),
        _card("recovery", "Recovery time (first send → last ready)", recovered, span),
        _card("rto", "RTO", rto_text(rec), "", rto_cls),
        _card("send-to-ready", "Send → ready per VPS", _spread(rec.send_to_ready),
              f"max {duration(rec.send_to_ready.max)} over {rec.send_to_ready.count} VPSes"
              if rec.send_to_ready.count else "no VPS became ready"),
        _card("queue-to-ready", "Queue → ready per VPS", _spread(rec.queue_to_ready),
              "includes waiting for earlier waves and soaks"),
        _card("duration", "Run duration", duration(s.duration_s),
              ", ".join([f"{s.run.retries} retries", *_counter_notes(s.run.counters)])),
        "</div>",
    ]  # fmt: skip


def _counter_notes(counters: Mapping[str, Any]) -> list[str]:
    """The run's non-zero counters in words (those with a unit said with it); the lowest rate
    only when the provider made the run slow down."""
    notes: list[str] = []
    for key, value in sorted(counters.items()):
        if not value:
            continue
        if key == "lowest_rate_pct":
            if value < 100:
                notes.append(f"rate down to {value}% of the configured")
        elif key == "cooldown_s":
            notes.append(f"paused {duration(float(value))} for the provider")
        else:
            notes.append(f"{key.replace('_', ' ')} {value}")
    return notes


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], numeric: int = 99) -> list[str]:
    """A table; cells from column ``numeric`` on are right-aligned numbers. Cells arrive
    already escaped."""
    out = ["<table><thead><tr>", *(f"<th>{_e(h)}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        cells = "".join(
            f'<td class="n">{c}</td>' if i >= numeric else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return out


def _waves(s: Summary, rec: Recovery) -> list[str]:
    rows = []
    for w in rec.waves:
        c = s.waves[w.wave]
        rows.append([
            _e(w.wave), _e(w.targets), _e(c["ready"]), _e(c["failed"]),
            _e(c["in_doubt"] + c["intent"]), _e(c["skipped"] + c["pending"]),
            _e(clock_time(w.first_send_at)), _e(clock_time(w.last_ready_at)),
            _e(duration(w.recovery_s)), _e(duration(w.send_to_ready.p50)),
            _e(duration(w.send_to_ready.p95)),
        ])  # fmt: skip
    head = ["wave", "VPSes", "ready", "failed", "in doubt", "not sent", "first send",
            "last ready", "recovery", "send→ready p50", "p95"]  # fmt: skip
    return ['<h2 id="waves">Waves</h2>', *_table(head, rows, numeric=1)]


def _picture(
    run: RunRecord,
    targets: Sequence[TargetRecord],
    attempts: Sequence[AttemptRecord],
    rec: Recovery,
) -> list[str]:
    tl = build_timeline(run, targets, attempts, rec)
    legend = "".join(
        f'<span><i style="background:{COLOURS[key]}"></i>{_e(label)}</span>'
        for key, label in LEGEND
    )
    what = (f"one row per group of consecutive VPSes of a wave ({len(tl.rows)} rows for "
            f"{len(targets)} VPSes; hover a row for its members)" if tl.grouped
            else "one row per VPS")  # fmt: skip
    return [
        '<h2 id="timeline">Timeline</h2>',
        f'<p class="sub">Time from the start of the run ({_e(clock_time(run.started_at))}), '
        f"{_e(what)}. Dashed lines: each wave's first send; shaded: soaks; top strips: "
        "throttled API calls and session refreshes.</p>",
        f'<p class="legend">{legend}</p>',
        f'<div class="pic">{timeline_svg(tl)}</div>',
    ]


def _images(rec: Recovery) -> list[str]:
    rows = [
        [_e(image), _e(sp.count), _e(duration(sp.p50)), _e(duration(sp.p95)), _e(duration(sp.max))]
        for image, sp in rec.install_by_image.items()
    ]
    if not rows:
        return ['<h2 id="images">Install time per image</h2><p>No VPS became ready.</p>']
    return [
        '<h2 id="images">Install time per image</h2>',
        '<p class="sub">Accepted → ready, over the VPSes that became ready.</p>',
        *_table(["image", "VPSes", "p50", "p95", "max"], rows, numeric=1),
    ]


def _listing(rows: Sequence[TargetRow], reason: dict[TargetState, str] | None = None) -> list[str]:
    body = []
    for r in rows[:MAX_LISTED]:
        t = r.record
        why = (reason or {}).get(t.state) or r.reason or t.state.value
        body.append([_e(t.kvm_id), _e(t.hostname), _e(t.wave), _e(t.image), _e(t.sends),
                     f'<span class="reason">{_e(why)}</span>'])  # fmt: skip
    out = _table(["kvm_id", "hostname", "wave", "image", "sends", "reason"], body)
    if len(rows) > MAX_LISTED:
        out.append(f"<p>… and {len(rows) - MAX_LISTED} more (see the JSON report).</p>")
    return out


def _problems(s: Summary) -> list[str]:
    out: list[str] = []
    failed = s.in_state(TargetState.FAILED)
    doubt = s.in_state(TargetState.IN_DOUBT, TargetState.INTENT)
    skipped = s.in_state(TargetState.SKIPPED)
    unfinished = s.in_state(TargetState.ACCEPTED, TargetState.PENDING)
    if not (failed or doubt or skipped or unfinished):
        return ['<h2 id="problems">Failures and in doubt</h2><p>None: every VPS is ready.</p>']
    if failed:
        out += [f'<section id="failed"><h2>Failed ({len(failed)})</h2>', *_listing(failed),
                "</section>"]  # fmt: skip
    if doubt:
        out += [f'<section id="in-doubt"><h2>In doubt ({len(doubt)})</h2>',
                *_listing(doubt, {TargetState.INTENT: UNRESOLVED}),
                f'<p class="advice"><b>What to do:</b> {_e(IN_DOUBT_ADVICE)}</p>',
                "</section>"]  # fmt: skip
    if skipped:
        out += [f'<section id="skipped"><h2>Skipped ({len(skipped)}): never sent</h2>',
                *_listing(skipped), "</section>"]  # fmt: skip
    if unfinished:
        out += [f'<section id="unfinished"><h2>Not finished ({len(unfinished)})</h2>',
                *_listing(unfinished, {TargetState.ACCEPTED: NOT_READY,
                                       TargetState.PENDING: NEVER_SENT}), "</section>"]  # fmt: skip
    return out


def _provenance(run: RunRecord, s: Summary) -> list[str]:
    calls = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in s.attempts.items() if v) or "none"
    items = [
        ("tool", f"edis-fleet {__version__}"),
        ("run id", run.id),
        ("status", run.status.value),
        ("manifest", run.manifest_path),
        ("manifest sha256", run.manifest_sha256),
        ("plan sha256", run.plan_sha256),
        ("ran on", run.hostname),
        ("API calls", f"{sum(s.attempts.values())} ({calls})"),
    ]
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return ['<h2 id="provenance">Provenance</h2>', f'<dl class="prov" id="hashes">{rows}</dl>']
