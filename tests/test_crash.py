"""The crash test: SIGKILL a 150-VPS ``apply`` at many moments, resume, count the wipes.

``set/reinstall`` wipes a disk and has no idempotency key; the journal writes an intent
durably before each POST so that a run killed at *any* moment can be resumed without
reinstalling anything twice. Each scenario here starts the real CLI in a subprocess against a
simulator served from a background thread, waits for a moment defined by the simulator's
counters, its fault scripts or the journal file, kills the process with SIGKILL, then resumes
(in a process again when the scenario kills the resume at its next moment, so one scenario
walks several moments in turn) and finally runs ``resume`` to the end in-process.

The simulator counts every reinstall it received and accepted per VPS, independently of the
product. After the resume, for every VPS of the fleet:

- ``reinstall_accepted == 1`` (wiped exactly once), or the journal reports it ``in_doubt`` and
  the simulator received at most one reinstall for it;
- no VPS ever received a second reinstall (the in-doubt policy is the default ``report``);
- the VPSes in doubt are a subset of the reinstalls in flight at a kill, and there are never
  more intents without an outcome in the journal than the concurrency.

"In flight at a kill" is read from the journal file right after the kill: a VPS whose latest
intent has no outcome, unless an attempt recorded after that intent shows the server answered
429/503 or the request never left (``throttled``/``not_sent``). Such a VPS is waiting out a
backoff: its resend would need a new intent, so nothing of it is in flight. A 401 does not end
a send: the session book replays it under the same intent after the refresh.

The moments are waited for on the simulator's loop with ``anyio.fail_after`` around polls of
counters, never with sleeps standing in for synchronisation.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.simulator import Simulator
from tests.cli_support import cli_argv, process_env, run_cli
from tests.conftest import ThreadSims
from tests.test_apply import env_for, fleet

FLEET_SIZE = 150
CONCURRENCY = 20
# Wave sizes for [1, "10%", "100%"] of 150: 1, 14 and 135 (more VPSes than the concurrency in
# waves 2 and 3, so that a kill can find many sends in flight).
WAVE_1 = 1
WAVES_1_2 = 15
# Kill moments by reinstalls received: early wave 3, the session revocation, mid and late
# wave 3 (in resumes).
EARLY_WAVE_3 = WAVES_1_2 + 15
REVOKE_AT = 50
MID_WAVE_3 = 110
LATE_WAVE_3 = 125
# The wave-3 VPSes the retry scenarios script faults for (by position in wave 3).
THROTTLED = 20
RETRIED = 100  # far enough after THROTTLED that it is not yet sent at that kill
ROLLOUT = f"""\
  waves: [1, "10%", "100%"]
  concurrency: {CONCURRENCY}
  rate: 500/s
  failure_budget: {{wave: "100%", run: "100%"}}
"""
# Installs take 300 s x time_scale: 0.3 s by default; 1.2 s where a scenario needs a window
# in which accepted VPSes are still installing (readiness polls running).
FAST_INSTALLS = 0.001
SLOW_INSTALLS = 0.004
POLL_S = 0.005
MOMENT_TIMEOUT_S = 60.0
RUN_TIMEOUT_S = 120.0


# -- the journal, read directly (a plain SQLite file) ------------------------------------------


def _query(journal: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Run a read-only query on the journal; an absent file or table reads as no rows."""
    if not journal.exists():
        return []
    con = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5.0)
    try:
        return list(con.execute(sql, params))
    except sqlite3.OperationalError:
        return []  # created but the schema not written yet
    finally:
        con.close()


async def journal_states(journal: Path) -> dict[str, str]:
    """kvm_id → state of the targets of the (only) run in ``journal``."""
    rows = await anyio.to_thread.run_sync(
        _query, journal, "SELECT kvm_id, state FROM targets ORDER BY wave, position"
    )
    return {str(k): str(s) for k, s in rows}


# Attempt outcomes after which the scheduler resends only under a new intent (retry.decide).
NOT_PROCESSED = ("throttled", "not_sent")


def _in_flight(journal: Path) -> tuple[set[str], set[str]]:
    """Return (intents without an outcome, those of them really in flight): see the module
    docstring."""
    unresolved = {
        str(k): float(sent_at)
        for k, sent_at in _query(
            journal, "SELECT kvm_id, sent_at FROM targets WHERE state = 'intent'"
        )
    }
    latest: dict[str, tuple[float, str]] = {}
    for kvm_id, at, outcome in _query(
        journal,
        "SELECT kvm_id, at, outcome FROM attempts WHERE endpoint = 'set/reinstall' ORDER BY id",
    ):
        latest[str(kvm_id)] = (float(at), str(outcome))
    waiting = {
        k
        for k, sent_at in unresolved.items()
        if k in latest and latest[k][0] >= sent_at and latest[k][1] in NOT_PROCESSED
    }
    return set(unresolved), set(unresolved) - waiting


async def journal_attempts(journal: Path, kvm_id: str) -> list[str]:
    """The outcomes of the recorded attempts of ``kvm_id``, oldest first."""
    rows = await anyio.to_thread.run_sync(
        _query, journal, "SELECT outcome FROM attempts WHERE kvm_id = ? ORDER BY id", kvm_id
    )
    return [str(r[0]) for r in rows]


# -- one scenario ------------------------------------------------------------------------------


@dataclass
class Crash:
    """What a scenario sees and records: the simulator, the fleet, the journal, and for each
    kill the reinstalls received, the intents without an outcome and those in flight."""

    sim: Simulator
    sims: ThreadSims
    tmp: Path
    ids: list[str]
    journal: Path
    unresolved_at_kills: list[set[str]] = field(default_factory=list)
    in_flight_at_kills: list[set[str]] = field(default_factory=list)
    received_at_kills: list[int] = field(default_factory=list)

    def received(self) -> int:
        """Reinstall requests that reached the simulator's handler, over the fleet."""
        counts = self.sim.counters.reinstall_received
        return sum(counts[k] for k in self.ids)

    def accepted(self) -> int:
        """Reinstalls the simulator accepted, over the fleet."""
        counts = self.sim.counters.reinstall_accepted
        return sum(counts[k] for k in self.ids)

    async def until(self, what: str, predicate: Callable[[], bool | Awaitable[bool]]) -> None:
        """Poll ``predicate`` (sync or async) until it holds; fail after the moment timeout."""
        try:
            with anyio.fail_after(MOMENT_TIMEOUT_S):
                while True:
                    outcome = predicate()
                    if not isinstance(outcome, bool):
                        outcome = await outcome
                    if outcome:
                        return
                    await anyio.sleep(POLL_S)
        except TimeoutError:
            raise AssertionError(f"never reached: {what}") from None

    def cli(self, *args: str) -> list[str]:
        return cli_argv(*args, "--journal", str(self.journal))

    def run(self, *args: str) -> tuple[int, str, str]:
        """Run a CLI command to completion, in-process."""
        done = run_cli([*args, "--journal", str(self.journal)], cwd=self.tmp, env=env_for(self.sim))
        return done.returncode, done.stdout, done.stderr

    def on_sim_loop(self, fn: Callable[[Crash], None]) -> None:
        """Call ``fn(self)`` on the simulator's loop (fault scripts are changed there)."""
        self.sims.portal.call(fn, self)

    def kill_at(self, args: list[str], moment: Callable[[Crash], Awaitable[None]]) -> None:
        """Start the CLI with ``args`` in a process, wait for ``moment``, SIGKILL it, record
        what was in flight."""
        self.sims.portal.call(self._kill_at, args, moment)

    async def _kill_at(self, args: list[str], moment: Callable[[Crash], Awaitable[None]]) -> None:
        log = self.tmp / f"kill-{len(self.unresolved_at_kills)}.log"
        ended: int | None = None
        with log.open("wb") as out:
            proc = await anyio.open_process(
                self.cli(*args),
                env=process_env(env_for(self.sim)),
                cwd=self.tmp,
                stdout=out,
                stderr=out,
            )
            try:
                async with anyio.create_task_group() as tg:

                    async def exited_early() -> None:
                        await proc.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(exited_early)
                    await moment(self)
                    tg.cancel_scope.cancel()
                assert proc.returncode is None, (
                    f"the run ended ({proc.returncode}) before the moment: {log.read_text()}"
                )
            finally:
                if proc.returncode is None:
                    proc.kill()
                with anyio.CancelScope(shield=True):
                    ended = await proc.wait()
                    await proc.aclose()
        assert ended == -signal.SIGKILL, log.read_text()  # killed, not finished
        unresolved, in_flight = await anyio.to_thread.run_sync(_in_flight, self.journal)
        self.unresolved_at_kills.append(unresolved)
        self.in_flight_at_kills.append(in_flight)
        self.received_at_kills.append(self.received())

    def walk(self, path: Path, kills: tuple[Kill, ...]) -> str | None:
        """Kill ``apply`` at the first moment and each recovering command at the next one;
        return the run's id, or None if it was never recorded."""
        run_id: str | None = None
        for kill in kills:
            if kill.prepare is not None:
                self.on_sim_loop(kill.prepare)
            if run_id is None:
                self.kill_at(["apply", str(path), "--yes", "--quiet"], kill.moment)
            else:
                self.kill_at(["resume", run_id, "--quiet"], kill.moment)
            self.on_sim_loop(lambda c: c.sim.clear_faults())  # not for the next command
            if kill.recorded:
                run_id = run_id or self.run_id(status="running")
            else:
                # Killed before the run was recorded: nothing was sent, and the recovery is a
                # new apply (there is nothing to resume).
                assert run_id is None
                assert not self.journal.exists()
                assert self.sim.counters.requests["set/reinstall"] == 0
        return run_id

    def run_id(self, *, status: str) -> str:
        """The id of the journal's one run, as ``edis-fleet runs`` lists it (first column of
        the last line), checking its status (a killed run never recorded an end)."""
        code, out, err = self.run("runs")
        assert code == 0, err
        lines = out.strip().splitlines()
        assert len(lines) == 2, out  # the header and the one run
        run_id, listed = lines[-1].split()[:2]
        assert listed == status, out
        return run_id

    def report(self, run_id: str) -> dict[str, str]:
        """kvm_id → state, from ``edis-fleet report RUN_ID --format json``."""
        code, out, err = self.run("report", run_id, "--format", "json")
        assert code == 0, err
        return {t["kvm_id"]: t["state"] for t in json.loads(out)["targets"]}


Moment = Callable[[Crash], Awaitable[None]]


@dataclass(frozen=True)
class Kill:
    """One kill moment. ``prepare`` runs before the command it kills starts (fault scripts),
    ``idle`` says the moment has no send in flight, ``in_flight`` (given the fleet's ids)
    what exactly is in flight at it, when the scenario knows; ``recorded`` whether the run
    exists in the journal at it (if not, the recovery is a new ``apply``)."""

    moment: Moment
    prepare: Callable[[Crash], None] | None = None
    idle: bool = False
    in_flight: Callable[[list[str]], set[str]] | None = None
    recorded: bool = True


@dataclass(frozen=True)
class Scenario:
    """Kill moments walked in turn: the first kills ``apply``, each further one the command
    that recovers (``resume`` of the run, or a new ``apply`` when the run was not recorded);
    then that command runs to the end."""

    name: str
    kills: tuple[Kill, ...]
    time_scale: float = FAST_INSTALLS


def _wave_3_vps(crash: Crash, n: int) -> str:
    """The ``n``-th VPS of wave 3 (0-based)."""
    return crash.ids[WAVES_1_2 + n]


async def auth_done_preflight_running(crash: Crash) -> None:
    """Before the first send: the account authenticated, the pre-flight image reads running,
    no run recorded yet."""
    sim = crash.sim
    await crash.until(
        "auth done, 30 image reads, nothing sent",
        lambda: sim.counters.auth_calls >= 1 and sim.counters.requests["get/images"] >= 30,
    )
    assert sim.counters.requests["set/reinstall"] == 0


def _hold_canary(crash: Crash) -> None:
    crash.sim.set_faults(script=["latency:1.5"], endpoint="set/reinstall", kvm_id=crash.ids[0])


async def canary_post_in_flight(crash: Crash) -> None:
    """The canary's intent is durable and its POST sits at the server, not processed yet."""
    faults = crash.sim.faults
    await crash.until(
        "the canary's POST arrived and is held",
        lambda: faults.pending("set/reinstall", crash.ids[0]) == 0,
    )
    assert crash.received() == 0


def _journal_shows(crash: Crash, kvm_ids: list[str], state: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        states = await journal_states(crash.journal)
        return all(states.get(k) == state for k in kvm_ids)

    return check


async def canary_accepted_polling(crash: Crash) -> None:
    """The canary is accepted (durably), installing, and its readiness polls run."""
    polls = crash.sim.counters.requests
    await crash.until("the canary accepted", lambda: crash.accepted() == WAVE_1)
    polls_then = polls["get/power"]
    await crash.until(
        "the canary's acceptance durable", _journal_shows(crash, crash.ids[:WAVE_1], "accepted")
    )
    await crash.until("a readiness poll", lambda: polls["get/power"] > polls_then)
    assert crash.received() == WAVE_1


async def half_of_wave_2_received(crash: Crash) -> None:
    """Mid wave 2: seven of its 14 reinstalls received."""
    await crash.until("8 reinstalls received", lambda: crash.received() >= WAVE_1 + 7)


async def wave_2_accepted_polling(crash: Crash) -> None:
    """All of wave 2 accepted (durably), installing, readiness polls running, wave 3 not
    started."""
    polls = crash.sim.counters.requests
    await crash.until("waves 1-2 accepted", lambda: crash.accepted() == WAVES_1_2)
    polls_then = polls["get/power"]
    await crash.until(
        "wave 2's acceptances durable",
        _journal_shows(crash, crash.ids[WAVE_1:WAVES_1_2], "accepted"),
    )
    await crash.until("a readiness poll", lambda: polls["get/power"] > polls_then)
    assert crash.received() == WAVES_1_2


async def early_wave_3(crash: Crash) -> None:
    """Early in wave 3: 30 reinstalls received."""
    await crash.until(
        f"{EARLY_WAVE_3} reinstalls received", lambda: crash.received() >= EARLY_WAVE_3
    )


async def late_wave_3(crash: Crash) -> None:
    """Late in wave 3: 125 reinstalls received."""
    await crash.until(f"{LATE_WAVE_3} reinstalls received", lambda: crash.received() >= LATE_WAVE_3)


def _throttle_one(crash: Crash) -> None:
    crash.sim.set_faults(
        script=["429:2"], endpoint="set/reinstall", kvm_id=_wave_3_vps(crash, THROTTLED)
    )


async def in_throttle_backoff(crash: Crash) -> None:
    """During a retry: one wave-3 reinstall was answered 429 (Retry-After: 2); the journal has
    recorded that attempt, so the client is waiting out its Retry-After."""
    target = _wave_3_vps(crash, THROTTLED)

    async def recorded() -> bool:
        return "throttled" in await journal_attempts(crash.journal, target)

    await crash.until("the 429 recorded", recorded)
    assert crash.sim.counters.reinstall_received[target] == 0


def _fail_then_hold(crash: Crash) -> None:
    crash.sim.set_faults(
        script=["503", "latency:2"], endpoint="set/reinstall", kvm_id=_wave_3_vps(crash, RETRIED)
    )


async def retry_post_in_flight(crash: Crash) -> None:
    """During a retry: a wave-3 reinstall was answered 503 and its retry sits at the server."""
    target = _wave_3_vps(crash, RETRIED)
    faults = crash.sim.faults
    await crash.until(
        "the retry arrived and is held", lambda: faults.pending("set/reinstall", target) == 0
    )
    assert crash.sim.counters.faults_by_endpoint["set/reinstall"]["http503"] == 1
    assert crash.sim.counters.reinstall_received[target] == 0


async def session_refresh_in_flight(crash: Crash) -> None:
    """During a session refresh: at 50 reinstalls received every signature is revoked; the
    next request is refused with 401 and the refresh's auth call is held at the server."""
    sim = crash.sim
    await crash.until(f"{REVOKE_AT} reinstalls received", lambda: crash.received() >= REVOKE_AT)
    revoked_before = sim.counters.bad_signature_reasons["revoked"]
    sim.set_faults(script=["latency:2"], endpoint="get/auth")
    assert sim.invalidate_sessions() > 0
    await crash.until(
        "a 401 and the refresh's auth call held",
        lambda: (
            sim.counters.bad_signature_reasons["revoked"] > revoked_before
            and sim.faults.pending("get/auth") == 0
        ),
    )


async def all_sent_tail_polling(crash: Crash) -> None:
    """Everything sent and accepted (durably); the last wave's readiness polls running."""

    async def all_accepted_some_installing() -> bool:
        states = await journal_states(crash.journal)
        return (
            len(states) == FLEET_SIZE
            and "intent" not in states.values()
            and "pending" not in states.values()
            and "accepted" in states.values()
        )

    await crash.until(f"all {FLEET_SIZE} received", lambda: crash.received() == FLEET_SIZE)
    await crash.until(
        "every acceptance durable, some still installing", all_accepted_some_installing
    )


async def mid_wave_3(crash: Crash) -> None:
    """Mid wave 3 (a resume): 110 reinstalls received."""
    await crash.until(f"{MID_WAVE_3} reinstalls received", lambda: crash.received() >= MID_WAVE_3)


SCENARIOS = [
    # Before the first send (a new apply recovers), the canary's POST held at the server, then
    # mid wave 2, then early wave 3.
    Scenario(
        "before-sending-canary-post-waves-2-and-3",
        (
            Kill(auth_done_preflight_running, idle=True, recorded=False),
            Kill(canary_post_in_flight, prepare=_hold_canary, in_flight=lambda ids: {ids[0]}),
            Kill(half_of_wave_2_received),
            Kill(early_wave_3),
        ),
    ),
    # Accepted VPSes installing, readiness polls running, nothing being sent: after the canary,
    # after wave 2, and at the tail of the run.
    Scenario(
        "readiness-polls",
        (
            Kill(canary_accepted_polling, idle=True),
            Kill(wave_2_accepted_polling, idle=True),
            Kill(all_sent_tail_polling, idle=True),
        ),
        time_scale=SLOW_INSTALLS,
    ),
    # Retries: waiting out a 429's Retry-After, then a retried POST held at the server.
    Scenario(
        "retries",
        (
            Kill(in_throttle_backoff, prepare=_throttle_one),
            Kill(retry_post_in_flight, prepare=_fail_then_hold),
        ),
    ),
    # A session refresh in flight, then resumes killed mid and late in wave 3.
    Scenario(
        "session-refresh-then-resumes-killed",
        (
            Kill(session_refresh_in_flight),
            Kill(mid_wave_3),
            Kill(late_wave_3),
        ),
    ),
]


@pytest.mark.subprocess
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_kill_then_resume_wipes_every_vps_at_most_once(
    make_thread_sim: ThreadSims, tmp_path: Path, scenario: Scenario
) -> None:
    """After a SIGKILL at each of the scenario's moments and a resume to the end, every VPS
    was accepted exactly once, except those reported in doubt, which were received at most
    once, had an intent without outcome at a kill, and never outnumber the reinstalls in
    flight."""
    with make_thread_sim(vps_count=FLEET_SIZE, time_scale=scenario.time_scale) as sim:
        path = fleet(sim, tmp_path, FLEET_SIZE)
        text = path.read_text()
        assert '  waves: [1, "100%"]\n' in text
        text = text.replace('  waves: [1, "100%"]\n', ROLLOUT)
        # fleet() adds a rate when the rollout has none; ROLLOUT has its own.
        text = text.replace("  rate: 200/s\n", "")
        path.write_text(text)
        crash = Crash(
            sim, make_thread_sim, tmp_path, sim.vps_ids[:FLEET_SIZE], tmp_path / "journal.sqlite"
        )

        run_id = crash.walk(path, scenario.kills)
        if run_id is None:
            code, out, err = crash.run("apply", str(path), "--yes", "--quiet")
            run_id = crash.run_id(status="done")
        else:
            assert crash.run_id(status="running") == run_id
            code, out, err = crash.run("resume", run_id, "--quiet")

        states = crash.report(run_id)
        doubt = {k for k, s in states.items() if s == "in_doubt"}
        in_flight = set().union(*crash.in_flight_at_kills)
        print(
            f"\n[{scenario.name}] received at kill(s) {crash.received_at_kills}, "
            f"intents without outcome {[len(u) for u in crash.unresolved_at_kills]}, "
            f"in flight {[len(u) for u in crash.in_flight_at_kills]}, "
            f"in doubt after resume {len(doubt)}, exit {code}"
        )

        assert code == (4 if doubt else 0), out + err
        assert set(states) == set(crash.ids)
        assert {s for k, s in states.items() if k not in doubt} == {"ready"}, states
        received = sim.counters.reinstall_received
        accepted = sim.counters.reinstall_accepted
        for kvm_id in crash.ids:
            assert received[kvm_id] <= 1, (kvm_id, received[kvm_id])  # never sent twice
            if kvm_id not in doubt:
                assert accepted[kvm_id] == 1, (kvm_id, accepted[kvm_id], states[kvm_id])
        for unresolved in crash.unresolved_at_kills:
            assert len(unresolved) <= CONCURRENCY, unresolved
        # In doubt only what was in flight at a kill.
        assert doubt <= in_flight, (
            f"in doubt but not in flight at any kill: {sorted(doubt - in_flight)}; their "
            "latest attempt was recorded as answered without being processed "
            f"(received {[received[k] for k in sorted(doubt - in_flight)]})"
        )
        for kill, unresolved, at_kill in zip(
            scenario.kills, crash.unresolved_at_kills, crash.in_flight_at_kills, strict=True
        ):
            if kill.idle:
                assert unresolved == set(), kill.moment.__name__
            if kill.in_flight is not None:
                expected = kill.in_flight(crash.ids)
                assert at_kill == expected, kill.moment.__name__
                assert expected <= doubt  # what was in flight is reported, never resent
        if all(kill.idle for kill in scenario.kills):
            assert not doubt
