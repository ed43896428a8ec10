"""Helpers shared by the benchmark and soak scripts (not a test module).

The simulator runs in its own process (``python -m orchestrator simulator --port 0``), so the
CPU time and memory measured in the driver (or a contender process) are never the server's.
It is driven and inspected over its ``/_sim/...`` HTTP control API (see
``orchestrator/simulator/control.py``) with the standard library only, so a contender that
imports these helpers does not pay for importing the tool.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]
EMAIL = "operator@example.com"  # the simulator's default account email
SIM_PASSWORD = "bench-sim-pass"  # the simulator's throwaway account
STARTUP_BOUND_S = 120.0  # only stops a hung simulator start, not a speed check


class BenchError(Exception):
    """A contender, a driver step or the simulator could not run at all."""


@dataclass(frozen=True)
class Sim:
    """A running simulator process: its session URL and process id."""

    url: str
    pid: int

    def cpu_s(self) -> float | None:
        """Return the CPU seconds the simulator used so far (None where ``/proc`` is missing),
        to show whether the server was the bottleneck."""
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")

    def state(self) -> dict[str, Any]:
        """Return ``GET /_sim/state``: counters, fault plan and every VPS's state."""
        doc: dict[str, Any] = sim_http(f"{self.url}/_sim/state")
        return doc

    def control(self, name: str, doc: dict[str, Any]) -> Any:
        """POST ``doc`` to ``/_sim/NAME`` (``faults``, ``migrate``, ``invalidate``,
        ``install_outcome``...) and return the answer."""
        return sim_http(f"{self.url}/_sim/{name}", json.dumps(doc).encode(), "application/json")


@contextlib.contextmanager
def simulator(
    vps: int,
    *options: str,
    time_scale: float = 0.0,
    password: str = SIM_PASSWORD,
    stderr: IO[bytes] | IO[str] | None = None,
) -> Iterator[Sim]:
    """Run ``python -m orchestrator simulator`` in a subprocess; yield it once it serves.

    ``time_scale`` 0 (the default) makes installs end at once, so a VPS can be reinstalled
    again. ``options`` are further ``edis-fleet simulator`` options (``--profile chaos``...);
    ``stderr`` is where the simulator's own log goes (inherited when None). Raises
    ``BenchError`` when the simulator does not come up.
    """
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "orchestrator", "simulator",
            "--vps", str(vps), "--port", "0",
            "--time-scale", repr(time_scale),
            *options,
        ],
        cwd=REPO,
        env={**os.environ, "EDIS_SIM_PASSWORD": password},
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        started = time.monotonic()
        url = None
        for line in proc.stdout:  # ends at EOF if the simulator dies
            match = re.match(r"session URL: (\S+)", line)
            if match:
                url = match.group(1)
                break
            if time.monotonic() - started > STARTUP_BOUND_S:
                break
        if url is None:
            raise BenchError("the simulator did not print its session URL")
        yield Sim(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


# The simulator is on loopback: never go through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sim_http(url: str, data: bytes | None = None, content_type: str = "") -> Any:
    """GET ``url`` (POST ``data`` when given) and return the parsed JSON answer."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=data, headers=headers)
    with _OPENER.open(request, timeout=120) as resp:
        return json.loads(resp.read())


def sim_faults(url: str, doc: dict[str, Any]) -> None:
    """POST ``doc`` to the simulator's ``/_sim/faults``."""
    sim_http(f"{url}/_sim/faults", json.dumps(doc).encode(), "application/json")


def sim_throttled(url: str) -> int:
    """Return the simulator's count of 429s from its own rate limit."""
    return int(sim_http(f"{url}/_sim/state")["counters"]["throttled"])


def sim_auth(url: str, password: str = SIM_PASSWORD) -> dict[str, dict[str, Any]]:
    """Authenticate against the simulator; return the per-VPS entries."""
    body = urllib.parse.urlencode({"email": EMAIL, "pw": password}).encode()
    doc = sim_http(f"{url}/kvm/v2/get/auth", body, "application/x-www-form-urlencoded")
    data: dict[str, dict[str, Any]] = doc["data"]
    return data


def generated_ids(n: int) -> list[str]:
    """The kvm ids of a generated simulator account of ``n`` VPSes, in account order."""
    return [f"kvm_{100000 + i}_{200000 + i}" for i in range(1, n + 1)]


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """Return the most timestamps any half-open interval of ``window`` seconds holds."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while t - ordered[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def rss_mib() -> float:
    """This process's resident memory now, in MiB (0.0 where ``/proc`` is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
