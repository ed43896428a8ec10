"""Malformed requests get the spec's 4xx JSON answers, never a 500 or a traceback."""

from __future__ import annotations

import pytest

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


async def _node_url(sim, sim_http, endpoint: str) -> tuple[str, dict]:
    entry = (await sim_http.login(sim))[sim.vps_ids[0]]
    return f"http://{entry['api_host']}/kvm/v2/{endpoint}", entry


def _assert_json_4xx(reply, status: int) -> None:
    assert reply.status == status, reply
    assert isinstance(reply.body, dict), "the answer must be JSON"
    assert "Traceback" not in repr(reply.body)


@pytest.mark.parametrize("endpoint", ["get/images", "set/reinstall", "get/power", "get/details"])
@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ('{"kvm_id": "kvm_100001_200001"}', {"Content-Type": "application/json"}),
        ("signature=a&kvm_id=b", {"Content-Type": "text/plain"}),
        (b"\xff\xfe\x00garbage", FORM),
        ("no-equals-sign-at-all", FORM),
        ("a=%ZZ%FF%FE", FORM),
        ("", FORM),
    ],
    ids=["json", "text-plain", "binary", "no-pairs", "bad-percent", "empty"],
)
async def test_bad_bodies_are_400_json(sim, sim_http, endpoint, body, headers) -> None:
    url, _ = await _node_url(sim, sim_http, endpoint)
    reply = await sim_http.post(url, body, headers=headers)
    _assert_json_4xx(reply, 400)
    if endpoint == "get/details":
        assert reply.body["status"] == "error"
    else:
        assert reply.body["code"] == 400


@pytest.mark.parametrize("missing", ["signature", "kvm_id", "valid_until"])
async def test_missing_session_fields_are_named(sim, sim_http, missing) -> None:
    url, entry = await _node_url(sim, sim_http, "get/power")
    form = {k: str(entry[k]) for k in ("signature", "kvm_id", "valid_until")}
    del form[missing]
    reply = await sim_http.post(url, form)
    _assert_json_4xx(reply, 400)
    assert reply.body["error"] == f"Missing required parameter: {missing}"


async def test_auth_with_a_wrong_content_type_is_400(sim, sim_http) -> None:
    reply = await sim_http.post(
        f"{sim.session_url}/kvm/v2/get/auth", json={"email": sim.email, "pw": sim.password}
    )
    _assert_json_4xx(reply, 400)
    assert reply.body["code"] == 400


@pytest.mark.parametrize("path", ["/", "/kvm/v2/set/power", "/kvm/v3/get/auth", "/_sim"])
async def test_unknown_paths_are_404_json(sim, sim_http, path) -> None:
    reply = await sim_http.post(f"{sim.session_url}{path}", {"a": "b"})
    _assert_json_4xx(reply, 404)
    assert reply.body == {"error": "Not Found", "code": 404}


async def test_per_vps_endpoints_are_not_on_the_session_host(sim, sim_http) -> None:
    reply = await sim_http.post(f"{sim.session_url}/kvm/v2/get/power", {"a": "b"})
    _assert_json_4xx(reply, 404)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_wrong_method_is_405_json(sim, sim_http, method) -> None:
    url, _ = await _node_url(sim, sim_http, "set/reinstall")
    async with sim_http.http.request(method, url) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert await resp.json() == {"error": "Method Not Allowed", "code": 405}
    assert sim.counters.reinstall_received == dict.fromkeys(sim.vps_ids, 0)


async def test_get_on_auth_is_405_json(sim, sim_http) -> None:
    async with sim_http.http.get(f"{sim.session_url}/kvm/v2/get/auth") as resp:
        assert resp.status == 405
        assert (await resp.json())["code"] == 405


async def test_oversized_body_is_413_json(sim, sim_http) -> None:
    url, entry = await _node_url(sim, sim_http, "set/reinstall")
    form = {
        "signature": entry["signature"],
        "kvm_id": entry["kvm_id"],
        "valid_until": str(entry["valid_until"]),
        "image": "debian-bullseye",
        "password": "x",
        "cloudinit_user_data": "#" * (2 * 1024 * 1024),
    }
    reply = await sim_http.post(url, form)
    _assert_json_4xx(reply, 413)
    assert sim.counters.reinstall_accepted[entry["kvm_id"]] == 0


async def test_a_repeated_field_takes_its_last_value(sim, sim_http) -> None:
    url, entry = await _node_url(sim, sim_http, "get/power")
    body = (
        f"signature=wrong&signature={entry['signature']}&kvm_id={entry['kvm_id']}"
        f"&valid_until={entry['valid_until']}"
    )
    reply = await sim_http.post(url, body, headers=FORM)
    assert reply.status == 200
