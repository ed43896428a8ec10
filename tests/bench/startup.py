"""How fast ``edis-fleet`` starts: the median of 10 starts of ``edis-fleet --version`` and
``edis-fleet --help`` against ``python -c pass`` measured in the same run (the machine's own
floor). Goal: each command's median under 0.25 s. Prints the figures and the ratio to the floor;
exits 1 when a goal is missed. A benchmark script, not a test (run by ``make bench``).

    .venv/bin/python tests/bench/startup.py [--runs N] [--goal SECONDS]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GOAL_S = 0.25


def command() -> list[str]:
    """The installed entry point of this venv, else ``python -m orchestrator``."""
    script = Path(sys.executable).with_name("edis-fleet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def median_start(argv: Sequence[str], runs: int) -> tuple[float, float]:
    """Return the median wall time and the median CPU time (user + system) of ``runs`` starts
    of ``argv`` (output discarded); raises ``SystemExit`` when the command fails.

    The CPU time is printed beside the wall time: on a busy machine the wall time also counts
    waiting for a core, the CPU time does not."""
    times: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        cpu_before = _children_cpu()
        started = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, cwd=REPO, check=False)
        times.append(time.perf_counter() - started)
        cpu.append(_children_cpu() - cpu_before)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr!r}")
    return statistics.median(times), statistics.median(cpu)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print, and return 0 when every command met the goal, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="starts per command (10)")
    parser.add_argument("--goal", type=float, default=GOAL_S, help=f"seconds ({GOAL_S})")
    args = parser.parse_args(argv)
    # One warm-up start each, so the first measured one does not pay for a cold page cache.
    cli = command()
    for warm in ([sys.executable, "-c", "pass"], [*cli, "--version"]):
        subprocess.run(warm, capture_output=True, cwd=REPO, check=False)
    floor, floor_cpu = median_start([sys.executable, "-c", "pass"], args.runs)
    print(f"python -c pass          median {floor:.3f}s (cpu {floor_cpu:.3f}s), {args.runs} runs")
    ok = True
    for flag in ("--version", "--help"):
        took, took_cpu = median_start([*cli, flag], args.runs)
        met = took < args.goal
        ok = ok and met
        print(
            f"edis-fleet {flag:<12} median {took:.3f}s (cpu {took_cpu:.3f}s), "
            f"{took / floor:.1f}x python -c pass (goal < {args.goal:.2f}s: "
            f"{'met' if met else 'MISSED'})"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
