"""The simulator's per-VPS SSH servers: the old host key before a reinstall, the user data's key
and authorised keys after it, ``cloud-init status`` running then done, and the SSH faults.

Spoken to with asyncssh directly (not the product's client), over loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncssh
import pytest

from orchestrator.simulator import Simulator
from tests.conftest import SimFactory, SimHttp

LINUX = "cloudinit_ubuntu-lts-24-04"
PW = "N3w-root-pw"
STATUS = "cloud-init status --wait --long --format json"
BOUND = 10.0


def _key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def _line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key("openssh").decode().strip()


def _user_data(host: asyncssh.SSHKey, login: asyncssh.SSHKey) -> str:
    private = host.export_private_key("openssh").decode()
    indented = "\n".join("    " + line for line in private.splitlines())
    return (
        "#cloud-config\nhostname: web-1\n"
        f"ssh_keys:\n  ed25519_private: |\n{indented}\n  ed25519_public: {_line(host)}\n"
        f"users:\n  - name: ops\n    ssh_authorized_keys:\n      - {_line(login)}\n"
    )


@pytest.fixture
async def ssh_sim(make_sim: SimFactory) -> AsyncIterator[Simulator]:
    async with make_sim(tcp_listeners=True, cloud_init_seconds=300) as sim:  # 0.3 s scaled
        yield sim


async def _scan(sim: Simulator, kvm_id: str) -> str | None:
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(sim.vps(kvm_id).ip, sim.ssh_port), BOUND
        )
    except OSError:
        return None
    return None if key is None else _line(key)


async def _reinstall(sim: Simulator, http: SimHttp, kvm_id: str, user_data: str) -> None:
    entry = (await http.login(sim, kvm_id))[kvm_id]
    reply = await http.call(
        entry, "set/reinstall", image=LINUX, password=PW, cloudinit_user_data=user_data
    )
    assert reply.ok, reply


async def _until_key(sim: Simulator, kvm_id: str, expected: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + BOUND
    while await _scan(sim, kvm_id) != expected:
        assert loop.time() < end, f"{kvm_id} never presented the expected key"
        await asyncio.sleep(0.02)


async def _status(
    sim: Simulator, kvm_id: str, host: asyncssh.SSHKey, login: asyncssh.SSHKey, command: str
) -> asyncssh.SSHCompletedProcess:
    async with asyncssh.connect(
        sim.vps(kvm_id).ip,
        sim.ssh_port,
        username="ops",
        client_keys=[login],
        known_hosts=([host.convert_to_public()], [], []),
        agent_path=None,
    ) as conn:
        return await asyncio.wait_for(conn.run(command), BOUND)


async def test_old_key_before_then_the_user_datas_key_and_cloud_init_done(
    ssh_sim: Simulator, sim_http: SimHttp
) -> None:
    kvm_id = ssh_sim.vps_ids[0]
    old = await _scan(ssh_sim, kvm_id)
    assert old == ssh_sim.host_key(kvm_id)
    assert old is not None
    assert old.startswith("ssh-ed25519 ")
    assert await _scan(ssh_sim, kvm_id) == old  # generated once, kept
    host, login = _key(), _key()
    await _reinstall(ssh_sim, sim_http, kvm_id, _user_data(host, login))
    assert await _scan(ssh_sim, kvm_id) is None  # down while installing
    await _until_key(ssh_sim, kvm_id, _line(host))
    first = await _status(ssh_sim, kvm_id, host, login, "cloud-init status --format json")
    assert json.loads(first.stdout)["status"] == "running"
    done = await _status(ssh_sim, kvm_id, host, login, STATUS)
    doc = json.loads(done.stdout)
    assert (doc["status"], doc["errors"], done.exit_status) == ("done", [], 0)


async def test_only_the_authorised_key_logs_in(ssh_sim: Simulator, sim_http: SimHttp) -> None:
    kvm_id = ssh_sim.vps_ids[1]
    host, login = _key(), _key()
    await _reinstall(ssh_sim, sim_http, kvm_id, _user_data(host, login))
    await _until_key(ssh_sim, kvm_id, _line(host))
    with pytest.raises(asyncssh.PermissionDenied):
        await _status(ssh_sim, kvm_id, host, _key(), STATUS)
    ssh_sim.set_ssh_fault(kvm_id, refuse_keys=True)
    with pytest.raises(asyncssh.PermissionDenied):
        await _status(ssh_sim, kvm_id, host, login, STATUS)


async def test_cloud_init_error_and_degraded(ssh_sim: Simulator, sim_http: SimHttp) -> None:
    bad, meh = ssh_sim.vps_ids[2], ssh_sim.vps_ids[3]
    ssh_sim.set_ssh_fault(bad, cloud_init="error", errors=["runcmd failed: exit 3"])
    ssh_sim.set_ssh_fault(meh, cloud_init="degraded")
    keys = {bad: (_key(), _key()), meh: (_key(), _key())}
    for kvm_id, (host, login) in keys.items():
        await _reinstall(ssh_sim, sim_http, kvm_id, _user_data(host, login))
    for kvm_id, (host, _login) in keys.items():
        await _until_key(ssh_sim, kvm_id, _line(host))
    host, login = keys[bad]
    failed = await _status(ssh_sim, bad, host, login, STATUS)
    doc = json.loads(failed.stdout)
    assert (doc["status"], doc["errors"], failed.exit_status) == (
        "error",
        ["runcmd failed: exit 3"],
        1,
    )
    host, login = keys[meh]
    degraded = await _status(ssh_sim, meh, host, login, STATUS)
    doc = json.loads(degraded.stdout)
    assert (doc["status"], doc["extended_status"], degraded.exit_status) == (
        "done",
        "degraded done",
        2,
    )
    assert doc["recoverable_errors"]


async def test_accepted_but_nothing_installed_keeps_the_old_system(
    ssh_sim: Simulator, sim_http: SimHttp
) -> None:
    kvm_id = ssh_sim.vps_ids[4]
    old = await _scan(ssh_sim, kvm_id)
    ssh_sim.set_install_outcome(kvm_id, "noop")
    await _reinstall(ssh_sim, sim_http, kvm_id, _user_data(_key(), _key()))
    assert ssh_sim.vps(kvm_id).reinstalls_accepted == 1
    assert ssh_sim.ssh_open(kvm_id) is True  # never went down
    ssh_sim.advance_clock(3600)
    assert await _scan(ssh_sim, kvm_id) == old


async def test_a_slow_sshd_answers_late_but_answers(ssh_sim: Simulator) -> None:
    kvm_id = ssh_sim.vps_ids[0]
    ssh_sim.set_ssh_fault(kvm_id, delay=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await _scan(ssh_sim, kvm_id) == ssh_sim.host_key(kvm_id)
    assert loop.time() - started >= 0.2


async def test_a_script_gets_a_fresh_key_and_no_login(
    ssh_sim: Simulator, sim_http: SimHttp
) -> None:
    kvm_id = ssh_sim.vps_ids[1]
    old = await _scan(ssh_sim, kvm_id)
    await _reinstall(ssh_sim, sim_http, kvm_id, "#!/bin/sh\necho hi\n")
    assert await _scan(ssh_sim, kvm_id) is None
    loop = asyncio.get_running_loop()
    end = loop.time() + BOUND
    while (now := await _scan(ssh_sim, kvm_id)) is None:
        assert loop.time() < end
        await asyncio.sleep(0.02)
    assert now != old


async def test_ssh_faults_over_the_control_api(ssh_sim: Simulator, sim_http: SimHttp) -> None:
    kvm_id = ssh_sim.vps_ids[2]
    url = f"{ssh_sim.session_url}/_sim/ssh_fault"
    doc = {"kvm_id": kvm_id, "cloud_init": "error", "errors": ["boom"], "refuse_keys": True}
    async with sim_http.http.post(url, json=doc) as resp:
        assert resp.status == 200, await resp.text()
    faults = ssh_sim.ssh.faults[kvm_id]  # type: ignore[union-attr]
    assert (faults.cloud_init, faults.errors, faults.refuse_keys) == ("error", ("boom",), True)
    async with sim_http.http.post(url, json={"kvm_id": kvm_id, "cloud_init": "x"}) as resp:
        assert resp.status == 400
