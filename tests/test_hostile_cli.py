"""``plan`` and ``apply`` against a hostile server: exit codes, clean terminal output, nothing
stored that should not be, nothing sent that should not be.

The command runs in-process (``orchestrator.cli.main``); the hostile server runs on an event
loop in a background thread (``main`` runs its own loop in the test's thread).
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import sqlite3
import ssl
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme
from anyio.from_thread import BlockingPortal, start_blocking_portal

from tests.cli_support import CliResult
from tests.hostile_server import KVM_IDS, HostileServer, echo, json_answer, raw_answer
from tests.manifest_support import ACCOUNT_MARKER, BASE, ROOT_MARKER, cli, write_fleet

A, B = KVM_IDS
UNSAFE = ("\x1b", "\x07", "\x9b", "\u202e")
FORGED = "\x1b]0;pwned\x07\x1b[2J\x1b[32mall 500 VPSes ready\x1b[0m\u202e"


@pytest.fixture
def portal() -> Iterator[BlockingPortal]:
    with start_blocking_portal() as p:
        yield p


@pytest.fixture
def server(portal: BlockingPortal) -> Iterator[HostileServer]:
    with portal.wrap_async_context_manager(HostileServer()) as s:
        yield s


def fleet(tmp: Path, server: HostileServer, account_extra: str = "") -> Path:
    manifest = BASE.replace(
        "  password: {env: EDIS_PASSWORD}\n",
        "  password: {env: EDIS_PASSWORD}\n"
        f"  session_url: {server.session_url}\n"
        "  allowed_api_hosts: [127.0.0.0/8]\n" + account_extra,
    ).replace(
        "  cloud_init: templates/ok.yaml.j2\n",
        "  cloud_init: templates/ok.yaml.j2\n  readiness: {mode: api}\n",
    )
    return write_fleet(tmp, manifest)


def apply(path: Path, *extra: str) -> CliResult:
    return cli(
        [
            "apply",
            str(path),
            "--yes",
            "--journal",
            "journal.sqlite",
            "--report-json",
            "run.json",
            "--events",
            "run.ndjson",
            *extra,
        ],
        path.parent,
    )


def outputs(done: CliResult, folder: Path) -> list[str]:
    """Everything the command left for a person or a program to read."""
    texts = [done.stdout, done.stderr]
    for name in ("run.json", "run.ndjson"):
        if (folder / name).exists():
            texts.append((folder / name).read_text(encoding="utf-8"))
    journal = folder / "journal.sqlite"
    if journal.exists():
        with contextlib.closing(sqlite3.connect(journal)) as db:
            texts.append("\n".join(db.iterdump()))
    return texts


def assert_no_traceback(done: CliResult) -> None:
    assert "Traceback" not in done.stdout + done.stderr


def test_an_entry_naming_another_vps_stops_apply_and_nothing_is_sent(
    server: HostileServer, tmp_path: Path
) -> None:
    other = "kvm_999999_999999"  # in the account, not in the manifest
    entries = {A: server.entry(A, kvm_id=other), B: server.entry(B), other: server.entry(other)}
    server.answer("get/auth", json_answer({"status": "success", "data": entries}))
    done = apply(fleet(tmp_path, server))
    assert done.returncode == 2, done.stderr
    assert "names another VPS" in done.stderr
    assert A in done.stderr
    assert_no_traceback(done)
    assert server.sent("set/reinstall") == []
    assert all(seen.form.get("kvm_id") != other for seen in server.log)


@pytest.mark.parametrize(
    "answer",
    [
        json_answer({"status": "maintenance"}),
        raw_answer(b"<html>captive portal</html>"),
        raw_answer(b"[" * 100_000),
    ],
    ids=["unknown status", "html", "deep JSON"],
)
def test_an_odd_auth_answer_is_not_reported_as_refused_credentials(
    server: HostileServer, tmp_path: Path, answer: Callable[..., object]
) -> None:
    server.answer("get/auth", answer)  # type: ignore[arg-type]
    done = cli(["plan", str(fleet(tmp_path, server))], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "unexpected shape" in done.stderr
    assert "credentials were refused" not in done.stderr
    assert_no_traceback(done)
    assert len(server.sent("get/auth")) == 1


@pytest.mark.parametrize("name", ["unknown CA", "wrong host name"])
def test_a_certificate_that_does_not_verify_is_final_after_one_handshake(
    portal: BlockingPortal, tmp_path: Path, name: str
) -> None:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1" if name == "unknown CA" else "other.example").configure_cert(context)
    extra = ""
    if name == "wrong host name":
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        extra = "  ca_file: ca.pem\n"
    with portal.wrap_async_context_manager(HostileServer(ssl_context=context)) as server:
        done = cli(["plan", str(fleet(tmp_path, server, extra))], tmp_path)
    assert done.returncode == 2, done.stderr
    assert "ca_file" in done.stderr
    assert "host name" in done.stderr
    assert_no_traceback(done)
    assert server.handshakes == 1
    assert server.log == []


def test_hostile_numbers_in_the_session_answer_are_a_clear_problem(
    server: HostileServer, tmp_path: Path
) -> None:
    entries = {A: server.entry(A, valid_until=int("9" * 400)), B: server.entry(B)}
    server.answer("get/auth", json_answer({"status": "success", "data": entries}))
    done = apply(fleet(tmp_path, server))
    assert done.returncode == 2, done.stderr
    assert "valid_until" in done.stderr
    assert_no_traceback(done)
    assert server.sent("set/reinstall") == []


def test_escape_sequences_from_the_server_reach_no_output(
    server: HostileServer, tmp_path: Path
) -> None:
    server.answer("set/reinstall", json_answer({"status": "error", "message": FORGED}))
    done = apply(fleet(tmp_path, server))
    assert done.returncode in (1, 5), done.stderr  # failed, or the canary tripped the budget
    assert_no_traceback(done)
    for text in outputs(done, tmp_path):
        assert not any(c in text for c in UNSAFE)
    assert "\\x1b" in done.stdout + done.stderr + (tmp_path / "run.json").read_text()


def test_a_200_without_success_to_reinstall_is_in_doubt_and_never_resent(
    server: HostileServer, tmp_path: Path
) -> None:
    server.answer("set/reinstall", json_answer({"status": "error"}))
    path = fleet(tmp_path, server)
    done = apply(path)
    # In doubt (4), or aborted (3) because the canary's in-doubt VPS counts against its budget.
    assert done.returncode in (3, 4), done.stderr
    assert "in doubt" in done.stdout + done.stderr
    assert_no_traceback(done)
    run_id = json.loads((tmp_path / "run.json").read_text())["run"]["id"]
    sent = len(server.sent("set/reinstall"))
    again = cli(["retry-failed", run_id, "--yes", "--journal", "journal.sqlite"], tmp_path)
    assert_no_traceback(again)
    assert "no failed VPSes" in again.stdout
    assert len(server.sent("set/reinstall")) == sent


def _encodings(secret: str) -> list[str]:
    return [
        secret,
        urllib.parse.quote_plus(secret),
        urllib.parse.quote(secret, safe=""),
        json.dumps(secret)[1:-1],
        html.escape(secret),
        base64.b64encode(secret.encode()).decode(),
    ]


def _echo_everything(form: dict[str, str]) -> str:
    return " | ".join(
        [
            urllib.parse.urlencode(form),
            urllib.parse.urlencode(form, quote_via=urllib.parse.quote),
            json.dumps(form).replace("/", "\\/"),
            html.escape(repr(form)),
            base64.b64encode(form["password"].encode()).decode(),
        ]
    )


@pytest.mark.parametrize("part", ["everything", "user data only"])
def test_an_echoing_server_leaks_no_secret_into_any_output(
    server: HostileServer, tmp_path: Path, part: str
) -> None:
    if part == "everything":
        server.answer("set/reinstall", echo(_echo_everything, status=400))
    else:
        server.answer("set/reinstall", echo(lambda f: f["cloudinit_user_data"], status=400))
    done = apply(fleet(tmp_path, server))
    assert done.returncode in (1, 5), done.stderr  # failed, or the budget tripped
    assert_no_traceback(done)
    forms = server.sent("set/reinstall")
    assert forms
    user_data = "".join(forms[0]["cloudinit_user_data"].split())
    secrets = [ROOT_MARKER, ACCOUNT_MARKER, *(f["signature"] for f in forms)]
    for text in outputs(done, tmp_path):
        for secret in secrets:
            for form in _encodings(secret):
                assert form not in text, form
        squeezed = "".join(text.split())
        assert not any(squeezed[i : i + 32] in user_data for i in range(len(squeezed) - 31)), (
            "a long run of the user data was stored or printed"
        )
