"""get/auth and per-VPS signatures: who gets a session, and which signatures are refused."""

from __future__ import annotations

import email.utils
import importlib
import sys
import time

import pytest

INVALID = "Invalid or expired session signature."


async def test_auth_covers_the_whole_account_with_distinct_credentials(sim, sim_http) -> None:
    data = await sim_http.login(sim)
    assert list(data) == sim.vps_ids == [f"kvm_{100000 + i}_{200000 + i}" for i in range(1, 6)]
    assert len({e["signature"] for e in data.values()}) == 5
    assert len({e["api_host"] for e in data.values()}) == 5  # 5 VPSes, 5 api nodes
    for kvm_id, entry in data.items():
        assert entry["api_host"] == sim.vps(kvm_id).api_host
        assert entry["api_host"].startswith("127.0.1.")
        assert isinstance(entry["valid_until"], int)
        assert entry["suspended"] == "n"
    assert sim.counters.auth_calls == 1


async def test_auth_scoped_to_one_kvm_id(sim, sim_http) -> None:
    kvm_id = sim.vps_ids[2]
    data = await sim_http.login(sim, kvm_id)
    assert list(data) == [kvm_id]
    reply = await sim_http.call(data[kvm_id], "get/power")
    assert reply.status == 200


async def test_auth_for_a_kvm_id_outside_the_account_is_400(sim, sim_http) -> None:
    reply = await sim_http.auth(sim, kvm_id="kvm_1_1")
    assert reply.status == 400
    assert reply.body["code"] == 400
    assert "kvm_id" in reply.body["message"]


async def test_wrong_password_is_401_and_issues_no_session(sim, sim_http) -> None:
    reply = await sim_http.auth(sim, pw="not-it")
    assert reply.status == 401
    assert reply.body == {
        "error": "Unauthorized",
        "code": 401,
        "message": "Invalid WHMCS credentials. Please provide correct credentials.",
    }
    assert "data" not in reply.body
    assert all(sim.book.live_count(k) == 0 for k in sim.vps_ids)
    assert sim.counters.auth_failures == 1


@pytest.mark.parametrize("missing", ["email", "pw"])
async def test_auth_without_a_credential_is_400(sim, sim_http, missing) -> None:
    form = {"email": sim.email, "pw": sim.password}
    del form[missing]
    reply = await sim_http.post(f"{sim.session_url}/kvm/v2/get/auth", form)
    assert reply.status == 400
    assert missing in reply.body["message"]


async def test_password_with_form_special_and_non_ascii_characters(make_sim, sim_http) -> None:
    password = "p+a&s=s%20wörd€ ?#"
    async with make_sim(password=password) as sim:
        ok = await sim_http.auth(sim)  # aiohttp form-encodes the dict
        assert ok.status == 200
        # The same characters unencoded would be a different (wrong) password.
        raw = f"email={sim.email}&pw={password}".encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        bad = await sim_http.post(f"{sim.session_url}/kvm/v2/get/auth", raw, headers=headers)
        assert bad.status in (400, 401)


async def test_expired_signature_is_401_and_counted(make_sim, sim_http) -> None:
    async with make_sim(signature_lifetime=60.0) as sim:
        kvm_id = sim.vps_ids[0]
        entry = (await sim_http.login(sim))[kvm_id]
        assert (await sim_http.call(entry, "get/power")).status == 200
        sim.advance_clock(61)
        reply = await sim_http.call(entry, "get/power")
        assert reply.status == 401
        assert reply.body == {"error": INVALID, "code": 401}
        assert sim.counters.bad_signature[kvm_id] == 1
        assert sim.counters.bad_signature_reasons["expired"] == 1
        assert sim.request_log[-1].reason == "expired"


async def test_zero_lifetime_issues_signatures_that_are_already_expired(make_sim, sim_http):
    async with make_sim(signature_lifetime=0.0) as sim:
        entry = (await sim_http.login(sim))[sim.vps_ids[0]]
        assert (await sim_http.call(entry, "get/images")).status == 401
        assert sim.counters.bad_signature_reasons["expired"] == 1


async def test_foreign_signature_is_refused(sim, sim_http) -> None:
    data = await sim_http.login(sim)
    a, b = sim.vps_ids[0], sim.vps_ids[1]
    # b's own api host and kvm_id, a's signature and valid_until.
    forged = {**data[b], "signature": data[a]["signature"], "valid_until": data[a]["valid_until"]}
    reply = await sim_http.call(forged, "get/images")
    assert reply.status == 401
    assert sim.counters.bad_signature == {k: int(k == b) for k in sim.vps_ids}
    assert sim.counters.bad_signature_reasons["unknown"] == 1


async def test_altered_signature_is_refused(sim, sim_http) -> None:
    entry = (await sim_http.login(sim))[sim.vps_ids[0]]
    sig = entry["signature"]
    entry["signature"] = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    assert (await sim_http.call(entry, "get/details")).status == 401
    assert sim.counters.bad_signature_reasons["unknown"] == 1


@pytest.mark.parametrize("shift", ["+1", "float", "padded"])
async def test_a_different_valid_until_is_refused(sim, sim_http, shift) -> None:
    entry = (await sim_http.login(sim))[sim.vps_ids[0]]
    issued = entry["valid_until"]
    entry["valid_until"] = {"+1": str(issued + 1), "float": f"{issued}.0", "padded": f"0{issued}"}[
        shift
    ]
    reply = await sim_http.call(entry, "get/power")
    assert reply.status == 401
    assert sim.counters.bad_signature_reasons["valid_until_mismatch"] == 1


async def test_old_signatures_stay_valid_unless_configured(make_sim, sim_http) -> None:
    for invalidates in (False, True):
        async with make_sim(new_session_invalidates_old=invalidates) as sim:
            first = (await sim_http.login(sim))[sim.vps_ids[0]]
            second = (await sim_http.login(sim))[sim.vps_ids[0]]
            assert first["signature"] != second["signature"]
            assert (await sim_http.call(second, "get/power")).status == 200
            old = await sim_http.call(first, "get/power")
            assert old.status == (401 if invalidates else 200)


async def test_invalidate_sessions_revokes_signatures(sim, sim_http) -> None:
    data = await sim_http.login(sim)
    a, b = sim.vps_ids[:2]
    assert sim.invalidate_sessions([a]) == 1
    assert (await sim_http.call(data[a], "get/power")).status == 401
    assert (await sim_http.call(data[b], "get/power")).status == 200
    sim.invalidate_sessions()
    assert (await sim_http.call(data[b], "get/power")).status == 401
    assert sim.counters.bad_signature_reasons["revoked"] == 2
    fresh = (await sim_http.login(sim))[b]
    assert (await sim_http.call(fresh, "get/power")).status == 200


async def test_migration_moves_the_vps_and_requires_a_new_session(sim, sim_http) -> None:
    kvm_id = sim.vps_ids[0]
    old = (await sim_http.login(sim))[kvm_id]
    new_host = sim.migrate(kvm_id)
    assert new_host != old["api_host"]
    assert sim.vps(kvm_id).api_host == new_host
    # The old host no longer serves it.
    assert (await sim_http.call(old, "get/power")).status == 401
    fresh = (await sim_http.login(sim))[kvm_id]
    assert fresh["api_host"] == new_host
    assert (await sim_http.call(fresh, "get/power")).status == 200
    # Even a fresh signature is refused by the old host: that is what migration looks like.
    stale_host = {**fresh, "api_host": old["api_host"]}
    assert (await sim_http.call(stale_host, "get/power")).status == 401
    assert sim.counters.bad_signature_reasons["wrong_node"] == 2
    assert sim.counters.bad_signature[kvm_id] == 2


async def test_migration_needs_a_second_node(make_sim) -> None:
    async with make_sim(vps_count=1) as sim:
        with pytest.raises(ValueError, match="two api nodes"):
            sim.migrate(sim.vps_ids[0])


async def test_unknown_kvm_id_on_an_api_host_is_403(sim, sim_http) -> None:
    entry = (await sim_http.login(sim))[sim.vps_ids[0]]
    reply = await sim_http.call({**entry, "kvm_id": "kvm_42_42"}, "get/power")
    assert reply.status == 403
    assert reply.body == {"error": "Access to this resource is denied.", "code": 403}


async def test_date_header_and_valid_until_follow_the_clock_offset(make_sim, sim_http) -> None:
    offset = 7200.0
    async with make_sim(clock_offset=offset, signature_lifetime=600.0) as sim:
        reply = await sim_http.auth(sim)
        server_now = email.utils.parsedate_to_datetime(reply.headers["Date"]).timestamp()
        local_now = time.time()
        # Generous bounds: these are about a two-hour offset, not about speed.
        assert offset - 60 < server_now - local_now < offset + 60
        valid_until = reply.body["data"][sim.vps_ids[0]]["valid_until"]
        assert abs(valid_until - (server_now + 600)) <= 60


async def test_sessions_scale_to_many_vpses(make_sim, sim_http) -> None:
    async with make_sim(vps_count=300) as sim:
        data = await sim_http.login(sim)
        assert len(data) == 300
        assert len({e["api_host"] for e in data.values()}) == 16  # default cap on api nodes
        last = sim.vps_ids[-1]
        assert last == "kvm_100300_200300"
        assert sim.vps(last).hostname == "vps-300"
        assert (await sim_http.call(data[last], "get/details")).body["data"]["hostname"] == (
            "vps-300"
        )


def _ours(name: str) -> bool:
    return name == "orchestrator" or name.startswith("orchestrator.")


def test_the_simulator_imports_nothing_else_from_orchestrator() -> None:
    """Import ``orchestrator.simulator`` afresh (every ``orchestrator`` module taken out of
    ``sys.modules`` meanwhile, then put back) and list what else of ``orchestrator`` came
    with it. Catches imports inside functions run at import time, which the import-linter
    contract of ``make lint`` does not see."""
    saved = {k: v for k, v in sys.modules.items() if _ours(k)}
    for name in saved:
        del sys.modules[name]
    try:
        # Importing any subpackage runs the root package's face first (Python's mechanics, not
        # the simulator's choice): what that alone loads is taken away from the check.
        importlib.import_module("orchestrator")
        root = {m for m in sys.modules if _ours(m)}
        importlib.import_module("orchestrator.simulator")
        bad = sorted(
            m
            for m in sys.modules
            if m.startswith("orchestrator.")
            and not m.startswith("orchestrator.simulator")
            and m not in root
        )
    finally:
        for name in [k for k in sys.modules if _ours(k)]:
            del sys.modules[name]
        sys.modules.update(saved)
    assert bad == []
