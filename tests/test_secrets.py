"""Secrets never leak: not in stdout, stderr, logs, the journal, reports or exception text.

Each test runs the CLI (in-process, ``main(argv)``; the killed run in a real process) against a
simulator served from a background thread, whose secrets are
known marker strings: the account password, the root password, a marker that only the
rendered user data contains, and every signature the simulator issued (read from its
signature book after the runs). Every byte the commands produced — stdout and stderr of each
command, and every file they wrote (journal with ``-wal``/``-shm``, JSON and JUnit reports,
event streams, plan files) — is searched for each of them. Fault scripts make the error paths
run too (401 after revoked sessions, 500, lost responses, dropped connections, 429/503, a
failed install), and the tests check that they did.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import asyncssh
import pytest

from orchestrator.simulator import Simulator
from tests.cli_support import cli_argv, process_env, run_cli, running, wait_until
from tests.conftest import ThreadSims

ACCOUNT_PW = "Acct-PW-marker-3b9e1c"
ROOT_PW = "Root-PW-marker-77d2aa"
USER_DATA = "UserData-marker-5f0c42"
WRONG_PW = "Wrong-PW-marker-c0ffee"
EMAIL = "ops@example.net"

TEMPLATE = """\
#cloud-config
hostname: {{ hostname }}
chpasswd:
  expire: false
  users:
    - {name: root, password: {{ root_password | tojson }}, type: text}
write_files:
  - path: /etc/motd
    content: {{ vars.note | tojson }}
"""
READINESS = "{mode: api, min_install: 0.2s, poll_interval: 0.1s, deadline: 1m}"
ROLLOUT = """\
  waves: [1, "50%", "100%"]
  concurrency: 4
  rate: 200/s
  failure_budget: {wave: "100%", run: "100%"}
"""
RUN_TIMEOUT_S = 120.0


def write_fleet(
    sim: Simulator,
    tmp: Path,
    vps_yaml: str,
    *,
    root_password: str = "{env: EDIS_ROOT_PASSWORD}",
    account_password: str = "{env: EDIS_PASSWORD}",
    template: str = TEMPLATE,
) -> Path:
    """Write ``fleet.yaml`` and its template (the inputs, not searched) into ``tmp``."""
    (tmp / "templates").mkdir(exist_ok=True)
    (tmp / "templates" / "secret.yaml.j2").write_text(template, encoding="utf-8")
    path = tmp / "fleet.yaml"
    path.write_text(
        f"""version: 1
account:
  email: {{env: EDIS_EMAIL}}
  password: {account_password}
  session_url: {sim.session_url}
  allowed_api_hosts: [127.0.0.0/8]
defaults:
  image: cloudinit_debian-bookworm
  cloud_init: templates/secret.yaml.j2
  root_password: {root_password}
  vars: {{note: {USER_DATA}}}
  readiness: {READINESS}
vps:
{vps_yaml}
rollout:
{ROLLOUT}""",
        encoding="utf-8",
    )
    return path


def vps_lines(ids: Iterable[str], overrides: Mapping[str, str] | None = None) -> str:
    """One manifest entry per kvm id; ``overrides`` adds fields to some entries."""
    extra = overrides or {}
    return "\n".join(
        f"  - {{id: {kvm_id}, hostname: host-{i}{extra.get(kvm_id, '')}}}"
        for i, kvm_id in enumerate(ids)
    )


@dataclass
class Produced:
    """Every byte the commands of a test produced, by where it came from."""

    tmp: Path
    inputs: set[Path] = field(default_factory=set)
    blobs: dict[str, bytes] = field(default_factory=dict)

    def run(
        self, *args: str, env: Mapping[str, str], expect: int | tuple[int, ...]
    ) -> tuple[str, str]:
        """Run ``edis-fleet ARGS`` in ``tmp`` (in-process); keep its stdout and stderr and
        check its exit code."""
        done = run_cli(args, cwd=self.tmp, env={"PATH": "/usr/bin:/bin", **env})
        label = f"{len(self.blobs):02d} {' '.join(args)}"
        self.blobs[f"{label} [stdout]"] = done.stdout.encode()
        self.blobs[f"{label} [stderr]"] = done.stderr.encode()
        out, err = done.stdout, done.stderr
        codes = expect if isinstance(expect, tuple) else (expect,)
        assert done.returncode in codes, f"{args}: exit {done.returncode}\n{out}\n{err}"
        return out, err

    def collect_files(self) -> list[str]:
        """Add every file under ``tmp`` that is not an input (journal files included, and a
        text dump of each SQLite database); return their names."""
        names = []
        for path in sorted(self.tmp.rglob("*")):
            if not path.is_file() or path in self.inputs:
                continue
            name = str(path.relative_to(self.tmp))
            names.append(name)
            self.blobs[name] = path.read_bytes()
            if path.name.endswith(".sqlite"):
                con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    dump = "\n".join(con.iterdump())
                finally:
                    con.close()
                self.blobs[f"{name} [dump]"] = dump.encode()
        return names

    def assert_clean(self, secrets: Mapping[str, Iterable[str]]) -> None:
        """Fail naming every (kind of secret, where) pair found."""
        found = []
        for kind, values in secrets.items():
            for value in values:
                needle = value.encode()
                for where, blob in self.blobs.items():
                    if needle in blob:
                        at = blob.index(needle)
                        context = blob[max(0, at - 80) : at + len(needle) + 40]
                        found.append(f"{kind} in {where}: ...{context!r}...")
        assert not found, "secrets leaked:\n" + "\n".join(found)


def issued_signatures(sim: Simulator) -> list[str]:
    """Every signature the simulator issued (it keeps up to 256 per VPS, far more than used
    here)."""
    return sim.book.issued_signatures()


def env(sim: Simulator, *, password: str = ACCOUNT_PW) -> dict[str, str]:
    """The environment the manifests name: account e-mail and password, root password."""
    return {"EDIS_EMAIL": sim.email, "EDIS_PASSWORD": password, "EDIS_ROOT_PASSWORD": ROOT_PW}


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll ``predicate()`` until true (fails after 60 s)."""
    with anyio.fail_after(60):
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.005)


def test_a_faulty_run_and_every_report_leak_no_secret(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    """Two runs with faults on every error path (revoked sessions and 401s, 500, lost
    response, dropped connection, 429 and 503 retries, a failed install), one with JSON logs
    and report/JUnit/event files, one with text logs and events on stdout; then ``plan``,
    ``status``, ``runs`` and ``report`` in every format. No byte of any of it contains the
    account password, the root password, the user-data marker or any issued signature."""
    with make_thread_sim(vps_count=12, time_scale=0.001, password=ACCOUNT_PW, email=EMAIL) as sim:
        ids = sim.vps_ids[:10]
        failing = ids[6]
        sim.set_install_outcome(failing, "fail")
        path = write_fleet(
            sim,
            tmp_path,
            vps_lines(ids, {failing: ", readiness: {deadline: 2s}"}),
        )
        out = Produced(tmp_path, {path, tmp_path / "templates" / "secret.yaml.j2"})
        journal = "journal.sqlite"

        out.run("plan", str(path), "--format", "json", "-o", "plan.json", env=env(sim), expect=0)

        # Run 1: JSON logs, report files, events to a file; sessions revoked mid-run.
        scripts = {ids[1]: ["500"], ids[2]: ["lost"], ids[3]: ["503"], ids[4]: ["drop"]}
        scripts[ids[5]] = ["429:1"]
        for kvm_id, script in scripts.items():
            sim.set_faults(script=script, endpoint="set/reinstall", kvm_id=kvm_id)
        args = [
            "apply", str(path), "--yes", "--journal", journal, "--log-format", "json",
            "--report-json", "run1.json", "--junit", "run1.xml", "--events", "run1.ndjson",
        ]  # fmt: skip

        async def revoke_mid_run() -> None:
            counters = sim.counters
            await wait_for(lambda: sum(counters.reinstall_received.values()) >= 3)
            assert sim.invalidate_sessions() > 0
            # The write-ahead log exists only while the journal is open: keep a copy.
            for side in ("-wal", "-shm"):
                live = tmp_path / f"{journal}{side}"
                assert live.exists(), live
                out.blobs[f"{journal}{side} (mid-run)"] = live.read_bytes()

        # The revocation runs on the simulator's loop while the command runs in this thread.
        revoker = make_thread_sim.portal.start_task_soon(revoke_mid_run)
        try:
            out.run(*args, env=env(sim), expect=4)  # failed and in doubt: in doubt wins
        finally:
            revoker.cancel()
        assert revoker.exception() is None
        counters = sim.counters
        assert counters.bad_signature_reasons["revoked"] >= 1  # a 401, then a refresh
        for kind in ("http500", "lost_response", "http503", "drop", "throttle_retry_after"):
            assert counters.faults_by_endpoint["set/reinstall"][kind] == 1, kind

        # Run 2: text logs, events on stdout; a power poll revokes every session.
        sim.set_faults(script=["invalidate", "500"], endpoint="get/power")
        sim.set_faults(script=["lost"], endpoint="set/reinstall", kvm_id=ids[8])
        args = [
            "apply", str(path), "--yes", "--journal", journal, "--log-format", "text",
            "--events", "-", "--report-json", "run2.json", "--junit", "run2.xml",
        ]  # fmt: skip
        out.run(*args, env=env(sim), expect=4)  # failed and in doubt: in doubt wins
        assert counters.faults_by_endpoint["get/power"]["invalidate_sessions"] == 1
        assert counters.bad_signature_reasons["revoked"] >= 2

        runs_out, _ = out.run("runs", "--journal", journal, env={}, expect=0)
        run_ids = [line.split()[0] for line in runs_out.strip().splitlines()[1:]]
        assert len(run_ids) == 2
        for run_id in run_ids:
            out.run("status", run_id, "--journal", journal, env={}, expect=0)
            for fmt in ("text", "json", "junit", "ndjson"):
                text, _ = out.run(
                    "report", run_id, "--format", fmt, "--journal", journal, env={}, expect=0
                )
                if fmt == "text":  # the error paths reached the reports
                    assert "in doubt" in text
                    assert "failed" in text
            out.run(
                "report", run_id, "--format", "json", "-o", f"{run_id}.json",
                "--journal", journal, env={}, expect=0,
            )  # fmt: skip

        files = out.collect_files()
        for name in ("plan.json", "run1.json", "run1.xml", "run1.ndjson", journal):
            assert name in files
        # The searched bytes hold what the error paths wrote (so the search is not vacuous).
        for where in (f"{journal} [dump]", "run1.json", "run2.xml"):
            assert b"no answer after the request was sent" in out.blobs[where], where
            assert b"install failed" in out.blobs[where], where
        signatures = issued_signatures(sim)
        full_auths = counters.auth_calls - counters.auth_failures
        assert full_auths >= 5  # pre-flight x2, and the refreshes after each revocation
        assert len(signatures) == full_auths * len(sim.vps_ids)
        out.assert_clean(
            {
                "account password": [ACCOUNT_PW],
                "root password": [ROOT_PW],
                "user data": [USER_DATA],
                "signature": signatures,
            }
        )


def test_a_refused_login_leaks_no_password(make_thread_sim: ThreadSims, tmp_path: Path) -> None:
    """A wrong account password ends ``plan`` and ``apply`` with exit 3 after one auth call;
    neither the password given nor the account's real one appears in what they printed."""
    with make_thread_sim(vps_count=3, password=ACCOUNT_PW, email=EMAIL) as sim:
        path = write_fleet(sim, tmp_path, vps_lines(sim.vps_ids))
        out = Produced(tmp_path, {path, tmp_path / "templates" / "secret.yaml.j2"})
        wrong = env(sim, password=WRONG_PW)
        _, err = out.run("plan", str(path), env=wrong, expect=3)
        assert "refused" in err
        _, err = out.run("apply", str(path), "--journal", "j.sqlite", env=wrong, expect=3)
        assert "refused" in err
        assert sim.counters.auth_failures == 2
        assert sum(sim.counters.reinstall_received.values()) == 0
        out.collect_files()
        out.assert_clean(
            {
                "wrong password": [WRONG_PW],
                "account password": [ACCOUNT_PW],
                "root password": [ROOT_PW],
                "user data": [USER_DATA],
            }
        )


@dataclass(frozen=True)
class BadManifest:
    """A manifest error whose natural message would quote secrets: how the account password
    is given, the template, the problem expected, and the secrets it must not quote."""

    account_password: str
    template: str
    problem: str
    secrets: Mapping[str, list[str]]


FROM_ENV = "{env: EDIS_PASSWORD}"
BAD_MANIFESTS = {
    # The password written into the manifest itself.
    "password-in-manifest": BadManifest(
        ACCOUNT_PW,
        TEMPLATE,
        "a password written in the manifest is refused",
        {"account password": [ACCOUNT_PW]},
    ),
    # A rendered document that is not YAML on the very line that holds the root password and
    # the user-data marker.
    "rendered-yaml-error": BadManifest(
        FROM_ENV,
        TEMPLATE + "broken: {{ root_password }} {{ vars.note }}: [\n",
        "rendered document is not valid YAML",
        {"account password": [ACCOUNT_PW], "root password": [ROOT_PW], "user data": [USER_DATA]},
    ),
    # A template lookup keyed by the root password (Jinja names the missing key).
    "template-lookup-error": BadManifest(
        FROM_ENV,
        TEMPLATE + "broken: {{ {}[root_password] }}\n",
        "undefined variable",
        {"account password": [ACCOUNT_PW], "root password": [ROOT_PW]},
    ),
}


@pytest.mark.parametrize("name", list(BAD_MANIFESTS))
def test_a_manifest_error_leaks_no_secret(
    make_thread_sim: ThreadSims, tmp_path: Path, name: str
) -> None:
    """``validate`` and ``apply`` of a broken manifest exit 2 without a request, naming the
    problem, and quote none of the secrets the broken part holds."""
    case = BAD_MANIFESTS[name]
    with make_thread_sim(vps_count=2, password=ACCOUNT_PW, email=EMAIL) as sim:
        path = write_fleet(
            sim,
            tmp_path,
            vps_lines(sim.vps_ids),
            account_password=case.account_password,
            template=case.template,
        )
        out = Produced(tmp_path, {path, tmp_path / "templates" / "secret.yaml.j2"})
        for args in (["validate", "--no-schema"], ["apply", "--yes", "--journal", "j.sqlite"]):
            _, err = out.run(args[0], str(path), *args[1:], env=env(sim), expect=2)
            assert case.problem in err, err  # the error meant, not another one
        assert sum(sim.counters.requests.values()) == 0
        out.collect_files()
        out.assert_clean(case.secrets)


def test_generated_root_passwords_are_written_only_to_their_0600_file(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    """With ``root_password: {generate: FILE}`` every VPS gets its own password, written as
    ``kvm_id<TAB>password`` to FILE only (mode 0600, its new directory 0700): none of them
    appears in the output, the journal, the reports or the events of the run."""
    with make_thread_sim(vps_count=4, time_scale=0.001, password=ACCOUNT_PW, email=EMAIL) as sim:
        path = write_fleet(
            sim, tmp_path, vps_lines(sim.vps_ids), root_password="{generate: secret/root.tsv}"
        )
        book = tmp_path / "secret" / "root.tsv"
        out = Produced(tmp_path, {path, tmp_path / "templates" / "secret.yaml.j2", book})
        journal = "journal.sqlite"
        args = [
            "apply", str(path), "--journal", journal, "--log-format", "json",
            "--report-json", "run.json", "--junit", "run.xml", "--events", "run.ndjson",
        ]  # fmt: skip
        out.run(*args, env=env(sim), expect=0)
        assert all(n == 1 for n in sim.counters.reinstall_accepted.values())

        assert stat.S_IMODE(book.stat().st_mode) == 0o600
        assert stat.S_IMODE(book.parent.stat().st_mode) == 0o700
        assert book.stat().st_uid == os.getuid()
        lines = [line.split("\t") for line in book.read_text().splitlines()]
        assert [kvm_id for kvm_id, _ in lines] == sim.vps_ids
        passwords = [password for _, password in lines]
        assert len(set(passwords)) == len(passwords)
        assert all(len(p) >= 16 for p in passwords)

        runs_out, _ = out.run("runs", "--journal", journal, env={}, expect=0)
        run_id = runs_out.strip().splitlines()[-1].split()[0]
        out.run("status", run_id, "--journal", journal, env={}, expect=0)
        for fmt in ("text", "json", "junit", "ndjson"):
            out.run("report", run_id, "--format", fmt, "--journal", journal, env={}, expect=0)
        files = out.collect_files()
        assert {"run.json", "run.xml", "run.ndjson", journal} <= set(files)
        out.assert_clean(
            {
                "generated password": passwords,
                "account password": [ACCOUNT_PW],
                "user data": [USER_DATA],
                "signature": issued_signatures(sim),
            }
        )


@pytest.mark.subprocess
def test_a_killed_run_with_generated_passwords_resumes_without_leaking_them(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    """A run with ``root_password: {generate: FILE}`` killed (SIGKILL) after its canary is
    ready can be resumed: every VPS is accepted exactly once (or reported in doubt, received
    at most once), the passwords file stays 0600 and names every VPS, and no generated
    password appears in anything the apply, the resume or the reports produced."""
    with make_thread_sim(vps_count=8, time_scale=0.003, password=ACCOUNT_PW, email=EMAIL) as sim:
        path = write_fleet(
            sim, tmp_path, vps_lines(sim.vps_ids), root_password="{generate: secret/root.tsv}"
        )
        book = tmp_path / "secret" / "root.tsv"
        out = Produced(tmp_path, {path, tmp_path / "templates" / "secret.yaml.j2", book})
        journal = "journal.sqlite"
        log = tmp_path / "killed-apply.log"
        with log.open("wb") as killed_output:
            proc = subprocess.Popen(
                cli_argv("apply", str(path), "--journal", journal),
                env=process_env(env(sim)),
                cwd=tmp_path,
                stdout=killed_output,
                stderr=killed_output,
            )
            try:
                # The canary is ready and wave 2 is being sent.
                wait_until(
                    "3 reinstalls received",
                    running(proc, lambda: sum(sim.counters.reinstall_received.values()) >= 3),
                )
            finally:
                proc.kill()
                ended = proc.wait()
        assert ended == -signal.SIGKILL
        runs_out, _ = out.run("runs", "--journal", journal, env={}, expect=0)
        run_id = runs_out.strip().splitlines()[-1].split()[0]

        out.run(
            "resume", run_id, "--journal", journal, "--report-json", "resumed.json",
            env=env(sim), expect=(0, 4),
        )  # fmt: skip
        report, _ = out.run(
            "report", run_id, "--format", "json", "--journal", journal, env={}, expect=0
        )
        states = {t["kvm_id"]: t["state"] for t in json.loads(report)["targets"]}
        for kvm_id in sim.vps_ids:
            assert sim.counters.reinstall_received[kvm_id] <= 1, kvm_id
            if states[kvm_id] != "in_doubt":
                assert states[kvm_id] == "ready", (kvm_id, states[kvm_id])
                assert sim.counters.reinstall_accepted[kvm_id] == 1, kvm_id

        assert stat.S_IMODE(book.stat().st_mode) == 0o600
        lines = [line.split("\t") for line in book.read_text().splitlines()]
        assert {kvm_id for kvm_id, _ in lines} == set(sim.vps_ids)
        passwords = [password for _, password in lines]
        assert len(set(passwords)) == len(passwords)
        out.collect_files()
        out.assert_clean({"generated password": passwords, "account password": [ACCOUNT_PW]})


def test_an_ssh_proof_run_leaks_no_private_host_key(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    """Readiness mode ssh: each VPS gets a private host key made for this run, inside its user
    data. A run (one VPS whose cloud-init fails, one whose SSH server refuses the key) with
    JSON logs, report files, events and every report format: no private host key, in any
    encoding line, appears anywhere."""
    operator = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "ops_ed25519"
    key_file.write_bytes(operator.export_private_key("openssh"))
    key_file.chmod(0o600)
    public = operator.export_public_key("openssh").decode().strip()
    template = TEMPLATE + f"ssh_authorized_keys:\n  - {public}\n"
    with make_thread_sim(
        vps_count=4, time_scale=0.002, password=ACCOUNT_PW, email=EMAIL, tcp_listeners=True
    ) as sim:
        ids = sim.vps_ids[:3]
        sim.set_ssh_fault(ids[1], cloud_init="error", errors=["runcmd failed"])
        sim.set_ssh_fault(ids[2], refuse_keys=True)
        readiness = (
            f", readiness: {{mode: ssh, port: {sim.ssh_port}, deadline: 30s, "
            "ssh: {user: root, identity: {file: ops_ed25519}, cloud_init_deadline: 30s}}"
        )
        path = write_fleet(
            sim, tmp_path, vps_lines(ids, dict.fromkeys(ids, readiness)), template=template
        )
        out = Produced(tmp_path, {path, tmp_path / "templates" / "secret.yaml.j2", key_file})
        journal = "journal.sqlite"
        out.run("plan", str(path), "--format", "json", "-o", "plan.json", env=env(sim), expect=0)
        args = [
            "apply", str(path), "--yes", "--journal", journal, "--log-format", "json",
            "--report-json", "run.json", "--junit", "run.xml", "--events", "run.ndjson",
        ]  # fmt: skip
        out.run(*args, env=env(sim), expect=1)
        runs_out, _ = out.run("runs", "--journal", journal, env={}, expect=0)
        run_id = runs_out.strip().splitlines()[1].split()[0]
        for fmt in ("text", "json", "junit", "ndjson"):
            out.run("report", run_id, "--format", fmt, "--journal", journal, env={}, expect=0)
        out.collect_files()
        # The searched bytes hold the proof's outcomes (so the search is not vacuous).
        assert b"this run's host key" in out.blobs["run.json"]
        assert b"runcmd failed" in out.blobs["run.json"]
        private_lines: list[str] = []
        for kvm_id in ids:
            system = sim.vps(kvm_id).system
            host_key = system.host_key  # type: ignore[attr-defined]
            pem = host_key.export_private_key("openssh").decode()
            # Every base64 line of the key's body (the header and footer are not secret).
            private_lines += [line for line in pem.splitlines() if not line.startswith("-----")]
        assert len(private_lines) >= 3 * 4
        out.assert_clean(
            {
                "private host key": private_lines,
                "root password": [ROOT_PW],
                "user data": [USER_DATA],
            }
        )
