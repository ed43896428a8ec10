"""Benchmark: reinstall requests per second the simulator serves (not a test).

Starts ``python -m orchestrator simulator`` in a subprocess (``--second-reinstall accept`` so
every request is a full, accepted reinstall; no faults, no latency), authenticates once, then
fires reinstalls over keep-alive connections from aiohttp for a fixed time and prints the rate.

    .venv/bin/python tests/bench/sim_throughput.py [--seconds 5] [--concurrency 32] [--vps 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "bench-pass"


def _start(vps: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "orchestrator",
            "simulator",
            "--vps",
            str(vps),
            "--port",
            "0",
            "--second-reinstall",
            "accept",
            "--time-scale",
            "0.0001",
            "--keepalive-timeout",
            "30",
        ],
        cwd=REPO,
        env={**os.environ, "EDIS_SIM_PASSWORD": PASSWORD},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        match = re.match(r"session URL: (\S+)", line)
        if match:
            return proc, match.group(1)
    raise RuntimeError("the simulator did not print its session URL")


async def _worker(
    http: aiohttp.ClientSession,
    targets: list[tuple[str, dict[str, str]]],
    offset: int,
    deadline: float,
    counts: list[int],
) -> None:
    i = offset
    while time.perf_counter() < deadline:
        url, form = targets[i % len(targets)]
        async with http.post(url, data=form) as resp:
            await resp.read()
            counts[0 if resp.status == 200 else 1] += 1
        i += 1


async def main() -> None:
    """Run the benchmark and print requests per second."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--vps", type=int, default=200)
    args = parser.parse_args()

    proc, session_url = _start(args.vps)
    try:
        connector = aiohttp.TCPConnector(limit=args.concurrency, keepalive_timeout=20)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(
                f"{session_url}/kvm/v2/get/auth",
                data={"email": "operator@example.com", "pw": PASSWORD},
            ) as resp:
                data = (await resp.json())["data"]
            targets = [
                (
                    f"http://{e['api_host']}/kvm/v2/set/reinstall",
                    {
                        "signature": e["signature"],
                        "kvm_id": kvm_id,
                        "valid_until": str(e["valid_until"]),
                        "image": "cloudinit_ubuntu-lts-24-04",
                        "password": "correct-horse-battery",
                        "cloudinit_user_data": "#cloud-config\nhostname: bench\n",
                    },
                )
                for kvm_id, e in data.items()
            ]
            counts = [0, 0]
            # Warm up connections and code paths, then measure.
            await asyncio.gather(
                *(_worker(http, targets, i, time.perf_counter() + 0.5, [0, 0]) for i in range(8))
            )
            start = time.perf_counter()
            deadline = start + args.seconds
            await asyncio.gather(
                *(_worker(http, targets, i, deadline, counts) for i in range(args.concurrency))
            )
            elapsed = time.perf_counter() - start
            # Cross-check with the server's own count (includes the warm-up requests).
            async with http.get(f"{session_url}/_sim/state") as resp:
                state = await resp.json()
            server_accepted = sum(state["counters"]["reinstall_accepted"].values())
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    ok, other = counts
    print(
        f"{ok + other} reinstall requests in {elapsed:.2f} s: "
        f"{(ok + other) / elapsed:.0f} req/s ({ok} accepted, {other} other; "
        f"the server counted {server_accepted} accepted including the warm-up)"
    )


if __name__ == "__main__":
    asyncio.run(main())
