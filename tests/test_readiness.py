"""readiness.py: scripted unit tests on a FakeClock, then real waits against the simulator."""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import anyio
import pytest

from orchestrator.clock import FakeClock, SystemClock
from orchestrator.edis.client import EdisClient, VpsCredentials
from orchestrator.edis.session import SessionBook
from orchestrator.errors import (
    AuthenticationError,
    InDoubtError,
    SessionUnavailableError,
    ThrottledError,
)
from orchestrator.fleet import DEFAULT_MIN_INSTALL_S, ReadinessMode, default_ready_deadline
from orchestrator.model import Clock
from orchestrator.run.readiness import (
    ReadyResult,
    is_powered_on,
    primary_ipv4,
    tcp_connect,
    wait_ready,
)
from orchestrator.secrets.values import Secret
from orchestrator.simulator import Simulator
from orchestrator.simulator.vps import InstallOutcome
from tests.conftest import SimFactory

ON, OFF, BUSY = "server powered on", "server powered off", "server is being reinstalled"
# No jitter in the scripted tests, so every sleep is exact.
EXACT: dict[str, Any] = {"jitter": 0.0, "poll_interval": 10.0, "deadline_seconds": 1200.0}


class Script:
    """A scripted probe: returns (or raises) its answers in order, repeating the last one,
    and records the clock time of every call."""

    def __init__(self, clock: FakeClock, answers: Sequence[object]) -> None:
        self.clock = clock
        self.answers = list(answers)
        self.times: list[float] = []

    def _next(self) -> object:
        self.times.append(self.clock.monotonic())
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    async def power(self) -> str:
        answer = self._next()
        assert isinstance(answer, str)
        return answer

    async def connect(self, host: str, port: int) -> bool:
        assert (host, port) == ("192.0.2.7", 22)
        answer = self._next()
        assert isinstance(answer, bool)
        return answer


def throttled() -> ThrottledError:
    return ThrottledError("slow down", endpoint="get/power", kvm_id="kvm_1_2", status=429)


# -- api mode ---------------------------------------------------------------------------------


async def test_none_mode_is_ready_at_once() -> None:
    clock = FakeClock()
    result = await wait_ready("none", clock=clock)
    assert result == ReadyResult(True, "readiness not checked", 0.0, 0)
    assert clock.slept == []


async def test_api_does_not_poll_before_the_minimum_install_time() -> None:
    clock = FakeClock()
    script = Script(clock, [ON])  # "powered on" right after acceptance proves nothing
    result = await wait_ready("api", clock=clock, power=script.power, **EXACT)
    assert result == ReadyResult(True, "powered on", DEFAULT_MIN_INSTALL_S, 1)
    assert script.times == [DEFAULT_MIN_INSTALL_S]


@pytest.mark.parametrize(
    ("answers", "seconds", "polls", "errors"),
    [
        ([BUSY, BUSY, BUSY, ON], 90.0, 4, 0),
        ([BUSY, throttled(), InDoubtError("x", endpoint="get/power"), "Running"], 90.0, 4, 2),
        ([throttled(), ON], 70.0, 2, 1),
    ],
)
async def test_api_polls_until_powered_on_and_tolerates_errors(
    answers: list[object], seconds: float, polls: int, errors: int
) -> None:
    clock = FakeClock()
    script = Script(clock, answers)
    result = await wait_ready("api", clock=clock, power=script.power, **EXACT)
    assert result == ReadyResult(True, "powered on", seconds, polls, errors)
    assert script.times == [60.0 + 10.0 * i for i in range(polls)]


@pytest.mark.parametrize(
    "error",
    [
        AuthenticationError("bad password", endpoint="get/auth"),
        SessionUnavailableError("no usable session for kvm_1_2", endpoint="session"),
    ],
)
async def test_api_gives_up_on_authentication_and_missing_sessions(error: Exception) -> None:
    clock = FakeClock()
    script = Script(clock, [BUSY, error, ON])
    result = await wait_ready("api", clock=clock, power=script.power, **EXACT)
    assert not result.ready
    assert result.reason.startswith("gave up: ")
    assert str(error) in result.reason
    assert (result.polls, result.seconds) == (2, 70.0)


@pytest.mark.parametrize(
    ("answers", "reason"),
    [
        (
            [BUSY],
            "deadline of 1200 s passed; last power state: 'server is being reinstalled'",
        ),
        (
            [BUSY, OFF],
            "install failed: power reports 'server powered off' after the install window "
            "(deadline of 1200 s)",
        ),
        (
            [throttled()],
            "deadline of 1200 s passed; no power state was read; 115 power queries failed, "
            "the last with: get/power for kvm_1_2 (HTTP 429): slow down",
        ),
    ],
)
async def test_api_ends_not_ready_at_the_deadline(answers: list[object], reason: str) -> None:
    clock = FakeClock()
    script = Script(clock, answers)
    result = await wait_ready("api", clock=clock, power=script.power, **EXACT)
    assert not result.ready
    assert result.reason == reason
    assert result.seconds == 1200.0
    # Polls at 60, 70, ..., 1190 and a last one right at the deadline.
    assert script.times[-2:] == [1190.0, 1200.0]
    assert result.polls == len(script.times) == 115


async def test_api_counts_from_accepted_at() -> None:
    clock = FakeClock()
    clock.advance(1000.0)
    script = Script(clock, [BUSY])
    result = await wait_ready(
        "api", clock=clock, power=script.power, accepted_at=100.0, min_install_seconds=30, **EXACT
    )
    assert not result.ready
    assert result.seconds == 1200.0  # deadline at 100 + 1200 = 1300 on the clock
    assert script.times[0] == 1000.0  # the minimum (130) was long past: poll at once


async def test_other_exceptions_of_the_power_query_propagate() -> None:
    clock = FakeClock()
    script = Script(clock, [RuntimeError("bug")])
    with pytest.raises(RuntimeError, match="bug"):
        await wait_ready("api", clock=clock, power=script.power, **EXACT)


async def test_jitter_spreads_the_polls_and_is_seeded() -> None:
    async def sleeps(seed: int) -> list[float]:
        clock = FakeClock()
        script = Script(clock, [BUSY] * 6 + [ON])
        options = {**EXACT, "jitter": 0.1}
        await wait_ready("api", clock=clock, power=script.power, rng=random.Random(seed), **options)
        return clock.slept

    first = await sleeps(7)
    assert first[0] == 60.0
    assert all(9.0 <= s <= 11.0 for s in first[1:])
    assert len(set(first[1:])) > 1
    assert first == await sleeps(7)
    assert first != await sleeps(8)


# -- tcp mode ---------------------------------------------------------------------------------


async def _tcp(clock: FakeClock, answers: list[object]) -> tuple[ReadyResult, Script]:
    script = Script(clock, answers)
    result = await wait_ready("tcp", clock=clock, host="192.0.2.7", connect=script.connect, **EXACT)
    return result, script


async def test_tcp_waits_for_the_port_to_go_down_and_come_back() -> None:
    clock = FakeClock()
    result, script = await _tcp(clock, [True, True, False, False, True])
    assert result == ReadyResult(True, "port 22 answered (down after 20 s)", 40.0, 5)
    assert script.times == [0.0, 10.0, 20.0, 30.0, 40.0]  # ready before the minimum: it went down


async def test_tcp_without_a_down_phase_waits_for_the_minimum_time() -> None:
    clock = FakeClock()
    result, script = await _tcp(clock, [True])
    assert result == ReadyResult(True, "port 22 answered (never seen down)", 60.0, 7)
    assert script.times[-1] == 60.0


@pytest.mark.parametrize(
    ("answers", "detail"),
    [
        ([False], "192.0.2.7:22 went down after 0 s and never answered again"),
        ([True, False], "192.0.2.7:22 went down after 10 s and never answered again"),
    ],
)
async def test_tcp_ends_not_ready_at_the_deadline(answers: list[object], detail: str) -> None:
    clock = FakeClock()
    result, script = await _tcp(clock, answers)
    assert not result.ready
    assert result.reason == f"deadline of 1200 s passed; {detail}"
    assert result.seconds == 1200.0
    assert script.times[-1] == 1200.0


# -- arguments and helpers ---------------------------------------------------------------------


async def _noop_power() -> str:
    return ON


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "telnet"}, "readiness mode must be one of"),
        ({"mode": "ssh"}, "readiness mode 'ssh' is waited for by"),
        ({"mode": "api"}, "needs a power query"),
        ({"mode": "tcp"}, "needs the VPS's host"),
        ({"mode": "api", "power": _noop_power, "min_install_seconds": 2000}, "min_install"),
        ({"mode": "api", "power": _noop_power, "deadline_seconds": -1}, "deadline_seconds"),
        ({"mode": "api", "power": _noop_power, "poll_interval": 0}, "poll_interval"),
        ({"mode": "api", "power": _noop_power, "jitter": 1.5}, "jitter"),
        ({"mode": "tcp", "host": "h", "port": 0}, "port"),
    ],
)
async def test_bad_arguments_raise_value_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        await wait_ready(clock=FakeClock(), **kwargs)


def test_default_deadlines_and_power_words() -> None:
    assert default_ready_deadline("cloudinit_debian-bookworm") == 1200.0
    assert default_ready_deadline("windows-server-2022") == 2400.0
    assert default_ready_deadline("custom-Windows-11") == 2400.0
    assert is_powered_on("Server Powered On")
    assert is_powered_on("running")
    assert not is_powered_on(BUSY)
    assert not is_powered_on(OFF)


def test_primary_ipv4_reads_details() -> None:
    details = {"ip": {"ipv4": ["127.0.2.3/255.255.255.0"], "ipv4_gw": "127.0.2.254"}}
    assert primary_ipv4(details) == "127.0.2.3"
    assert primary_ipv4({"ip": {"ipv4": "203.0.113.9"}}) == "203.0.113.9"
    odds: list[dict[str, Any]] = [{}, {"ip": None}, {"ip": {"ipv4": []}}, {"ip": {"ipv4": [7]}}]
    for odd in odds:
        assert primary_ipv4(odd) is None


async def test_tcp_connect_never_raises() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert await tcp_connect("127.0.0.1", port) is True
    assert await tcp_connect("127.0.0.1", port) is False  # refused now
    assert await tcp_connect("no-such-host.invalid", 22, connect_timeout=2.0) is False
    # Not routable: refused, unreachable or timed out, depending on the network.
    assert await tcp_connect("192.0.2.1", 22, connect_timeout=0.05) is False


# -- against the simulator --------------------------------------------------------------------

LINUX = "cloudinit_ubuntu-lts-24-04"
# time_scale=0.001 (conftest): a Linux install takes 0.3 s of real time. A wait that ends
# ready ends as soon as the install does, so its deadline is only a bound for a loaded machine.
FAST: dict[str, Any] = {
    "min_install_seconds": 0.05,
    "poll_interval": 0.02,
    "deadline_seconds": 60.0,
}
# Installs that never come back wait out the deadline on a FakeClock: the polls are real
# (power and TCP answers of the simulator), the time between them is not.
SHORT: dict[str, Any] = {
    "min_install_seconds": 0.05,
    "poll_interval": 0.02,
    "deadline_seconds": 1.0,
}

Waiter = Callable[..., Awaitable[ReadyResult]]


@pytest.fixture
async def listening_sim(make_sim: SimFactory) -> AsyncIterator[Simulator]:
    async with make_sim(tcp_listeners=True) as sim:
        yield sim


@pytest.fixture
async def reinstall(listening_sim: Simulator) -> AsyncIterator[Waiter]:
    """Return ``go(mode, index, **options)``: reinstall VPS ``index`` through the real client
    and session book, then ``wait_ready`` in ``mode`` on a SystemClock."""
    sim = listening_sim
    clock = SystemClock()
    client = EdisClient(
        session_url=sim.session_url,
        email=sim.email,
        password=Secret(sim.password),
        allowed_hosts=["127.0.0.0/8"],
    )
    async with client:
        book = SessionBook(client, clock=clock)

        async def go(
            mode: ReadinessMode, index: int = 0, wait_clock: Clock | None = None, **options: Any
        ) -> ReadyResult:
            kvm_id = sim.vps_ids[index]
            host = primary_ipv4(await book.call(kvm_id, client.details))
            assert host == sim.vps(kvm_id).ip

            async def send(cred: VpsCredentials) -> None:
                await client.reinstall(cred, image=LINUX, password=Secret("N3w-root-pw"))

            await book.call(kvm_id, send)
            # The session book keeps the real clock: signatures expire in real time.
            waits = wait_clock or clock
            return await wait_ready(
                mode,
                clock=waits,
                accepted_at=waits.monotonic(),
                power=lambda: book.call(kvm_id, client.power),
                host=host,
                port=sim.ssh_port,
                rng=random.Random(kvm_id),
                **options,
            )

        yield go


@pytest.mark.parametrize("mode", ["api", "tcp"])
async def test_a_real_install_becomes_ready(
    listening_sim: Simulator, reinstall: Waiter, mode: ReadinessMode
) -> None:
    result = await reinstall(mode, **FAST)
    assert result.ready, result
    assert result.reason == (
        "powered on"
        if mode == "api"
        else f"port {listening_sim.ssh_port} answered (down after 0 s)"
    )
    assert result.seconds > 0.2  # the install itself takes 0.3 s
    assert listening_sim.vps(listening_sim.vps_ids[0]).state == "running"
    assert listening_sim.vps(listening_sim.vps_ids[0]).image == LINUX


class PacedClock(FakeClock):
    """A FakeClock whose every sleep also lets ``pace`` seconds of real time pass: the
    simulator's install (real time) ends after a few polls, however loaded the machine,
    while the wait's own arithmetic stays on the fake clock."""

    def __init__(self, pace: float) -> None:
        super().__init__()
        self.pace = pace

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(self.pace)
        await super().sleep(seconds)


async def test_a_failed_install_is_reported_failed_at_the_deadline(
    listening_sim: Simulator, reinstall: Waiter
) -> None:
    """``api`` mode: a VPS still powered off when the deadline passes failed its install.
    30 polls at least 0.05 s apart in real time: the 0.3 s install has long ended."""
    listening_sim.set_install_outcome(listening_sim.vps_ids[1], "fail")
    options = {"min_install_seconds": 0.05, "poll_interval": 1.0, "deadline_seconds": 30.0}
    result = await reinstall("api", 1, wait_clock=PacedClock(0.05), **options)
    assert not result.ready
    assert result.reason.startswith(
        "install failed: power reports 'server powered off' after the install"
    ), result.reason
    assert result.seconds == 30.0


@pytest.mark.parametrize(
    ("outcome", "mode", "reason"),
    [
        ("fail", "tcp", "deadline of 1 s passed; 127.0.2.2:"),
        ("hang", "api", "deadline of 1 s passed; last power state: 'server is being reinstalled'"),
        ("hang", "tcp", "deadline of 1 s passed; 127.0.2.2:"),
    ],
)
async def test_failed_and_hanging_installs_end_at_the_deadline(
    listening_sim: Simulator,
    reinstall: Waiter,
    outcome: InstallOutcome,
    mode: ReadinessMode,
    reason: str,
) -> None:
    listening_sim.set_install_outcome(listening_sim.vps_ids[1], outcome)
    clock = FakeClock()
    result = await reinstall(mode, 1, wait_clock=clock, **SHORT)
    assert not result.ready
    assert result.reason.startswith(reason), result.reason
    # On the fake clock the wait ends exactly at the deadline (no poll is started after it).
    assert result.seconds == 1.0
    if mode == "tcp":
        assert result.reason.endswith("went down after 0 s and never answered again")
