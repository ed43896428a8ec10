"""Benchmark: the reinstall phase of ``edis-fleet`` against the simulator (a script, not a test).

Scenarios (pick with ``--only latency,rate,cpu,journal,scale``; ``--quick`` scales N down):

``latency``  2,000 VPSes, 100 ms simulated latency on ``set/reinstall`` (the simulator's latency
             fault, probability 1), concurrency 100, a rate that does not bind, readiness
             ``none``, one wave. Wall time of the reinstall phase (first send to last accept;
             the auth call is made before) vs the ideal N·L/C = 2.0 s; goal within 10%.
             Measured in the same run: bare aiohttp loops doing the same POSTs (a pooled
             connector, and ``force_close=True`` like the tool's reinstalls) and
             ``xargs -P 100 curl`` (skipped with a note when either is missing). For
             reference, the tool and the force_close loop again with the latency spread over
             90-110 ms: a fixed latency keeps the C requests in lockstep, so every round also
             pays for a whole burst's processing on both sides.
``rate``     1,000 VPSes, rollout rate 50/s, the simulator enforcing 50/s with a burst of 5
             (the client's 3 plus 2 of slack for arrival jitter), concurrency 50, no latency.
             The measured phase is reinstall-only: the auth call is made and both buckets
             refill before the clock starts, and there is no pre-flight. Goals: achieved rate
             (N / first send to last accept) within 3% of 50/s, no 429 from the simulator
             (``counters.throttled``), and no 1-second window with more than 50 + 3 sends.
``cpu``      20,000 VPSes, no latency, concurrency 200: the client's CPU seconds per 1,000
             reinstalls and its peak RSS vs a bare aiohttp loop building the same form bodies
             with the same connection discipline (``force_close``, as the tool's reinstalls);
             a pooled bare loop is shown too. Goals: CPU at most 1.5x, RSS at most 2x.
``journal``  the latency scenario with and without the journal (``Journal`` in a temporary
             directory, ``JournalSink``, ``run_flusher``, attempts through ``on_attempt``, as
             ``cli/runner.py`` wires them); goal at most 10% slower.
``scale``    the same run at 1,000, 10,000 and 50,000 VPSes (``--quick``: 1,000 and 5,000),
             a manifest of the simulator's generated ids with a per-VPS template, waves
             ``[1, 1%, 10%, 100%]``, readiness ``none``, concurrency 200, no latency. Per VPS,
             wall time and memory (peak RSS minus the RSS after the imports) of (a) validate
             (every template rendered; no ``cloud-init schema``, which is capped at 16
             documents) + selection + user-data hashes + plan, (b) the reinstall phase through
             the scheduler with the journal (targets and locks written, the waves, the run
             finished), (c) the text, JSON and JUnit reports built from the journal's records
             (read included). Each step runs in a fresh process. Goal: the per-VPS figure at
             the largest size at most 1.5x the one at the smallest (flat: no quadratic step).

The simulator runs in its own process (``python -m orchestrator simulator --port 0``) and so
does every contender, so the CPU time (``time.process_time``) and the peak RSS
(``getrusage(RUSAGE_SELF).ru_maxrss``) measured are the contender's alone. Every measurement
prints one line (measured, goal, ratio, PASS/FAIL, or ``info`` for a reference) and all go to a
JSON file, with the simulator's own CPU seconds per contender (``server_cpu_s``, from
``/proc``) to show whether the server was the bottleneck. Wall-time goals take the best of
``--repeat`` runs (the machine is shared). The exit status is 1 when a goal is missed.

    .venv/bin/python tests/bench/apply_bench.py [--only latency,rate,cpu,journal,scale] [--quick]
        [--repeat N] [--json bench-results.json] [--profile]

``--profile`` runs the contenders under cProfile and prints where their time goes to stderr
(the measured CPU is then inflated by the profiler; a sampling profiler such as py-spy on a
contender shows the garbage collector's share more faithfully).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Run as a script (``python tests/bench/apply_bench.py``): the repository root is not on the
# path by itself, and the shared helpers live in tests/bench/common.py.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import (
    EMAIL,
    REPO,
    SIM_PASSWORD,
    BenchError,
    Sim,
    max_in_window,
    peak_rss_mib,
    rss_mib,
    sim_auth,
    sim_faults,
    sim_throttled,
    simulator,
)

if TYPE_CHECKING:
    # Only for annotations: a bare-loop contender must not pay for importing the tool.
    from orchestrator.model import EventSink, TargetEvent

SCENARIOS = ("latency", "rate", "cpu", "journal", "scale")
ROOT_PASSWORD = "bench-Root-pass-42"  # sent to simulated VPSes only
IMAGE = "cloudinit_ubuntu-lts-24-04"
USER_DATA = (
    "#cloud-config\nhostname: bench\npackage_update: true\npackages: [curl, ca-certificates]\n"
)
NO_BIND_RATE = 100_000.0
CLIENT_BURST = 3  # Limits.create's default, as the runner uses it
LATENCY_S = 0.1
LATENCY_SPREAD_S = [0.09, 0.11]  # the same mean, spread by +-10%
LATENCY_CONCURRENCY = 100
RATE = 50.0
RATE_SIM_BURST = CLIENT_BURST + 2
RATE_CONCURRENCY = 50
CPU_CONCURRENCY = 200
SCALE_CONCURRENCY = 200
SCALE_GOAL = 1.5  # per-VPS figure at the largest size / at the smallest: flat means <= 1.5
SCALE_ENV = {
    "EDIS_EMAIL": EMAIL,
    "EDIS_PASSWORD": SIM_PASSWORD,
    "EDIS_ROOT_PASSWORD": ROOT_PASSWORD,
}
# Every VPS renders this with its own id, host name, tags, vars and password.
SCALE_TEMPLATE = """\
#cloud-config
hostname: {{ hostname }}
fqdn: {{ hostname }}.{{ vars.domain }}
chpasswd:
  expire: false
  users:
    - {name: root, password: {{ root_password | tojson }}, type: text}
write_files:
  - path: /etc/edis-fleet/id
    content: "{{ id }} {{ tags | join(',') }} {{ vars.n }}"
"""


@dataclass(frozen=True)
class Scale:
    """How many VPSes each scenario uses."""

    latency: int
    rate: int
    cpu: int
    journal: int
    sizes: tuple[int, ...]  # the scale scenario's fleet sizes, smallest first


FULL = Scale(latency=2000, rate=1000, cpu=20_000, journal=2000, sizes=(1000, 10_000, 50_000))
QUICK = Scale(latency=500, rate=200, cpu=2000, journal=500, sizes=(1000, 5000))


@dataclass
class Line:
    """One measurement: what was measured, against what, and whether it is a goal."""

    scenario: str
    contender: str
    metric: str
    measured: float
    unit: str
    reference: str = ""
    ratio: float | None = None
    goal: str = ""
    ok: bool | None = None  # None: a reference value, not a goal
    details: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """Return the printed line."""
        ratio = "" if self.ratio is None else f"{self.ratio:7.3f}"
        verdict = "info" if self.ok is None else ("PASS" if self.ok else "FAIL")
        goal = f" ({self.goal})" if self.goal else ""
        return (
            f"{self.scenario:<8} {self.contender:<26} {self.metric:<22} "
            f"{self.measured:10.3f} {self.unit:<8} {self.reference:<22} {ratio:>7}  "
            f"{verdict}{goal}"
        )


def reinstall_form(kvm_id: str, entry: dict[str, Any]) -> dict[str, str]:
    """The form of one reinstall, field for field what ``EdisClient.reinstall`` sends."""
    return {
        "signature": entry["signature"],
        "kvm_id": kvm_id,
        "valid_until": str(entry["valid_until"]),
        "image": IMAGE,
        "password": ROOT_PASSWORD,
        "cloudinit_user_data": USER_DATA,
    }


# ---------------------------------------------------------------------------- contenders


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run this script with ``--worker`` in its own process on ``spec``; return its result.
    Raises ``BenchError`` when it fails."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker"],
        input=json.dumps(spec),  # stdin, not argv: the spec holds the account password
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if proc.stderr:
        sys.stderr.write(proc.stderr)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise BenchError(f"contender {spec['kind']} failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def run_contender(spec: dict[str, Any], sim: Sim) -> dict[str, Any]:
    """Run one contender in its own process against ``sim``; return its measurements, with
    the simulator's CPU seconds meanwhile. Raises ``BenchError`` when it fails or does not
    accept every reinstall."""
    spec = {**spec, "url": sim.url}
    server_cpu = sim.cpu_s()
    result = run_worker(spec)
    after = sim.cpu_s()
    if server_cpu is not None and after is not None:
        result["server_cpu_s"] = after - server_cpu  # the worker's start-up and auth included
    if result["accepted"] != spec["n"]:
        raise BenchError(
            f"contender {spec['kind']}: {result['accepted']} of {spec['n']} reinstalls "
            f"accepted: {result.get('problems')}"
        )
    return result


class TimingSink:
    """An ``EventSink`` in front of the run's real sink (the journal's, or none): notes when
    the first send leaves the limiter, every send, and when the last reinstall is accepted."""

    def __init__(self, inner: EventSink | None) -> None:
        from orchestrator.model import TargetState

        self._inner = inner
        self._accepted = TargetState.ACCEPTED
        self.sends: list[float] = []
        self.last_accept = 0.0

    async def before_send(self, kvm_id: str, wave: int) -> None:
        """Note the send, then let the real sink make the intent durable."""
        self.sends.append(time.perf_counter())
        if self._inner is not None:
            await self._inner.before_send(kvm_id, wave)

    def emit(self, event: TargetEvent) -> None:
        """Forward ``event``; note the time of an acceptance."""
        if self._inner is not None:
            self._inner.emit(event)
        if event.state is self._accepted:
            self.last_accept = time.perf_counter()


async def tool_contender(spec: dict[str, Any]) -> dict[str, Any]:
    """edis-fleet's reinstall phase, wired as ``cli/runner.py`` wires it, minus pre-flight.

    ``spec["waves"]`` (optional) splits the VPSes into waves of those sizes (one wave by
    default); ``spec["journal_dir"]`` (optional) keeps the journal there instead of in a
    temporary directory, for the reports worker of the scale scenario.
    """
    import anyio

    from orchestrator.clock import SystemClock
    from orchestrator.edis.client import EdisClient
    from orchestrator.edis.session import SessionBook
    from orchestrator.journal.journal import Journal, RunStatus, TargetSpec
    from orchestrator.journal.sink import JournalSink
    from orchestrator.model import Attempt, TargetState
    from orchestrator.run.api import EdisFleetAPI, LimitedAuth
    from orchestrator.run.limits import Limits
    from orchestrator.run.retry import RetryBudget
    from orchestrator.run.scheduler import Job, RunSettings, Scheduler, WaveSpec
    from orchestrator.secrets.values import Secret

    n, concurrency = spec["n"], spec["concurrency"]
    rss_start = rss_mib()  # after the imports: the base the scale scenario subtracts
    clock = SystemClock()
    limits = Limits.create(
        concurrency=concurrency, rate=spec["rate"], clock=clock, burst=CLIENT_BURST
    )
    async with contextlib.AsyncExitStack() as stack:
        journal: Journal | None = None
        run_id = ""
        if spec["journal"]:
            folder = Path(
                spec.get("journal_dir") or stack.enter_context(tempfile.TemporaryDirectory())
            )
            journal = await Journal.open(folder / "journal.sqlite", clock=clock)
            stack.push_async_callback(journal.close)
            run_id = await journal.create_run(
                manifest_path="bench.yaml", manifest_sha256="0" * 64, plan_sha256="1" * 64
            )

        def on_attempt(attempt: Attempt) -> None:
            assert journal is not None
            journal.enqueue_attempt(run_id, attempt)

        client = await stack.enter_async_context(
            EdisClient(
                session_url=spec["url"],
                email=EMAIL,
                password=Secret(spec["password"]),
                allowed_hosts=["127.0.0.0/8"],
                max_connections=concurrency,
                clock=clock,
                on_attempt=on_attempt if journal is not None else None,
            )
        )
        book = SessionBook(LimitedAuth(client, limits.requests), clock=clock)
        ids = sorted(await book.accounts())[:n]  # the auth call, before the clock starts
        wave_of = _wave_indexes(spec.get("waves") or [n], ids)
        setup_started = time.perf_counter()
        if journal is not None:
            await journal.add_targets(
                run_id, [TargetSpec(k, wave_of[k], i, IMAGE, k) for i, k in enumerate(ids)]
            )
            await journal.acquire_locks(run_id, ids)
        setup_s = time.perf_counter() - setup_started
        jobs = tuple(
            Job(
                kvm_id=k,
                wave=wave_of[k],
                image=IMAGE,
                password=Secret(ROOT_PASSWORD),
                user_data=Secret(USER_DATA),
                readiness="none",
                port=22,
                deadline_s=600.0,
                min_install_s=0.0,
                install_window_s=600.0,
            )
            for k in ids
        )
        sink = TimingSink(JournalSink(journal, run_id) if journal is not None else None)
        scheduler = Scheduler(
            EdisFleetAPI(client, book),
            sink,
            clock=clock,
            limits=limits,
            settings=RunSettings(run_budget=n),
            budget=RetryBudget(),
        )
        waves = [
            WaveSpec(w, tuple(j for j in jobs if j.wave == w), budget=n)
            for w in sorted(set(wave_of.values()))
        ]
        await anyio.sleep(spec["settle_s"])  # the rate buckets refill after the auth call
        gc.freeze()  # as cli/runner.py does once the run is set up
        profiler = cProfile.Profile() if spec["profile"] else None
        cpu0 = time.process_time()
        run_started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        async with anyio.create_task_group() as tg:
            if journal is not None:
                tg.start_soon(journal.run_flusher)
            result = await scheduler.run(waves)
            tg.cancel_scope.cancel()
        if profiler is not None:
            profiler.disable()
        cpu = time.process_time() - cpu0
        run_s = time.perf_counter() - run_started
        finish_started = time.perf_counter()
        if journal is not None:
            await journal.finish_run(run_id, RunStatus.DONE)
        finish_s = time.perf_counter() - finish_started
        if profiler is not None:
            _print_profile(profiler, f"edis-fleet, {spec['label']}")
    accepted = result.count(TargetState.ACCEPTED) + result.count(TargetState.READY)
    first = min(sink.sends) if sink.sends else 0.0
    return {
        "wall_s": sink.last_accept - first,
        "cpu_s": cpu,
        "accepted": accepted,
        "states": dict(Counter(s.value for s in result.states.values())),
        "problems": sorted(set(result.reasons.values()) - {"readiness not checked"})[:3],
        "sends": len(sink.sends),
        "send_span_s": (max(sink.sends) - first) if sink.sends else 0.0,
        "max_sends_in_1s": max_in_window(sink.sends),
        "throttles_seen": limits.requests.throttles,
        # For the scale scenario: everything the journal-backed run did after the auth call
        # (targets and locks written, the waves, the run finished), and the memory it took.
        "journal_setup_s": setup_s,
        "finish_s": finish_s,
        "total_s": setup_s + run_s + finish_s,
        "rss_start_mib": rss_start,
        "waves": [len(w.jobs) for w in waves],
    }


def _wave_indexes(sizes: Sequence[int], ids: Sequence[str]) -> dict[str, int]:
    """Map each id to its wave (1-based): the first ``sizes[0]`` ids are wave 1, and so on;
    whatever the sizes leave over joins the last wave."""
    wave_of: dict[str, int] = {}
    start = 0
    for index, size in enumerate(sizes, start=1):
        for kvm_id in ids[start : start + size]:
            wave_of[kvm_id] = index
        start += size
    for kvm_id in ids[start:]:
        wave_of[kvm_id] = len(sizes)
    return wave_of


async def bare_contender(spec: dict[str, Any]) -> dict[str, Any]:
    """The reference: an ``asyncio.Semaphore`` and one aiohttp ``ClientSession`` doing the
    same POSTs with the same form bodies, checking each answer is a success."""
    import aiohttp

    n, concurrency = spec["n"], spec["concurrency"]
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=spec["force_close"])
    async with aiohttp.ClientSession(connector=connector) as http:
        auth_form = {"email": EMAIL, "pw": spec["password"]}
        async with http.post(f"{spec['url']}/kvm/v2/get/auth", data=auth_form) as resp:
            data = (await resp.json())["data"]
        ids = sorted(data)[:n]
        gate = asyncio.Semaphore(concurrency)
        sends: list[float] = []
        accepts: list[float] = []
        problems: Counter[str] = Counter()

        async def one(kvm_id: str) -> None:
            entry = data[kvm_id]
            async with gate:
                url = f"http://{entry['api_host']}/kvm/v2/set/reinstall"
                form = reinstall_form(kvm_id, entry)
                sends.append(time.perf_counter())
                try:
                    async with http.post(url, data=form, allow_redirects=False) as resp:
                        body = await resp.read()
                        ok = resp.status == 200 and json.loads(body).get("status") == "success"
                        problem = f"HTTP {resp.status}"
                except aiohttp.ClientError as exc:
                    ok, problem = False, type(exc).__name__
                if ok:
                    accepts.append(time.perf_counter())
                else:
                    problems[problem] += 1

        profiler = cProfile.Profile() if spec["profile"] else None
        cpu0 = time.process_time()
        if profiler is not None:
            profiler.enable()
        await asyncio.gather(*(one(k) for k in ids))
        if profiler is not None:
            profiler.disable()
        cpu = time.process_time() - cpu0
    if profiler is not None:
        _print_profile(profiler, f"bare aiohttp, {spec['label']}")
    return {
        "wall_s": (max(accepts) - min(sends)) if accepts else 0.0,
        "cpu_s": cpu,
        "accepted": len(accepts),
        "problems": dict(problems),
        "sends": len(sends),
        "max_sends_in_1s": max_in_window(sends),
    }


def _print_profile(profiler: cProfile.Profile, title: str, top: int = 30) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    sys.stderr.write(f"\n===== profile: {title} =====\n{out.getvalue()}\n")


def plan_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The scale scenario's step (a): what ``validate`` and ``apply`` do before the first
    request — check the manifest (every template rendered; ``cloud-init schema`` left out,
    it is capped at 16 documents whatever the size), apply the selection, hash every
    rendered document and build the plan (waves, budgets, content hash)."""
    from orchestrator.manifest.loader import check_manifest
    from orchestrator.manifest.selection import Selection, select
    from orchestrator.run.load import user_data_hashes
    from orchestrator.run.plan import build_plan, manifest_sha256

    rss_start = rss_mib()
    steps: dict[str, float] = {}
    started = last = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal last
        now = time.perf_counter()
        steps[name] = now - last
        last = now

    report = check_manifest(spec["manifest"], spec["env"], schema=None)
    lap("validate_s")
    if report.fleet is None:
        raise BenchError(f"the scale manifest is invalid: {report.problems[:3]}")
    selection = Selection.from_args(exclude=spec["exclude"])
    selected = select(report.fleet, selection)
    lap("select_s")
    hashes = user_data_hashes(report.fleet, selected)
    lap("hash_s")
    plan = build_plan(
        selected,
        selection,
        manifest_hash=manifest_sha256(report.fleet.path),
        user_data_hashes=hashes,
    )
    lap("plan_s")
    return {
        "wall_s": time.perf_counter() - started,
        **steps,
        "targets": len(plan.targets),
        "waves": [w.size for w in plan.waves],
        "rss_start_mib": rss_start,
    }


async def reports_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The scale scenario's step (c): read the run's records from the journal the reinstall
    worker left, then build the text, JSON (serialised) and JUnit reports from them."""
    from orchestrator.clock import SystemClock
    from orchestrator.journal.journal import Journal
    from orchestrator.report.formats import json_report, junit_report, text_report

    rss_start = rss_mib()
    started = time.perf_counter()
    journal = await Journal.open(Path(spec["journal_dir"]) / "journal.sqlite", clock=SystemClock())
    try:
        (run,) = await journal.runs()
        targets = await journal.targets(run.id)
        attempts = await journal.attempts(run.id)
    finally:
        await journal.close()
    read_s = time.perf_counter() - started
    built = time.perf_counter()
    sizes = {
        "text": len(text_report(run, targets, attempts)),
        "json": len(json.dumps(json_report(run, targets, attempts))),
        "junit": len(junit_report(run, targets, attempts)),
    }
    build_s = time.perf_counter() - built
    return {
        "wall_s": read_s + build_s,
        "read_s": read_s,
        "build_s": build_s,
        "targets": len(targets),
        "attempts": len(attempts),
        "report_chars": sizes,
        "rss_start_mib": rss_start,
    }


def worker_main() -> int:
    """``--worker``: run the contender described on stdin; print its result as one JSON line."""
    spec = json.loads(sys.stdin.read())
    if spec["kind"] == "tool":
        import anyio

        result = anyio.run(tool_contender, spec)
    elif spec["kind"] == "scale-plan":
        result = plan_worker(spec)
    elif spec["kind"] == "scale-reports":
        import anyio

        result = anyio.run(reports_worker, spec)
    else:
        result = asyncio.run(bare_contender(spec))
    result["maxrss_mib"] = peak_rss_mib()
    print(json.dumps(result))
    return 0


def curl_contender(url: str, n: int, concurrency: int) -> dict[str, Any] | None:
    """``xargs -P concurrency curl`` doing the same POSTs (bodies from files); None when curl
    or xargs is missing. CPU is the curls' and xargs's (``RUSAGE_CHILDREN``)."""
    curl, xargs = shutil.which("curl"), shutil.which("xargs")
    if curl is None or xargs is None:
        return None
    data = sim_auth(url)
    ids = sorted(data)[:n]
    with tempfile.TemporaryDirectory() as tmp:
        lines = []
        for i, kvm_id in enumerate(ids):
            path = Path(tmp) / f"{i:06d}.form"
            path.write_text(urllib.parse.urlencode(reinstall_form(kvm_id, data[kvm_id])))
            api = f"http://{data[kvm_id]['api_host']}/kvm/v2/set/reinstall"
            lines.append(f"--data-binary @{path} {api}")
        command = [
            xargs, "-P", str(concurrency), "-L", "1",
            curl, "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}\\n",
        ]  # fmt: skip
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.run(
            command, input="\n".join(lines) + "\n", capture_output=True, text=True, check=False
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    codes = Counter(proc.stdout.split())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "accepted": codes.get("200", 0), "codes": dict(codes)}


# ---------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    scale: Scale
    repeat: int
    profile: bool


def _spec(kind: str, n: int, concurrency: int, opts: Options, **extra: Any) -> dict[str, Any]:
    """Describe a contender for ``run_contender`` (which adds the simulator's URL)."""
    spec: dict[str, Any] = {
        "kind": kind,
        "password": SIM_PASSWORD,
        "n": n,
        "concurrency": concurrency,
        "profile": opts.profile,
        "label": extra.pop("label", kind),
        "rate": NO_BIND_RATE,
        "journal": False,
        "force_close": False,
        "settle_s": 0.2,
    }
    spec.update(extra)
    return spec


def _best(spec: dict[str, Any], sim: Sim, repeat: int) -> tuple[dict[str, Any], list[float]]:
    """Run a contender ``repeat`` times; return the run with the lowest wall time and every
    run's wall time."""
    runs = [run_contender(spec, sim) for _ in range(max(1, repeat))]
    return min(runs, key=lambda r: r["wall_s"]), [round(r["wall_s"], 4) for r in runs]


def scenario_latency(opts: Options) -> list[Line]:
    """Latency-bound: 2,000 reinstalls, 100 ms each, 100 at a time (ideal 2.0 s)."""
    n, c = opts.scale.latency, LATENCY_CONCURRENCY
    ideal = n * LATENCY_S / c
    base = {"n": n, "concurrency": c}
    tool = _spec("tool", n, c, opts, label="latency")
    fixed = [
        ("edis-fleet", tool, True),
        ("bare aiohttp (pooled)", _spec("bare", n, c, opts, label="bare pooled"), False),
        ("bare aiohttp (force_close)", _spec("bare", n, c, opts, force_close=True), False),
    ]
    # A reference, not a goal: with a fixed latency the C requests leave and return in
    # lockstep, so each round also pays for the whole burst's CPU on both sides; a latency
    # spread over +-10% (the same mean) breaks the lockstep up.
    spread = [
        ("edis-fleet, L 90-110 ms", tool, False),
        ("bare (fc), L 90-110 ms", _spec("bare", n, c, opts, force_close=True), False),
    ]
    lines: list[Line] = []
    with simulator(n) as sim:
        for latency, contenders in ((LATENCY_S, fixed), (LATENCY_SPREAD_S, spread)):
            faults = {"endpoint": "set/reinstall", "latency": latency, "latency_rate": 1.0}
            sim_faults(sim.url, faults)
            for name, spec, is_goal in contenders:
                best, walls = _best(spec, sim, opts.repeat)
                ratio = best["wall_s"] / ideal
                lines.append(
                    Line(
                        "latency",
                        name,
                        "reinstall phase wall",
                        best["wall_s"],
                        "s",
                        reference=f"ideal {ideal:.3f} s",
                        ratio=ratio,
                        goal="goal <= 1.10" if is_goal else "",
                        ok=ratio <= 1.10 if is_goal else None,
                        details={**base, "latency_s": latency, "runs_wall_s": walls, **best},
                    )
                )
        sim_faults(sim.url, {"endpoint": "set/reinstall", "latency": LATENCY_S, "latency_rate": 1})
        curl = curl_contender(sim.url, n, c)
    if curl is None:
        print("latency  xargs -P curl: skipped (curl or xargs not found)")
        return lines
    complete = curl["accepted"] == n
    lines.append(
        Line(
            "latency",
            "xargs -P curl",
            "reinstall phase wall",
            curl["wall_s"],
            "s",
            reference=f"ideal {ideal:.3f} s",
            ratio=curl["wall_s"] / ideal,
            goal="" if complete else f"only {curl['accepted']} of {n} accepted",
            ok=None if complete else False,
            details={**base, "latency_s": LATENCY_S, **curl},
        )
    )
    return lines


def scenario_rate(opts: Options) -> list[Line]:
    """Rate-bound: 1,000 reinstalls at 50/s against a simulator enforcing 50/s."""
    n = opts.scale.rate
    with simulator(n, "--rate-limit", str(RATE), "--rate-burst", str(RATE_SIM_BURST)) as sim:
        spec = _spec("tool", n, RATE_CONCURRENCY, opts, rate=RATE, settle_s=1.0, label="rate")
        before = sim_throttled(sim.url)
        got = run_contender(spec, sim)  # its auth call is counted too, had it been throttled
        throttled = sim_throttled(sim.url) - before
    achieved = n / got["wall_s"]
    ratio = achieved / RATE
    # After the first burst one send leaves every 1/RATE s: the steady rate, for the record.
    span = got["send_span_s"]
    steady = (got["sends"] - CLIENT_BURST) / span if span else 0.0
    cap = int(RATE) + CLIENT_BURST
    details = {
        "n": n,
        "concurrency": RATE_CONCURRENCY,
        "client_burst": CLIENT_BURST,
        "sim_burst": RATE_SIM_BURST,
        "steady_rate_per_s": steady,
        "measured_phase": "set/reinstall only: auth before the clock, buckets refilled, "
        "no pre-flight",
        **got,
    }
    return [
        Line(
            "rate",
            "edis-fleet",
            "achieved reinstall rate",
            achieved,
            "/s",
            reference=f"goal {RATE:.0f}/s",
            ratio=ratio,
            goal="goal within 3%",
            ok=abs(ratio - 1) <= 0.03,
            details=details,
        ),
        Line(
            "rate",
            "simulator",
            "429 answers",
            throttled,
            "",
            reference="goal 0",
            goal="goal 0",
            ok=throttled == 0,
        ),
        Line(
            "rate",
            "edis-fleet",
            "max sends in any 1 s",
            got["max_sends_in_1s"],
            "",
            reference=f"rate + burst {cap}",
            ratio=got["max_sends_in_1s"] / cap,
            goal=f"goal <= {cap}",
            ok=got["max_sends_in_1s"] <= cap,
        ),
    ]


def scenario_cpu(opts: Options) -> list[Line]:
    """CPU and peak RSS per reinstall vs a bare aiohttp loop, each in its own process."""
    n, c = opts.scale.cpu, CPU_CONCURRENCY
    with simulator(n) as sim:
        tool = run_contender(_spec("tool", n, c, opts, label="cpu"), sim)
        fc = run_contender(_spec("bare", n, c, opts, force_close=True, label="cpu fc"), sim)
        pooled = run_contender(_spec("bare", n, c, opts, label="cpu pooled"), sim)

    def per_k(r: dict[str, Any]) -> float:
        return float(r["cpu_s"]) / n * 1000

    base = {"n": n, "concurrency": c}
    ref_cpu, ref_rss = per_k(fc), float(fc["maxrss_mib"])
    cpu_metric, rss_metric = "CPU s / 1000 reinstalls", "peak RSS"
    return [
        Line(
            "cpu",
            "edis-fleet",
            cpu_metric,
            per_k(tool),
            "s",
            reference=f"bare(fc) {ref_cpu:.3f} s",
            ratio=per_k(tool) / ref_cpu,
            goal="goal <= 1.5x bare(fc)",
            ok=per_k(tool) <= 1.5 * ref_cpu,
            details={**base, "ratio_vs_pooled": per_k(tool) / per_k(pooled), **tool},
        ),
        Line(
            "cpu",
            "edis-fleet",
            rss_metric,
            tool["maxrss_mib"],
            "MiB",
            reference=f"bare(fc) {ref_rss:.1f} MiB",
            ratio=tool["maxrss_mib"] / ref_rss,
            goal="goal <= 2x bare(fc)",
            ok=tool["maxrss_mib"] <= 2 * ref_rss,
            details=base,
        ),
        Line("cpu", "bare aiohttp (force_close)", cpu_metric, ref_cpu, "s", details={**base, **fc}),
        Line("cpu", "bare aiohttp (force_close)", rss_metric, ref_rss, "MiB"),
        Line(
            "cpu",
            "bare aiohttp (pooled)",
            cpu_metric,
            per_k(pooled),
            "s",
            ratio=per_k(tool) / per_k(pooled),
            goal="ratio: edis-fleet / pooled",
            details={**base, **pooled},
        ),
        Line(
            "cpu",
            "bare aiohttp (pooled)",
            rss_metric,
            pooled["maxrss_mib"],
            "MiB",
            ratio=tool["maxrss_mib"] / pooled["maxrss_mib"],
            goal="ratio: edis-fleet / pooled",
        ),
    ]


def scenario_journal(opts: Options) -> list[Line]:
    """The latency scenario with and without the journal, runs interleaved."""
    n, c = opts.scale.journal, LATENCY_CONCURRENCY
    ideal = n * LATENCY_S / c
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    with simulator(n) as sim:
        faults = {"endpoint": "set/reinstall", "latency": LATENCY_S, "latency_rate": 1.0}
        sim_faults(sim.url, faults)
        for _ in range(max(1, opts.repeat)):
            for journal in (False, True):
                label = "journal on" if journal else "journal off"
                spec = _spec("tool", n, c, opts, journal=journal, label=label)
                runs[journal].append(run_contender(spec, sim))
    off = min(runs[False], key=lambda r: r["wall_s"])
    on = min(runs[True], key=lambda r: r["wall_s"])
    ratio = on["wall_s"] / off["wall_s"]
    base = {"n": n, "concurrency": c, "latency_s": LATENCY_S}
    return [
        Line(
            "journal",
            "edis-fleet, no journal",
            "reinstall phase wall",
            off["wall_s"],
            "s",
            reference=f"ideal {ideal:.3f} s",
            ratio=off["wall_s"] / ideal,
            details={**base, "runs_wall_s": [round(r["wall_s"], 4) for r in runs[False]], **off},
        ),
        Line(
            "journal",
            "edis-fleet + journal",
            "reinstall phase wall",
            on["wall_s"],
            "s",
            reference=f"no journal {off['wall_s']:.3f} s",
            ratio=ratio,
            goal="goal <= 1.10",
            ok=ratio <= 1.10,
            details={**base, "runs_wall_s": [round(r["wall_s"], 4) for r in runs[True]], **on},
        ),
    ]


def write_scale_manifest(folder: Path, n: int) -> Path:
    """Write a manifest of the simulator's first ``n`` generated VPSes (``kvm_{100000+i}_
    {200000+i}``) with a per-VPS template, readiness ``none``, concurrency 200, a rate that
    does not bind and waves ``[1, 1%, 10%, 100%]``; return its path."""
    (folder / "templates").mkdir(parents=True)
    (folder / "templates" / "scale.yaml.j2").write_text(SCALE_TEMPLATE, encoding="utf-8")
    lines = [
        "version: 1",
        "account:",
        "  email: {env: EDIS_EMAIL}",
        "  password: {env: EDIS_PASSWORD}",
        "defaults:",
        f"  image: {IMAGE}",
        "  cloud_init: templates/scale.yaml.j2",
        "  root_password: {env: EDIS_ROOT_PASSWORD}",
        "  vars: {domain: example.net}",
        "  readiness: {mode: none}",
        "tags: [web, db]",
        "groups:",
        "  web: {tags: [web]}",
        "  db: {tags: [db]}",
        "rollout:",
        f"  concurrency: {SCALE_CONCURRENCY}",
        f"  rate: {NO_BIND_RATE:.0f}/s",
        "  waves: [1, '1%', '10%', '100%']",
        "  failure_budget: {wave: '1%', run: '1%'}",
        "vps:",
    ]
    lines += [
        f"  - {{id: kvm_{100000 + i}_{200000 + i}, hostname: vps-{i:05d}, "
        f"group: {'db' if i % 10 == 0 else 'web'}, vars: {{n: {i}}}}}"
        for i in range(1, n + 1)
    ]
    path = folder / "fleet.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _per_vps(result: dict[str, Any], n: int, wall_key: str) -> tuple[float, float]:
    """(wall µs per VPS, memory KiB per VPS) of one worker run: the memory is its peak RSS
    minus its RSS once the imports were done."""
    memory = max(0.0, float(result["maxrss_mib"]) - float(result["rss_start_mib"]))
    return float(result[wall_key]) / n * 1e6, memory * 1024 / n


def scenario_scale(opts: Options) -> list[Line]:
    """The same run at each size: per-VPS wall time and memory of (a) validate + selection +
    plan, (b) the reinstall phase with the journal, (c) the reports from the journal."""
    sizes = opts.scale.sizes
    repeat = max(1, opts.repeat)
    phases = ("plan", "reinstall", "reports")
    figures: dict[str, dict[int, tuple[float, float]]] = {p: {} for p in phases}
    lines: list[Line] = []
    for n in sizes:
        runs: dict[str, list[dict[str, Any]]] = {p: [] for p in phases}
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            manifest = write_scale_manifest(folder / "fleet", n)
            plan_spec = {"kind": "scale-plan", "manifest": str(manifest), "env": SCALE_ENV}
            for _ in range(repeat):
                runs["plan"].append(run_worker({**plan_spec, "exclude": []}))
            waves = runs["plan"][0]["waves"]
            with simulator(n) as sim:
                for r in range(repeat):
                    journal_dir = folder / f"journal-{r}"
                    journal_dir.mkdir()
                    spec = _spec(
                        "tool",
                        n,
                        SCALE_CONCURRENCY,
                        opts,
                        label=f"scale {n}",
                        journal=True,
                        journal_dir=str(journal_dir),
                        waves=waves,
                    )
                    runs["reinstall"].append({**run_contender(spec, sim), "dir": str(journal_dir)})
            kept = min(runs["reinstall"], key=lambda r: r["total_s"])
            for _ in range(repeat):
                spec = {"kind": "scale-reports", "journal_dir": kept["dir"], "n": n}
                runs["reports"].append(run_worker(spec))
        for phase in phases:
            key = "total_s" if phase == "reinstall" else "wall_s"
            pairs = [_per_vps(r, n, key) for r in runs[phase]]
            wall, memory = min(p[0] for p in pairs), min(p[1] for p in pairs)
            figures[phase][n] = (wall, memory)
            best = min(runs[phase], key=lambda r: r[key])
            details = {"n": n, "runs": [round(r[key], 4) for r in runs[phase]], **best}
            details.pop("dir", None)
            lines += [
                Line("scale", f"{phase} {n:,}", "wall / VPS", wall, "µs", details=details),
                Line("scale", f"{phase} {n:,}", "memory / VPS", memory, "KiB"),
            ]
    low, high = sizes[0], sizes[-1]
    for phase in phases:
        for index, (metric, unit) in enumerate((("wall / VPS", "µs"), ("memory / VPS", "KiB"))):
            at_low, at_high = figures[phase][low][index], figures[phase][high][index]
            ratio = at_high / at_low if at_low else float("inf")
            lines.append(
                Line(
                    "scale",
                    f"{phase} {high:,} vs {low:,}",
                    f"{metric} ratio",
                    ratio,
                    "x",
                    reference=f"{at_low:.2f} {unit} at {low:,}",
                    ratio=ratio,
                    goal=f"goal <= {SCALE_GOAL:.2f}",
                    ok=ratio <= SCALE_GOAL,
                    details={
                        "per_vps": {str(n): figures[phase][n][index] for n in sizes},
                        "unit": unit,
                    },
                )
            )
    return lines


RUNNERS = {
    "latency": scenario_latency,
    "rate": scenario_rate,
    "cpu": scenario_cpu,
    "journal": scenario_journal,
    "scale": scenario_scale,
}


def _selected(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(SCENARIOS))
    if unknown or not names:
        known = ", ".join(SCENARIOS)
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown) or '(none)'}; pick from {known}"
        )
    return names


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen scenarios; print one line per measurement, write the JSON file; return
    1 when a goal was missed or a scenario could not run, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        type=_selected,
        default=list(SCENARIOS),
        metavar="LIST",
        help=f"comma-separated scenarios ({','.join(SCENARIOS)}; default all)",
    )
    parser.add_argument("--quick", action="store_true", help="scale N down for a smoke run")
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per wall-time contender, best kept (default 2; 1 with --quick)",
    )
    parser.add_argument("--json", default="bench-results.json", help="where results go")
    parser.add_argument("--profile", action="store_true", help="cProfile the contenders")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)  # fmt: skip
    if args.worker:
        return worker_main()
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 2)
    opts = Options(QUICK if args.quick else FULL, repeat, args.profile)
    lines: list[Line] = []
    errors: dict[str, str] = {}
    started = time.perf_counter()
    print(f"{'scenario':<8} {'contender':<26} {'metric':<22} {'measured':>10} {'unit':<8} "
          f"{'reference':<22} {'ratio':>7}  result")  # fmt: skip
    for name in args.only:
        try:
            got = RUNNERS[name](opts)
        except BenchError as exc:
            errors[name] = str(exc)
            print(f"{name:<8} ERROR: {exc}")
            continue
        for line in got:
            print(line.text(), flush=True)
        lines.extend(got)
    ok = not errors and all(line.ok is not False for line in lines)
    doc = {
        "benchmark": "apply_bench",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "repeat": repeat,
        "profiled": args.profile,
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "seconds": round(time.perf_counter() - started, 1),
        "ok": ok,
        "errors": errors,
        "results": [line.__dict__ for line in lines],
    }
    Path(args.json).write_text(json.dumps(doc, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"{'all goals met' if ok else 'GOALS MISSED'} in {doc['seconds']} s; "
          f"results in {args.json}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
