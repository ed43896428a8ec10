"""Readiness mode ``ssh``: the host-key proof and cloud-init's verdict, through the scheduler,
against the simulator's SSH servers over loopback (time-scaled: an install takes 0.6 s)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import asyncssh
import jsonschema
import pytest

from orchestrator.errors import ManifestError
from orchestrator.fleet import HttpCheck, InDoubtPolicy, Readiness, ReadinessMode, SshLogin
from orchestrator.manifest.loader import check_manifest, load_fleet
from orchestrator.model import TargetState
from orchestrator.report.schema import REPORT_SCHEMA
from orchestrator.run.plan import PlanRollout
from orchestrator.run.proof import prepare_proof
from orchestrator.run.reconcile import RESOLVED_ACCEPTED, UNRESOLVED, Resolution
from orchestrator.run.scheduler import Job, RunResult, WaveSpec
from orchestrator.secrets.values import Secret
from orchestrator.simulator import Simulator
from orchestrator.templates.hostkey import HostKeyConflict, with_host_key
from tests.cli_support import run_cli
from tests.conftest import SimFactory, SimHttp, ThreadSims
from tests.manifest_support import BASE, ENV
from tests.manifest_support import write_fleet as write_manifest
from tests.test_resume import last_run
from tests.test_scheduler import assert_exactly_once, jobs_for, scheduler_for, settings
from tests.test_secrets import ACCOUNT_PW, TEMPLATE, env, vps_lines, write_fleet

LINUX = "cloudinit_ubuntu-lts-24-04"
SIM = {"vps_count": 4, "time_scale": 0.002, "tcp_listeners": True, "cloud_init_seconds": 30}


@pytest.fixture
def operator(tmp_path: Path) -> tuple[Path, str]:
    """The operator's key file and its public line."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "ops_ed25519"
    path.write_bytes(key.export_private_key("openssh"))
    path.chmod(0o600)
    return path, key.export_public_key("openssh").decode().strip()


def _cloud_config(public: str) -> str:
    return (
        "#cloud-config\nhostname: web\n"
        f"users:\n  - name: ops\n    ssh_authorized_keys:\n      - {public}\n"
    )


def _ssh_jobs(
    sim: Simulator, operator: tuple[Path, str], *, deadline: float = 10.0, script: bool = False
) -> tuple[tuple[Job, ...], dict[str, Secret | None]]:
    path, public = operator
    readiness = Readiness(
        ReadinessMode.SSH,
        sim.ssh_port,
        deadline,
        ssh=SshLogin(user="ops", identity_file=path, cloud_init_deadline_s=10.0),
    )
    jobs: list[Job] = []
    keys: dict[str, Secret | None] = {}
    for job in jobs_for(sim.vps_ids, image=LINUX):
        text = "#!/bin/sh\necho hi\n" if script else _cloud_config(public)
        user_data, proof, key = prepare_proof(Secret(text), readiness)
        keys[job.kvm_id] = key
        jobs.append(
            dataclasses.replace(
                job,
                user_data=user_data,
                readiness=ReadinessMode.SSH,
                port=sim.ssh_port,
                deadline_s=deadline,
                proof=proof,
            )
        )
    return tuple(jobs), keys


async def _run(sim: Simulator, jobs: Sequence[Job], budget: int = 4) -> tuple[RunResult, object]:
    async with scheduler_for(sim, settings(run_budget=budget)) as (sched, _):
        result = await sched.run([WaveSpec(1, tuple(jobs), budget=budget)])
        return result, sched.prover


async def test_ready_only_with_this_runs_host_key(
    make_sim: SimFactory, operator: tuple[Path, str]
) -> None:
    async with make_sim(**SIM) as sim:
        jobs, keys = _ssh_jobs(sim, operator)
        result, prover = await _run(sim, jobs)
        for job in jobs:
            assert job.proof is not None
            assert result.states[job.kvm_id] is TargetState.READY, result.reasons[job.kvm_id]
            reason = result.reasons[job.kvm_id]
            assert "this run's host key" in reason
            assert "cloud-init done" in reason
            # What the VPS presents now is exactly the key made for it.
            assert sim.host_key(job.kvm_id) == job.proof.pinned
            assert prover.proven[job.kvm_id] == job.proof.pinned  # type: ignore[attr-defined]
            assert keys[job.kvm_id] is not None
        assert_exactly_once(sim, result)


async def test_accepted_but_nothing_installed_is_never_ready(
    make_sim: SimFactory, operator: tuple[Path, str]
) -> None:
    async with make_sim(**SIM) as sim:
        noop = sim.vps_ids[0]
        sim.set_install_outcome(noop, "noop")
        jobs, _ = _ssh_jobs(sim, operator, deadline=2.0)
        result, _ = await _run(sim, jobs)
    assert result.states[noop] is TargetState.FAILED
    assert "still presents the pre-send host key and was never seen down" in result.reasons[noop]
    assert "nothing was installed" in result.reasons[noop]
    others = [k for k in sim.vps_ids if k != noop]
    assert all(result.states[k] is TargetState.READY for k in others)


async def test_cloud_init_error_fails_with_its_messages_and_degraded_warns(
    make_sim: SimFactory, operator: tuple[Path, str]
) -> None:
    async with make_sim(**SIM) as sim:
        bad, meh, refused = sim.vps_ids[0], sim.vps_ids[1], sim.vps_ids[2]
        sim.set_ssh_fault(bad, cloud_init="error", errors=["runcmd: exit status 3", "second"])
        sim.set_ssh_fault(meh, cloud_init="degraded")
        jobs, _ = _ssh_jobs(sim, operator)
        sim.set_ssh_fault(refused, refuse_keys=True)
        result, _ = await _run(sim, jobs)
    assert result.states[bad] is TargetState.FAILED
    assert "cloud-init error: runcmd: exit status 3; second" in result.reasons[bad]
    assert "this run's host key" in result.reasons[bad]  # reinstalled, but cloud-init failed
    assert result.states[meh] is TargetState.READY
    assert "warnings: WARNING:" in result.reasons[meh]
    assert result.states[refused] is TargetState.FAILED
    assert "refused the key of user 'ops'" in result.reasons[refused]


async def test_a_script_gets_the_key_changed_fallback(
    make_sim: SimFactory, operator: tuple[Path, str]
) -> None:
    async with make_sim(**SIM) as sim:
        before = {k: sim.host_key(k) for k in sim.vps_ids}
        jobs, keys = _ssh_jobs(sim, operator, script=True)
        result, prover = await _run(sim, jobs)
        for job in jobs:
            assert job.proof is not None
            assert job.proof.pinned is None
            assert keys[job.kvm_id] is None
            reason = result.reasons[job.kvm_id]
            assert result.states[job.kvm_id] is TargetState.READY, reason
            assert "host key changed since the pre-send scan" in reason
            assert "cloud-init not checked" in reason
            assert sim.host_key(job.kvm_id) != before[job.kvm_id]
            assert prover.proven[job.kvm_id] == sim.host_key(job.kvm_id)  # type: ignore[attr-defined]
            kind, line = prover.facts(job.kvm_id)  # type: ignore[attr-defined]
            assert kind == "key-changed"
            assert line.endswith(" ".join(sim.host_key(job.kvm_id).split()[:2]))


def test_a_template_that_sets_ssh_keys_is_refused() -> None:
    text = "#cloud-config\nssh_keys:\n  rsa_private: x\n"
    with pytest.raises(HostKeyConflict, match="sets ssh_keys itself"):
        with_host_key(text, Secret("k"), "ssh-ed25519 AAAA")
    readiness = Readiness(ReadinessMode.SSH, 22, 60.0)
    with pytest.raises(ValueError, match="remove ssh_keys from the template"):
        prepare_proof(Secret(text), readiness)
    assert issubclass(HostKeyConflict, ValueError)
    assert not issubclass(ManifestError, HostKeyConflict)


def test_the_injected_key_is_valid_cloud_config_and_the_template_text_is_kept() -> None:
    readiness = Readiness(ReadinessMode.SSH, 22, 60.0)
    original = "#cloud-config\nruncmd:\n  - [echo, hi]\n"
    sent, proof, private = prepare_proof(Secret(original), readiness)
    assert sent is not None
    assert private is not None
    assert proof.pinned is not None
    text = sent.reveal()
    assert text.startswith(original)
    assert private.reveal().strip().splitlines()[1] in text
    assert f"ed25519_public: {proof.pinned}" in text


def test_the_manifest_reads_readiness_ssh(tmp_path: Path) -> None:
    text = BASE.replace(
        "  cloud_init: templates/ok.yaml.j2\n",
        "  cloud_init: templates/ok.yaml.j2\n"
        "  readiness:\n    mode: ssh\n    deadline: 10m\n"
        "    ssh: {user: ops, identity: {file: keys/ops}, cloud_init_deadline: 5m}\n"
        '    http: {url: "http://{{ ip }}:8080/healthz", deadline: 2m}\n',
    ).replace(
        "    hostname: vps-002\n",
        "    hostname: vps-002\n    readiness: {ssh: {identity: agent}}\n",
    )
    fleet = load_fleet(write_manifest(tmp_path, text), ENV)
    first, second = (e.readiness for e in fleet.vps)
    assert first.mode is ReadinessMode.SSH
    assert first.deadline_s == 600.0
    assert first.ssh == SshLogin("ops", tmp_path.resolve() / "keys/ops", 300.0)
    assert second.ssh == SshLogin("ops", None, 300.0)  # the agent, the rest inherited
    assert first.http == HttpCheck("http://{{ ip }}:8080/healthz", 200, 120.0)
    # in_doubt is not written: with mode ssh the plan (and the run) reconcile.
    assert PlanRollout.of(fleet.rollout, provable=True).in_doubt is InDoubtPolicy.RECONCILE
    explicit = text.replace('  waves: [1, "100%"]\n', '  waves: [1, "100%"]\n  in_doubt: report\n')
    rollout = load_fleet(write_manifest(tmp_path, explicit), ENV).rollout
    assert PlanRollout.of(rollout, provable=True).in_doubt is InDoubtPolicy.REPORT


def test_known_hosts_from_apply_lets_ssh_connect_without_trust_on_first_use(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    operator = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "ops_ed25519"
    key_file.write_bytes(operator.export_private_key("openssh"))
    public = operator.export_public_key("openssh").decode().strip()
    template = TEMPLATE + f"ssh_authorized_keys:\n  - {public}\n"
    with make_thread_sim(
        vps_count=3, time_scale=0.002, tcp_listeners=True, password=ACCOUNT_PW
    ) as sim:
        readiness = (
            f", readiness: {{mode: ssh, port: {sim.ssh_port}, deadline: 30s, "
            "ssh: {user: root, identity: {file: ops_ed25519}}}"
        )
        ids = sim.vps_ids
        path = write_fleet(
            sim, tmp_path, vps_lines(ids, dict.fromkeys(ids, readiness)), template=template
        )
        args = ["apply", str(path), "--yes", "--journal", "j.sqlite", "--quiet"]
        args += ["--known-hosts", "known_hosts", "--report-json", "run.json"]
        done = run_cli(args, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", **env(sim)})
        assert done.returncode == 0, done.stderr
        lines = (tmp_path / "known_hosts").read_text().splitlines()
        assert len(lines) == len(ids)
        report = json.loads((tmp_path / "run.json").read_text())
        jsonschema.validate(report, REPORT_SCHEMA, cls=jsonschema.Draft202012Validator)
        # Structured fields from the journal's facts, one per VPS, as in the known_hosts file.
        assert {t["proof"] for t in report["targets"]} == {"pinned"}
        assert sorted(t["known_hosts"] for t in report["targets"]) == sorted(lines)

        async def status(kvm_id: str) -> str:
            async with asyncssh.connect(
                sim.vps(kvm_id).ip,
                sim.ssh_port,
                username="root",
                client_keys=[operator],
                known_hosts=str(tmp_path / "known_hosts"),
                agent_path=None,
                config=None,
            ) as conn:
                done = await conn.run("cloud-init status --format json", check=True)
                return str(done.stdout)

        for kvm_id in ids:
            assert json.loads(asyncio.run(status(kvm_id)))["status"] == "done"
        # And a key it does not list is refused: the file pins, it does not trust blindly.
        (tmp_path / "known_hosts").write_text(lines[1].replace(sim.vps(ids[1]).ip, "127.0.9.9"))
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            asyncio.run(status(ids[0]))


# -- in-doubt sends resolved by proof (rollout.in_doubt: reconcile) ------------------------------


async def test_lost_responses_are_resolved_both_ways_with_no_duplicate_wipe(
    make_sim: SimFactory, operator: tuple[Path, str]
) -> None:
    """A processed send whose answer was lost is proven (accepted, then ready, one wipe); a
    send the server ignored (500) is resolved as not acted on and resent once (one wipe); one
    that went down and never came back stays in doubt with what was seen."""
    async with make_sim(**SIM) as sim:
        lost, ignored, gone, fine = sim.vps_ids
        sim.set_faults(script=["lost"], endpoint="set/reinstall", kvm_id=lost)
        sim.set_faults(script=["500"], endpoint="set/reinstall", kvm_id=ignored)
        sim.set_faults(script=["lost"], endpoint="set/reinstall", kvm_id=gone)
        sim.set_install_outcome(gone, "hang")
        jobs, _ = _ssh_jobs(sim, operator, deadline=10.0)
        jobs = tuple(dataclasses.replace(j, install_window_s=3.0) for j in jobs)
        async with scheduler_for(sim, settings(run_budget=4, in_doubt=InDoubtPolicy.RECONCILE)) as (
            sched,
            _,
        ):
            result = await sched.run([WaveSpec(1, jobs, budget=4)])
        accepted = sim.counters.reinstall_accepted
    assert result.states[lost] is TargetState.READY, result.reasons[lost]
    assert result.reasons[lost].startswith(RESOLVED_ACCEPTED)
    assert "cloud-init done" in result.reasons[lost]
    assert result.states[ignored] is TargetState.READY, result.reasons[ignored]
    assert result.states[gone] is TargetState.IN_DOUBT
    assert result.reasons[gone].startswith(UNRESOLVED)
    assert "never answered" in result.reasons[gone]
    assert result.states[fine] is TargetState.READY
    # Zero duplicate wipes: every VPS's disk was wiped exactly once.
    assert {k: accepted.get(k, 0) for k in sim.vps_ids} == dict.fromkeys(sim.vps_ids, 1)
    assert sched.reconciled == {
        Resolution.ACCEPTED: 1,
        Resolution.RESEND: 1,
        Resolution.UNRESOLVED: 1,
    }


async def test_a_spent_resend_is_never_sent_again(
    make_sim: SimFactory, operator: tuple[Path, str]
) -> None:
    """Resumed with its one resend already spent, an ignored send is looked at, not resent."""
    async with make_sim(**SIM) as sim:
        ignored = sim.vps_ids[0]
        jobs, _ = _ssh_jobs(sim, operator)
        job = dataclasses.replace(
            jobs[0], install_window_s=1.0, in_doubt_since=time.time(), resend_spent=True
        )
        async with scheduler_for(sim, settings(run_budget=1, in_doubt=InDoubtPolicy.RECONCILE)) as (
            sched,
            _,
        ):
            result = await sched.run([WaveSpec(1, (job,), budget=1)])
        assert sim.counters.reinstall_received.get(ignored, 0) == 0
    assert result.states[ignored] is TargetState.IN_DOUBT
    assert result.reasons[ignored].startswith(UNRESOLVED)


def test_a_killed_campaign_with_lost_responses_resumes_to_proof_with_no_second_wipe(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    """Lost responses on the canary and in a later wave; the run is interrupted while the
    canary's send is being reconciled; resume makes the same host keys again (the run's
    nonce), proves the canary's reinstall, finishes the rest, and every VPS ends ready with
    proof, each wiped exactly once."""
    operator = asyncssh.generate_private_key("ssh-ed25519")
    key_file = tmp_path / "ops_ed25519"
    key_file.write_bytes(operator.export_private_key("openssh"))
    public = operator.export_public_key("openssh").decode().strip()
    template = TEMPLATE + f"ssh_authorized_keys:\n  - {public}\n"
    with make_thread_sim(
        vps_count=5, time_scale=0.003, tcp_listeners=True, password=ACCOUNT_PW
    ) as sim:
        ids = sim.vps_ids
        for kvm_id in (ids[0], ids[3]):
            sim.set_faults(script=["lost"], endpoint="set/reinstall", kvm_id=kvm_id)
        readiness = (
            f", readiness: {{mode: ssh, port: {sim.ssh_port}, deadline: 30s, "
            "ssh: {user: root, identity: {file: ops_ed25519}}}"
        )
        path = write_fleet(
            sim, tmp_path, vps_lines(ids, dict.fromkeys(ids, readiness)), template=template
        )
        run_env = {"PATH": "/usr/bin:/bin", **env(sim)}

        async def interrupt() -> None:
            with anyio.fail_after(60):
                while sim.counters.reinstall_accepted.get(ids[0], 0) == 0:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            await anyio.sleep(0.2)  # the lost answer is being reconciled now
            os.kill(os.getpid(), signal.SIGINT)

        watcher = make_thread_sim.portal.start_task_soon(interrupt)
        try:
            first = run_cli(["apply", str(path), "--yes", "--quiet"], cwd=tmp_path, env=run_env)
        finally:
            watcher.cancel()
        assert first.returncode in (4, 130), first.stderr  # in doubt, or interrupted
        run_id = last_run(tmp_path)
        args = ["resume", run_id, "--quiet", "--report-json", "run.json"]
        args += ["--known-hosts", "known_hosts"]
        done = run_cli(args, cwd=tmp_path, env=run_env)
        assert done.returncode == 0, (tmp_path / "run.json").read_text()
        accepted = dict(sim.counters.reinstall_accepted)
        keys = {k: sim.host_key(k) for k in ids}
    report = json.loads((tmp_path / "run.json").read_text())
    text = json.dumps(report)
    assert RESOLVED_ACCEPTED in text  # the canary's lost answer, resolved after the resume
    # The report says how in-doubt sends were resolved (this invocation's counters): the
    # canary's, and the later wave's lost answer, sent after the resume.
    assert report["run"]["counters"]["in_doubt_proven_accepted"] == 2
    assert report["run"]["counters"]["in_doubt_unresolved"] == 0
    assert accepted == dict.fromkeys(ids, 1)  # zero duplicate wipes
    known = (tmp_path / "known_hosts").read_text()
    for kvm_id in ids:
        assert " ".join(keys[kvm_id].split()[:2]) in known  # each VPS proven with its key


def test_a_never_acted_on_send_interrupted_while_reconciled_is_resent_once_by_resume(
    make_thread_sim: ThreadSims, tmp_path: Path
) -> None:
    """The canary's send is ignored by the server (500: nothing installed); the run is
    interrupted while its send is being reconciled. The host key scanned before the send is a
    journal fact (written with the intent), so resume reconciles as the live run would: still
    the pre-send key, never down -> not acted on -> resent once -> ready with proof. Exactly
    one acted-on reinstall per VPS."""
    operator = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "ops_ed25519").write_bytes(operator.export_private_key("openssh"))
    public = operator.export_public_key("openssh").decode().strip()
    template = TEMPLATE + f"ssh_authorized_keys:\n  - {public}\n"
    with make_thread_sim(
        vps_count=3, time_scale=0.003, tcp_listeners=True, password=ACCOUNT_PW
    ) as sim:
        ids = sim.vps_ids
        sim.set_faults(script=["500"], endpoint="set/reinstall", kvm_id=ids[0])
        old_key = " ".join(sim.host_key(ids[0]).split()[:2])
        readiness = (
            f", readiness: {{mode: ssh, port: {sim.ssh_port}, deadline: 30s, "
            "ssh: {user: root, identity: {file: ops_ed25519}}}"
        )
        path = write_fleet(
            sim, tmp_path, vps_lines(ids, dict.fromkeys(ids, readiness)), template=template
        )
        with path.open("a", encoding="utf-8") as fleet:
            fleet.write("  in_doubt: reconcile\n  in_doubt_window: 3s\n")
        run_env = {"PATH": "/usr/bin:/bin", **env(sim)}

        async def interrupt() -> None:
            with anyio.fail_after(60):
                while not sim.counters.faults_by_endpoint.get("set/reinstall"):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            await anyio.sleep(0.5)  # its host key is being looked at now
            os.kill(os.getpid(), signal.SIGINT)

        watcher = make_thread_sim.portal.start_task_soon(interrupt)
        try:
            first = run_cli(["apply", str(path), "--yes", "--quiet"], cwd=tmp_path, env=run_env)
        finally:
            watcher.cancel()
        assert first.returncode in (4, 130), first.stderr
        assert sim.counters.reinstall_accepted.get(ids[0], 0) == 0  # never acted on
        run_id = last_run(tmp_path)
        journal = sqlite3.connect(tmp_path / ".edis-fleet" / "journal.sqlite")
        try:
            (recorded,) = journal.execute(
                "SELECT presend_key FROM targets WHERE run_id = ? AND kvm_id = ?", (run_id, ids[0])
            ).fetchone()
        finally:
            journal.close()
        assert recorded == old_key  # the pre-send key is a journal fact
        args = ["resume", run_id, "--quiet", "--report-json", "run.json"]
        done = run_cli(args, cwd=tmp_path, env=run_env)
        assert done.returncode == 0, done.stderr + (tmp_path / "run.json").read_text()
        accepted = dict(sim.counters.reinstall_accepted)
    report = json.loads((tmp_path / "run.json").read_text())
    canary = next(t for t in report["targets"] if t["kvm_id"] == ids[0])
    assert canary["state"] == "ready"
    assert canary["reason"].startswith("proof: this run's host key"), canary["reason"]
    assert canary["sends"] == 2  # the ignored send and its one resend
    assert report["run"]["counters"]["in_doubt_resent_once"] == 1
    assert accepted == dict.fromkeys(ids, 1)  # one acted-on reinstall each: no second wipe


def test_validate_refuses_ssh_keys_and_a_missing_operator_key(tmp_path: Path) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "ops").write_bytes(key.export_private_key("openssh"))
    public = key.export_public_key("openssh").decode().strip()
    (tmp_path / "keys" / "ops.pub").write_text(public + "\n")
    ssh = "  readiness: {mode: ssh, ssh: {user: ops, identity: {file: keys/ops}}}\n"
    manifest = BASE.replace("  cloud_init: templates/ok.yaml.j2\n", "  cloud_init: t.j2\n" + ssh)

    def problems(template: str) -> list[str]:
        (tmp_path / "t.j2").write_text(template)
        report = check_manifest(write_manifest(tmp_path, manifest), ENV)
        return report.problems

    good = f"#cloud-config\nhostname: {{{{ hostname }}}}\nssh_authorized_keys: [{public}]\n"
    assert problems(good) == []
    found = problems("#cloud-config\nssh_keys: {rsa_private: x}\n" + good.split("\n", 1)[1])
    assert any("sets ssh_keys itself" in p for p in found), found
    found = problems("#cloud-config\nhostname: {{ hostname }}\n")
    assert any("its public half" in p and "could not log in" in p for p in found), found


async def test_the_optional_health_check_runs_after_cloud_init(
    make_sim: SimFactory, operator: tuple[Path, str]
) -> None:
    async def serve(status: int) -> Callable[..., Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readline()
            writer.write(f"HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
            writer.close()

        return handle

    async with make_sim(**SIM) as sim:
        healthy, sick = sim.vps_ids[0], sim.vps_ids[1]
        servers = [
            await asyncio.start_server(await serve(200), sim.vps(healthy).ip, 0),
            await asyncio.start_server(await serve(503), sim.vps(sick).ip, 0),
        ]
        port = servers[0].sockets[0].getsockname()[1]
        servers[1].close()
        servers[1] = await asyncio.start_server(await serve(503), sim.vps(sick).ip, port)
        try:
            jobs, _ = _ssh_jobs(sim, operator)
            check = HttpCheck(f"http://{{{{ ip }}}}:{port}/healthz", 200, 1.0)
            jobs = tuple(
                dataclasses.replace(j, proof=dataclasses.replace(j.proof, http=check))  # type: ignore[arg-type]
                for j in jobs[:2]
            )
            result, _ = await _run(sim, jobs)
        finally:
            for server in servers:
                server.close()
    assert result.states[healthy] is TargetState.READY, result.reasons[healthy]
    assert "cloud-init done; health check answered 200" in result.reasons[healthy]
    assert result.states[sick] is TargetState.FAILED
    assert "did not answer 200 within 1 s (last status 503)" in result.reasons[sick]


async def test_a_slow_sshd_is_waited_for_not_failed(
    make_sim: SimFactory, operator: tuple[Path, str]
) -> None:
    async with make_sim(**SIM) as sim:
        slow = sim.vps_ids[0]
        sim.set_ssh_fault(slow, delay=0.5)
        jobs, _ = _ssh_jobs(sim, operator)
        result, _ = await _run(sim, jobs[:1])
    assert result.states[slow] is TargetState.READY, result.reasons[slow]
    assert "this run's host key; cloud-init done" in result.reasons[slow]


async def test_a_dead_vps_rebuilt_with_a_script_gets_the_weaker_proof(
    make_sim: SimFactory, sim_http: SimHttp, operator: tuple[Path, str]
) -> None:
    """Disaster recovery: the VPS's SSH is down before the send (a failed install left it
    dead), so there is no pre-send key to compare; answering after the reinstall is the
    (weaker, and so named) proof for '#!' user data."""
    async with make_sim(**SIM) as sim:
        dead = sim.vps_ids[0]
        sim.set_install_outcome(dead, "fail")
        entry = (await sim_http.login(sim, dead))[dead]
        reply = await sim_http.call(entry, "set/reinstall", image=LINUX, password="Pw-12345")
        assert reply.ok, reply
        sim.advance_clock(3600)
        assert sim.vps(dead).state == "failed"
        sim.set_install_outcome(dead, "ok")
        jobs, _ = _ssh_jobs(sim, operator, script=True)
        result, prover = await _run(sim, jobs[:1])
    assert result.states[dead] is TargetState.READY, result.reasons[dead]
    assert "proof (weaker): SSH down before the send" in result.reasons[dead]
    assert prover.facts(dead)[0] == "weaker"  # type: ignore[attr-defined]
