"""Soak: does edis-fleet keep its promises when everything goes wrong? (a script, not a test)

Every check drives the real CLI (``python -m orchestrator ...``) in subprocesses against the
bundled simulator, which runs in a process of its own and is driven and inspected over its
``/_sim/...`` control API (faults, migrations, session revocation, install outcomes, and per
VPS the reinstall requests it received and accepted — counted independently of the tool).

``chaos``      2,000 VPSes (``--short``: 300) under the ``chaos`` profile: 500/502/504,
               dropped connections, lost responses, latency, random failing and hanging
               installs, signatures capped at 90 s. Two of its kinds are replaced (``liveness``
               measures the profile as it is): its random 429/503s (9% of requests) by scripted
               storms that put the limiter's rate cuts and fleet-wide pauses under real
               overload — 429s with ``Retry-After``, a 429 burst without,
               503s, a mix — 10 s into the run and then every 65 s (25 s); its random session
               revocations (1% of requests, about one a second: pre-flight refuses the run) by
               one every 20 s (sessions expiring). On top: two VPSes migrated to another api
               host mid-run, two installs that fail and one that hangs
               (``/_sim/install_outcome``). The run: ``apply --yes --quiet --report-json``,
               readiness ``api``; an apply refused by pre-flight with nothing sent is run
               again, at most twice (a finding). Promises: every VPS ends with at most one
               accepted reinstall, and every VPS not ready is reported failed or in doubt with
               a reason (an install that failed or hung is never reported ready); the VPSes in
               doubt are exactly those whose reinstall met a fault that leaves it in doubt
               (lost response, dropped connection, 500/502/504): none is resent blindly; the
               session book makes at most one auth call per session that ended (+1, + one per
               auth request a fault spoiled), not one per worker; no traceback in any output
               (the CLI's, the simulator's).
``liveness``   Two probes with the profile's random faults left in. Their lines are findings
               (WARN or INFO; ``--strict`` makes a WARN fail) except where a promise is at
               stake. Throttles: the literal ``chaos`` profile for 60 s (``--short``: 10 s) over
               300 VPSes (100): the request rate achieved vs the 100/s configured and the
               longest silence, then Ctrl-C (SIGINT) — in pre-flight, as it turns out.
               Revocations: the profile without its 429/503s, so with its random session
               revocations, over 2,000 VPSes (300): whether pre-flight gets through (two
               tries), then Ctrl-C once the run sends (with the revocations switched off if
               pre-flight never got through). A SIGINT after the run was recorded in the
               journal must drain: exit 130, no traceback, nothing wiped twice (a promise,
               PASS/FAIL); before that, in pre-flight, a traceback is a finding.
``kills``      A 500-VPS run (``--short``: 150) SIGKILLed 20 times (4) at seeded random
               moments — after a random delay (start-up, validation, pre-flight, sending) or
               after a random number of further reinstalls reached the simulator (sends in
               flight: ``set/reinstall`` answers after 2-20 ms) — each kill followed by
               ``resume`` (or ``apply`` again when the run was not recorded yet), then a
               ``resume`` to the end. Promises: no VPS received a second reinstall or was wiped
               twice; every VPS has a final state (nothing lost) and is ready after exactly one
               accepted reinstall or reported in doubt; only VPSes with an intent and no
               outcome at a kill are in doubt; no traceback.
``bad-input``  Every malformed manifest of ``tests/test_manifest_bad.py`` (``--short``: 10 of
               them) and 120 (30) seeded random mutations of ``fleets/example.yaml`` (line
               deletions, duplications, swaps and re-indents, values swapped for other YAML
               types, truncation, random bytes): ``validate`` then ``apply --yes`` against a
               running simulator (``--session-url``). Promises: no traceback, no secret in any
               output; ``validate`` exits 0 or 2; a manifest ``validate`` refuses makes
               ``apply`` exit 2 with zero requests at the simulator; a mutation that is still
               valid reinstalls only VPSes its selection names, each at most once.

Each promise prints one line, ``PASS``/``FAIL``/``WARN``/``INFO``, the check, what was checked
and the evidence. The exit status is 1 when a promise is broken (any ``FAIL``; with
``--strict`` also any ``WARN``), else 0.

    .venv/bin/python tests/soak/soak.py [--short] [--only chaos,liveness,kills,bad-input]
        [--seed N] [--keep] [--strict]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Run as a script (``python tests/soak/soak.py``): put the repository root on the path for
# the shared helpers (tests/bench/common.py) and the malformed manifests of the tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from orchestrator.manifest.loader import check_manifest
from orchestrator.manifest.selection import Selection, select
from orchestrator.simulator.profiles import PROFILES
from tests.bench.common import REPO, BenchError, Sim, generated_ids, sim_http, simulator
from tests.manifest_support import ACCOUNT_MARKER, ENV, ROOT_MARKER, write_fleet
from tests.test_manifest_bad import CASES

CHECKS = ("chaos", "liveness", "kills", "bad-input")
TRACEBACK = "Traceback (most recent call last)"
SECRETS = (ROOT_MARKER, ACCOUNT_MARKER, "hunter2-Plaintext")
# Outcomes after which the tool resends only under a new intent (retry.decide).
NOT_PROCESSED = ("throttled", "not_sent")
# Faults on set/reinstall after which the tool cannot know whether the server acted.
IN_DOUBT_FAULTS = ("lost_response", "drop", "http500", "http502", "http504")
THROTTLE_FAULTS = ("throttle", "throttle_retry_after", "throttle_burst", "http503")
# How long an interrupted run may take to drain before it is killed.
STOP_GRACE_S = 90.0


@dataclass(frozen=True)
class Size:
    """How big each check is."""

    chaos: int
    chaos_bound_s: float
    chaos_deadline: str  # the readiness deadline: a hanging install holds its wave this long
    liveness: int
    liveness_window_s: float
    storm_spacing_s: float
    kills_fleet: int
    kills: int
    bad_cases: int | None  # None: every case of tests/test_manifest_bad.py
    fuzz: int


FULL = Size(
    chaos=2000,
    chaos_bound_s=420.0,
    chaos_deadline="45s",
    liveness=300,
    liveness_window_s=60.0,
    storm_spacing_s=65.0,
    kills_fleet=500,
    kills=20,
    bad_cases=None,
    fuzz=120,
)
SHORT = Size(
    chaos=300,
    chaos_bound_s=180.0,
    chaos_deadline="20s",
    liveness=100,
    liveness_window_s=10.0,
    storm_spacing_s=25.0,
    kills_fleet=150,
    kills=4,
    bad_cases=10,
    fuzz=30,
)


@dataclass(frozen=True)
class Verdict:
    """One summary line: ``status`` is PASS or FAIL for a promise, WARN or INFO for a finding."""

    status: str
    check: str
    what: str
    detail: str

    def line(self) -> str:
        """Return the printed line."""
        return f"{self.status:<4}  {self.check}: {self.what}: {self.detail}"


def promise(check: str, what: str, ok: bool, detail: str) -> Verdict:
    """A promise of the tool: PASS or FAIL."""
    return Verdict("PASS" if ok else "FAIL", check, what, detail)


def finding(check: str, what: str, bad: bool, detail: str) -> Verdict:
    """A finding that breaks no promise the tool makes: WARN or INFO."""
    return Verdict("WARN" if bad else "INFO", check, what, detail)


# ---------------------------------------------------------------------------- the CLI


@dataclass(frozen=True)
class Done:
    """A finished CLI command: exit code, output, and how long it took."""

    code: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        """Both outputs."""
        return self.out + self.err


@dataclass
class Cli:
    """Runs ``python -m orchestrator`` in ``cwd`` with a clean environment plus ``env``."""

    cwd: Path
    env: Mapping[str, str]
    outputs: list[str] = field(default_factory=list)  # everything any command printed

    def argv(self, *args: str) -> list[str]:
        """The command line."""
        return [sys.executable, "-m", "orchestrator", *args]

    def environ(self) -> dict[str, str]:
        """PATH, the repository on PYTHONPATH, and ``env``."""
        return {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), **self.env}

    def run(self, *args: str, timeout: float = 120.0) -> Done:
        """Run to completion (SIGINT, then SIGKILL, after ``timeout`` seconds)."""
        started = time.monotonic()
        with self.start(*args) as proc:
            try:
                out, err = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                out, err = stop(proc)
        done = Done(proc.returncode, out, err, time.monotonic() - started)
        self.outputs.append(done.text)
        return done

    @contextlib.contextmanager
    def start(self, *args: str, log: Path | None = None) -> Iterator[subprocess.Popen[str]]:
        """Start a command (output to ``log`` when given, else to pipes); it is killed if the
        block is left while it still runs."""
        sink: IO[str] | None = None
        if log is not None:
            sink = log.open("w", encoding="utf-8")
        proc = subprocess.Popen(
            self.argv(*args),
            cwd=self.cwd,
            env=self.environ(),
            stdin=subprocess.DEVNULL,
            stdout=sink or subprocess.PIPE,
            stderr=sink or subprocess.PIPE,
            text=True,
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if sink is not None and log is not None:
                sink.close()
                self.outputs.append(log.read_text(encoding="utf-8", errors="replace"))


def stop(proc: subprocess.Popen[str], grace: float = STOP_GRACE_S) -> tuple[str, str]:
    """Interrupt ``proc`` (SIGINT: the tool drains), SIGKILL it after ``grace`` seconds;
    return what it printed (empty when its output goes to a file)."""
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out or "", err or ""


def tracebacks(texts: Sequence[str]) -> int:
    """How many Python tracebacks the texts hold."""
    return sum(t.count(TRACEBACK) for t in texts)


def fleet_manifest(
    path: Path, ids: Sequence[str], *, readiness: str, rollout: Sequence[str]
) -> Path:
    """Write a manifest of ``ids`` (a per-VPS template, credentials from the environment)."""
    lines = [
        "version: 1",
        "account:",
        "  email: {env: EDIS_EMAIL}",
        "  password: {env: EDIS_PASSWORD}",
        "defaults:",
        "  image: cloudinit_debian-bookworm",
        "  root_password: {env: EDIS_ROOT_PASSWORD}",
        "  cloud_init: |",
        "    #cloud-config",
        "    hostname: {{ hostname }}",
        "    write_files: [{path: /etc/edis-fleet-id, content: '{{ id }}'}]",
        f"  readiness: {readiness}",
        "rollout:",
        *(f"  {line}" for line in rollout),
        "vps:",
        *(f"  - {{id: {k}, hostname: vps-{i:05d}}}" for i, k in enumerate(ids, start=1)),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def sim_env(password: str) -> dict[str, str]:
    """The CLI's credentials for a simulator started with ``password``."""
    return {
        "EDIS_EMAIL": "operator@example.com",
        "EDIS_PASSWORD": password,
        "EDIS_ROOT_PASSWORD": ROOT_MARKER,
    }


def account_args(sim: Sim) -> list[str]:
    """Point a manifest at the simulator."""
    return ["--session-url", sim.url, "--allow-api-host", "127.0.0.0/8"]


def per_vps(state: Mapping[str, Any], name: str) -> dict[str, int]:
    """kvm_id → ``reinstall_received`` / ``reinstall_accepted`` from ``/_sim/state``."""
    counts: dict[str, int] = state["counters"][name]
    return counts


def histogram(values: Iterator[int] | Sequence[int]) -> str:
    """``"1×1960, 0×40"``: how many VPSes had each count, most common first."""
    counts = Counter(values)
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def reason_class(reason: str) -> str:
    """A short class of a report reason, for the summary."""
    text = reason.lower()
    for needle, label in (
        ("install failed", "install failed"),
        ("deadline", "not ready by the deadline"),
        ("signature", "session refused after the refresh"),
        ("session", "session refused after the refresh"),
        ("no answer after the request was sent", "no answer (connection closed)"),
        ("bad gateway", "502"),
        ("gateway timeout", "504"),
        ("unexpected error", "500"),
        ("throttl", "throttled, retries spent"),
        ("too many", "throttled, retries spent"),
        ("retry budget", "retries spent"),
    ):
        if needle in text:
            return label
    return reason[:60] or "(no reason)"


def report_targets(path: Path) -> dict[str, dict[str, Any]] | None:
    """kvm_id → target of a ``--report-json`` file (None when it is missing or unreadable)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return {t["kvm_id"]: t for t in doc["targets"]}


# ---------------------------------------------------------------------------- chaos


def chaos_rules(without: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The ``chaos`` profile's rules as ``/_sim/faults`` bodies, without the fault kinds
    ``without``."""
    bodies: dict[str, dict[str, Any]] = {}
    for endpoint, rules in PROFILES["chaos"].rules.items():
        bodies[endpoint] = {
            "endpoint": endpoint,
            "rates": {k: p for k, p in rules.rates.items() if k not in without},
            "latency": list(rules.latency),
            "latency_rate": rules.latency_rate,
        }
    return bodies


# The driver scripts these throttle storms on the next requests (any endpoint), the first
# 10 s into the run and then every ``Size.storm_spacing_s``: 429s with Retry-After, a 429
# burst without, 503s, and a mix. The limiter (run/adaptive.py) cuts the fleet's rate on a
# 429 or a 503 with Retry-After and pauses the whole fleet only when most recent answers are
# throttles: a storm is sustained overload, the random 429s of the profile are not.
STORMS: tuple[tuple[str, ...], ...] = (
    ("429:2", "429:1"),
    ("burst:4",),
    ("503", "503"),
    ("429:1", "429", "burst:3"),
)
FIRST_STORM_S = 10.0
MIGRATE_AT = (1 / 3, 2 / 3)
REVOKE_EVERY_S = 20.0


def check_chaos(size: Size, work: Path, seed: int) -> list[Verdict]:
    """The chaos run (see the module docstring)."""
    n = size.chaos
    ids = generated_ids(n)
    failing, hanging = [ids[-10], ids[-20]], ids[-30]
    migrating = [ids[-40], ids[-50]]
    folder = work / "chaos"
    manifest = fleet_manifest(
        folder / "fleet.yaml",
        ids,
        readiness="{mode: api, min_install: 1s, poll_interval: 1s, "
        f"deadline: {size.chaos_deadline}}}",
        rollout=[
            "concurrency: 50",
            "rate: 100/s",
            "waves: [1, '10%', '100%']",
            "failure_budget: {wave: '100%', run: '100%'}",
        ],
    )
    password = "soak-chaos-pass"
    sim_log = folder / "simulator.log"
    check = "chaos"
    with sim_log.open("w") as log, simulator(
        n,
        "--profile", "chaos", "--seed", str(seed),
        time_scale=0.005,  # a Linux install takes 1.5 s
        password=password,
        stderr=log,
    ) as sim:  # fmt: skip
        # The profile without its random 429/503s (storms instead) and random revocations (1%
        # of requests, about one a second: every 20 s instead, as sessions expire).
        for body in chaos_rules((*THROTTLE_FAULTS, "invalidate_sessions")).values():
            sim.control("faults", body)
        for kvm_id in failing:
            sim.control("install_outcome", {"kvm_id": kvm_id, "outcome": "fail"})
        sim.control("install_outcome", {"kvm_id": hanging, "outcome": "hang"})
        cli = Cli(folder, sim_env(password))
        report = folder / "report.json"
        args = ["apply", str(manifest), "--yes", "--quiet", "--report-json", str(report)]
        args += ["--journal", str(folder / "journal.sqlite"), *account_args(sim)]
        events = ChaosDriver(sim, n, migrating, size.storm_spacing_s)
        started = time.monotonic()
        refusals: list[str] = []
        while True:
            log_path = folder / f"apply-{len(refusals)}.log"
            with cli.start(*args, log=log_path) as proc:
                while proc.poll() is None and time.monotonic() - started < size.chaos_bound_s:
                    events.tick()
                    time.sleep(0.5)
                finished = proc.poll() is not None
                if not finished:
                    stop(proc)
                code = proc.wait()
            # A transient failure of one pre-flight read refuses the whole run, nothing sent:
            # an operator runs it again, and so does the soak (at most twice more).
            said = log_path.read_text(encoding="utf-8", errors="replace")
            nothing_sent = sim.state()["counters"]["requests"]["set/reinstall"] == 0
            if code == 2 and nothing_sent and "pre-flight failed" in said and len(refusals) < 2:
                refusals.append(said.strip().splitlines()[-1][-160:])
                continue
            break
        seconds = time.monotonic() - started
        state = sim.state()
    cli.outputs.append(sim_log.read_text(encoding="utf-8", errors="replace"))
    verdicts = [
        promise(
            check,
            "run finished",
            finished and code in (0, 1, 4),
            f"exit {code} after {seconds:.0f} s for {n} VPSes (bound {size.chaos_bound_s:.0f} s)"
            + ("" if finished else "; stopped with SIGINT at the bound"),
        )
    ]
    if refusals:
        verdicts.append(
            finding(
                check,
                "pre-flight refusals",
                True,
                f"{len(refusals)} apply refused by pre-flight over one transient read failure "
                f"each, nothing sent, run again: {refusals}",
            )
        )
    targets = report_targets(report)
    if targets is None:
        return [*verdicts, promise(check, "report", False, f"no JSON report (exit {code})")]
    verdicts += chaos_verdicts(
        check, state=state, targets=targets, ids=ids, events=events, seconds=seconds
    )
    final = {"ready", "failed", "in_doubt"}
    verdicts.append(
        promise(
            check,
            "explicit events",
            all(targets[k]["state"] in final - {"ready"} for k in (*failing, hanging))
            and all(targets[k]["state"] in final for k in migrating)
            and events.migrated == len(migrating),
            f"{events.migrated} VPSes migrated mid-run ended "
            f"{[targets[k]['state'] for k in migrating]}; the 2 failing installs ended "
            f"{[targets[k]['state'] for k in failing]}, the hanging one "
            f"{targets[hanging]['state']} ({reason_class(targets[hanging]['reason'] or '')}); "
            f"{len(events.storms)} throttle storms, {events.revocations} revocations every "
            f"{REVOKE_EVERY_S:.0f} s",
        )
    )
    count = tracebacks(cli.outputs)
    verdicts.append(
        promise(
            check,
            "unhandled exceptions",
            count == 0,
            f"{count} tracebacks in the CLI's output and the simulator's log",
        )
    )
    return verdicts


class ChaosDriver:
    """What happens to the simulator during the chaos run, as the run progresses."""

    def __init__(self, sim: Sim, n: int, migrating: Sequence[str], spacing: float) -> None:
        self.sim = sim
        self.n = n
        self.migrating = list(migrating)
        self.migrated = 0
        self.storms: list[tuple[str, ...]] = []
        self.revocations = 0
        now = time.monotonic()
        self._next_revoke = now + REVOKE_EVERY_S
        self._next_storm = now + FIRST_STORM_S
        self._spacing = spacing

    def tick(self) -> None:
        """Revoke every session every 20 s, script the throttle storms on time, and migrate a
        VPS once a third and two thirds of the fleet were accepted."""
        now = time.monotonic()
        if now >= self._next_revoke:
            self._next_revoke = now + REVOKE_EVERY_S
            if self.sim.control("invalidate", {})["revoked"] > 0:
                self.revocations += 1
        state = self.sim.state()["counters"]
        done = sum(state["reinstall_accepted"].values()) / self.n
        while self.migrated < len(self.migrating) and done >= MIGRATE_AT[self.migrated]:
            self.sim.control("migrate", {"kvm_id": self.migrating[self.migrated]})
            self.migrated += 1
        if len(self.storms) < len(STORMS) and now >= self._next_storm:
            script = STORMS[len(self.storms)]
            self.sim.control("faults", {"script": {"*": list(script)}})
            self.storms.append(script)
            self._next_storm = now + self._spacing


def chaos_verdicts(
    check: str,
    *,
    state: Mapping[str, Any],
    targets: Mapping[str, Mapping[str, Any]],
    ids: Sequence[str],
    events: ChaosDriver,
    seconds: float,
) -> list[Verdict]:
    """The per-VPS, in-doubt and session promises of a chaos run."""
    accepted = per_vps(state, "reinstall_accepted")
    installs = {v["kvm_id"]: v["state"] for v in state["vps"]}
    counters = state["counters"]
    broken: list[str] = []
    classes: Counter[str] = Counter()
    for kvm_id in ids:
        target = targets.get(kvm_id)
        got = accepted[kvm_id]
        if target is None:
            broken.append(f"{kvm_id}: not in the report")
            continue
        status, reason = target["state"], target["reason"] or ""
        if got > 1:
            broken.append(f"{kvm_id}: {got} reinstalls accepted")
        elif status == "ready" and got != 1:
            broken.append(f"{kvm_id}: ready with {got} accepted")
        elif status == "ready" and installs[kvm_id] != "running":
            broken.append(f"{kvm_id}: ready but its install is {installs[kvm_id]}")
        elif status in ("failed", "in_doubt"):
            if not reason:
                broken.append(f"{kvm_id}: {status} without a reason")
            classes[f"{status}: {reason_class(reason)}"] += 1
        elif status != "ready":
            broken.append(f"{kvm_id}: ended {status} ({reason})")
    states = Counter(t["state"] for t in targets.values())
    why = "; ".join(f"{k} {v}" for k, v in classes.most_common())
    bad_installs = Counter(s for k, s in installs.items() if k in targets and s != "running")
    verdicts = [
        promise(
            check,
            "reinstalls accepted per VPS",
            not broken,
            f"{histogram([accepted[k] for k in ids])} (accepted×VPSes); {dict(states)}; "
            f"{why}; installs failed or hung at the end: {dict(bad_installs)}, none reported "
            "ready" + (f"; BROKEN: {broken[:5]}" if broken else ""),
        )
    ]
    faults = counters["faults_by_endpoint"].get("set/reinstall", {})
    causes = {k: faults.get(k, 0) for k in IN_DOUBT_FAULTS}
    doubt = states.get("in_doubt", 0)
    verdicts.append(
        promise(
            check,
            "in doubt vs faults injected",
            doubt == sum(causes.values()),
            f"{doubt} VPSes in doubt; faults on set/reinstall that leave a send in doubt: "
            f"{sum(causes.values())} ({', '.join(f'{k} {v}' for k, v in causes.items())})",
        )
    )
    revoked_by_faults = counters["faults"].get("invalidate_sessions", 0)
    lifetime = float(state["signature_lifetime"])
    refreshes_by_age = int(seconds // (lifetime / 2)) if lifetime else 0
    ends = events.revocations + revoked_by_faults + events.migrated + refreshes_by_age
    spoiled = sum(counters["faults_by_endpoint"].get("get/auth", {}).values())
    auth = counters["auth_calls"]
    bound = ends + 1 + spoiled
    verdicts.append(
        promise(
            check,
            "auth calls vs session ends",
            auth <= bound,
            f"{auth} auth calls for {ends} sessions ended ({events.revocations} revoked every "
            f"{REVOKE_EVERY_S:.0f} s, {revoked_by_faults} by faults, {events.migrated} "
            f"migrations, {refreshes_by_age} refreshed at half of the {lifetime:.0f} s "
            f"lifetime); bound ends + 1 + {spoiled} auth requests hit by faults = {bound}; "
            "concurrency 50",
        )
    )
    return verdicts


# ---------------------------------------------------------------------------- liveness


def check_liveness(size: Size, work: Path, seed: int) -> list[Verdict]:
    """Two probes with the chaos profile's random faults left in (see the module docstring)."""
    return [*throttle_probe(size, work, seed), *revocation_probe(size, work, seed)]


def throttle_probe(size: Size, work: Path, seed: int) -> list[Verdict]:
    """The literal ``chaos`` profile for a while: the request rate, then Ctrl-C."""
    n = size.liveness
    folder = work / "liveness-throttles"
    manifest = fleet_manifest(
        folder / "fleet.yaml",
        generated_ids(n),
        readiness="{mode: api, min_install: 1s, poll_interval: 1s, deadline: 15s}",
        rollout=["concurrency: 50", "rate: 100/s", "failure_budget: {wave: '100%', run: '100%'}"],
    )
    password = "soak-liveness-pass"
    journal = folder / "journal.sqlite"
    check = "liveness"
    with simulator(
        n, "--profile", "chaos", "--seed", str(seed), time_scale=0.005, password=password
    ) as sim:
        cli = Cli(folder, sim_env(password))
        args = ["apply", str(manifest), "--yes", "--quiet", "--journal", str(journal)]
        with cli.start(*args, *account_args(sim), log=folder / "apply.log") as proc:
            time.sleep(size.liveness_window_s)
            state = sim.state()
            log = sim_http(f"{sim.url}/_sim/log")["entries"]
            recorded = bool(journal_rows(journal, "SELECT id FROM runs"))
            ended_early = proc.poll() is not None
            interrupted = time.monotonic()
            if not ended_early:
                stop(proc)
            code = proc.wait()
            took = time.monotonic() - interrupted
        accepted = per_vps(sim.state(), "reinstall_accepted")
    counters = state["counters"]
    requests = sum(counters["requests"].values())
    throttles = sum(counters["faults"].get(k, 0) for k in THROTTLE_FAULTS)
    achieved = requests / size.liveness_window_s
    times = sorted(float(e["time"]) for e in log)
    silence = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
    verdicts = [
        finding(
            check,
            "request rate under the chaos profile",
            achieved < 25.0,
            f"{requests} requests in {size.liveness_window_s:.0f} s = {achieved:.1f}/s of the "
            f"100/s configured ({throttles} of them answered 429/503, "
            f"{counters['requests']['set/reinstall']} reinstalls sent, "
            f"{counters['requests']['get/images']} of {n} pre-flight image reads; longest "
            f"silence {silence:.0f} s); the limiter cuts the rate on throttles and pauses "
            "the fleet only when most recent answers are throttles or errors",
        )
    ]
    verdicts.append(
        interrupt_verdict(
            check,
            "Ctrl-C",
            code=code,
            took=took,
            outputs=cli.outputs,
            accepted=accepted,
            recorded=recorded,
            early=ended_early,
        )
    )
    return verdicts


def interrupt_verdict(
    check: str,
    what: str,
    *,
    code: int,
    took: float,
    outputs: Sequence[str],
    accepted: Mapping[str, int],
    recorded: bool,
    early: bool,
) -> Verdict:
    """How a SIGINT went: after the run was recorded it must drain and exit 130 without a
    traceback (a promise); before, during pre-flight, that is only a finding."""
    count = tracebacks(outputs)
    twice = [k for k, v in accepted.items() if v > 1]
    phase = "the run" if recorded else "pre-flight (no run recorded yet)"
    detail = (
        f"SIGINT during {phase}: exit {code} after {took:.1f} s, "
        f"{'a traceback' if count else 'no traceback'}; accepted per VPS "
        f"{histogram(list(accepted.values()))}"
    )
    if early:
        return promise(check, what, not twice, f"ended by itself before the SIGINT (exit {code})")
    clean = code == 130 and count == 0 and not twice
    if recorded or twice:
        return promise(check, what, clean, detail)
    return finding(check, what, not clean, detail)


ATTEMPTS = 2  # applies the revocation probe tries before it switches the revocations off


def revocation_probe(size: Size, work: Path, seed: int) -> list[Verdict]:
    """The chaos profile without its random 429/503s, so with its random session revocations
    (1% of requests): does pre-flight get through, and does Ctrl-C in the run drain?"""
    n = size.chaos
    folder = work / "liveness-revocations"
    manifest = fleet_manifest(
        folder / "fleet.yaml",
        generated_ids(n),
        readiness="{mode: api, min_install: 1s, poll_interval: 1s, deadline: 15s}",
        rollout=["concurrency: 50", "rate: 200/s", "failure_budget: {wave: '100%', run: '100%'}"],
    )
    password = "soak-revocations-pass"
    journal = folder / "journal.sqlite"
    check = "liveness"
    refusals: list[str] = []
    verdicts: list[Verdict] = []
    with simulator(
        n, "--profile", "chaos", "--seed", str(seed), time_scale=0.005, password=password
    ) as sim:
        for body in chaos_rules(THROTTLE_FAULTS).values():
            sim.control("faults", body)
        cli = Cli(folder, sim_env(password))
        args = ["apply", str(manifest), "--yes", "--quiet", "--journal", str(journal)]
        for attempt in range(ATTEMPTS + 1):
            if attempt == ATTEMPTS:
                # Pre-flight never got through: Ctrl-C in the run without the revocations.
                for body in chaos_rules((*THROTTLE_FAULTS, "invalidate_sessions")).values():
                    sim.control("faults", body)
            log = folder / f"apply-{attempt}.log"
            with cli.start(*args, *account_args(sim), log=log) as proc:
                started = time.monotonic()
                while proc.poll() is None and time.monotonic() - started < 300:
                    if sends_received(sim) >= 50:
                        break
                    time.sleep(0.1)
                ended_early = proc.poll() is not None
                interrupted = time.monotonic()
                if not ended_early:
                    stop(proc)
                code = proc.wait()
                took = time.monotonic() - interrupted
            said = log.read_text(encoding="utf-8", errors="replace")
            if code == 2 and "pre-flight failed" in said and attempt < ATTEMPTS:
                refusals.append(said.strip().splitlines()[-1][-120:])
                continue
            recorded = bool(journal_rows(journal, "SELECT id FROM runs"))
            accepted = per_vps(sim.state(), "reinstall_accepted")
            verdicts.append(
                interrupt_verdict(
                    check,
                    "Ctrl-C in the run",
                    code=code,
                    took=took,
                    outputs=cli.outputs,
                    accepted=accepted,
                    recorded=recorded,
                    early=ended_early,
                )
            )
            break
        revoked = sim.state()["counters"]["faults"].get("invalidate_sessions", 0)
    verdicts.insert(
        0,
        finding(
            check,
            "pre-flight under random session revocations",
            bool(refusals),
            f"{len(refusals)} of {min(ATTEMPTS, len(refusals) + 1)} applies of {n} VPSes refused "
            f"by pre-flight, nothing sent ({revoked} revocations by faults): a read refused "
            "again after its one refresh and replay fails pre-flight, and the whole run"
            + (f"; {refusals[0]}" if refusals else ""),
        ),
    )
    return verdicts


# ---------------------------------------------------------------------------- kills


def journal_rows(journal: Path, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Run a read-only query on the journal; an absent file or table reads as no rows."""
    if not journal.exists():
        return []
    con = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10.0)
    try:
        return list(con.execute(sql, params))
    except sqlite3.OperationalError:
        return []  # created, the schema not written yet
    finally:
        con.close()


def in_flight(journal: Path) -> set[str]:
    """VPSes whose latest intent has no outcome and no later attempt showing it was not
    processed (429/503, never sent): their reinstall may be in flight (as tests/test_crash)."""
    unresolved = {
        str(k): float(at)
        for k, at in journal_rows(
            journal, "SELECT kvm_id, sent_at FROM targets WHERE state = 'intent'"
        )
    }
    latest: dict[str, tuple[float, str]] = {}
    for kvm_id, at, outcome in journal_rows(
        journal,
        "SELECT kvm_id, at, outcome FROM attempts WHERE endpoint = 'set/reinstall' ORDER BY id",
    ):
        latest[str(kvm_id)] = (float(at), str(outcome))
    return {
        k
        for k, sent_at in unresolved.items()
        if not (k in latest and latest[k][0] >= sent_at and latest[k][1] in NOT_PROCESSED)
    }


KILLS_CONCURRENCY = 10


@dataclass
class Kill:
    """One SIGKILL: when, and what was in flight."""

    moment: str
    command: str
    in_flight: set[str]
    sends: int


RESEND = "resend-after-window"


def check_kills(size: Size, work: Path, seed: int) -> list[Verdict]:
    """SIGKILL a run again and again, resume each time (see the module docstring), once
    under each in-doubt policy."""
    return [
        *kill_campaign(size, work, seed, "report"),
        *kill_campaign(size, work, seed + 1, RESEND),
    ]


def kill_campaign(size: Size, work: Path, seed: int, policy: str) -> list[Verdict]:
    """One kill-and-resume campaign under the in-doubt ``policy``. Under
    ``resend-after-window`` 3% of the reinstall answers are also lost, so that VPSes wait out
    their window, are resent and are killed meanwhile."""
    n = size.kills_fleet
    ids = generated_ids(n)
    folder = work / ("kills" if policy == "report" else "kills-resend")
    manifest = fleet_manifest(
        folder / "fleet.yaml",
        ids,
        readiness="{mode: api, min_install: 0.3s, poll_interval: 0.2s, deadline: 30s}",
        rollout=[
            f"concurrency: {KILLS_CONCURRENCY}",
            "rate: 200/s",
            "waves: [1, '10%', '100%']",
            "failure_budget: {wave: '100%', run: '100%'}",
            f"in_doubt: {policy}",
            "in_doubt_window: 1s",
        ],
    )
    journal = folder / "journal.sqlite"
    password = "soak-kills-pass"
    rng = random.Random(seed)
    kills: list[Kill] = []
    problems: list[str] = []
    check = "kills" if policy == "report" else "kills-resend"
    with simulator(n, time_scale=0.002, password=password) as sim:  # installs take 0.6 s
        # Every reinstall waits 2-20 ms at the server: kills catch sends in flight.
        faults: dict[str, Any] = {"endpoint": "set/reinstall", "latency": [0.002, 0.02]}
        if policy == RESEND:
            faults["rates"] = {"lost_response": 0.03}
        sim.control("faults", faults)
        cli = Cli(folder, {**sim_env(password)})
        finished = False
        while len(kills) < size.kills and not finished:
            run = journal_rows(journal, "SELECT id FROM runs")
            if run:
                command = ["resume", str(run[0][0]), "--quiet"]
            else:
                command = ["apply", str(manifest), "--yes", "--quiet"]
            command += ["--journal", str(journal), *account_args(sim)]
            log = folder / f"step-{len(kills):02d}.log"
            with cli.start(*command, log=log) as proc:
                moment, reached = wait_for_moment(rng, proc, sim)
                if not reached:
                    code = proc.wait()
                    finished = code in (0, 1, 4)
                    if not finished:
                        problems.append(f"{command[0]} exited {code} before the kill")
                        break
                    continue
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            kills.append(Kill(moment, command[0], in_flight(journal), sends_received(sim)))
        run = journal_rows(journal, "SELECT id FROM runs")
        run_id = str(run[0][0]) if run else ""
        # resume does not remember --session-url: it must be given again.
        tail = ["--journal", str(journal), *account_args(sim)]
        if run_id:
            last = cli.run("resume", run_id, "--quiet", *tail, timeout=300)
        else:
            last = cli.run("apply", str(manifest), "--yes", "--quiet", *tail, timeout=300)
            run = journal_rows(journal, "SELECT id FROM runs")
            run_id = str(run[0][0]) if run else ""
        state = sim.state()
        shown = cli.run("report", run_id, "--format", "json", "--journal", str(journal))
        stranded = journal_rows(
            journal,
            "SELECT kvm_id FROM targets WHERE state = 'in_doubt'"
            " AND resend_decided_at IS NOT NULL AND resent_at IS NULL",
        )
        resent = len(journal_rows(journal, "SELECT 1 FROM targets WHERE resent_at IS NOT NULL"))
    if policy == RESEND:
        return resend_verdicts(
            check, ids=ids, kills=kills, problems=problems, last=last, shown=shown,
            state=state, stranded=[str(r[0]) for r in stranded], resent=resent,
            outputs=cli.outputs,
        )  # fmt: skip
    return kills_verdicts(
        check,
        ids=ids,
        kills=kills,
        problems=problems,
        last=last,
        shown=shown,
        state=state,
        outputs=cli.outputs,
    )


def sends_received(sim: Sim) -> int:
    """Reinstall requests the simulator has received so far."""
    return int(sim.state()["counters"]["requests"]["set/reinstall"])


def wait_for_moment(rng: random.Random, proc: subprocess.Popen[str], sim: Sim) -> tuple[str, bool]:
    """Wait for a random moment: a delay after the start, or a number of further reinstall
    requests at the simulator. Return its description and whether it came before the
    process ended."""
    if rng.random() < 0.35:
        delay = rng.uniform(0.2, 1.5)
        moment = f"after {delay:.2f} s"
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return moment, False
            time.sleep(0.01)
        return moment, proc.poll() is None
    more = rng.randint(1, 15)
    target = sends_received(sim) + more
    moment = f"after {more} more sends"
    while proc.poll() is None:
        if sends_received(sim) >= target:
            return moment, True
        time.sleep(0.02)
    return moment, False


def contract_verdict(check: str, last: Done, shown: Done) -> Verdict:
    """The final exit code and the run's status are those of the journal's totals."""
    try:
        report = json.loads(shown.out)
        doubt = sum(1 for t in report["targets"] if t["state"] == "in_doubt")
        run = report["run"]
    except (ValueError, KeyError):
        return promise(check, "exit code = journal", False, f"no report (exit {shown.code})")
    want = (4, "in_doubt") if doubt else (0, "done")
    ok = (last.code, run.get("status")) == want and run.get("exit_code") == last.code
    return promise(
        check,
        "exit code = journal",
        ok,
        f"final exit {last.code}, run {run.get('status')}, report exit_code "
        f"{run.get('exit_code')}; the journal has {doubt} in doubt (wants {want})",
    )


def resend_verdicts(
    check: str,
    *,
    ids: Sequence[str],
    kills: Sequence[Kill],
    problems: list[str],
    last: Done,
    shown: Done,
    state: Mapping[str, Any],
    stranded: list[str],
    resent: int,
    outputs: Sequence[str],
) -> list[Verdict]:
    """The promises of the kill-and-resume loop under ``resend-after-window``: at most one
    resend per VPS however many kills, none stranded in its window, every VPS accounted for,
    the exit code and status of the journal's totals."""
    received = per_vps(state, "reinstall_received")
    accepted = per_vps(state, "reinstall_accepted")
    try:
        targets = {t["kvm_id"]: t for t in json.loads(shown.out)["targets"]}
    except (ValueError, KeyError):
        targets = {}
        problems.append(f"no report (exit {shown.code}): {shown.err[-300:]}")
    thrice = [k for k in ids if received[k] > 2 or accepted[k] > 2]
    lost = [k for k in ids if targets.get(k, {}).get("state") not in ("ready", "in_doubt")]
    doubt = sum(1 for t in targets.values() if t["state"] == "in_doubt")
    twice = sum(1 for k in ids if received[k] > 1)
    return [
        promise(
            check,
            "kills",
            len(kills) > 0 and not problems,
            f"{len(kills)} SIGKILLs of {len(ids)} VPSes, each followed by a resume; final "
            f"exit {last.code}" + (f"; {problems}" if problems else ""),
        ),
        promise(
            check,
            "one resend per VPS at most",
            not thrice,
            f"{resent} resends recorded, {twice} VPSes received two reinstalls; received per "
            f"VPS {histogram([received[k] for k in ids])}, accepted per VPS "
            f"{histogram([accepted[k] for k in ids])}"
            + (f"; BROKEN: {thrice[:5]}" if thrice else ""),
        ),
        promise(
            check,
            "none stranded, nothing lost",
            not stranded and not lost,
            f"{doubt} in doubt at the end, {len(stranded)} with a decided resend never sent"
            + (f"; STRANDED {stranded[:5]}" if stranded else "")
            + (f"; LOST {lost[:5]}" if lost else ""),
        ),
        contract_verdict(check, last, shown),
        promise(
            check,
            "unhandled exceptions",
            tracebacks(outputs) == 0,
            f"{tracebacks(outputs)} tracebacks in any output",
        ),
    ]


def kills_verdicts(
    check: str,
    *,
    ids: Sequence[str],
    kills: Sequence[Kill],
    problems: list[str],
    last: Done,
    shown: Done,
    state: Mapping[str, Any],
    outputs: Sequence[str],
) -> list[Verdict]:
    """The promises of the kill-and-resume loop."""
    received = per_vps(state, "reinstall_received")
    accepted = per_vps(state, "reinstall_accepted")
    try:
        targets = {t["kvm_id"]: t for t in json.loads(shown.out)["targets"]}
    except (ValueError, KeyError):
        targets = {}
        problems.append(f"no report (exit {shown.code}): {shown.err[-300:]}")
    kinds = Counter(k.moment.split()[-1] for k in kills)
    verdicts = [
        promise(
            check,
            "kills",
            len(kills) > 0 and not problems,
            f"{len(kills)} SIGKILLs ({kinds['s']} after a delay, {kinds['sends']} after k "
            f"more sends; {Counter(k.command for k in kills)}), each followed by a resume; "
            f"final resume exit {last.code}"
            + ("" if last.code in (0, 4) else f" ({last.err.strip()[-300:]})")
            + (f"; {problems}" if problems else ""),
        )
    ]
    twice = [k for k in ids if received[k] > 1 or accepted[k] > 1]
    verdicts.append(
        promise(
            check,
            "wiped at most once, never resent",
            not twice,
            f"received per VPS {histogram([received[k] for k in ids])}, accepted per VPS "
            f"{histogram([accepted[k] for k in ids])} (count×VPSes)"
            + (f"; BROKEN: {twice[:5]}" if twice else ""),
        )
    )
    states = Counter(t["state"] for t in targets.values())
    lost = [k for k in ids if k not in targets]
    wrong = [
        k
        for k in ids
        if k in targets
        and not (
            (targets[k]["state"] == "ready" and accepted[k] == 1)
            or (targets[k]["state"] == "in_doubt" and accepted[k] <= 1)
        )
    ]
    verdicts.append(
        promise(
            check,
            "nothing lost",
            not lost and not wrong and last.code in (0, 4),
            f"{len(ids)} VPSes: {dict(states)}; every one ready after exactly one accepted "
            "reinstall or reported in doubt"
            + (f"; MISSING {lost[:5]}" if lost else "")
            + (
                f"; WRONG {[(k, targets[k]['state'], accepted[k]) for k in wrong[:5]]}"
                if wrong
                else ""
            ),
        )
    )
    doubt = {k for k, t in targets.items() if t["state"] == "in_doubt"}
    flying: set[str] = set().union(*(k.in_flight for k in kills)) if kills else set()
    most = max((len(k.in_flight) for k in kills), default=0)
    verdicts.append(
        promise(
            check,
            "in doubt only if in flight at a kill",
            doubt <= flying and most <= KILLS_CONCURRENCY,
            f"{len(doubt)} in doubt, {len(flying)} sends in flight over the kills "
            f"({[len(k.in_flight) for k in kills]}; at most the concurrency, "
            f"{KILLS_CONCURRENCY})"
            + (f"; NOT IN FLIGHT: {sorted(doubt - flying)[:5]}" if doubt - flying else ""),
        )
    )
    count = tracebacks(outputs)
    verdicts.append(
        promise(check, "unhandled exceptions", count == 0, f"{count} tracebacks in any output")
    )
    verdicts.append(contract_verdict(check, last, shown))
    return verdicts


# ---------------------------------------------------------------------------- bad input

SWAPS: tuple[bytes, ...] = (
    b"42", b"-1", b"0", b"3.5", b".inf", b"1e400", b"0x1F", b"true", b"null", b"~",
    b"[]", b"{}", b"''", b'"x"', b"[1, 2]", b"{a: 1}", b"2024-01-01", b"!!binary aGk=",
    b"*nope", b"&anchor", b"!!python/object/apply:os.system [id]", b"'" + b"x" * 5000 + b"'",
    b"{env: NOPE_NOT_SET}", b"{file: /nonexistent}", b"{generate: ../../x}", b"'\\0'",
)  # fmt: skip


def mutate(text: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One random mutation of a manifest: returns the new text and its name."""
    kind = rng.choice(
        ("delete", "duplicate", "swap-lines", "indent", "type-swap", "truncate", "random-bytes")
    )
    if kind == "truncate":
        return text[: rng.randrange(len(text))], kind
    if kind == "random-bytes":
        pos = rng.randrange(len(text) + 1)
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        return text[:pos] + junk + text[pos:], kind
    lines = text.split(b"\n")
    content = [i for i, line in enumerate(lines) if line.strip() and line.lstrip()[:1] != b"#"]
    if not content:
        return text + b"\n\x00", "random-bytes"
    i = rng.choice(content)
    if kind == "delete":
        del lines[i]
    elif kind == "duplicate":
        lines.insert(i + 1, lines[i])
    elif kind == "swap-lines":
        j = rng.choice(content)
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "indent":
        dedent = lines[i].startswith(b"  ") and rng.random() < 0.5
        lines[i] = lines[i][2:] if dedent else b"  " + lines[i]
    else:  # type-swap: a value becomes another YAML type
        keyed = [j for j in content if b":" in lines[j]] or [i]
        j = rng.choice(keyed)
        lines[j] = lines[j].partition(b":")[0] + b": " + rng.choice(SWAPS)
    return b"\n".join(lines), kind


@dataclass(frozen=True)
class BadCase:
    """A manifest to throw at ``validate`` and ``apply``: its folder, name, options, env."""

    name: str
    folder: Path
    manifest: str
    validate_args: tuple[str, ...]
    apply_args: tuple[str, ...]
    env: Mapping[str, str]


def bad_cases(size: Size, work: Path, seed: int) -> list[BadCase]:
    """The malformed manifests of the tests, and the fuzzed ones."""
    rng = random.Random(seed)
    names = list(CASES)
    if size.bad_cases is not None:
        names = sorted(rng.sample(names, size.bad_cases))
    cases: list[BadCase] = []
    for name in names:
        case = CASES[name]
        folder = work / "bad" / name
        folder.mkdir(parents=True)
        write_fleet(folder, case.manifest, case.files)
        strict = ("--strict",) if "--strict" in case.args else ()
        env = ENV if case.env is None else case.env
        cases.append(BadCase(f"test:{name}", folder, "fleet.yaml", case.args, strict, env))
    original = (REPO / "fleets" / "example.yaml").read_bytes()
    for number in range(size.fuzz):
        text, kinds = original, []
        for _ in range(rng.randint(1, 3)):
            text, kind = mutate(text, rng)
            kinds.append(kind)
        folder = work / "bad" / f"fuzz-{number:03d}"
        shutil.copytree(REPO / "fleets" / "templates", folder / "templates")
        (folder / "fleet.yaml").write_bytes(text)
        name = f"fuzz-{number:03d}:{'+'.join(kinds)}"
        cases.append(BadCase(name, folder, "fleet.yaml", (), (), ENV))
    return cases


def intended(case: BadCase) -> set[str] | None:
    """The VPSes a still-valid manifest selects by default (None when it does not load)."""
    try:
        report = check_manifest(case.folder / case.manifest, case.env, schema=None)
        if report.fleet is None:
            return None
        return {e.id for e in select(report.fleet, Selection()).vps}
    except Exception:  # a crash here must not hide the CLI's verdict
        return None


Applied = tuple[Done, int, dict[str, int]]
"""An ``apply``: what it did, the requests the simulator saw meanwhile, and kvm_id → the
reinstalls it accepted meanwhile."""
LANES = 2  # cases run in two lanes, each with a simulator of its own


def check_bad_input(size: Size, work: Path, seed: int) -> list[Verdict]:
    """Malformed and fuzzed manifests through validate and apply (see the module docstring)."""
    cases = bad_cases(size, work, seed)
    with ThreadPoolExecutor(max_workers=LANES) as pool:
        validated = list(
            pool.map(
                lambda c: Cli(c.folder, c.env).run(
                    "validate", c.manifest, *c.validate_args, timeout=120
                ),
                cases,
            )
        )
        lanes = [cases[i::LANES] for i in range(LANES)]
        results: dict[str, Applied] = {}
        for done in pool.map(apply_lane, lanes):
            results.update(done)
    applied = [results[c.name] for c in cases]
    return bad_input_verdicts("bad-input", cases, validated, applied)


def apply_lane(cases: Sequence[BadCase]) -> dict[str, Applied]:
    """``apply --yes`` each case in turn against a simulator of the lane's own, so that every
    request it sees is the case's."""
    applied: dict[str, Applied] = {}
    # The tests' environment (tests/manifest_support.ENV) is the simulator's account.
    with simulator(
        5, "--email", ENV["EDIS_EMAIL"], time_scale=0.001, password=ACCOUNT_MARKER
    ) as sim:
        for case in cases:
            before = sim.state()["counters"]
            done = Cli(case.folder, case.env).run(
                "apply",
                case.manifest,
                "--yes",
                *case.apply_args,
                "--journal",
                str(case.folder / "journal.sqlite"),
                *account_args(sim),
                timeout=45,  # a still-valid mutation may wait for readiness: drained then
            )
            after = sim.state()["counters"]
            requests = sum(after["requests"].values()) - sum(before["requests"].values())
            wiped = {
                k: v - before["reinstall_accepted"][k]
                for k, v in after["reinstall_accepted"].items()
                if v != before["reinstall_accepted"][k]
            }
            applied[case.name] = (done, requests, wiped)
    return applied


def bad_input_verdicts(
    check: str,
    cases: Sequence[BadCase],
    validated: Sequence[Done],
    applied: Sequence[Applied],
) -> list[Verdict]:
    """The promises of the bad-input check."""
    tests = sum(1 for c in cases if c.name.startswith("test:"))
    codes = Counter(v.code for v in validated)
    odd_validate = [
        (c.name, v.code) for c, v in zip(cases, validated, strict=True) if v.code not in (0, 2)
    ]
    still_valid_tests = [
        c.name
        for c, v in zip(cases, validated, strict=True)
        if c.name.startswith("test:") and v.code != 2
    ]
    verdicts = [
        promise(
            check,
            "validate",
            not odd_validate and not still_valid_tests,
            f"{tests} malformed manifests of the tests + {len(cases) - tests} fuzzed: exit "
            f"{dict(codes)}"
            + (f"; UNEXPECTED {odd_validate[:5]}" if odd_validate else "")
            + (f"; ACCEPTED {still_valid_tests[:5]}" if still_valid_tests else ""),
        )
    ]
    refused = [(c, a) for c, v, a in zip(cases, validated, applied, strict=True) if v.code == 2]
    leaky = [(c.name, a[0].code, a[1]) for c, a in refused if a[0].code != 2 or a[1] != 0]
    verdicts.append(
        promise(
            check,
            "apply on refused manifests",
            not leaky,
            f"{len(refused)} refused by validate: apply exit "
            f"{dict(Counter(a[0].code for _, a in refused))}, "
            f"{sum(a[1] for _, a in refused)} requests at the simulator"
            + (f"; BROKEN (name, exit, requests): {leaky[:5]}" if leaky else ""),
        )
    )
    valid = [(c, a) for c, v, a in zip(cases, validated, applied, strict=True) if v.code == 0]
    wrong: list[str] = []
    wiped_total = 0
    for case, (done, _, wiped) in valid:
        chosen = intended(case)
        wiped_total += sum(wiped.values())
        extra = set(wiped) - (chosen or set())
        twice = [k for k, v in wiped.items() if v > 1]
        if extra or twice or done.code not in (0, 1, 2, 3, 4, 130):
            wrong.append(f"{case.name}: exit {done.code}, wiped {wiped}, selected {chosen}")
    verdicts.append(
        promise(
            check,
            "apply on still-valid mutations",
            not wrong,
            f"{len(valid)} mutations still valid: apply exit "
            f"{dict(Counter(a[0].code for _, a in valid))}"
            + (
                " (130: stopped at the 45 s bound while waiting for readiness)"
                if any(a[0].code == 130 for _, a in valid)
                else ""
            )
            + f", {wiped_total} reinstalls, all of selected VPSes, none twice"
            + (f"; BROKEN: {wrong[:3]}" if wrong else ""),
        )
    )
    texts = [d.text for d in validated] + [a[0].text for a in applied]
    count = tracebacks(texts)
    leaks = [s for s in SECRETS if any(s in t for t in texts)]
    crashed = [
        c.name
        for c, v, a in zip(cases, validated, applied, strict=True)
        if TRACEBACK in v.text or TRACEBACK in a[0].text
    ]
    verdicts.append(
        promise(
            check,
            "no traceback, no secret",
            count == 0 and not leaks,
            f"{count} tracebacks, {len(leaks)} secrets shown in {len(texts)} command outputs"
            + (f"; CRASHED: {crashed[:5]}" if crashed else ""),
        )
    )
    return verdicts


# ---------------------------------------------------------------------------- main

RUNNERS: Mapping[str, Callable[[Size, Path, int], list[Verdict]]] = {
    "chaos": check_chaos,
    "liveness": check_liveness,
    "kills": check_kills,
    "bad-input": check_bad_input,
}


def _selected(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(CHECKS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown check(s) {', '.join(unknown) or '(none)'}; pick from {', '.join(CHECKS)}"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen checks; print one line per promise; return 1 if one was broken."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="the small version (make test)")
    parser.add_argument(
        "--only", type=_selected, default=list(CHECKS), metavar="LIST", help="checks to run"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--strict", action="store_true", help="WARN findings fail too")
    args = parser.parse_args(argv)
    size = SHORT if args.short else FULL
    # Children must act on SIGINT (the tool drains on it) even when this script was started
    # with SIGINT ignored (a background job of a shell): a handled signal is reset to the
    # default in a child, an ignored one stays ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    work = Path(tempfile.mkdtemp(prefix="edis-fleet-soak-"))
    verdicts: list[Verdict] = []
    started = time.monotonic()
    try:
        for name in args.only:
            began = time.monotonic()
            try:
                got = RUNNERS[name](size, work, args.seed)
            except (BenchError, OSError, subprocess.SubprocessError) as exc:
                got = [promise(name, "ran", False, f"could not run: {exc}")]
            for verdict in got:
                print(verdict.line(), flush=True)
            print(f"      ({name}: {time.monotonic() - began:.0f} s)", flush=True)
            verdicts += got
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    failing = {"FAIL", "WARN"} if args.strict else {"FAIL"}
    broken = [v for v in verdicts if v.status in failing]
    total = time.monotonic() - started
    print(
        f"soak {'short' if args.short else 'full'}: {len(verdicts)} lines, "
        f"{sum(v.status == 'FAIL' for v in verdicts)} broken promises, "
        f"{sum(v.status == 'WARN' for v in verdicts)} findings, in {total:.0f} s"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
