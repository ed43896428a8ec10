"""The timeline picture of a run: one row per VPS (or per group of VPSes for large fleets),
as an inline SVG for the HTML report.

Each row shows, over the run's time, how many of its VPSes were queued, sent, installing
(accepted), and ready / failed / in doubt / skipped: stacked step areas drawn from the
journal's per-VPS phase times (for a single VPS the areas are simply its phases one after
the other). Marked on top: the first send of each wave, the soaks between waves (the run's
recorded ``rollout.soak_s`` before a wave's first send), throttled API calls and session
refreshes (from the journal's attempts), the last ready (recovered) and the RTO deadline.

Everything written into the SVG passes through ``html.escape``; nothing here reads files,
clocks or the environment.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from orchestrator.journal import AttemptRecord, RunRecord, TargetRecord
from orchestrator.model import Outcome, TargetState
from orchestrator.report.recovery import Recovery, end_of
from orchestrator.report.text import LABELS, duration

# A fleet larger than this is drawn one row per group of consecutive VPSes of a wave.
MAX_VPS_ROWS = 200
# Aim for about this many group rows.
GROUP_ROWS = 100
AUTH_ENDPOINT = "get/auth"
# Unix time -> x pixel of the plot.
XMap = Callable[[float], float]

# (layer, colour): drawn in this order, each over the previous, all anchored at the bottom.
COLOURS = {
    "queued": "#e5e7eb",
    "sent": "#93c5fd",
    "installing": "#fbbf24",
    "skipped": "#6b7280",
    "in_doubt": "#f97316",
    "failed": "#dc2626",
    # Pale: a VPS that is back is the quiet state; failures and doubt must catch the eye.
    "ready": "#86efac",
}
LEGEND = (
    ("queued", "queued"),
    ("sent", "sent"),
    ("installing", "accepted, installing"),
    ("ready", "ready"),
    ("failed", "failed"),
    ("in_doubt", "in doubt"),
    ("skipped", "skipped"),
)

_LABEL_W, _PLOT_W, _RIGHT_W = 190, 780, 150
_WIDTH = _LABEL_W + _PLOT_W + _RIGHT_W
_TOP = 66  # axis, the two API strips, wave labels
_BOTTOM = 34  # soak labels, the last-ready and RTO labels
_STRIP_H = 10


@dataclass(frozen=True)
class Phases:
    """When one VPS entered each phase (None: never), made monotonic for drawing."""

    sent: float | None
    accepted: float | None
    final: float | None
    state: TargetState

    @classmethod
    def of(cls, t: TargetRecord) -> Phases:
        """The phases of ``t``: a VPS that ended without a send or acceptance passes through
        those phases at its end; a resend never draws after the acceptance."""
        final = end_of(t)
        accepted = t.accepted_at if t.accepted_at is not None else final
        if accepted is not None and final is not None:
            accepted = min(accepted, final)
        sent = t.sent_at if t.sent_at is not None else accepted
        if sent is not None and accepted is not None:
            sent = min(sent, accepted)
        return cls(sent, accepted, final, t.state)


@dataclass(frozen=True)
class Row:
    """One row: a VPS or a group, its label, tooltip and members."""

    label: str
    title: str
    wave: int
    members: tuple[TargetRecord, ...]


@dataclass(frozen=True)
class Timeline:
    """What the picture shows; build it with ``build_timeline``."""

    start: float
    end: float
    rows: tuple[Row, ...]
    grouped: bool
    waves: tuple[tuple[int, float], ...]
    soaks: tuple[tuple[float, float], ...]
    throttles: tuple[float, ...]
    refreshes: tuple[float, ...]
    recovered_at: float | None
    rto_at: float | None


def _rows(targets: Sequence[TargetRecord]) -> tuple[tuple[Row, ...], bool]:
    ordered = sorted(targets, key=lambda t: (t.wave, t.position, t.kvm_id))
    if len(ordered) <= MAX_VPS_ROWS:
        return tuple(
            Row(f"{t.kvm_id}  {t.hostname}", f"{t.kvm_id} {t.hostname} (wave {t.wave}, "
                f"{t.image}): {t.state.value}", t.wave, (t,))
            for t in ordered
        ), False  # fmt: skip
    size = math.ceil(len(ordered) / GROUP_ROWS)
    by_wave: dict[int, list[TargetRecord]] = {}
    for t in ordered:
        by_wave.setdefault(t.wave, []).append(t)
    rows: list[Row] = []
    for wave, members in by_wave.items():
        for i in range(0, len(members), size):
            chunk = tuple(members[i : i + size])
            # Labels stay short (kvm ids are long): the wave and the VPSes' places in it; the
            # tooltip names every member.
            first, last = i + 1, i + len(chunk)
            span = f"#{first}" if len(chunk) == 1 else f"#{first}–{last}"
            title = (f"wave {wave}, VPSes {span} of {len(members)}: "
                     + " ".join(f"{t.kvm_id} ({t.hostname})" for t in chunk))  # fmt: skip
            rows.append(Row(f"wave {wave}  {span}", title, wave, chunk))
    return tuple(rows), True


def build_timeline(
    run: RunRecord,
    targets: Sequence[TargetRecord],
    attempts: Sequence[AttemptRecord],
    rec: Recovery,
) -> Timeline:
    """Fold a run's records into the picture's content. Raises nothing."""
    rows, grouped = _rows(targets)
    start = run.started_at
    times = [run.ended_at or run.updated_at]
    for t in targets:
        times += [x for x in (t.sent_at, t.accepted_at, t.ready_at, t.ended_at) if x]
    end = max(times)
    rto_at = None
    if rec.rto_s is not None and rec.first_send_at is not None:
        rto_at = rec.first_send_at + rec.rto_s
        end = max(end, rto_at)
    rollout = run.options.get("rollout")
    soak = rollout.get("soak_s") if isinstance(rollout, dict) else None
    soaks: list[tuple[float, float]] = []
    waves = [(w.wave, w.first_send_at) for w in rec.waves if w.first_send_at is not None]
    if isinstance(soak, int | float) and soak > 0:
        for before, after in zip(rec.waves, rec.waves[1:], strict=False):
            if after.first_send_at is not None and before.last_end_at is not None:
                soaks.append((max(before.last_end_at, after.first_send_at - soak),
                              after.first_send_at))  # fmt: skip
    throttles = tuple(a.at for a in attempts if a.outcome is Outcome.THROTTLED)
    refreshes = tuple(
        a.at for a in attempts
        if a.endpoint == AUTH_ENDPOINT and a.outcome is Outcome.ACCEPTED and a.at >= start
    )  # fmt: skip
    # A little room after the last event, so a state reached at the very end still shows.
    end = max(end, start + 1.0)
    end += (end - start) * 0.03
    return Timeline(
        start=start,
        end=end,
        rows=rows,
        grouped=grouped,
        waves=tuple(waves),
        soaks=tuple(soaks),
        throttles=throttles,
        refreshes=refreshes,
        recovered_at=rec.last_ready_at,
        rto_at=rto_at,
    )


# --------------------------------------------------------------------------- SVG


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _tick_step(span: float) -> float:
    for step in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200):
        if span / step <= 10:
            return float(step)
    return 86400.0


def timeline_svg(tl: Timeline) -> str:
    """Return the picture as an ``<svg>`` element (text, escaped), ``_WIDTH`` pixels wide."""
    row_h = 14 if tl.grouped else 16
    rows_bottom = _TOP + row_h * len(tl.rows)
    height = rows_bottom + _BOTTOM
    span = tl.end - tl.start

    def x(at: float) -> float:
        return round(_LABEL_W + (min(max(at, tl.start), tl.end) - tl.start) / span * _PLOT_W, 1)

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{_WIDTH}" '
        f'height="{height}" viewBox="0 0 {_WIDTH} {height}" role="img" '
        f'aria-label="timeline of {len(tl.rows)} rows">'
    ]
    step = _tick_step(span)
    k = 0
    while k * step <= span + 1e-9:
        tx = x(tl.start + k * step)
        out.append(f'<line class="grid" x1="{tx}" y1="16" x2="{tx}" y2="{rows_bottom}"/>')
        out.append(f'<text class="tick" x="{tx}" y="12" text-anchor="middle">'
                   f"+{_e(duration(k * step))}</text>")  # fmt: skip
        k += 1
    for lo, hi in tl.soaks:
        mid = round((x(lo) + x(hi)) / 2, 1)
        out.append(
            f'<rect class="soak" x="{x(lo)}" y="{_TOP - 20}" width="{max(2.0, x(hi) - x(lo))}" '
            f'height="{rows_bottom - _TOP + 20}"><title>soak {_e(duration(hi - lo))}</title></rect>'
        )
        out.append(f'<text class="mark soak" x="{mid}" y="{rows_bottom + 13}" '
                   f'text-anchor="middle">soak {_e(duration(hi - lo))}</text>')  # fmt: skip
    out += _strip("throttled", tl.throttles, 20, x)
    out += _strip("session refresh", tl.refreshes, 20 + _STRIP_H + 4, x)
    for i, row in enumerate(tl.rows):
        out += _row(row, _TOP + i * row_h, row_h, x)
    last_label = -1e9
    lifted = False
    for wave, at in tl.waves:
        # Labels of waves that start close together are staggered, not overprinted.
        lifted = not lifted if x(at) - last_label < 56 else False
        last_label = x(at)
        y = _TOP - (15 if lifted else 5)
        out.append(
            f'<line class="wave" x1="{x(at)}" y1="{y - 9}" x2="{x(at)}" y2="{rows_bottom}"/>'
        )
        out.append(f'<text class="mark" x="{x(at) + 3}" y="{y}">wave {wave}</text>')
    marks = sorted(
        (when, cls, label)
        for cls, when, label in (("recovered", tl.recovered_at, "last ready"),
                                 ("rto", tl.rto_at, "RTO"))
        if when is not None
    )  # fmt: skip
    for n, (when, cls, label) in enumerate(marks):
        # The left mark's label goes left of its line, the right one's right: never overprinted.
        anchor = "end" if n == 0 and len(marks) == 2 else "start"
        out.append(
            f'<line class="{cls}" x1="{x(when)}" y1="{_TOP - 2}" x2="{x(when)}" '
            f'y2="{rows_bottom + 18}"/>'
        )
        tx = x(when) - 3 if anchor == "end" else x(when) + 3
        out.append(f'<text class="mark {cls}" x="{tx}" y="{rows_bottom + 28}" '
                   f'text-anchor="{anchor}">{label}</text>')  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)


def _strip(name: str, times: Sequence[float], y: float, x: XMap) -> list[str]:
    """A thin strip of ticks (one per pixel column) with its name and count."""
    columns = sorted({x(at) for at in times})
    out = [
        f'<text class="strip" x="{_LABEL_W - 6}" y="{y + _STRIP_H - 1}" text-anchor="end">'
        f"{_e(name)} ({len(times)})</text>",
        f'<rect class="stripbg" x="{_LABEL_W}" y="{y}" width="{_PLOT_W}" height="{_STRIP_H}"/>',
    ]
    cls = "throttle" if name.startswith("throttled") else "refresh"
    if columns:
        d = "".join(f"M{c} {y}v{_STRIP_H}" for c in columns)
        out.append(f'<path class="{cls}" d="{d}"/>')
    return out


def _area(times: Sequence[float], n: int, box: tuple[float, float, float], x: XMap) -> str:
    """The path of a cumulative step area (``box``: the row's top, height and right edge):
    at each time one more of the row's ``n`` members has reached the layer."""
    top, h, right = box
    bottom = top + h
    ordered = sorted(times)
    d = [f"M{x(ordered[0])} {bottom:g}"]
    for i, at in enumerate(ordered, start=1):
        d.append(f"H{x(at)}V{round(bottom - h * i / n, 1):g}")
    d.append(f"H{right}V{bottom:g}Z")
    return "".join(d)


def _row(row: Row, top: float, row_h: int, x: XMap) -> list[str]:
    h = row_h - 3
    n = len(row.members)
    phases = [Phases.of(t) for t in row.members]
    right = _LABEL_W + _PLOT_W
    start = min(t.queued_at for t in row.members)
    out = [f'<g class="row" data-wave="{row.wave}"><title>{_e(row.title)}</title>',
           f'<text class="label" x="{_LABEL_W - 6}" y="{top + h - 1}" text-anchor="end">'
           f"{_e(row.label)}</text>",
           f'<rect fill="{COLOURS["queued"]}" x="{x(start)}" y="{top}" '
           f'width="{round(right - x(start), 1)}" height="{h}"/>']  # fmt: skip
    finals = {
        "skipped": (TargetState.READY, TargetState.FAILED, TargetState.IN_DOUBT,
                    TargetState.SKIPPED),
        "in_doubt": (TargetState.READY, TargetState.FAILED, TargetState.IN_DOUBT),
        "failed": (TargetState.READY, TargetState.FAILED),
        "ready": (TargetState.READY,),
    }  # fmt: skip
    layers: list[tuple[str, list[float]]] = [
        ("sent", [p.sent for p in phases if p.sent is not None]),
        ("installing", [p.accepted for p in phases if p.accepted is not None]),
    ]
    for layer, states in finals.items():
        layers.append(
            (layer, [p.final for p in phases if p.final is not None and p.state in states])
        )
    for layer, times in layers:
        if times:
            d = _area(times, n, (top, h, right), x)
            out.append(f'<path fill="{COLOURS[layer]}" d="{d}"/>')
    # A failure or doubt at the very end of the axis would draw no area: a tick marks it.
    for p in phases:
        if p.final is not None and p.state in (TargetState.FAILED, TargetState.IN_DOUBT):
            colour = COLOURS["failed" if p.state is TargetState.FAILED else "in_doubt"]
            out.append(f'<rect fill="{colour}" x="{max(_LABEL_W, x(p.final) - 3)}" y="{top}" '
                       f'width="3" height="{h}"/>')  # fmt: skip
    out.append(f'<text class="state" x="{right + 6}" y="{top + h - 1}">{_e(_tally(row))}</text>')
    out.append("</g>")
    return out


def _tally(row: Row) -> str:
    """The row's right-hand text: a VPS's final state and time, a group's counts."""
    if len(row.members) == 1:
        t = row.members[0]
        if t.state is TargetState.READY and t.ready_at is not None and t.sent_at is not None:
            return f"ready {duration(t.ready_at - t.sent_at)}"
        return "sent, no outcome" if t.state is TargetState.INTENT else LABELS[t.state]
    counts = {s: sum(1 for t in row.members if t.state is s) for s in TargetState}
    parts = [f"{counts[TargetState.READY]} ready"]
    # Short words: the column is 150 px and a row may have all four.
    words = (
        ("fail", (TargetState.FAILED,)),
        ("doubt", (TargetState.IN_DOUBT, TargetState.INTENT)),
        ("skip", (TargetState.SKIPPED,)),
        ("open", (TargetState.ACCEPTED, TargetState.PENDING)),
    )
    for word, states in words:
        count = sum(counts[state] for state in states)
        if count:
            parts.append(f"{count} {word}")
    return " ".join(parts)
