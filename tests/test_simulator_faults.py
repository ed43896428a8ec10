"""Fault injection, the own rate limit and keep-alive closing, observed from a real client."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

import aiohttp
import pytest

from orchestrator.simulator import PROFILES, Fault, FaultRules, parse_fault
from tests.cli_support import run_serving_cli

LINUX = "cloudinit_ubuntu-lts-24-04"
PW = "N3w-root-pw"


async def _entries(sim, sim_http) -> dict:
    return await sim_http.login(sim)


async def test_429_without_and_with_retry_after(sim, sim_http) -> None:
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    sim.script_faults("get/power", ["throttle", Fault("throttle_retry_after", retry_after=7)])
    plain = await sim_http.call(entry, "get/power")
    assert plain.status == 429
    assert "Retry-After" not in plain.headers
    assert plain.body == {"error": "Too many requests. Please slow down.", "code": 429}
    told = await sim_http.call(entry, "get/power")
    assert told.status == 429
    assert told.headers["Retry-After"] == "7"
    assert (await sim_http.call(entry, "get/power")).status == 200
    assert sim.counters.faults == {"throttle": 1, "throttle_retry_after": 1}
    assert sim.counters.faults_by_endpoint == {
        "get/power": {"throttle": 1, "throttle_retry_after": 1}
    }


async def test_a_429_burst_hits_every_endpoint_of_the_account(sim, sim_http) -> None:
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    sim.script_faults("get/power", [Fault("throttle_burst", burst=3)])
    statuses = [
        (await sim_http.call(entry, "get/power")).status,
        (await sim_http.call(entry, "get/images")).status,
        (await sim_http.auth(sim)).status,
        (await sim_http.call(entry, "get/details")).status,
    ]
    assert statuses == [429, 429, 429, 200]
    assert sim.counters.faults == {"throttle_burst": 3}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_faults_answer_without_acting(sim, sim_http, status) -> None:
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    sim.script_faults("set/reinstall", [f"http{status}"])
    reply = await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)
    assert reply.status == status
    assert reply.body["code"] == status
    vps = sim.vps(entry["kvm_id"])
    assert (vps.reinstalls_received, vps.reinstalls_accepted, vps.state) == (0, 0, "running")
    assert sim.counters.faults == {f"http{status}": 1}


async def test_drop_before_processing_is_a_disconnect_and_nothing_happens(sim, sim_http):
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    sim.script_faults("set/reinstall", ["drop"])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)
    vps = sim.vps(entry["kvm_id"])
    assert (vps.reinstalls_received, vps.reinstalls_accepted, vps.state) == (0, 0, "running")
    assert sim.counters.faults == {"drop": 1}
    last = sim.request_log[-1]
    assert (last.endpoint, last.status, last.fault) == ("set/reinstall", None, "drop")
    # The next request is served normally.
    assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).ok


async def test_lost_response_acts_but_the_client_sees_a_disconnect(sim, sim_http) -> None:
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    sim.script_faults("set/reinstall", ["lost_response"])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)
    vps = sim.vps(entry["kvm_id"])
    assert (vps.reinstalls_received, vps.reinstalls_accepted, vps.state) == (1, 1, "installing")
    assert sim.counters.faults == {"lost_response": 1}
    last = sim.request_log[-1]
    assert (last.status, last.fault) == (200, "lost_response")


async def test_session_invalidation_fault_revokes_every_signature(sim, sim_http) -> None:
    data = await _entries(sim, sim_http)
    a, b = sim.vps_ids[:2]
    sim.script_faults("get/power", ["invalidate_sessions"])
    assert (await sim_http.call(data[a], "get/power")).status == 401
    assert (await sim_http.call(data[b], "get/images")).status == 401
    assert sim.counters.bad_signature_reasons["revoked"] == 2
    assert sim.counters.faults == {"invalidate_sessions": 1}
    fresh = await _entries(sim, sim_http)
    assert (await sim_http.call(fresh[a], "get/power")).status == 200


@pytest.mark.parametrize(
    ("kind", "state"), [("install_fail", "failed"), ("install_hang", "installing")]
)
async def test_install_faults_end_the_install_badly(sim, sim_http, kind, state) -> None:
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    sim.script_faults("set/reinstall", [kind])
    assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).ok
    sim.advance_clock(2_000)
    assert sim.vps(entry["kvm_id"]).state == state
    assert sim.counters.faults == {kind: 1}


async def test_an_install_fault_on_a_refused_reinstall_is_not_counted(sim, sim_http) -> None:
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    sim.script_faults("set/reinstall", ["install_fail"])
    reply = await sim_http.call(entry, "set/reinstall", image="no-such-image", password=PW)
    assert reply.status == 400
    assert sim.counters.faults == {}


async def test_added_latency_is_counted_and_the_request_served(sim, sim_http) -> None:
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    sim.script_faults("get/details", [Fault("latency", latency=0.02)])
    assert (await sim_http.call(entry, "get/details")).ok
    assert sim.counters.faults == {"latency": 1}
    assert sim.request_log[-1].fault is None


async def test_scripts_can_target_one_kvm_id(sim, sim_http) -> None:
    data = await _entries(sim, sim_http)
    a, b = sim.vps_ids[:2]
    sim.script_faults("get/power", ["http503", None, "http502"], kvm_id=b)
    assert (await sim_http.call(data[a], "get/power")).status == 200
    assert (await sim_http.call(data[b], "get/power")).status == 503
    assert (await sim_http.call(data[a], "get/power")).status == 200
    assert (await sim_http.call(data[b], "get/power")).status == 200  # the None entry
    assert (await sim_http.call(data[b], "get/power")).status == 502
    assert (await sim_http.call(data[b], "get/power")).status == 200
    assert sim.faults.pending("get/power", b) == 0


async def _statuses(sim, sim_http, n: int) -> list[int]:
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    return [(await sim_http.call(entry, "get/power")).status for _ in range(n)]


async def test_random_faults_are_reproducible_from_the_seed(make_sim, sim_http) -> None:
    rates = {"http503": 0.2, "throttle": 0.2, "http500": 0.1}
    runs = []
    for seed in (7, 7, 8):
        async with make_sim(seed=seed) as sim:
            sim.set_faults(rates, endpoint="get/power")
            runs.append(await _statuses(sim, sim_http, 60))
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    assert {200, 429, 500, 503} <= set(runs[0])


async def test_counters_match_what_the_client_saw(make_sim, sim_http) -> None:
    async with make_sim(seed=3) as sim:
        sim.set_faults({"http503": 0.3, "throttle_retry_after": 0.2}, retry_after=(2, 4))
        seen = collections.Counter(await _statuses(sim, sim_http, 100))
        # The auth call in _statuses was subject to the rules too.
        faults = sim.counters.faults
        power = sim.counters.faults_by_endpoint["get/power"]
        assert power.get("http503", 0) == seen[503]
        assert power.get("throttle_retry_after", 0) == seen[429]
        assert sum(faults.values()) >= seen[503] + seen[429]


async def test_rules_are_per_endpoint(sim, sim_http) -> None:
    sim.set_faults({"http503": 1.0}, endpoint="set/reinstall")
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    assert (await sim_http.call(entry, "get/power")).status == 200
    assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).status == 503
    sim.set_faults(endpoint="set/reinstall")  # no rates: removes the rules
    assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).ok


@pytest.mark.parametrize("name", sorted(PROFILES))
async def test_every_profile_runs_and_counts_what_it_injects(make_sim, name) -> None:
    async with make_sim(profile=name, seed=11) as sim:
        assert sim.profile == name
        # Drive the fault plan directly: HTTP behaviour per kind is tested above.
        decisions = [sim.faults.decide("get/power", None) for _ in range(2000)]
        kinds = collections.Counter(d.kind for d in decisions if d.kind)
        if name == "healthy":
            assert not kinds
        else:
            assert kinds
        if name in ("expiring", "chaos"):
            assert sim.book.lifetime <= 90
            assert kinds["invalidate_sessions"] > 0
        if name in ("throttled", "chaos"):
            assert kinds["throttle_retry_after"] > 0
            assert kinds["throttle_burst"] > 0
        if name == "chaos":
            assert kinds["lost_response"] > 0


async def test_chaos_profile_over_http_counts_every_fault_it_shows(make_sim) -> None:
    async with make_sim(profile="chaos", seed=5, vps_count=3) as sim:
        seen: collections.Counter[str] = collections.Counter()
        # A new connection per request, so one dropped connection does not taint the next.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            form = {"email": sim.email, "pw": sim.password}
            for _ in range(150):
                try:
                    async with http.post(f"{sim.session_url}/kvm/v2/get/auth", data=form) as r:
                        await r.read()
                        seen[str(r.status)] += 1
                except aiohttp.ServerDisconnectedError:
                    seen["disconnect"] += 1
        faults = sim.counters.faults
        assert seen["disconnect"] == faults.get("drop", 0) + faults.get("lost_response", 0)
        throttles = sum(
            faults.get(k, 0) for k in ("throttle", "throttle_retry_after", "throttle_burst")
        )
        assert seen["429"] == throttles
        assert seen["disconnect"] > 0
        assert seen["429"] > 0


@pytest.mark.parametrize(
    ("text", "fault"),
    [
        ("429", Fault("throttle")),
        ("429:5", Fault("throttle_retry_after", retry_after=5)),
        ("throttle_retry_after:2", Fault("throttle_retry_after", retry_after=2)),
        ("503", Fault("http503")),
        ("drop", Fault("drop")),
        ("lost", Fault("lost_response")),
        ("latency:0.5", Fault("latency", latency=0.5)),
        ("burst:4", Fault("throttle_burst", burst=4)),
        ("invalidate", Fault("invalidate_sessions")),
        ("hang", Fault("install_hang")),
        ("ok", None),
    ],
)
def test_short_fault_notation(text, fault) -> None:
    assert parse_fault(text) == fault


@pytest.mark.parametrize("text", ["teapot", "429:soon", "drop:3", "burst:1.5", "418"])
def test_bad_short_faults_are_refused(text) -> None:
    with pytest.raises(ValueError, match="fault"):
        parse_fault(text)


async def test_scripts_per_endpoint_in_one_call(sim, sim_http) -> None:
    entry = (await _entries(sim, sim_http))[sim.vps_ids[0]]
    sim.set_faults(script={"get/power": ["429:5", "ok"], "set/reinstall": ["503"]})
    told = await sim_http.call(entry, "get/power")
    assert (told.status, told.headers["Retry-After"]) == (429, "5")
    assert (await sim_http.call(entry, "get/power")).status == 200
    assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).status == 503
    assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).ok


def test_fault_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        FaultRules(rates={"http418": 0.1})
    with pytest.raises(ValueError, match="more than 1"):
        FaultRules(rates={"http503": 0.7, "drop": 0.5})
    with pytest.raises(ValueError, match="latency_rate"):
        FaultRules(rates={"latency": 0.1})
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("explode")


async def test_set_faults_rejects_unknown_names(sim) -> None:
    with pytest.raises(ValueError, match="unknown endpoint"):
        sim.set_faults({"http503": 0.1}, endpoint="set/everything")
    with pytest.raises(ValueError, match="unknown fault profile"):
        sim.set_profile("apocalypse")
    with pytest.raises(ValueError, match="scripted"):
        sim.set_faults({"http503": 0.1}, kvm_id=sim.vps_ids[0])


async def test_own_rate_limit_answers_429_beyond_the_rate(make_sim, sim_http) -> None:
    async with make_sim(rate_limit=5.0) as sim:
        replies = await asyncio.gather(*(sim_http.auth(sim) for _ in range(20)))
        statuses = collections.Counter(r.status for r in replies)
        assert statuses[429] > 0
        assert statuses[200] + statuses[429] == 20
        # At most the burst (one second's worth) plus what refilled while they ran.
        assert statuses[200] <= 10
        assert sim.counters.throttled == statuses[429]
        throttled = [r for r in replies if r.status == 429]
        assert all(int(r.headers["Retry-After"]) >= 1 for r in throttled)
        assert {e.fault for e in sim.request_log if e.status == 429} == {"rate_limit"}


async def _raw_request(reader, writer, host: str, body: str) -> int:
    writer.write(
        (
            f"POST /kvm/v2/get/auth HTTP/1.1\r\nHost: {host}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next(int(h.split(":")[1]) for h in lines if h.lower().startswith("content-length"))
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def test_idle_keep_alive_connections_are_closed_by_the_server(make_sim) -> None:
    async with make_sim(keepalive_timeout=0.2) as sim:
        host, port = sim.session_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            body = f"email={sim.email}&pw={sim.password}"
            assert await _raw_request(reader, writer, host, body) == 200
            # The connection is kept alive: a second request rides on it.
            assert await _raw_request(reader, writer, host, body) == 200
            # Then, idle, it is closed by the server (EOF); the bound only stops a hang.
            assert await asyncio.wait_for(reader.read(), timeout=10) == b""
        finally:
            writer.close()


def _auth_statuses_from_cli(tmp: Path, *options: str, calls: int) -> tuple[list[int], int]:
    """Run ``edis-fleet simulator`` with ``options`` (in-process, stopped by SIGINT), send
    ``calls`` auth requests at once; return their statuses and its ``throttled`` counter."""
    password = "cli-burst-pass"

    def burst(url: str) -> tuple[list[int], int]:
        async def go() -> tuple[list[int], int]:
            form = {"email": "operator@example.com", "pw": password}
            async with aiohttp.ClientSession() as http:

                async def auth() -> int:
                    async with http.post(f"{url}/kvm/v2/get/auth", data=form) as resp:
                        await resp.read()
                        return resp.status

                statuses = list(await asyncio.gather(*(auth() for _ in range(calls))))
                async with http.get(f"{url}/_sim/state") as resp:
                    throttled = int((await resp.json())["counters"]["throttled"])
            return statuses, throttled

        return asyncio.run(go())

    url_file = tmp / f"url-{len(list(tmp.iterdir()))}"
    args = ["simulator", "--vps", "1", "--port", "0", *options]
    done, answer = run_serving_cli(
        args, cwd=tmp, env={"EDIS_SIM_PASSWORD": password}, url_file=url_file, use=burst
    )
    assert done.returncode == 0, done.stderr
    return answer


def test_cli_rate_burst_sets_how_many_requests_the_own_limit_saves_up(tmp_path: Path) -> None:
    # 0.01/s refills one token per 100 s: what gets through is the burst, whatever the timing.
    statuses, throttled = _auth_statuses_from_cli(
        tmp_path, "--rate-limit", "0.01", "--rate-burst", "3", calls=8
    )
    assert collections.Counter(statuses) == {200: 3, 429: 5}
    assert throttled == 5
    # Without --rate-burst the bucket holds one second's worth (at least one request).
    statuses, _ = _auth_statuses_from_cli(tmp_path, "--rate-limit", "0.01", calls=4)
    assert collections.Counter(statuses) == {200: 1, 429: 3}
