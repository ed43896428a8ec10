"""The live view and the report say when the provider is the bottleneck.

``RunStats.of_limiter`` reads a real ``RateLimiter`` on a ``FakeClock``; the live view is
rendered by rich into a string; the text report is built from journal records.
"""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

from rich.console import Console

from orchestrator.cli.progress import Progress
from orchestrator.clock import FakeClock
from orchestrator.errors import ApiError
from orchestrator.journal.journal import Journal, RunStatus, TargetSpec
from orchestrator.model import Outcome
from orchestrator.report.formats import text_report
from orchestrator.run.limits import RateLimiter
from orchestrator.run.stats import RunStats


def answer(status: int, outcome: Outcome, retry_after: float | None = None) -> ApiError:
    error = ApiError("x", endpoint="get/images", status=status, retry_after=retry_after)
    error.outcome = outcome
    return error


def test_sporadic_errors_are_counted_but_the_provider_is_not_the_bottleneck() -> None:
    clock = FakeClock()
    limiter = RateLimiter(20.0, clock=clock)
    for i in range(200):
        limiter.report(answer(502, Outcome.IN_DOUBT) if i % 50 == 0 else None)
        clock.advance(0.05)
    snap = RunStats.of_limiter(limiter).snapshot()
    assert (snap.rate, snap.configured_rate) == (20.0, 20.0)
    assert (snap.errors_per_min, snap.throttles_per_min) == (4, 0)
    assert snap.cooling_s == snap.cooldown_s == 0.0
    assert not snap.provider_bound
    assert "the provider is the bottleneck" not in snap.provider_text()


def test_a_429_storm_shows_the_pause_the_rate_and_the_429s_per_minute() -> None:
    clock = FakeClock()
    limiter = RateLimiter(20.0, clock=clock)
    for _ in range(40):
        limiter.report(answer(429, Outcome.THROTTLED, retry_after=30.0))
    clock.advance(10.0)
    snap = RunStats.of_limiter(limiter).snapshot()
    assert snap.throttles_per_min == 40
    assert snap.cooling_s == 20.0
    assert snap.cooldown_s == 30.0
    assert snap.rate < 20.0
    assert snap.provider_bound
    text = snap.provider_text()
    assert "cooling down 20s" in text
    assert f"{snap.rate:.1f}/20 req/s" in text
    assert "the provider is the bottleneck" in text
    clock.advance(60.0)  # a minute later the per-minute counts have emptied
    assert RunStats.of_limiter(limiter).snapshot().throttles_per_min == 0


def test_the_live_view_has_a_provider_line() -> None:
    clock = FakeClock()
    limiter = RateLimiter(20.0, clock=clock)
    for _ in range(40):
        limiter.report(answer(503, Outcome.THROTTLED, retry_after=5.0))
    progress = Progress(
        10, {1: 10}, stream=io.StringIO(), mode="plain", stats=RunStats.of_limiter(limiter),
        clock=clock,
    )  # fmt: skip
    console = Console(file=io.StringIO(), width=200)
    console.print(progress.render())
    shown = console.file.getvalue()  # type: ignore[attr-defined]
    assert "provider:" in shown
    assert "cooling down 5s" in shown
    assert "the provider is the bottleneck" in shown


async def test_the_text_report_says_the_provider_was_the_bottleneck(tmp_path: Path) -> None:
    clock = FakeClock()
    limiter = RateLimiter(20.0, clock=clock)
    for _ in range(40):
        limiter.report(answer(429, Outcome.THROTTLED))
    j = await Journal.open(tmp_path / "journal.sqlite", clock=clock)
    try:
        run_id = await j.create_run(
            manifest_path="fleet.yaml", manifest_sha256="0" * 64, plan_sha256="1" * 64
        )
        await j.add_targets(run_id, [TargetSpec("kvm_1", 1, 0, "debian-12", "h1")])
        counters = {"throttles": limiter.throttles, **limiter.counters()}
        await j.save_progress(run_id, retries=0, counters=counters)
        await j.finish_run(run_id, RunStatus.DONE)
        run, targets, attempts = await j.run(run_id), await j.targets(run_id), []
    finally:
        await j.close()
    text = text_report(run, targets, attempts)
    assert "the provider was the bottleneck: 1 fleet-wide pauses (1 s)" in text
    assert "40 429s" in text
    calm = replace(run, counters={"throttles": 0, "fleet_pauses": 0, "lowest_rate_pct": 100})
    assert "bottleneck" not in text_report(calm, targets, attempts)
