"""The simulated account (generated or from YAML), its hosts, its config and the /_sim API."""

from __future__ import annotations

import socket
import ssl
import textwrap

import aiohttp
import pytest

from orchestrator.simulator import DEFAULT_IMAGES, SimConfig, Simulator
from orchestrator.simulator.middleware import _is_loopback

LINUX = "cloudinit_ubuntu-lts-24-04"


async def test_generated_accounts_are_deterministic(make_sim) -> None:
    async with make_sim(vps_count=3, seed=4) as one, make_sim(vps_count=3, seed=4) as two:
        assert one.vps_ids == ["kvm_100001_200001", "kvm_100002_200002", "kvm_100003_200003"]
        for kvm_id in one.vps_ids:
            a, b = one.vps(kvm_id), two.vps(kvm_id)
            assert (a.hostname, a.ip, a.hw, a.lps) == (b.hostname, b.ip, b.hw, b.lps)
        first = one.vps("kvm_100001_200001")
        assert (first.hostname, first.ip) == ("vps-001", "127.0.2.1")
        assert (first.image, first.state, first.suspended) == (
            "cloudinit_debian-bookworm",
            "running",
            False,
        )
    for name in (
        "cloudinit_debian-bookworm",
        "cloudinit_ubuntu-lts-24-04",
        "debian-bullseye",
        "windows-server-2022",
    ):
        assert name in DEFAULT_IMAGES


async def test_vps_i_lives_on_node_i_minus_1_mod_nodes(make_sim) -> None:
    async with make_sim(vps_count=5, api_nodes=2) as sim:
        hosts = [sim.vps(k).api_host.split(":")[0] for k in sim.vps_ids]
        assert hosts == ["127.0.1.1", "127.0.1.2", "127.0.1.1", "127.0.1.2", "127.0.1.1"]
        assert sim.session_url.startswith("http://127.0.0.1:")


async def test_a_fixed_port_is_shared_by_every_host(make_sim, sim_http) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with make_sim(port=port, vps_count=2) as sim:
        assert sim.session_url == f"http://127.0.0.1:{port}"
        assert [sim.vps(k).api_host for k in sim.vps_ids] == [
            f"127.0.1.1:{port}",
            f"127.0.1.2:{port}",
        ]
        entry = (await sim_http.login(sim))[sim.vps_ids[1]]
        assert (await sim_http.call(entry, "get/power")).ok


ACCOUNT = """\
email: ops@example.net
images: [cloudinit_debian-bookworm, windows-server-2022]
vps:
  - kvm_id: kvm_123456_789012
    hostname: web-1
    description: web frontend
  - kvm_id: kvm_234567_890123
    images: [debian-bullseye, cloudinit_ubuntu-lts-24-04]
    image: debian-bullseye
    suspended: true
    lps: "02"
    lps_ispremium: true
  - kvm_id: kvm_345678_901234
    state: failed
    install_outcome: hang
    ip: 127.0.9.9
"""


async def test_yaml_account(make_sim, sim_http, tmp_path) -> None:
    path = tmp_path / "account.yaml"
    path.write_text(ACCOUNT, encoding="utf-8")
    async with make_sim(account_file=path) as sim:
        assert sim.email == "ops@example.net"
        assert sim.vps_ids == ["kvm_123456_789012", "kvm_234567_890123", "kvm_345678_901234"]
        data = await sim_http.login(sim)
        web, db, broken = (data[k] for k in sim.vps_ids)
        assert (web["description"], web["suspended"]) == ("web frontend", "n")
        assert (db["suspended"], db["lps"], db["lps_ispremium"]) == ("y", "02", True)
        web_images = (await sim_http.call(web, "get/images")).body["data"]
        assert web_images == ["cloudinit_debian-bookworm", "windows-server-2022"]
        assert sim.vps("kvm_234567_890123").image == "debian-bullseye"
        assert (await sim_http.call(broken, "get/power")).body["data"] == "server powered off"
        details = (await sim_http.call(broken, "get/details")).body["data"]
        assert details["hostname"] == "vps-003"
        assert details["ip"]["ipv4"] == ["127.0.9.9/255.255.255.0"]
        assert sim.vps("kvm_345678_901234").install_outcome == "hang"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("vps: []", "vps: must be a non-empty list"),
        ("vps:\n  - kvm_id: vps-1", "vps[0].kvm_id"),
        ("vps:\n  - kvm_id: kvm_1_2\n    colour: red", "vps[0].colour: unknown key"),
        ("vps:\n  - kvm_id: kvm_1_2\n  - kvm_id: kvm_1_2", "vps[1].kvm_id: duplicate"),
        ("vps:\n  - kvm_id: kvm_1_2\n    image: nope", "vps[0].image"),
        ("vps:\n  - kvm_id: kvm_1_2\n    suspended: maybe", "vps[0].suspended"),
        ("vps:\n  - kvm_id: kvm_1_2\n    install_outcome: later", "vps[0].install_outcome"),
        ("vps: [", "not valid YAML"),
    ],
)
def test_bad_yaml_accounts_name_the_file_and_field(tmp_path, text, message) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.yaml") as info:
        Simulator(SimConfig(account_file=path))
    assert message in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"vps_count": 0},
        {"signature_lifetime": -1.0},
        {"time_scale": float("nan")},
        {"second_reinstall": "queue"},
        {"error_style": "teapot"},
        {"keepalive_timeout": 0.0},
        {"rate_limit": 0.0},
        {"api_nodes": 255},
        {"port": 70000},
        {"install_seconds": {"linux": -5.0}},
        {"password": ""},
    ],
)
def test_bad_configs_are_refused(kwargs) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SimConfig(**kwargs)


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown fault profile"):
        Simulator(SimConfig(profile="apocalypse"))


async def test_https_on_every_host(make_sim) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "127.0.1.1", "127.0.1.2")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with make_sim(vps_count=2, ssl=server_ctx) as sim:
        assert sim.session_url.startswith("https://127.0.0.1:")
        connector = aiohttp.TCPConnector(ssl=client_ctx)
        async with aiohttp.ClientSession(connector=connector) as http:
            form = {"email": sim.email, "pw": sim.password}
            async with http.post(f"{sim.session_url}/kvm/v2/get/auth", data=form) as resp:
                entry = (await resp.json())["data"][sim.vps_ids[1]]
            fields = {k: str(entry[k]) for k in ("signature", "kvm_id", "valid_until")}
            url = f"https://{entry['api_host']}/kvm/v2/get/power"
            assert url == f"{sim.api_url(sim.vps_ids[1])}/kvm/v2/get/power"
            async with http.post(url, data=fields) as resp:
                assert (await resp.json())["data"] == "server powered on"


def test_only_loopback_peers_may_use_the_control_api() -> None:
    assert _is_loopback("127.0.0.1")
    assert _is_loopback("127.9.9.9")
    assert _is_loopback("::1")
    assert not _is_loopback("10.0.0.1")
    assert not _is_loopback(None)
    assert not _is_loopback("not-an-ip")


async def _control(sim_http, sim, name: str, payload: dict | None = None):
    url = f"{sim.session_url}/_sim/{name}"
    if payload is None:
        async with sim_http.http.get(url) as resp:
            return resp.status, await resp.json()
    async with sim_http.http.post(url, json=payload) as resp:
        return resp.status, await resp.json()


async def test_control_api_state_and_log(sim, sim_http) -> None:
    await sim_http.login(sim)
    status, state = await _control(sim_http, sim, "state")
    assert status == 200
    assert [v["kvm_id"] for v in state["vps"]] == sim.vps_ids
    assert state["counters"]["auth_calls"] == 1
    assert state["vps"][0]["live_signatures"] == 1
    status, log = await _control(sim_http, sim, "log")
    assert [e["endpoint"] for e in log["entries"]] == ["get/auth"]


async def test_control_api_changes_the_simulation(sim, sim_http) -> None:
    a, b = sim.vps_ids[:2]
    old = (await sim_http.login(sim))[a]
    status, moved = await _control(sim_http, sim, "migrate", {"kvm_id": a})
    assert status == 200
    assert moved["api_host"] == sim.vps(a).api_host != old["api_host"]
    assert (await _control(sim_http, sim, "invalidate", {"kvm_ids": [b]}))[1] == {"revoked": 1}
    await _control(sim_http, sim, "suspend", {"kvm_id": b, "suspended": True})
    assert sim.vps(b).suspended
    await _control(sim_http, sim, "images", {"kvm_id": b, "images": ["debian-bullseye"]})
    assert sim.vps(b).images == ("debian-bullseye",)
    await _control(sim_http, sim, "install_outcome", {"kvm_id": a, "outcome": "fail"})
    assert sim.vps(a).install_outcome == "fail"
    await _control(sim_http, sim, "switches", {"second_reinstall": "accept"})
    assert sim.second_reinstall == "accept"
    before = sim.clock.now()
    await _control(sim_http, sim, "advance", {"seconds": 100})
    assert sim.clock.now() >= before + 100
    status, desc = await _control(sim_http, sim, "faults", {"profile": "throttled"})
    assert (status, desc["profile"], sim.profile) == (200, "throttled", "throttled")
    script = {"endpoint": "get/power", "script": ["http503", {"kind": "drop"}], "kvm_id": a}
    await _control(sim_http, sim, "faults", script)
    assert sim.faults.pending("get/power", a) == 2
    await _control(sim_http, sim, "faults", {"clear": True})
    assert not sim.faults.active


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("migrate", {"kvm_id": "kvm_0_0"}),
        ("migrate", {}),
        ("faults", {"rates": {"http418": 0.5}}),
        ("faults", {"profile": "nope"}),
        ("install_outcome", {"kvm_id": "kvm_100001_200001", "outcome": "maybe"}),
        ("advance", {"seconds": -5}),
        ("switches", {"error_style": "teapot"}),
    ],
)
async def test_control_api_refuses_bad_input_with_400_json(sim, sim_http, name, payload):
    status, body = await _control(sim_http, sim, name, payload)
    assert status == 400
    assert body["code"] == 400


async def test_control_api_is_only_on_the_session_host(sim, sim_http) -> None:
    host = sim.vps(sim.vps_ids[0]).api_host
    async with sim_http.http.get(f"http://{host}/_sim/state") as resp:
        assert resp.status == 404
