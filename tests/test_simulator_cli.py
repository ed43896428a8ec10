"""``edis-fleet simulator`` end to end: a real auth call, then SIGINT or SIGTERM, exit 0.

The SIGINT test runs the real command in a process; the others run it in-process
(``main(argv)``), stopped by a signal to this process once it serves.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import anyio
import pytest

from orchestrator.cli import main as cli_main
from tests.cli_support import run_serving_cli

SECRET = "cli-Secret+&=%ü"
STARTUP_BOUND = 30.0  # seconds; only stops a hung test, not a speed check


async def _start(*args: str, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "orchestrator",
        "simulator",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), STARTUP_BOUND)
        assert raw, f"the simulator exited early: {lines}"
        lines.append(raw.decode())
        if raw.startswith(b"stop with"):
            return proc, lines


async def _stop(proc: asyncio.subprocess.Process, signum: int) -> tuple[int, str]:
    proc.send_signal(signum)
    out, _ = await asyncio.wait_for(proc.communicate(), STARTUP_BOUND)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def _session_url(lines: list[str]) -> str:
    match = re.search(r"^session URL: (http://127\.0\.0\.1:\d+)$", "".join(lines), re.M)
    assert match, lines
    return match.group(1)


@pytest.mark.subprocess
async def test_simulator_command_serves_until_sigint() -> None:
    proc, lines = await _start("--vps", "3", "--port", "0", env={"EDIS_SIM_PASSWORD": SECRET})
    try:
        url = _session_url(lines)
        text = "".join(lines)
        assert "email: operator@example.com" in text
        assert "password: from $EDIS_SIM_PASSWORD" in text
        assert f"{url}/kvm/v2/get/auth" in text  # the sample curl command
        assert f"state: {url}/_sim/state" in text
        assert SECRET not in text
        async with aiohttp.ClientSession() as http:
            form = {"email": "operator@example.com", "pw": SECRET}
            async with http.post(f"{url}/kvm/v2/get/auth", data=form) as resp:
                assert resp.status == 200
                data = (await resp.json())["data"]
        assert list(data) == ["kvm_100001_200001", "kvm_100002_200002", "kvm_100003_200003"]
    finally:
        code, rest = await _stop(proc, signal.SIGINT)
    assert code == 0
    assert "simulator stopped" in rest


def _auth_status(url: str, email: str, password: str) -> int:
    """POST get/auth with these credentials (from a helper thread: its own event loop)."""

    async def post() -> int:
        async with aiohttp.ClientSession() as http:
            form = {"email": email, "pw": password}
            async with http.post(f"{url}/kvm/v2/get/auth", data=form) as resp:
                return resp.status

    return anyio.run(post)


def test_simulator_command_reads_the_password_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text(SECRET + "\n", encoding="utf-8")
    args = ("--vps", "1", "--port", "0", "--password-file", str(secret_file), "--email", "a@b.c")
    done, status = run_serving_cli(
        ["simulator", *args],
        cwd=tmp_path,
        env={"EDIS_SIM_PASSWORD": "not-this-one"},
        url_file=tmp_path / "url",
        use=lambda url: _auth_status(url, "a@b.c", SECRET),
        stop=signal.SIGTERM,
    )
    assert status == 200
    assert done.returncode == 0, done.stderr
    assert f"password: from the file {secret_file}" in done.stdout
    assert SECRET not in done.stdout + done.stderr
    assert "simulator stopped" in done.stdout


def test_a_bad_account_file_exits_2(tmp_path, capsys) -> None:
    missing = tmp_path / "missing.yaml"
    assert cli_main(["simulator", "--account", str(missing), "--port", "0"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_bad_options_exit_2(capsys) -> None:
    assert cli_main(["simulator", "--vps", "0", "--port", "0"]) == 2
    assert "vps_count" in capsys.readouterr().err
    assert cli_main(["simulator", "--profile", "apocalypse"]) == 2
