"""Benchmark: throughput under an imperfect provider, per simulator profile (not a test).

The question: do sporadic errors stall a fleet, and does a real rate limit get used fully
without a storm of 429s? Each scenario runs the simulator in its own process (``--vps N
--time-scale 0.01 --profile P``) and edis-fleet in another: the same wiring as a run
(``run/execute.py``): one ``RateLimiter`` for every request, ``ReadRetries`` sharing the run's
``RetryBudget``, the session book's auth through the limiter, pre-flight (every image list
read), then the scheduler. N VPSes (1,000), rate 20/s, concurrency 20, readiness ``none``,
``in_doubt: report``, one wave.

Scenarios:

``healthy``    no faults: the reference.
``flaky``      ~2% 503s, 3% other 5xx, 1% dropped connections, 0.5% bursts of 429s.
``chaos``      flaky plus ~8% single 429s (half with ``Retry-After``), bursts, lost responses,
               revoked sessions, installs that fail or hang.
``limit``      no faults, but the simulator enforces its own limit of 10/s (burst one second's
               worth) with 429 + ``Retry-After`` (the issue's "throttled": the ``throttled``
               profile's 429s are random, whatever the rate, so no client can keep them
               under 2%; it is run as ``throttled`` for information with ``--only``).

Measured per scenario: pre-flight time, the time to decide every reinstall (run start → the
last reinstall accepted, failed or in doubt), requests per second, the client's throttles,
sporadic errors, fleet-wide pauses and rate cuts, the longest gap between two requests, the
final states, and from the simulator: 429s of its own limit, injected faults, reinstalls
accepted per VPS. Goals (the exit status is 1 when one is missed):

- every VPS accounted for (a final state, pre-flight passed), no VPS reinstalled twice;
- ``healthy``: requests/s within 3% of 20, no 429;
- ``flaky``: total time within 1.2x of healthy's, and pre-flight within 1.2x of healthy's;
- ``chaos``: total time within 1.5x of healthy's;
- ``limit``: requests the server let through per second within 10% of its 10/s, its 429s
  under 2% of requests;
- every scenario: no 60-second gap without a request.

    .venv/bin/python tests/bench/profiles_bench.py [--n 1000] [--only healthy,flaky,...]
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench.common import EMAIL, REPO, SIM_PASSWORD, BenchError, simulator

RATE = 20.0
CONCURRENCY = 20
LIMIT = 10.0
IMAGE = "cloudinit_ubuntu-lts-24-04"
ROOT_PASSWORD = "bench-Root-pass-42"  # sent to simulated VPSes only
TIME_SCALE = 0.01
MAX_GAP_S = 60.0
SCENARIOS: dict[str, tuple[str, ...]] = {
    "healthy": ("--profile", "healthy"),
    "flaky": ("--profile", "flaky"),
    "chaos": ("--profile", "chaos"),
    "limit": ("--profile", "healthy", "--rate-limit", str(LIMIT)),
    "throttled": ("--profile", "throttled"),
}
DEFAULT = ("healthy", "flaky", "chaos", "limit")


async def run_tool(spec: dict[str, Any]) -> dict[str, Any]:
    """Pre-flight and reinstall ``spec["n"]`` VPSes of the simulator at ``spec["url"]``."""
    import anyio

    from orchestrator.clock import SystemClock
    from orchestrator.edis.client import EdisClient
    from orchestrator.edis.session import SessionBook
    from orchestrator.fleet import ReadinessMode
    from orchestrator.model import Attempt, TargetEvent, TargetState
    from orchestrator.run.api import EdisFleetAPI, LimitedAuth, ReadRetries
    from orchestrator.run.limits import Limits
    from orchestrator.run.preflight import Check, preflight
    from orchestrator.run.retry import RetryBudget
    from orchestrator.run.scheduler import Job, RunSettings, Scheduler, WaveSpec
    from orchestrator.secrets import Secret

    n = spec["n"]
    clock = SystemClock()
    limits = Limits.create(concurrency=CONCURRENCY, rate=RATE, clock=clock)
    attempts: list[float] = []
    outcomes: Counter[str] = Counter()

    def on_attempt(attempt: Attempt) -> None:
        attempts.append(time.monotonic())
        outcomes[attempt.outcome.value] += 1

    final = {TargetState.ACCEPTED, TargetState.FAILED, TargetState.IN_DOUBT, TargetState.SKIPPED}
    decided: list[float] = []

    class Sink:
        async def before_send(self, kvm_id: str, wave: int) -> None:
            return None

        def emit(self, event: TargetEvent) -> None:
            if event.state in final:
                decided.append(time.monotonic())

    async with EdisClient(
        session_url=spec["url"],
        email=EMAIL,
        password=Secret(SIM_PASSWORD),
        allowed_hosts=["127.0.0.0/8"],
        max_connections=max(CONCURRENCY, 10),
        clock=clock,
        on_attempt=on_attempt,
    ) as client:
        started = time.monotonic()
        budget = RetryBudget()
        reads = ReadRetries(clock=clock, budget=budget, limiter=limits.requests)
        book = SessionBook(LimitedAuth(client, limits.requests, reads), clock=clock)
        ids = sorted(await book.accounts())[:n]
        found = await preflight(
            [Check(k, IMAGE) for k in ids],
            client=client,
            book=book,
            retries=reads,
            limiter=limits.requests,
        )
        preflight_s = time.monotonic() - started
        preflight_requests = len(attempts)
        jobs = tuple(
            Job(
                kvm_id=k,
                wave=1,
                image=IMAGE,
                password=Secret(ROOT_PASSWORD),
                user_data=None,
                readiness=ReadinessMode.NONE,
                port=22,
                deadline_s=600.0,
                min_install_s=0.0,
                install_window_s=600.0,
            )
            for k in ids
        )
        scheduler = Scheduler(
            EdisFleetAPI(client, book, reads),
            Sink(),
            clock=clock,
            limits=limits,
            settings=RunSettings(run_budget=n),
            budget=budget,
        )
        result = None
        if found.ok:
            async with anyio.create_task_group():
                result = await scheduler.run([WaveSpec(1, jobs, budget=n)])
        ended = time.monotonic()
    rl = limits.requests
    ad = rl.bucket.adaptive
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    return {
        "preflight_s": preflight_s,
        "preflight_problems": found.problems[:3],
        "preflight_requests": preflight_requests,
        "total_s": (max(decided) if decided else ended) - started,
        # The tail: when 99% were decided (a last VPS retrying a few times shows here).
        "p99_s": (sorted(decided)[int(0.99 * (len(decided) - 1))] - started) if decided else 0.0,
        "requests": len(attempts),
        "span_s": (attempts[-1] - attempts[0]) if attempts else 0.0,
        "outcomes": dict(outcomes),
        "states": dict(Counter(s.value for s in result.states.values())) if result else {},
        "max_gap_s": max(gaps, default=0.0),
        "throttles": rl.throttles,
        "errors": rl.errors,
        "pauses": ad.pauses,
        "cuts": ad.cuts,
        "undone": ad.undone,
        "tolerance": ad.tolerance,
        "cooldown_s": rl.cooldown_total,
        "lowest_rate": ad.lowest,
        "retries": budget.retries,
        "retries_refused": budget.refused,
    }


def run_scenario(name: str, n: int) -> dict[str, Any]:
    """Run one scenario (simulator and tool each in their own process); return the figures."""
    with simulator(n, *SCENARIOS[name], time_scale=TIME_SCALE, stderr=subprocess.DEVNULL) as sim:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            input=json.dumps({"n": n, "url": sim.url}),
            capture_output=True,
            text=True,
            cwd=REPO,
            check=False,
        )
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise BenchError(f"{name}: the tool failed (exit {proc.returncode})")
        result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        counters = sim.state()["counters"]
    result["sim_throttled"] = counters["throttled"]
    result["sim_requests"] = sum(counters["requests"].values())
    result["sim_faults"] = counters["faults"]
    accepted = counters["reinstall_accepted"].values()
    result["reinstalled_twice"] = sum(1 for c in accepted if c > 1)
    return result


def check(name: str, r: dict[str, Any], healthy: dict[str, Any] | None, n: int) -> list[str]:
    """Return the goal lines of one scenario, each starting with PASS, FAIL or info."""
    lines: list[str] = []

    def goal(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'FAIL'}  {name:<9} {text}")

    settled = sum(r["states"].values())
    goal(
        settled == n and not r["preflight_problems"],
        f"every VPS accounted for: {settled}/{n} {r['states']} {r['preflight_problems']}",
    )
    goal(r["reinstalled_twice"] == 0, f"VPSes reinstalled twice: {r['reinstalled_twice']}")
    goal(r["max_gap_s"] < MAX_GAP_S, f"longest gap between requests {r['max_gap_s']:.1f} s")
    rate = r["requests"] / r["span_s"] if r["span_s"] else 0.0
    if name == "healthy":
        goal(abs(rate - RATE) <= 0.03 * RATE, f"{rate:.2f} requests/s (goal {RATE:g} ± 3%)")
        goal(r["sim_throttled"] == 0 and r["throttles"] == 0, f"429s: {r['throttles']}")
    elif name == "limit":
        through = (r["sim_requests"] - r["sim_throttled"]) / r["span_s"]
        goal(abs(through - LIMIT) <= 0.1 * LIMIT, f"{through:.2f} let through/s (limit {LIMIT:g})")
        share = r["sim_throttled"] / max(r["sim_requests"], 1)
        goal(share < 0.02, f"429s {r['sim_throttled']} = {share:.2%} of requests (goal < 2%)")
    if healthy is not None and name in ("flaky", "chaos"):
        bound = 1.2 if name == "flaky" else 1.5
        ratio = r["total_s"] / healthy["total_s"]
        goal(ratio <= bound, f"total {r['total_s']:.1f} s = {ratio:.2f}x healthy (goal {bound}x)")
        if name == "flaky":
            pre = r["preflight_s"] / healthy["preflight_s"]
            goal(pre <= 1.2, f"pre-flight {r['preflight_s']:.1f} s = {pre:.2f}x healthy")
    return lines


def table(results: dict[str, dict[str, Any]]) -> str:
    """Return the per-scenario table."""
    head = (
        f"{'scenario':<9} {'pre-flight':>10} {'total':>8} {'99%':>6} {'req':>6} {'req/s':>6} "
        f"{'429 cli':>7} {'429 sim':>7} {'errors':>6} {'pauses':>6} {'cuts':>5} "
        f"{'undone':>6} {'cool s':>6} {'low r':>6} {'gap s':>6} {'retries':>7}  states"
    )
    rows = [head]
    for name, r in results.items():
        rate = r["requests"] / r["span_s"] if r["span_s"] else 0.0
        rows.append(
            f"{name:<9} {r['preflight_s']:10.1f} {r['total_s']:8.1f} {r.get('p99_s', 0):6.1f} "
            f"{r['requests']:6d} "
            f"{rate:6.2f} {r['throttles']:7d} {r['sim_throttled']:7d} {r['errors']:6d} "
            f"{r['pauses']:6d} {r['cuts']:5d} {r['undone']:6d} {r['cooldown_s']:6.1f} "
            f"{r['lowest_rate']:6.2f} {r['max_gap_s']:6.1f} {r['retries']:7d}  {r['states']}"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the scenarios, print the table and the goals; return 1 when a goal is missed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="VPSes per scenario (1000)")
    parser.add_argument("--only", default=",".join(DEFAULT), help="comma-separated scenarios")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import anyio

        print(json.dumps(anyio.run(run_tool, json.loads(sys.stdin.read()))))
        return 0
    names = [s for s in args.only.split(",") if s]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    if any(s in ("flaky", "chaos") for s in names) and "healthy" not in names:
        names.insert(0, "healthy")  # the reference they are measured against
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        print(f"running {name} ({args.n} VPSes)...", file=sys.stderr, flush=True)
        results[name] = run_scenario(name, args.n)
    print(table(results))
    lines = [
        line
        for name, r in results.items()
        for line in check(name, r, results.get("healthy"), args.n)
    ]
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))
    return 1 if any(line.startswith("FAIL") for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
