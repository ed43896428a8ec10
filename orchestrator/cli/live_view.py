"""How the live view of a run looks on a terminal (``rich``): pre-flight's bar, then the run's
bar and ETA, the per-wave counts, the live numbers, the provider line and why the run waits.

Pure rendering: ``cli/progress.py`` decides what to show and when; nothing here reads a
clock or the run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich import box
from rich.console import Group, RenderableType
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from orchestrator.cli.waiting import Reason, preflight_line
from orchestrator.model import STATE_ORDER, TargetState
from orchestrator.report import LABELS, duration
from orchestrator.run.stats import StatsSnapshot

# Column order of the per-wave counts (live view) and of the summary line (plain mode).
COLUMNS: tuple[TargetState, ...] = STATE_ORDER


def preflight_view(done: int, total: int) -> RenderableType:
    """Pre-flight's bar: ``done`` of ``total`` VPSes checked."""
    grid = Table.grid(padding=(0, 1))
    grid.add_row(
        Text("edis-fleet", style="bold"),
        ProgressBar(total=max(total, 1), completed=done, width=20),
        Text(preflight_line(done, total)),
    )
    return grid


def run_view(
    *,
    finals: int,
    total: int,
    eta: float | None,
    waves: Sequence[tuple[int, Mapping[TargetState, int], int]],
    snap: StatsSnapshot,
    reasons: Sequence[Reason],
) -> RenderableType:
    """The run's view: ``waves`` holds ``(wave, counts per state, size)`` in order; a reason
    the run waits is cut at the terminal's width, never wrapped."""
    head = Table.grid(padding=(0, 1))
    head.add_row(
        Text("edis-fleet", style="bold"),
        ProgressBar(total=max(total, 1), completed=finals, width=40),
        Text(f"{finals}/{total} done"),
        Text("ETA " + ("-" if eta is None else duration(eta))),
    )
    table = Table(box=box.SIMPLE, pad_edge=False)
    table.add_column("wave", justify="right")
    for state in COLUMNS:
        table.add_column(LABELS[state], justify="right")
    table.add_column("of", justify="right")
    for wave, counts, size in waves:
        table.add_row(str(wave), *(str(counts[s]) for s in COLUMNS), str(size))
    stats = Text(
        f"{snap.rate:.1f} req/s · 429s {snap.throttles} · retries {snap.retries} · "
        f"session refreshes {snap.refreshes}"
    )
    parts: list[RenderableType] = [head, table, stats]
    if snap.configured_rate > 0:
        style = "yellow" if snap.provider_bound else ""
        parts.append(Text("provider: " + snap.provider_text(), style=style))
    parts.extend(
        Text("waiting: " + r.text, style="cyan", no_wrap=True, overflow="ellipsis") for r in reasons
    )
    return Group(*parts)
