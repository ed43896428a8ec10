"""The short soak as a test: ``tests/soak/soak.py --short`` as a subprocess.

Not part of ``make test`` (tests/soak is not collected by default: the short soak takes 2-3
minutes on 2 cores). Run it with ``pytest tests/soak/test_soak_short.py``; ``make soak
SOAK_FLAGS=--short`` runs the same script directly (it exits 1 on a broken promise).

The script runs the real CLI against the bundled simulator (in processes of their own): a
chaos run of a few hundred VPSes, probes with the chaos profile's random throttles and
session revocations left in (each ending with a Ctrl-C), a few SIGKILLs each followed by
``resume``, and about forty malformed or fuzzed manifests through ``validate`` and ``apply``.
It prints one line per promise; this test checks it exits 0 and printed a PASS line for
every promise (findings may say WARN, never FAIL). No timing is asserted: the script's own
bounds only stop a run that hangs.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "soak" / "soak.py"
# Far above the ~2 minutes it takes on 2 cores; only a hung run reaches it.
TIMEOUT_S = 900

PROMISES = {
    "chaos": (
        "run finished",
        "reinstalls accepted per VPS",
        "in doubt vs faults injected",
        "auth calls vs session ends",
        "explicit events",
        "unhandled exceptions",
    ),
    "kills": (
        "kills",
        "wiped at most once, never resent",
        "nothing lost",
        "in doubt only if in flight at a kill",
        "unhandled exceptions",
        "exit code = journal",
    ),
    "kills-resend": (
        "kills",
        "one resend per VPS at most",
        "none stranded, nothing lost",
        "exit code = journal",
        "unhandled exceptions",
    ),
    "bad-input": (
        "validate",
        "apply on refused manifests",
        "apply on still-valid mutations",
        "no traceback, no secret",
    ),
    "liveness": ("Ctrl-C in the run",),
}
FINDINGS = {
    "liveness": (
        "request rate under the chaos profile",
        "Ctrl-C",
        "pre-flight under random session revocations",
    )
}
LINE = re.compile(r"^(PASS|FAIL|WARN|INFO)  ([a-z-]+): ([^:]+): ")


@pytest.mark.subprocess
def test_short_soak_keeps_every_promise() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--short"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    output = proc.stdout + proc.stderr
    seen: dict[tuple[str, str], str] = {}
    for line in proc.stdout.splitlines():
        match = LINE.match(line)
        if match:
            seen[(match.group(2), match.group(3))] = match.group(1)
    assert proc.returncode == 0, output
    for check, names in PROMISES.items():
        for name in names:
            assert seen.get((check, name)) == "PASS", f"{check}: {name}\n{output}"
    for check, names in FINDINGS.items():
        for name in names:
            assert seen.get((check, name)) in ("PASS", "WARN", "INFO"), f"{check}: {name}\n{output}"
    assert "FAIL" not in seen.values(), output
