"""The session book: single flight, skew, refresh ahead of expiry, refresh-once-and-replay."""

from __future__ import annotations

import time
from collections.abc import Mapping

import anyio
import pytest

from orchestrator.clock import FakeClock, SystemClock
from orchestrator.edis.client import AuthResult, EdisClient, VpsCredentials
from orchestrator.edis.session import SessionBook
from orchestrator.errors import NotSentError, SessionExpiredError, SessionUnavailableError
from orchestrator.secrets.values import Secret
from orchestrator.simulator import Simulator
from tests.conftest import SimFactory
from tests.test_client import client_for


async def test_500_concurrent_callers_cause_one_auth_request(sim: Simulator) -> None:
    async with client_for(sim) as client:
        book = SessionBook(client, clock=SystemClock())
        got: list[VpsCredentials] = []

        async def worker(i: int) -> None:
            got.append(await book.get(sim.vps_ids[i % len(sim.vps_ids)]))

        async with anyio.create_task_group() as tg:
            for i in range(500):
                tg.start_soon(worker, i)
    assert len(got) == 500
    assert sim.counters.auth_calls == 1
    assert book.refreshes == 1


async def test_refreshes_before_valid_until_minus_margin_on_the_servers_clock(
    make_sim: SimFactory,
) -> None:
    # The server's clock runs an hour ahead of ours. Judged on our clock the session would
    # look valid for 70 minutes; judged on the server's it has 10.
    async with make_sim(signature_lifetime=600.0, clock_offset=3600.0) as sim:
        clock = FakeClock(start=time.time())
        async with client_for(sim, clock=clock) as client:
            book = SessionBook(client, clock=clock, margin=60.0)
            kvm_id = sim.vps_ids[0]
            await book.get(kvm_id)
            assert book.skew == pytest.approx(3600.0, abs=2.0)
            clock.advance(600 - 60 - 5)  # still inside the margin
            await book.get(kvm_id)
            assert sim.counters.auth_calls == 1
            clock.advance(10)  # now past valid_until - margin
            await book.get(kvm_id)
            assert sim.counters.auth_calls == 2


async def test_a_server_clock_behind_ours_does_not_look_expired(make_sim: SimFactory) -> None:
    async with (
        make_sim(signature_lifetime=600.0, clock_offset=-3600.0) as sim,
        client_for(sim) as client,
    ):
        book = SessionBook(client, clock=SystemClock())
        cred = await book.get(sim.vps_ids[0])
        assert await client.images(cred)
        assert book.skew == pytest.approx(-3600.0, abs=2.0)
    assert sim.counters.auth_calls == 1


async def test_short_lifetimes_do_not_cause_a_refresh_loop(make_sim: SimFactory) -> None:
    # A lifetime shorter than the margin: the book refreshes at half the lifetime instead.
    async with make_sim(signature_lifetime=30.0) as sim, client_for(sim) as client:
        book = SessionBook(client, clock=SystemClock(), margin=60.0)
        for _ in range(20):
            await book.get(sim.vps_ids[0])
    assert sim.counters.auth_calls == 1


async def test_vps_missing_from_the_account_is_named_and_never_loops(sim: Simulator) -> None:
    async with client_for(sim) as client:
        book = SessionBook(client, clock=SystemClock())
        for _ in range(5):
            with pytest.raises(SessionUnavailableError, match=r"kvm_999_999.*not in the account"):
                await book.get("kvm_999_999")
    assert sim.counters.auth_calls == 1


async def test_invalidation_storm_costs_one_refresh(sim: Simulator) -> None:
    async with client_for(sim) as client:
        book = SessionBook(client, clock=SystemClock())
        await book.accounts()
        sim.invalidate_sessions()
        results: list[str] = []

        async def worker(i: int) -> None:
            results.append(await book.call(sim.vps_ids[i % len(sim.vps_ids)], client.power))

        async with anyio.create_task_group() as tg:
            for i in range(100):
                tg.start_soon(worker, i)
    assert len(results) == 100
    assert sim.counters.auth_calls == 2


async def test_a_migrated_vps_is_followed_to_its_new_api_host(sim: Simulator) -> None:
    kvm_id = sim.vps_ids[0]
    async with client_for(sim) as client:
        book = SessionBook(client, clock=SystemClock())
        before = (await book.get(kvm_id)).api_host
        sim.migrate(kvm_id)
        assert await book.call(kvm_id, client.images)
        after = (await book.get(kvm_id)).api_host
    assert before != after
    assert after == sim.vps(kvm_id).api_host
    assert sim.counters.auth_calls == 2


async def test_a_second_refusal_after_the_refresh_propagates(sim: Simulator) -> None:
    calls: list[VpsCredentials] = []

    async def always_refused(cred: VpsCredentials) -> None:
        calls.append(cred)
        raise SessionExpiredError("nope", endpoint="get/power", kvm_id=cred.kvm_id, status=401)

    async with client_for(sim) as client:
        book = SessionBook(client, clock=SystemClock())
        with pytest.raises(SessionExpiredError):
            await book.call(sim.vps_ids[0], always_refused)
    assert len(calls) == 2  # the call and exactly one replay
    assert sim.counters.auth_calls == 2  # the first session and exactly one refresh


class ScriptedAuth:
    """An in-memory Authenticator (a fake, not a mock): answers from a list, counts calls."""

    def __init__(self, answers: list[AuthResult | Exception], *, delay: float = 0.0) -> None:
        self.answers = answers
        self.calls = 0
        self.delay = delay

    async def authenticate(self, kvm_id: str | None = None) -> AuthResult:
        self.calls += 1
        await anyio.sleep(self.delay)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def auth_result(entries: Mapping[str, int], *, now: float) -> AuthResult:
    creds = {
        kvm_id: VpsCredentials(
            kvm_id=kvm_id,
            api_host="1.edisglobal.com",
            base_url="https://1.edisglobal.com",
            signature=Secret(f"sig-{kvm_id}"),
            valid_until=valid_until,
            suspended=False,
        )
        for kvm_id, valid_until in entries.items()
    }
    return AuthResult(credentials=creds, unusable={}, server_time=now, local_time=now)


async def test_a_session_expired_on_arrival_is_an_error_not_a_loop() -> None:
    clock = FakeClock()
    now = clock.time()
    auth = ScriptedAuth(
        [auth_result({"kvm_1_1": int(now) - 5, "kvm_2_2": int(now) + 600}, now=now)]
    )
    book = SessionBook(auth, clock=clock)
    for _ in range(3):
        with pytest.raises(SessionUnavailableError, match=r"kvm_1_1.*already expired"):
            await book.get("kvm_1_1")
    assert (await book.get("kvm_2_2")).kvm_id == "kvm_2_2"
    assert auth.calls == 1


async def test_waiters_on_a_failed_flight_share_its_error() -> None:
    clock = FakeClock()
    failure = NotSentError("request not sent (refused)", endpoint="get/auth")
    auth = ScriptedAuth([failure], delay=0.01)
    book = SessionBook(auth, clock=clock)
    errors: list[BaseException] = []

    async def worker() -> None:
        try:
            await book.get("kvm_1_1")
        except NotSentError as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(worker)
    assert len(errors) == 50
    assert auth.calls == 1


async def test_wrong_password_propagates_from_the_book(sim: Simulator) -> None:
    async with EdisClient(
        session_url=sim.session_url,
        email=sim.email,
        password=Secret("wrong-password"),
        allowed_hosts=["127.0.0.0/8"],
    ) as client:
        book = SessionBook(client, clock=SystemClock())
        with pytest.raises(Exception, match="credentials were refused"):
            await book.accounts()
    assert sim.counters.auth_calls == 1
