"""``edis-fleet simulator`` end to end: a real auth call, then SIGINT or SIGTERM, exit 0.

The command runs in-process (``main(argv)``), stopped by a signal to this process once it
serves: its own handlers turn SIGINT and SIGTERM into a clean exit.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import aiohttp
import anyio

from orchestrator.cli import main as cli_main
from tests.cli_support import run_serving_cli

SECRET = "cli-Secret+&=%ü"


def _session_url(text: str) -> str:
    match = re.search(r"^session URL: (http://127\.0\.0\.1:\d+)$", text, re.M)
    assert match, text
    return match.group(1)


def _auth_data(url: str, email: str, password: str) -> dict[str, object]:
    """POST get/auth (from a helper thread: its own event loop); return the ``data``."""

    async def post() -> dict[str, object]:
        async with aiohttp.ClientSession() as http:
            form = {"email": email, "pw": password}
            async with http.post(f"{url}/kvm/v2/get/auth", data=form) as resp:
                assert resp.status == 200
                data: dict[str, object] = (await resp.json())["data"]
                return data

    return anyio.run(post)


def test_simulator_command_serves_until_sigint(tmp_path: Path) -> None:
    done, data = run_serving_cli(
        ["simulator", "--vps", "3", "--port", "0"],
        cwd=tmp_path,
        env={"EDIS_SIM_PASSWORD": SECRET},
        url_file=tmp_path / "url",
        use=lambda url: (url, _auth_data(url, "operator@example.com", SECRET)),
        stop=signal.SIGINT,
    )
    served_at, answer = data
    text = done.stdout
    url = _session_url(text)
    assert url == served_at  # the URL file holds the printed URL
    assert "email: operator@example.com" in text
    assert "password: from $EDIS_SIM_PASSWORD" in text
    assert f"{url}/kvm/v2/get/auth" in text  # the sample curl command
    assert f"state: {url}/_sim/state" in text
    assert SECRET not in text + done.stderr
    assert list(answer) == ["kvm_100001_200001", "kvm_100002_200002", "kvm_100003_200003"]
    assert done.returncode == 0
    assert text.rstrip().endswith("simulator stopped")


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
