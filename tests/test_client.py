"""The EDIS client against the bundled simulator over real loopback HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from orchestrator.edis.client import EdisClient, VpsCredentials
from orchestrator.errors import (
    AuthenticationError,
    HostNotAllowedError,
    InDoubtError,
    NotSentError,
    RejectedError,
    SessionExpiredError,
    ThrottledError,
    UnexpectedAnswerError,
)
from orchestrator.model import Attempt, Outcome
from orchestrator.secrets.values import Secret
from orchestrator.simulator import Simulator
from tests.conftest import SimFactory

ROOT_PW = Secret("root-Pw-marker-7781")


def client_for(sim: Simulator, **kwargs: Any) -> EdisClient:
    """A client pointed at the simulator, with loopback api hosts allowed."""
    options: dict[str, Any] = {
        "session_url": sim.session_url,
        "email": sim.email,
        "password": Secret(sim.password),
        "allowed_hosts": ["127.0.0.0/8"],
    }
    options.update(kwargs)
    return EdisClient(**options)


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[EdisClient]:
    async with client_for(sim) as c:
        yield c


async def creds(client: EdisClient, kvm_id: str) -> VpsCredentials:
    result = await client.authenticate()
    return result.credentials[kvm_id]


async def test_auth_returns_credentials_for_every_vps(sim: Simulator, client: EdisClient) -> None:
    result = await client.authenticate()
    assert sorted(result.credentials) == sorted(sim.vps_ids)
    for kvm_id, cred in result.credentials.items():
        assert cred.kvm_id == kvm_id
        assert cred.api_host == sim.vps(kvm_id).api_host
        assert cred.base_url == f"http://{cred.api_host}"
        assert isinstance(cred.valid_until, int)
        assert not cred.suspended
    assert result.unusable == {}
    assert result.server_time is not None
    assert sim.counters.auth_calls == 1


async def test_auth_scoped_to_one_vps(sim: Simulator, client: EdisClient) -> None:
    target = sim.vps_ids[2]
    result = await client.authenticate(target)
    assert list(result.credentials) == [target]


async def test_wrong_password_fails_on_the_first_call_without_retry(sim: Simulator) -> None:
    async with client_for(sim, password=Secret("not-the-password")) as c:
        with pytest.raises(AuthenticationError) as info:
            await c.authenticate()
    assert info.value.outcome is Outcome.REJECTED
    assert info.value.status in (400, 401)
    assert "not-the-password" not in str(info.value)
    assert sim.counters.auth_calls == 1


async def test_password_with_form_metacharacters_and_non_ascii(make_sim: SimFactory) -> None:
    password = "p+a&s=s%20w\u00f6rd \u20ac"
    async with make_sim(password=password) as sim, client_for(sim) as c:
        result = await c.authenticate()
    assert len(result.credentials) == len(sim.vps_ids)


async def test_images_reinstall_power_details(sim: Simulator, client: EdisClient) -> None:
    kvm_id = sim.vps_ids[0]
    cred = await creds(client, kvm_id)
    images = await client.images(cred)
    assert "cloudinit_ubuntu-lts-24-04" in images
    await client.reinstall(
        cred,
        image="cloudinit_ubuntu-lts-24-04",
        password=ROOT_PW,
        cloudinit_user_data=Secret("#cloud-config\nhostname: a\n"),
    )
    assert sim.counters.reinstall_received[kvm_id] == 1
    assert sim.counters.reinstall_accepted[kvm_id] == 1
    assert isinstance(await client.power(cred), str)
    details = await client.details(cred)
    assert "hostname" in details
    # The install finishes (time-scaled) and the VPS runs the new image.
    for _ in range(200):
        if sim.vps(kvm_id).state == "running":
            break
        await asyncio.sleep(0.01)
    assert sim.vps(kvm_id).image == "cloudinit_ubuntu-lts-24-04"
    assert await client.power(cred) == "server powered on"


async def test_unknown_image_is_rejected_with_the_servers_message(
    sim: Simulator, client: EdisClient
) -> None:
    kvm_id = sim.vps_ids[0]
    cred = await creds(client, kvm_id)
    with pytest.raises(RejectedError) as info:
        await client.reinstall(cred, image="no-such-image", password=ROOT_PW)
    err = info.value
    assert err.endpoint == "set/reinstall"
    assert err.kvm_id == kvm_id
    assert err.status is not None
    assert 400 <= err.status < 500
    assert err.message
    text = str(err)
    assert cred.signature.reveal() not in text
    assert ROOT_PW.reveal() not in text
    assert sim.counters.reinstall_accepted.get(kvm_id, 0) == 0


async def test_altered_signature_is_a_session_error(sim: Simulator, client: EdisClient) -> None:
    cred = await creds(client, sim.vps_ids[0])
    forged = VpsCredentials(
        kvm_id=cred.kvm_id,
        api_host=cred.api_host,
        base_url=cred.base_url,
        signature=Secret(cred.signature.reveal() + "x"),
        valid_until=cred.valid_until,
        suspended=False,
    )
    with pytest.raises(SessionExpiredError) as info:
        await client.power(forged)
    assert info.value.status == 401


async def test_throttled_with_retry_after(sim: Simulator, client: EdisClient) -> None:
    cred = await creds(client, sim.vps_ids[0])
    sim.set_faults(script={"get/power": ["429:5"]})
    with pytest.raises(ThrottledError) as info:
        await client.power(cred)
    assert info.value.status == 429
    assert info.value.retry_after == 5.0


@pytest.mark.parametrize("fault", ["500", "502", "504"])
async def test_server_errors_on_reinstall_are_in_doubt(
    sim: Simulator, client: EdisClient, fault: str
) -> None:
    cred = await creds(client, sim.vps_ids[0])
    sim.set_faults(script={"set/reinstall": [fault]})
    with pytest.raises(InDoubtError) as info:
        await client.reinstall(cred, image="debian-bullseye", password=ROOT_PW)
    assert info.value.status == int(fault)


async def test_lost_response_is_in_doubt_although_the_server_acted(
    sim: Simulator, client: EdisClient
) -> None:
    kvm_id = sim.vps_ids[1]
    cred = await creds(client, kvm_id)
    sim.set_faults(script={"set/reinstall": ["lost"]})
    with pytest.raises(InDoubtError):
        await client.reinstall(cred, image="debian-bullseye", password=ROOT_PW)
    assert sim.counters.reinstall_accepted[kvm_id] == 1


async def test_read_timeout_is_in_doubt(sim: Simulator) -> None:
    async with client_for(sim, read_timeout=0.2) as c:
        cred = await creds(c, sim.vps_ids[0])
        sim.set_faults(script={"set/reinstall": ["latency:1.0"]})
        with pytest.raises(InDoubtError, match="read_timeout"):
            await c.reinstall(cred, image="debian-bullseye", password=ROOT_PW)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_connection_refused_is_not_sent() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    async with EdisClient(session_url=url, email="a@b.c", password=Secret("pw-12345")) as c:
        with pytest.raises(NotSentError, match="refused"):
            await c.authenticate()


async def test_redirects_are_refused_and_never_followed() -> None:
    hits: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append(await request.text())
        return web.json_response({"status": "success", "data": {}})

    app = web.Application()
    app.router.add_post("/kvm/v2/get/auth", redirect)
    app.router.add_post("/elsewhere", elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with EdisClient(
            session_url=f"http://127.0.0.1:{port}", email="a@b.c", password=Secret("pw-12345")
        ) as c:
            # Not a verdict on the credentials: an answer of unexpected shape, final.
            with pytest.raises(UnexpectedAnswerError, match="not followed"):
                await c.authenticate()
    finally:
        await runner.cleanup()
    assert hits == []


async def test_api_hosts_outside_the_allowlist_get_no_secrets(sim: Simulator) -> None:
    async with client_for(sim, allowed_hosts=[]) as c:
        result = await c.authenticate()
    assert result.credentials == {}
    assert set(result.unusable) == set(sim.vps_ids)
    assert all("not in the allowed hosts" in why for why in result.unusable.values())


async def test_credentials_for_a_foreign_host_are_checked_on_every_call(
    sim: Simulator, client: EdisClient
) -> None:
    cred = await creds(client, sim.vps_ids[0])
    moved = VpsCredentials(
        kvm_id=cred.kvm_id,
        api_host="attacker.example.com",
        base_url="http://attacker.example.com",
        signature=cred.signature,
        valid_until=cred.valid_until,
        suspended=False,
    )
    with pytest.raises(HostNotAllowedError):
        await client.power(moved)


async def test_keep_alive_race_never_hits_a_reinstall(make_sim: SimFactory) -> None:
    """The server closes idle connections after 50 ms; reinstalls sent right at that moment
    must never fail, because each rides a fresh connection."""
    async with (
        make_sim(vps_count=2, keepalive_timeout=0.05, second_reinstall="accept") as sim,
        client_for(sim, keepalive_timeout=30.0) as c,
    ):
        cred = await creds(c, sim.vps_ids[0])
        for i in range(30):
            # Idle for about the server's keep-alive time: a pooled connection would be
            # closed by the server right as the next POST goes out on it.
            await c.reinstall(cred, image="debian-bullseye", password=ROOT_PW)
            await asyncio.sleep(0.045 + (i % 5) * 0.003)
        assert sim.counters.reinstall_received[cred.kvm_id] == 30
        assert sim.counters.reinstall_accepted[cred.kvm_id] == 30


async def test_attempt_records_carry_no_secrets(sim: Simulator) -> None:
    seen: list[Attempt] = []
    async with client_for(sim, on_attempt=seen.append) as c:
        cred = await creds(c, sim.vps_ids[0])
        await c.reinstall(cred, image="debian-bullseye", password=ROOT_PW)
        with pytest.raises(RejectedError):
            await c.reinstall(cred, image="nope", password=ROOT_PW)
    assert [a.endpoint for a in seen] == ["get/auth", "set/reinstall", "set/reinstall"]
    assert [a.outcome for a in seen] == [Outcome.ACCEPTED, Outcome.ACCEPTED, Outcome.REJECTED]
    dump = repr(seen)
    for secret in (sim.password, cred.signature.reveal(), ROOT_PW.reveal()):
        assert secret not in dump


async def test_client_refuses_to_work_outside_its_context(sim: Simulator) -> None:
    c = client_for(sim)
    with pytest.raises(RuntimeError):
        await c.authenticate()
