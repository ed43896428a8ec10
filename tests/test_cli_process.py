"""The installed ``edis-fleet`` command as a real process: what only a process shows (the
console-script entry point, exit statuses, output through real pipes). Everything else about
the commands is tested in-process through ``orchestrator.cli.main(argv)``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.version import __version__
from tests.cli_support import REPO, process_env
from tests.manifest_support import ENV
from tests.test_manifest_bad import THROUGH_THE_PROCESS, check_case, run_case


def _command() -> list[str]:
    """The console script ``pip install`` put next to this interpreter (else ``-m``)."""
    script = Path(sys.executable).with_name("edis-fleet")
    return [str(script)] if script.exists() else [sys.executable, "-m", "orchestrator"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*_command(), *args],
        cwd=REPO,
        env=process_env(ENV),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.subprocess
def test_the_installed_command_exit_codes(tmp_path: Path) -> None:
    done = _run("--version")
    assert (done.returncode, done.stdout) == (0, f"edis-fleet {__version__}\n")
    done = _run()
    assert done.returncode == 2
    assert "usage: edis-fleet" in done.stderr
    done = _run("validate", "fleets/example.yaml", "--strict")
    assert done.returncode == 0, done.stderr
    assert "fleets/example.yaml: valid" in done.stdout
    # Malformed manifests give the same lines and exit code through a real process.
    for name in THROUGH_THE_PROCESS:
        check_case(name, run_case(name, tmp_path / name, process=True))
