"""The simulator's per-VPS TCP listeners: open while running, closed while installing."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import urllib.request
from pathlib import Path

import pytest

from orchestrator.simulator import SimConfig, Simulator
from orchestrator.simulator.listeners import BANNER
from orchestrator.simulator.vps import InstallOutcome
from tests.cli_support import run_serving_cli
from tests.conftest import SimFactory, SimHttp

LINUX = "cloudinit_ubuntu-lts-24-04"
PW = "N3w-root-pw"
# Bounds only against a hung test; the 0.3 s installs finish long before.
WAIT_BOUND = 5.0


async def _banner(host: str, port: int) -> bytes | None:
    """Return the banner line the VPS's SSH server sends, or None if the connection was
    refused."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return None
    try:
        return await asyncio.wait_for(reader.readline(), WAIT_BOUND)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _wait_for(sim: Simulator, kvm_id: str, expected: bytes | None) -> None:
    vps = sim.vps(kvm_id)
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_BOUND
    while await _banner(vps.ip, sim.ssh_port) != expected:
        assert loop.time() < end, f"{kvm_id}: listener never became {expected!r}"
        await asyncio.sleep(0.02)


async def _reinstall(sim: Simulator, sim_http: SimHttp, kvm_id: str) -> None:
    entry = (await sim_http.login(sim, kvm_id))[kvm_id]
    reply = await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)
    assert reply.ok, reply


async def test_listeners_are_off_by_default(sim: Simulator) -> None:
    assert sim.config.tcp_listeners is False
    assert sim.listeners is None
    assert sim.ssh_port == 0
    assert sim.ssh_open(sim.vps_ids[0]) is False
    assert sim.snapshot()["ssh_port"] == 0


async def test_each_vps_answers_on_its_own_address(make_sim: SimFactory) -> None:
    async with make_sim(tcp_listeners=True) as sim:
        assert sim.ssh_port not in (0, 22)
        ips = [v.ip for v in sim.vpses]
        assert len(set(ips)) == len(ips)
        for ip in ips:
            assert await _banner(ip, sim.ssh_port) == BANNER
        snapshot = sim.snapshot()
        assert snapshot["ssh_port"] == sim.ssh_port
        assert all(v["ssh_open"] for v in snapshot["vps"])


async def test_listener_closes_during_install_and_reopens_after(
    make_sim: SimFactory, sim_http: SimHttp
) -> None:
    async with make_sim(tcp_listeners=True) as sim:
        kvm_id, other = sim.vps_ids[0], sim.vps_ids[1]
        ip = sim.vps(kvm_id).ip
        assert await _banner(ip, sim.ssh_port) == BANNER
        await _reinstall(sim, sim_http, kvm_id)
        # Closed before the success answer left: no window in which a probe sees the old OS.
        assert await _banner(ip, sim.ssh_port) is None
        assert sim.ssh_open(kvm_id) is False
        assert await _banner(sim.vps(other).ip, sim.ssh_port) == BANNER
        await _wait_for(sim, kvm_id, BANNER)  # time_scale=0.001: about 0.3 s
        assert sim.vps(kvm_id).state == "running"
        assert sim.ssh_open(kvm_id) is True


@pytest.mark.parametrize("outcome", ["fail", "hang"])
async def test_failed_or_hanging_install_stays_closed(
    make_sim: SimFactory, sim_http: SimHttp, outcome: InstallOutcome
) -> None:
    async with make_sim(tcp_listeners=True) as sim:
        kvm_id = sim.vps_ids[0]
        sim.set_install_outcome(kvm_id, outcome)
        await _reinstall(sim, sim_http, kvm_id)
        await asyncio.sleep(0.6)  # twice the install time
        assert sim.vps(kvm_id).state == ("failed" if outcome == "fail" else "installing")
        assert await _banner(sim.vps(kvm_id).ip, sim.ssh_port) is None
        sim.advance_clock(3600)
        assert await _banner(sim.vps(kvm_id).ip, sim.ssh_port) is None


async def test_a_failed_vps_comes_back_after_a_good_reinstall(
    make_sim: SimFactory, sim_http: SimHttp
) -> None:
    async with make_sim(tcp_listeners=True, time_scale=1.0) as sim:
        kvm_id = sim.vps_ids[0]
        sim.set_install_outcome(kvm_id, "fail")
        await _reinstall(sim, sim_http, kvm_id)
        sim.advance_clock(301)
        assert sim.vps(kvm_id).state == "failed"
        assert sim.ssh_open(kvm_id) is False
        sim.set_install_outcome(kvm_id, "ok")
        await _reinstall(sim, sim_http, kvm_id)
        sim.advance_clock(301)
        assert sim.ssh_open(kvm_id) is True
        assert await _banner(sim.vps(kvm_id).ip, sim.ssh_port) == BANNER


async def test_advancing_the_clock_reopens_at_once(make_sim: SimFactory, sim_http: SimHttp) -> None:
    async with make_sim(tcp_listeners=True, time_scale=1.0) as sim:
        kvm_id = sim.vps_ids[0]
        await _reinstall(sim, sim_http, kvm_id)
        sim.advance_clock(299)
        assert sim.ssh_open(kvm_id) is False
        sim.advance_clock(2)  # the 300 s Linux install is over now
        assert sim.ssh_open(kvm_id) is True
        assert await _banner(sim.vps(kvm_id).ip, sim.ssh_port) == BANNER


async def test_queued_reinstalls_keep_it_closed_until_the_last_ends(
    make_sim: SimFactory, sim_http: SimHttp
) -> None:
    async with make_sim(tcp_listeners=True, time_scale=1.0, second_reinstall="accept") as sim:
        kvm_id = sim.vps_ids[0]
        await _reinstall(sim, sim_http, kvm_id)
        await _reinstall(sim, sim_http, kvm_id)
        sim.advance_clock(301)
        assert sim.vps(kvm_id).state == "installing"  # the queued one runs now
        assert sim.ssh_open(kvm_id) is False
        sim.advance_clock(300)
        assert sim.ssh_open(kvm_id) is True


async def test_a_restarted_install_reopens_at_the_new_end(
    make_sim: SimFactory, sim_http: SimHttp
) -> None:
    async with make_sim(tcp_listeners=True, time_scale=1.0, second_reinstall="restart") as sim:
        kvm_id = sim.vps_ids[0]
        await _reinstall(sim, sim_http, kvm_id)
        sim.advance_clock(200)
        await _reinstall(sim, sim_http, kvm_id)  # starts over: ends 300 s from now
        sim.advance_clock(150)  # past the first install's end
        assert sim.ssh_open(kvm_id) is False
        sim.advance_clock(151)
        assert sim.ssh_open(kvm_id) is True


async def test_a_fixed_ssh_port_and_clean_shutdown(make_sim: SimFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.2.1", 0))
        port = probe.getsockname()[1]
    async with make_sim(tcp_listeners=True, ssh_port=port, vps_count=3) as sim:
        assert sim.ssh_port == port
        ips = [v.ip for v in sim.vpses]
        assert await _banner(ips[2], port) == BANNER
    for ip in ips:
        assert await _banner(ip, port) is None


async def test_bad_listener_configurations_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ssh_port must not be 22"):
        SimConfig(tcp_listeners=True, ssh_port=22)
    account = tmp_path / "account.yaml"
    account.write_text("vps:\n  - kvm_id: kvm_1_2\n    ip: 192.0.2.10\n", encoding="utf-8")
    with pytest.raises(ValueError, match="not on loopback"):
        Simulator(SimConfig(account_file=account, tcp_listeners=True))
    Simulator(SimConfig(account_file=account))  # fine without listeners
    twins = tmp_path / "twins.yaml"
    twins.write_text(
        "vps:\n  - {kvm_id: kvm_1_2, ip: 127.0.9.1}\n  - {kvm_id: kvm_1_3, ip: 127.0.9.1}\n",
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="also kvm_1_2's"):
        Simulator(SimConfig(account_file=twins, tcp_listeners=True))


def test_simulator_command_prints_the_ssh_port(tmp_path: Path) -> None:
    def use(url: str) -> tuple[int, bytes | None]:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"{url}/_sim/state", timeout=WAIT_BOUND) as resp:
            port = int(json.loads(resp.read())["ssh_port"])
        return port, asyncio.run(_banner("127.0.2.2", port))

    done, (port, banner) = run_serving_cli(
        ["simulator", "--vps", "2", "--port", "0", "--tcp-listeners"],
        cwd=tmp_path,
        env={},
        url_file=tmp_path / "url",
        use=use,
        stop=signal.SIGINT,
    )
    assert done.returncode == 0, done.stderr
    assert banner == BANNER
    line = next(x for x in done.stdout.splitlines() if x.startswith("ssh port: "))
    assert int(line.split()[2]) == port
