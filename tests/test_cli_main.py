"""``orchestrator.cli.main(argv)`` itself, in-process: what the top-level parser answers
before any subcommand runs (the same as tests/test_cli_process.py checks through a process)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.version import __version__
from tests.cli_support import run_cli


def test_version_help_and_no_command(tmp_path: Path) -> None:
    done = run_cli(["--version"], cwd=tmp_path, env={})
    assert (done.returncode, done.stdout, done.stderr) == (0, f"edis-fleet {__version__}\n", "")
    done = run_cli(["--help"], cwd=tmp_path, env={})
    assert done.returncode == 0
    assert done.stdout.startswith("usage: edis-fleet")
    assert "exit codes" in done.stdout
    for command in ("validate", "plan", "apply", "resume", "retry-failed", "report", "simulator"):
        assert command in done.stdout, command
    done = run_cli([], cwd=tmp_path, env={})
    assert done.returncode == 2
    assert done.stderr.startswith("usage: edis-fleet")
    done = run_cli(["no-such-command"], cwd=tmp_path, env={})
    assert done.returncode == 2
    assert "invalid choice: 'no-such-command'" in done.stderr
