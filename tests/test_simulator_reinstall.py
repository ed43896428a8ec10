"""set/reinstall and the install state machine, as seen over HTTP and through the Python API."""

from __future__ import annotations

import asyncio

import pytest

LINUX = "cloudinit_ubuntu-lts-24-04"
WINDOWS = "windows-server-2022"
PW = "N3w-root-pw"


async def _entry(sim, sim_http, index: int = 0) -> dict:
    kvm_id = sim.vps_ids[index]
    return (await sim_http.login(sim, kvm_id))[kvm_id]


async def _power(sim_http, entry) -> str:
    reply = await sim_http.call(entry, "get/power")
    assert reply.status == 200, reply
    return reply.body["data"]


async def test_a_reinstall_installs_then_runs_the_new_image(sim, sim_http) -> None:
    entry = await _entry(sim, sim_http)
    vps = sim.vps(entry["kvm_id"])
    assert (vps.state, vps.image) == ("running", "cloudinit_debian-bookworm")
    assert await _power(sim_http, entry) == "server powered on"

    reply = await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)
    assert reply.status == 200
    assert reply.body == {"status": "success"}
    assert vps.state == "installing"
    assert await _power(sim_http, entry) == "server is being reinstalled"

    # time_scale=0.001: the 300 s Linux install takes 0.3 s. Poll until it is done.
    for _ in range(200):
        if await _power(sim_http, entry) == "server powered on":
            break
        await asyncio.sleep(0.02)
    assert (vps.state, vps.image) == ("running", LINUX)
    assert await _power(sim_http, entry) == "server powered on"


async def test_install_durations_follow_family_and_time_scale(make_sim, sim_http) -> None:
    async with make_sim(time_scale=1.0) as sim:
        entry = await _entry(sim, sim_http)
        vps = sim.vps(entry["kvm_id"])
        assert (await sim_http.call(entry, "set/reinstall", image=WINDOWS, password=PW)).ok
        sim.advance_clock(301)  # enough for Linux, not for Windows
        assert vps.state == "installing"
        sim.advance_clock(600)
        assert (vps.state, vps.image) == ("running", WINDOWS)
    assert sim.install_duration(LINUX) == 300.0


async def test_install_seconds_per_image_name_win_over_the_family(make_sim) -> None:
    async with make_sim(time_scale=0.5, install_seconds={"linux": 100.0, LINUX: 10.0}) as sim:
        assert sim.install_duration(LINUX) == 5.0
        assert sim.install_duration("debian-bullseye") == 50.0
        assert sim.install_duration(WINDOWS) == 450.0  # default family duration, scaled


async def test_details_reflect_the_hostname_set_by_cloud_init(sim, sim_http) -> None:
    entry = await _entry(sim, sim_http, 1)
    details = await sim_http.call(entry, "get/details")
    assert details.body["data"]["hostname"] == "vps-002"
    assert details.body["data"]["ip"]["ipv4"] == ["127.0.2.2/255.255.255.0"]
    user_data = "#cloud-config\nhostname: web-2\npackage_update: false\n"
    reply = await sim_http.call(
        entry, "set/reinstall", image=LINUX, password=PW, cloudinit_user_data=user_data
    )
    assert reply.status == 200
    sim.advance_clock(301)
    details = await sim_http.call(entry, "get/details")
    assert details.body["data"]["hostname"] == "web-2"
    assert details.body["data"]["suspended"] == "n"


async def test_second_reinstall_rejected_by_default(sim, sim_http) -> None:
    entry = await _entry(sim, sim_http)
    kvm_id = entry["kvm_id"]
    assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).status == 200
    second = await sim_http.call(entry, "set/reinstall", image=WINDOWS, password=PW)
    assert second.status == 400
    assert second.body == {"error": "A reinstall is already in progress.", "code": 400}
    sim.advance_clock(301)
    assert sim.vps(kvm_id).image == LINUX
    # Once it has finished, a new reinstall is accepted again.
    assert (await sim_http.call(entry, "set/reinstall", image=WINDOWS, password=PW)).status == 200
    assert sim.counters.reinstall_received[kvm_id] == 3
    assert sim.counters.reinstall_accepted[kvm_id] == 2


async def test_second_reinstall_restart_starts_over_with_the_new_image(make_sim, sim_http):
    async with make_sim(second_reinstall="restart", time_scale=1.0) as sim:
        entry = await _entry(sim, sim_http)
        vps = sim.vps(entry["kvm_id"])
        assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).ok
        sim.advance_clock(200)
        assert (await sim_http.call(entry, "set/reinstall", image=WINDOWS, password=PW)).ok
        sim.advance_clock(200)  # the first would have ended by now; the restart has not
        assert (vps.state, vps.image) == ("installing", WINDOWS)
        sim.advance_clock(800)
        assert (vps.state, vps.image) == ("running", WINDOWS)
        assert vps.reinstalls_accepted == 2


async def test_second_reinstall_accept_queues_it_after_the_running_one(make_sim, sim_http):
    async with make_sim(second_reinstall="accept", time_scale=1.0) as sim:
        entry = await _entry(sim, sim_http)
        vps = sim.vps(entry["kvm_id"])
        assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).ok
        assert (await sim_http.call(entry, "set/reinstall", image=WINDOWS, password=PW)).ok
        assert vps.queued_installs == 1
        sim.advance_clock(301)
        assert (vps.state, vps.image) == ("installing", WINDOWS)
        sim.advance_clock(900)
        assert (vps.state, vps.image) == ("running", WINDOWS)
        assert (vps.reinstalls_received, vps.reinstalls_accepted) == (2, 2)


async def test_http200_error_style(make_sim, sim_http) -> None:
    async with make_sim(error_style="http200") as sim:
        entry = await _entry(sim, sim_http)
        reply = await sim_http.call(entry, "set/reinstall", image="no-such-image", password=PW)
        assert reply.status == 200
        assert reply.body == {"status": "error", "message": "Unknown image: no-such-image"}
        entry["signature"] = "x" * 50
        expired = await sim_http.call(entry, "get/power")
        assert expired.status == 200
        assert expired.body == {
            "status": "error",
            "message": "Invalid or expired session signature.",
        }
        bad_login = await sim_http.auth(sim, pw="nope")
        assert (bad_login.status, bad_login.body["status"]) == (200, "error")


async def test_suspended_vps_is_refused_with_403(sim, sim_http) -> None:
    entry = await _entry(sim, sim_http)
    kvm_id = entry["kvm_id"]
    sim.set_suspended(kvm_id, True)
    reply = await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)
    assert reply.status == 403
    assert reply.body == {"error": "This VPS is suspended.", "code": 403}
    assert (await sim_http.login(sim, kvm_id))[kvm_id]["suspended"] == "y"
    assert (await sim_http.call(entry, "get/details")).body["data"]["suspended"] == "y"
    assert sim.vps(kvm_id).state == "running"
    assert (sim.vps(kvm_id).reinstalls_received, sim.vps(kvm_id).reinstalls_accepted) == (1, 0)


async def test_unknown_image_is_refused_and_images_are_per_vps(sim, sim_http) -> None:
    entry = await _entry(sim, sim_http)
    sim.set_images(entry["kvm_id"], ["debian-bullseye"])
    assert (await sim_http.call(entry, "get/images")).body["data"] == ["debian-bullseye"]
    reply = await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)
    assert reply.status == 400
    assert reply.body["error"] == f"Unknown image: {LINUX}"
    other = await _entry(sim, sim_http, 1)
    assert LINUX in (await sim_http.call(other, "get/images")).body["data"]


@pytest.mark.parametrize("field", ["pubkey", "postscript"])
async def test_removed_fields_are_refused(sim, sim_http, field) -> None:
    entry = await _entry(sim, sim_http)
    reply = await sim_http.call(
        entry, "set/reinstall", image=LINUX, password=PW, **{field: "ssh-ed25519 AAAA"}
    )
    assert reply.status == 400
    assert field in reply.body["error"]
    assert sim.vps(entry["kvm_id"]).state == "running"


@pytest.mark.parametrize("missing", ["image", "password"])
async def test_reinstall_without_image_or_password_is_400(sim, sim_http, missing) -> None:
    entry = await _entry(sim, sim_http)
    fields = {"image": LINUX, "password": PW}
    del fields[missing]
    reply = await sim_http.call(entry, "set/reinstall", **fields)
    assert reply.status == 400
    assert reply.body["error"] == f"Missing required parameter: {missing}"


async def test_counters_count_received_and_accepted_exactly(sim, sim_http) -> None:
    data = await sim_http.login(sim)
    a, b, c = sim.vps_ids[:3]
    assert (await sim_http.call(data[a], "set/reinstall", image=LINUX, password=PW)).ok
    await sim_http.call(data[a], "set/reinstall", image=LINUX, password=PW)  # in progress
    await sim_http.call(data[b], "set/reinstall", image="nope", password=PW)  # unknown image
    await sim_http.call(
        {**data[c], "signature": "0" * 50}, "set/reinstall", image=LINUX, password=PW
    )
    assert (await sim_http.call(data[c], "set/reinstall", image=WINDOWS, password=PW)).ok
    received = dict.fromkeys(sim.vps_ids, 0) | {a: 2, b: 1, c: 2}
    accepted = dict.fromkeys(sim.vps_ids, 0) | {a: 1, c: 1}
    assert sim.counters.reinstall_received == received
    assert sim.counters.reinstall_accepted == accepted
    assert sim.counters.bad_signature == dict.fromkeys(sim.vps_ids, 0) | {c: 1}
    assert sim.counters.requests["set/reinstall"] == 5


@pytest.mark.parametrize("outcome", ["fail", "hang"])
async def test_installs_that_fail_or_never_finish(sim, sim_http, outcome) -> None:
    entry = await _entry(sim, sim_http)
    vps = sim.vps(entry["kvm_id"])
    sim.set_install_outcome(vps.kvm_id, outcome)
    assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).ok
    sim.advance_clock(2_000)  # far beyond the 0.3 s install, within the signature lifetime
    if outcome == "fail":
        assert vps.state == "failed"
        assert await _power(sim_http, entry) == "server powered off"
        # A failed VPS can be reinstalled again.
        sim.set_install_outcome(vps.kvm_id, "ok")
        assert (await sim_http.call(entry, "set/reinstall", image=LINUX, password=PW)).ok
        sim.advance_clock(301)
        assert vps.state == "running"
    else:
        assert vps.state == "installing"
        assert await _power(sim_http, entry) == "server is being reinstalled"


async def test_the_request_log_holds_no_secrets(sim, sim_http) -> None:
    entry = await _entry(sim, sim_http)
    secret_user_data = "#cloud-config\npassword: Sup3r-s3cret-ud\n"
    await sim_http.call(
        entry,
        "set/reinstall",
        image=LINUX,
        password="Sup3r-s3cret-pw",
        cloudinit_user_data=secret_user_data,
    )
    await sim_http.auth(sim, pw="Sup3r-s3cret-wrong")
    state = await sim_http.http.get(f"{sim.session_url}/_sim/state")
    log = await sim_http.http.get(f"{sim.session_url}/_sim/log")
    dumped = repr(sim.request_log) + await state.text() + await log.text()
    for secret in (entry["signature"], "Sup3r-s3cret", sim.password):
        assert secret not in dumped
    assert [e.endpoint for e in sim.request_log] == ["get/auth", "set/reinstall", "get/auth"]
