"""Live progress: plain lines and their per-second summary, JSON lines, quiet, the rich view.

Time comes from a ``FakeClock`` (its wall clock starts at 2027-01-15 08:00:00 UTC), so every
line and every rate-limit decision is deterministic.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from rich.console import Console

from orchestrator.cli.progress import Mode, Progress, RunStats, choose_mode
from orchestrator.clock import FakeClock
from orchestrator.model import TargetEvent, TargetState
from orchestrator.run.eta import EtaModel, plan_of

S = TargetState
HOSTS = {f"kvm_{i}": f"vps-{i:03d}" for i in range(100)}
STATS = RunStats(rate=lambda: 48.9, throttles=lambda: 3, retries=lambda: 7, refreshes=lambda: 2)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def make(
    mode: Mode,
    clock: FakeClock,
    out: io.StringIO,
    *,
    total: int = 6,
    waves: Mapping[int, int] | None = None,
    **kwargs: Any,
) -> Progress:
    return Progress(
        total, waves or {1: 2, 2: total - 2}, stream=out, mode=mode, clock=clock,
        hostnames=HOSTS, stats=STATS, **kwargs,
    )  # fmt: skip


def ev(
    clock: FakeClock, i: int, state: TargetState, wave: int = 1, reason: str = ""
) -> TargetEvent:
    return TargetEvent(f"kvm_{i}", state, wave, clock.time(), reason)


# --------------------------------------------------------------------------- plain


def test_plain_prints_one_line_per_change_and_no_pending() -> None:
    clock, out = FakeClock(), io.StringIO()
    with make("plain", clock, out) as p:
        p.emit(ev(clock, 1, S.PENDING))
        p.emit(ev(clock, 1, S.INTENT))
        clock.advance(3.2)
        p.emit(ev(clock, 1, S.ACCEPTED))
        p.emit(ev(clock, 2, S.FAILED, reason="Unknown image «x»"))
        clock.advance(61)
        p.emit(ev(clock, 1, S.READY, reason="port 22 open"))
        p.emit(ev(clock, 7, S.IN_DOUBT, wave=2, reason="read timeout"))
    assert out.getvalue().splitlines() == [
        "08:00:00 kvm_1 vps-001 sent (wave 1)",
        "08:00:03 kvm_1 vps-001 accepted (wave 1)",
        "08:00:03 kvm_2 vps-002 failed (wave 1): Unknown image «x»",
        "08:01:04 kvm_1 vps-001 ready (wave 1): port 22 open",
        "08:01:04 kvm_7 vps-007 in doubt (wave 2): read timeout",
    ]
    assert p.error is None


def test_plain_folds_busy_seconds_into_one_summary_line() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = make("plain", clock, out, total=100, waves={1: 100}, max_lines_per_second=3)
    p.start()
    # Second 0: ten changes; three are printed, the rest wait for the summary.
    for i in range(10):
        p.emit(ev(clock, i, S.INTENT))
        clock.advance(0.05)
    assert len(out.getvalue().splitlines()) == 3
    clock.advance(0.6)  # into second 1
    p.tick()
    # Second 1 follows a busy second: summaries only, however few changes come.
    for i in range(10):
        p.emit(ev(clock, i, S.ACCEPTED))
    p.emit(ev(clock, 10, S.FAILED, reason="rejected"))
    clock.advance(1)
    p.tick()
    # Second 2 is quiet, and second 3 is not right after a busy one: lines again.
    clock.advance(1)
    p.tick()
    p.emit(ev(clock, 0, S.READY))
    p.stop()
    assert out.getvalue().splitlines() == [
        "08:00:00 kvm_0 vps-000 sent (wave 1)",
        "08:00:00 kvm_1 vps-001 sent (wave 1)",
        "08:00:00 kvm_2 vps-002 sent (wave 1)",
        "08:00:01 wave 1: 10 sent of 100 — 48.9 req/s, 3 throttled",
        "08:00:02 wave 1: 10 accepted, 1 failed of 100 — 48.9 req/s, 3 throttled",
        "08:00:03 kvm_0 vps-000 ready (wave 1)",
    ]


def test_plain_summary_of_the_last_second_is_printed_on_stop() -> None:
    clock, out = FakeClock(), io.StringIO()
    with make("plain", clock, out, max_lines_per_second=1) as p:
        p.emit(ev(clock, 1, S.INTENT))
        p.emit(ev(clock, 2, S.INTENT))
    assert out.getvalue().splitlines()[-1] == (
        "08:00:00 wave 1: 2 sent of 2 — 48.9 req/s, 3 throttled"
    )


async def test_ticker_moves_the_plain_summary_on_quiet_seconds() -> None:
    clock, out = FakeClock(), io.StringIO()
    p = make("plain", clock, out, max_lines_per_second=0)
    p.start()
    p.emit(ev(clock, 1, S.INTENT))
    assert out.getvalue() == ""
    async with anyio.create_task_group() as tg:
        tg.start_soon(p.ticker, 1.0)
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    assert clock.slept
    assert out.getvalue().splitlines() == ["08:00:01 wave 1: 1 sent of 2 — 48.9 req/s, 3 throttled"]


# --------------------------------------------------------------------------- json, quiet


def test_json_mode_writes_one_parseable_object_per_change() -> None:
    clock, out = FakeClock(), io.StringIO()
    with make("json", clock, out, redact=lambda s: s.replace("hunter2", "***")) as p:
        p.run_id = "20270115-0800-abcdef"  # set by the run once the journal has it
        p.emit(ev(clock, 1, S.PENDING))
        p.emit(ev(clock, 1, S.INTENT))
        clock.advance(0.25)
        p.emit(ev(clock, 1, S.FAILED, reason="bad <&> hunter2"))
        p.emit(ev(clock, 3, S.IN_DOUBT, wave=0, reason="cut"))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {
        "ts": "2027-01-15T08:00:00.000Z", "level": "info", "event": "target_state",
        "run_id": "20270115-0800-abcdef",
        "kvm_id": "kvm_1", "hostname": "vps-001", "state": "intent", "wave": 1, "reason": "",
    }  # fmt: skip
    assert (lines[1]["level"], lines[1]["reason"]) == ("error", "bad <&> ***")
    assert lines[1]["ts"] == "2027-01-15T08:00:00.250Z"
    assert (lines[2]["level"], lines[2]["state"]) == ("warning", "in_doubt")
    assert len(lines) == 3


def test_quiet_prints_nothing_but_still_counts() -> None:
    clock, out = FakeClock(), io.StringIO()
    with make("quiet", clock, out, max_lines_per_second=1) as p:
        for i in range(5):
            p.emit(ev(clock, i, S.INTENT))
            p.emit(ev(clock, i, S.READY))
        clock.advance(2)
        p.tick()
    assert out.getvalue() == ""
    assert p.done == 5
    assert p.counts()[S.READY] == 5


# --------------------------------------------------------------------------- live


def test_live_renders_counts_and_stats_into_a_terminal_console() -> None:
    clock, buffer = FakeClock(), io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    p = make("live", clock, io.StringIO(), console=console)
    with p:
        for i in range(6):
            p.emit(ev(clock, i, S.PENDING, wave=1 if i < 2 else 2))
        clock.advance(10)
        p.emit(ev(clock, 0, S.READY))
        p.emit(ev(clock, 1, S.FAILED, reason="x"))
        p.emit(ev(clock, 2, S.INTENT, wave=2))
        p.emit(ev(clock, 3, S.IN_DOUBT, wave=2))
    assert p.error is None
    screen = ANSI.sub("", buffer.getvalue())
    final = screen[screen.rindex("edis-fleet") :]
    assert "3/6 done" in final
    assert "ETA -" in final  # no model of the run: no ETA, never one from completions
    for label in ("pending", "sent", "accepted", "ready", "failed", "in doubt", "skipped"):
        assert label in final
    rows = {line.split()[0]: line.split()[1:] for line in final.splitlines() if line[:6].strip()}
    #            pending sent accepted ready failed in-doubt skipped of
    assert rows["1"] == ["0", "0", "0", "1", "1", "0", "0", "2"]
    assert rows["2"] == ["2", "1", "0", "0", "0", "1", "0", "4"]
    assert "48.9 req/s · 429s 3 · retries 7 · session refreshes 2" in final


def test_live_start_stop_are_idempotent_and_stats_may_come_later() -> None:
    clock, buffer = FakeClock(), io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    p = Progress(2, {1: 2}, stream=io.StringIO(), mode="live", clock=clock, console=console)
    p.start()
    p.start()
    p.stats = STATS
    p.tick()
    p.stop()
    p.stop()
    assert p.error is None
    assert "48.9 req/s" in ANSI.sub("", buffer.getvalue())


# --------------------------------------------------------------------------- robustness


def test_progress_never_raises_into_the_scheduler() -> None:
    def broken() -> int:
        raise RuntimeError("stats gone")

    clock, out = FakeClock(), io.StringIO()
    p = make("plain", clock, out, max_lines_per_second=0)
    p.stats = RunStats(rate=broken, throttles=broken)
    p.emit(ev(clock, 1, S.INTENT))
    p.stop()
    assert out.getvalue().endswith("1 sent of 2 — 0.0 req/s, 0 throttled\n")
    out.close()
    p.emit(ev(clock, 1, S.READY))  # the stream is closed: no exception
    p.stop()
    assert isinstance(p.error, ValueError)
    assert p.done == 1  # counting goes on


def test_eta_comes_from_the_plans_model_not_from_completions() -> None:
    clock = FakeClock()
    model = EtaModel(
        plan_of([(1, [(f"kvm_{i}", "linux", True) for i in range(4)])], rate=1.0,
                concurrency=10, soak_s=0.0),
        lambda _: 100.0,
    )  # fmt: skip
    p = make("quiet", clock, io.StringIO(), total=4, waves={1: 4}, eta=model)
    assert p.eta() is None  # not started
    p.start()
    assert p.eta() == pytest.approx(104.0)  # 4 sends at 1/s, then the plan's 100 s install
    for i in range(4):
        p.emit(ev(clock, i, S.INTENT))
        p.emit(ev(clock, i, S.ACCEPTED))
    clock.advance(30)
    p.emit(ev(clock, 0, S.READY))  # 30 s, not 100: the others are due now
    p.emit(ev(clock, 1, S.SKIPPED))
    assert p.eta() == pytest.approx(3.0)  # overdue: a tenth of the 30 s seen
    p.emit(ev(clock, 2, S.READY))
    p.emit(ev(clock, 3, S.READY))
    assert p.eta() == 0.0


def test_a_vps_keeps_its_wave_and_counts_move_with_its_state() -> None:
    clock = FakeClock()
    p = make("quiet", clock, io.StringIO())
    p.emit(ev(clock, 5, S.PENDING, wave=2))
    p.emit(ev(clock, 5, S.INTENT, wave=2))
    p.emit(ev(clock, 5, S.IN_DOUBT, wave=0))  # a cancelled send is reported with wave 0
    assert p.counts(2)[S.IN_DOUBT] == 1
    assert p.counts(2)[S.INTENT] == 0
    assert p.counts(2)[S.PENDING] == 3
    p.emit(ev(clock, 5, S.INTENT, wave=2))  # resent after the install window
    assert (p.done, p.counts(2)[S.IN_DOUBT]) == (0, 0)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown progress mode"):
        Progress(1, {1: 1}, stream=io.StringIO(), mode="fancy")  # type: ignore[arg-type]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "quiet", "log_format", "env", "expected"),
    [
        (Tty(), False, "text", {"TERM": "xterm"}, "live"),
        (Tty(), False, "text", {"TERM": "dumb"}, "plain"),
        (Tty(), False, "text", {"CI": "true"}, "plain"),
        (io.StringIO(), False, "text", {}, "plain"),
        (Tty(), True, "text", {}, "quiet"),
        (Tty(), True, "json", {}, "json"),
    ],
)
def test_choose_mode(
    stream: io.StringIO, quiet: bool, log_format: str, env: dict[str, str], expected: str
) -> None:
    assert choose_mode(stream, quiet=quiet, log_format=log_format, env=env) == expected
