"""Many runners, one truth: two ``apply`` processes on one fleet, and a run killed on one
"machine" and resumed on another.

Each ``apply`` here is a real process (the point is two processes racing for the same VPSes)
against the simulator in the test's event loop, which counts every reinstall it receives per
VPS, independently of the product. A "machine" is a working directory, a host name in the
locks (``EDIS_FLEET_HOSTNAME``) and a state directory (``XDG_STATE_HOME``, where the host-wide
locks live): two runners on two machines share nothing but the PostgreSQL journal.

- Two ``apply`` at once, separate working directories, one PostgreSQL journal, two "hosts":
  one runs, the other is refused with exit code 6 (busy), and no VPS is reinstalled twice.
- The same with two SQLite journals on one host: the host-wide locks refuse the second.

  The overlap is made, not hoped for: the second ``apply`` starts once the simulator has
  accepted the first one's reinstall of every VPS (its locks and intents are recorded before
  each send), and those installs do not end until the test moves the simulator's clock, after
  the second has been refused — whatever the machine's load.
- ``apply`` killed with SIGKILL on runner-a; ``resume`` on runner-b is refused (busy) while
  runner-a's lease runs, then — once the lease has lapsed — takes the run over: every VPS is
  reinstalled exactly once, or reported in doubt having received at most one reinstall.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import psycopg
import pytest

from orchestrator.cli import exitcodes
from orchestrator.simulator import Simulator
from tests.cli_support import process_env
from tests.conftest import SimFactory
from tests.test_apply import env_for, fleet

pytestmark = pytest.mark.subprocess

FLEET = 20
# Unscaled installs (300 s of simulator time): the first run holds its VPSes until the test
# moves the simulator's clock by INSTALL_S, which ends them all at once.
TIME_SCALE = 1.0
INSTALL_S = 300.0
RUN_TIMEOUT_S = 120.0


@dataclass
class Machine:
    """One runner: its working directory (with a copy of the fleet), host name and state
    directory."""

    cwd: Path
    host: str
    state: Path

    def env(self, sim: Simulator, journal: str | None) -> dict[str, str]:
        env = {
            **env_for(sim),
            "EDIS_FLEET_HOSTNAME": self.host,
            "XDG_STATE_HOME": str(self.state),
        }
        if journal is not None:
            env["EDIS_FLEET_JOURNAL"] = journal
        return process_env(env)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "orchestrator", *args]


def machines(sim: Simulator, tmp: Path, *, shared_state: bool) -> tuple[Machine, Machine]:
    """Two working directories with the same fleet; one state directory when
    ``shared_state`` (one host), else one each (two hosts)."""
    a = tmp / "runner-a"
    a.mkdir()
    # In doubt counts against the failure budget: let a resumed run finish and report it.
    rollout = '  concurrency: 20\n  failure_budget: {wave: "100%", run: "100%"}\n'
    path = fleet(sim, a, FLEET, rollout=rollout)
    # One wave: the whole fleet is sent at once, so the winner holds it for one install.
    path.write_text(path.read_text().replace('waves: [1, "100%"]', 'waves: ["100%"]'))
    # The holder's readiness deadline (its own clock, from acceptance) must outlast the
    # other process's start on a loaded machine; RUN_TIMEOUT_S still bounds every run.
    path.write_text(path.read_text().replace("deadline: 1m", "deadline: 10m"))
    b = tmp / "runner-b"
    shutil.copytree(a, b)
    state = tmp / "state"
    return (
        Machine(a, "runner-a", state if shared_state else tmp / "state-a"),
        Machine(
            b,
            "runner-a" if shared_state else "runner-b",
            state if shared_state else tmp / "state-b",
        ),
    )


async def run(machine: Machine, sim: Simulator, journal: str | None, *args: str) -> tuple[int, str]:
    with anyio.fail_after(RUN_TIMEOUT_S):
        done = await anyio.run_process(
            machine.argv(*args), env=machine.env(sim, journal), cwd=machine.cwd, check=False
        )
    return done.returncode, done.stdout.decode() + done.stderr.decode()


async def holder_and_refused(
    sim: Simulator, a: Machine, b: Machine, journal: str | None
) -> tuple[tuple[int, str], tuple[int, str]]:
    """Run ``apply`` on ``a`` until the simulator has accepted its reinstall of every VPS, run
    ``apply`` on ``b`` to its end while those installs last, then end the installs (the
    simulator's clock moves by ``INSTALL_S``) and let ``a`` finish. Return both (code, output),
    ``a``'s first."""
    log = a.cwd.parent / f"{a.cwd.name}.log"
    with log.open("wb") as out:
        proc = await anyio.open_process(
            a.argv("apply", "fleet.yaml", "--yes", "--quiet"),
            env=a.env(sim, journal), cwd=a.cwd, stdout=out, stderr=out,
        )  # fmt: skip
        try:
            with anyio.fail_after(RUN_TIMEOUT_S):
                while sum(sim.counters.reinstall_accepted.values()) < FLEET:
                    assert proc.returncode is None, log.read_text()
                    await anyio.sleep(0.01)
            refused = await run(b, sim, journal, "apply", "fleet.yaml", "--yes", "--quiet")
            # Only now may the holder's installs end (and the holder finish).
            assert proc.returncode is None, log.read_text()
            sim.advance_clock(INSTALL_S)
            with anyio.fail_after(RUN_TIMEOUT_S):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            await proc.aclose()
    return (code, log.read_text()), refused


def counts(sim: Simulator) -> tuple[dict[str, int], dict[str, int]]:
    ids = sim.vps_ids[:FLEET]
    c = sim.counters
    return {k: c.reinstall_received[k] for k in ids}, {k: c.reinstall_accepted[k] for k in ids}


async def test_two_runners_one_postgresql_journal(
    make_sim: SimFactory, tmp_path: Path, pg_url: str
) -> None:
    async with make_sim(vps_count=FLEET, time_scale=TIME_SCALE) as sim:
        a, b = machines(sim, tmp_path, shared_state=False)
        (ok, ok_out), (busy, busy_out) = await holder_and_refused(sim, a, b, pg_url)
        received, accepted = counts(sim)
    assert (ok, busy) == (exitcodes.OK, exitcodes.BUSY), ok_out + busy_out
    assert "busy: run " in busy_out
    assert "on runner-a" in busy_out  # the holder's host is named
    assert set(received.values()) == set(accepted.values()) == {1}


async def test_two_sqlite_journals_on_one_host(make_sim: SimFactory, tmp_path: Path) -> None:
    async with make_sim(vps_count=FLEET, time_scale=TIME_SCALE) as sim:
        a, b = machines(sim, tmp_path, shared_state=True)
        (ok, ok_out), (busy, busy_out) = await holder_and_refused(sim, a, b, None)
        received, accepted = counts(sim)
    assert (ok, busy) == (exitcodes.OK, exitcodes.BUSY), ok_out + busy_out
    assert "on this host, journal .edis-fleet/journal.sqlite" in busy_out
    assert set(received.values()) == set(accepted.values()) == {1}
    # Each run has its own journal: one holds the run, the other only a refused (busy) one.
    assert (a.cwd / ".edis-fleet" / "journal.sqlite").is_file()
    assert (b.cwd / ".edis-fleet" / "journal.sqlite").is_file()


def _pg(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


async def test_killed_on_one_runner_resumed_on_another(
    make_sim: SimFactory, tmp_path: Path, pg_url: str
) -> None:
    # Shorter installs: this run need not outlast another process's start.
    async with make_sim(vps_count=FLEET, time_scale=0.002) as sim:
        a, b = machines(sim, tmp_path, shared_state=False)
        # runner-a: apply, killed once several reinstalls reached the server.
        log = tmp_path / "a.log"
        with log.open("wb") as out:
            proc = await anyio.open_process(
                a.argv("apply", "fleet.yaml", "--yes", "--quiet"),
                env=a.env(sim, pg_url), cwd=a.cwd, stdout=out, stderr=out,
            )  # fmt: skip
            with anyio.fail_after(RUN_TIMEOUT_S):
                while sum(sim.counters.reinstall_received.values()) < 5:
                    assert proc.returncode is None, log.read_text()
                    await anyio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
            await proc.aclose()
        [(run_id,)] = await anyio.to_thread.run_sync(_pg, pg_url, "SELECT id FROM runs")

        # runner-b sees the run, but runner-a's lease has not lapsed: busy, nothing sent.
        received_then = dict(sim.counters.reinstall_received)
        code, out = await run(b, sim, pg_url, "resume", run_id, "--fleet", "fleet.yaml", "--quiet")
        assert code == exitcodes.BUSY, out
        assert "on runner-a" in out
        assert dict(sim.counters.reinstall_received) == received_then

        # Two minutes later (the lease is 120 s): played by ageing the heartbeats.
        await anyio.to_thread.run_sync(
            _pg, pg_url, "UPDATE locks SET heartbeat_at = heartbeat_at - 600"
        )
        code, out = await run(b, sim, pg_url, "resume", run_id, "--fleet", "fleet.yaml", "--quiet")
        assert code in (exitcodes.OK, exitcodes.IN_DOUBT), out
        code, out = await run(b, sim, pg_url, "report", run_id, "--format", "json")
        assert code == 0, out
        states = {
            t["kvm_id"]: t["state"] for t in json.loads(out[: out.rindex("}") + 1])["targets"]
        }
        received, accepted = counts(sim)
    takeovers = await anyio.to_thread.run_sync(
        _pg, pg_url, "SELECT DISTINCT previous_hostname FROM lock_takeovers"
    )
    assert takeovers == [("runner-a",)]
    for kvm_id in sim.vps_ids[:FLEET]:
        if states[kvm_id] == "in_doubt":
            assert received[kvm_id] <= 1, kvm_id
        else:
            assert (states[kvm_id], accepted[kvm_id], received[kvm_id]) == ("ready", 1, 1), kvm_id
    runs = _pg(pg_url, "SELECT hostname, status FROM runs")
    assert runs[0][0] == "runner-b"
