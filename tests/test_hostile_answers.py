"""The client against a hostile server: every class of bad answer is a clear, bounded error.

Each test sets the answers of ``tests/hostile_server.HostileServer`` (not the simulator: it
plays the attacker or the broken proxy), drives the real ``EdisClient`` over loopback, and
asserts the error class, a clean message, and through the server's log what was sent.
"""

from __future__ import annotations

import base64
import html
import json
import tracemalloc
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trustme

from orchestrator.clock import SystemClock
from orchestrator.edis import EdisClient, SessionBook
from orchestrator.edis.client import VpsCredentials
from orchestrator.edis.wire import ExchangeLimits
from orchestrator.errors import (
    ApiError,
    AuthenticationError,
    InDoubtError,
    ManifestError,
    RejectedError,
    SessionExpiredError,
    SessionUnavailableError,
    ThrottledError,
    TlsVerificationError,
    UnexpectedAnswerError,
)
from orchestrator.model import Attempt
from orchestrator.run.retry import Action, decide
from orchestrator.secrets import Secret
from tests.hostile_server import (
    KVM_IDS,
    HostileServer,
    drip,
    echo,
    gzip_bomb,
    json_answer,
    raw_answer,
    stream,
)

A, B = KVM_IDS
ACCOUNT_PW = "Acct pw/+&=x<'\"é-4411"
ROOT_PW = "A 2/+&=x<'\"-root-9931"
USER_DATA = (
    "#cloud-config\nhostname: vps-001\nwrite_files:\n  - path: /etc/app/token\n"
    "    content: 'app-token-5f0c42-do-not-print-this-anywhere-at-all'\n"
    "runcmd:\n  - [sh, -c, 'echo provisioning the fleet node number one now']\n"
)
MiB = 1024 * 1024
UNSAFE = ("\x1b", "\x07", "\x9b", "\u202e", "\r", "\n")


@asynccontextmanager
async def client_for(
    server: HostileServer, attempts: list[Attempt] | None = None, **kwargs: Any
) -> AsyncIterator[EdisClient]:
    async with EdisClient(
        session_url=server.session_url,
        email="ops@example.net",
        password=Secret(ACCOUNT_PW),
        allowed_hosts=["127.0.0.0/8"],
        on_attempt=None if attempts is None else attempts.append,
        **kwargs,
    ) as client:
        yield client


async def reinstall(client: EdisClient, kvm_id: str = A) -> None:
    cred = (await client.authenticate()).credentials[kvm_id]
    await client.reinstall(
        cred,
        image="cloudinit_debian-bookworm",
        password=Secret(ROOT_PW),
        cloudinit_user_data=Secret(USER_DATA),
    )


def assert_clean(text: str) -> None:
    assert not any(c in text for c in UNSAFE), repr(text)
    assert "Traceback" not in text


# -- 1. an entry naming another VPS -------------------------------------------------------


@pytest.mark.parametrize("other_is_in_account", [False, True])
async def test_an_entry_naming_another_vps_is_unusable_and_nothing_goes_to_either(
    other_is_in_account: bool,
) -> None:
    async with HostileServer() as server:
        entries: dict[str, object] = {A: server.entry(A, kvm_id=B)}
        if other_is_in_account:
            entries[B] = server.entry(B)
        server.answer("get/auth", json_answer({"status": "success", "data": entries}))
        async with client_for(server) as client:
            book = SessionBook(client, clock=SystemClock())

            async def send(cred: VpsCredentials) -> None:
                await client.reinstall(cred, image="x", password=Secret(ROOT_PW))

            with pytest.raises(SessionUnavailableError, match="names another VPS") as caught:
                await book.call(A, send)
            assert caught.value.kvm_id == A
            assert A not in await book.accounts()
    assert server.sent("set/reinstall") == []
    assert all(form.get("kvm_id") in (None, A) for form in (s.form for s in server.log))


# -- 2. a 200 that is not clearly a success or a refusal -----------------------------------

NOT_CLEAR = {
    "status error, no text": json_answer({"status": "error"}),
    "status error, empty text": json_answer({"status": "error", "message": " "}),
    "unknown status": json_answer({"status": "ok"}),
    "status with a space": json_answer({"status": "success "}),
    "status null": json_answer({"status": None}),
    "a message but no error status": json_answer({"status": "queued", "message": "working"}),
    "empty object": json_answer({}),
    "a list": json_answer(["success"]),
    "a number": json_answer(1),
    "html": raw_answer(b"<html>Reinstall started</html>"),
    "empty body": raw_answer(b""),
    "202 success": json_answer({"status": "success"}, status=202),
    "204": raw_answer(b"", status=204),
    "303 see other": raw_answer(b"", status=303, headers={"Location": "/kvm/v2/done"}),
    "deep JSON": raw_answer(b'{"status": "error", "message": ' + b"[" * 100_000),
}


@pytest.mark.parametrize("name", list(NOT_CLEAR))
async def test_a_reinstall_answer_that_is_neither_success_nor_refusal_is_in_doubt(
    name: str,
) -> None:
    async with HostileServer() as server:
        server.answer("set/reinstall", NOT_CLEAR[name])
        async with client_for(server) as client:
            with pytest.raises(InDoubtError) as caught:
                await reinstall(client)
    assert decide(caught.value.outcome, destructive=True) is Action.IN_DOUBT
    assert_clean(str(caught.value))
    assert len(server.sent("set/reinstall")) == 1


async def test_a_clear_refusal_of_a_reinstall_stays_rejected() -> None:
    async with HostileServer() as server:
        server.answer("set/reinstall", json_answer({"status": "error", "message": "No image"}))
        async with client_for(server) as client:
            with pytest.raises(RejectedError, match="No image") as caught:
                await reinstall(client)
    assert not isinstance(caught.value, InDoubtError)


# -- 3. auth answers of unexpected shape ---------------------------------------------------

ODD_AUTH = {
    "unknown status": json_answer({"status": "maintenance"}),
    "success without data": json_answer({"status": "success"}),
    "success with a list": json_answer({"status": "success", "data": [1, 2]}),
    "html login page": raw_answer(b"<html><form>login</form></html>"),
    "redirect": raw_answer(b"", status=302, headers={"Location": "https://elsewhere.example/"}),
    "404": raw_answer(b"Not Found", status=404),
    "202": json_answer({"status": "success", "data": {}}, status=202),
    "deep JSON": raw_answer(b"[" * 100_000),
}


@pytest.mark.parametrize("name", list(ODD_AUTH))
async def test_an_odd_auth_answer_says_what_arrived_not_credentials_refused(name: str) -> None:
    async with HostileServer() as server:
        server.answer("get/auth", ODD_AUTH[name])
        async with client_for(server) as client:
            with pytest.raises(UnexpectedAnswerError) as caught:
                await client.authenticate()
    assert not isinstance(caught.value, AuthenticationError)
    assert "refused" not in caught.value.message
    assert "unexpected shape" in caught.value.message or "no account data" in caught.value.message
    assert decide(caught.value.outcome, destructive=False) is Action.FINAL
    assert len(server.sent("get/auth")) == 1


@pytest.mark.parametrize(
    "refusal",
    [
        json_answer({"error": "Invalid credentials.", "code": 401}, status=401),
        json_answer({"status": "error", "message": "Invalid email or password"}),
        json_answer({"error": "Invalid parameters provided.", "code": 400}, status=400),
    ],
)
async def test_a_clear_credentials_refusal_is_an_authentication_error(refusal: Any) -> None:
    async with HostileServer() as server:
        server.answer("get/auth", refusal)
        async with client_for(server) as client:
            with pytest.raises(AuthenticationError, match="credentials were refused"):
                await client.authenticate()


# -- 4. TLS ----------------------------------------------------------------------------------


async def test_a_certificate_from_an_unknown_ca_is_final_with_advice() -> None:
    ca = trustme.CA()  # the client does not trust it
    context = _server_context(ca, "127.0.0.1")
    async with HostileServer(ssl_context=context) as server, client_for(server) as client:
        with pytest.raises(TlsVerificationError) as caught:
            await client.authenticate()
    assert "ca_file" in caught.value.message
    assert decide(caught.value.outcome, destructive=False) is Action.FINAL
    assert server.handshakes == 1
    assert server.log == []


async def test_a_certificate_for_another_host_name_is_final_with_advice(tmp_path: Any) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    context = _server_context(ca, "other.example")
    async with (
        HostileServer(ssl_context=context) as server,
        client_for(server, ca_file=str(ca_file)) as client,
    ):
        with pytest.raises(TlsVerificationError) as caught:
            await client.authenticate()
    assert "host name" in caught.value.message
    assert server.handshakes == 1
    assert server.log == []


def _server_context(ca: trustme.CA, name: str) -> Any:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return context


# -- 5. bounded exchanges ----------------------------------------------------------------------


@pytest.mark.parametrize("before_headers", [0.0, 30.0])
async def test_a_slow_drip_ends_at_the_deadline_in_doubt(before_headers: float) -> None:
    async with HostileServer() as server:
        server.answer("set/reinstall", drip(0.01, before_headers=before_headers))
        async with client_for(server, limits=ExchangeLimits(deadline=0.3)) as client:
            with pytest.raises(InDoubtError, match=r"within 0\.3 s"):
                await reinstall(client)
    assert len(server.sent("set/reinstall")) == 1


async def test_a_slow_drip_on_auth_is_a_bounded_failure() -> None:
    async with HostileServer() as server:
        server.answer("get/auth", drip(0.01))
        async with client_for(server, limits=ExchangeLimits(deadline=0.3)) as client:
            with pytest.raises(InDoubtError, match="deadline"):
                await client.authenticate()


def _peak_during(run: Callable[[], Any]) -> Any:
    """Return an awaitable giving (error, peak traced bytes) while ``run()`` is awaited."""

    async def measured() -> tuple[BaseException | None, int]:
        tracemalloc.start()
        try:
            await run()
            error: BaseException | None = None
        except ApiError as exc:
            error = exc
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        return error, peak

    return measured()


@pytest.mark.parametrize(("endpoint", "cap"), [("set/reinstall", "1 MiB"), ("get/auth", "16 MiB")])
async def test_a_gzip_bomb_costs_at_most_about_the_cap(endpoint: str, cap: str) -> None:
    bomb = gzip_bomb(256 * MiB)  # built before measuring: the server is in this process
    async with HostileServer() as server, client_for(server) as client:
        cred = (await client.authenticate()).credentials[A]
        server.answer(endpoint, raw_answer(bomb, headers={"Content-Encoding": "gzip"}))

        async def call() -> None:
            if endpoint == "get/auth":
                await client.authenticate()
            else:
                await client.reinstall(cred, image="x", password=Secret(ROOT_PW))

        error, peak = await _peak_during(call)
    assert isinstance(error, InDoubtError)
    assert f"exceeds {cap}" in error.message
    print(f"gzip bomb on {endpoint}: peak {peak / MiB:.1f} MiB")
    assert peak < 100 * MiB  # generous: 256 MiB inflated unbounded would be far more


async def test_100_mib_of_garbage_is_cut_at_the_cap() -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    async with HostileServer() as server, client_for(server) as client:
        cred = (await client.authenticate()).credentials[A]
        server.answer("get/images", stream(chunk, 100))
        error, peak = await _peak_during(lambda: client.images(cred))
    assert isinstance(error, InDoubtError)
    assert "exceeds 4 MiB" in error.message
    print(f"100 MiB garbage on get/images: peak {peak / MiB:.1f} MiB")
    assert peak < 64 * MiB


async def test_an_unknown_content_encoding_is_a_clear_failure() -> None:
    async with HostileServer() as server:
        server.answer("set/reinstall", raw_answer(b"xx", headers={"Content-Encoding": "br"}))
        async with client_for(server) as client:
            with pytest.raises(InDoubtError, match="Content-Encoding"):
                await reinstall(client)


# -- 6. hostile numbers ------------------------------------------------------------------------


async def test_hostile_numbers_in_the_session_answer_make_only_that_vps_unusable() -> None:
    async with HostileServer() as server:
        entries = {
            A: server.entry(A, valid_until=int("9" * 400)),
            B: server.entry(B, valid_until=server.entry(B)["valid_until"] + 0.5),  # type: ignore[operator]
            "kvm_3_3": server.entry("kvm_3_3", valid_until=float("inf")),
            "kvm_4_4": server.entry("kvm_4_4", valid_until="1e999"),
        }
        server.answer(
            "get/auth",
            json_answer(
                {"status": "success", "data": entries},
                headers={"Date": "Mon, 01 Jan 99999 00:00:00 GMT"},
            ),
        )
        async with client_for(server) as client:
            result = await client.authenticate()
            book = SessionBook(client, clock=SystemClock())
            assert set(await book.accounts()) == {B}
            for kvm_id in (A, "kvm_3_3", "kvm_4_4"):
                with pytest.raises(SessionUnavailableError, match="valid_until"):
                    await book.get(kvm_id)
    assert result.server_time is None
    assert isinstance(result.credentials[B].valid_until, int)


@pytest.mark.parametrize(("value", "expected"), [("9" * 400, 600.0), ("1e999", None)])
async def test_a_hostile_retry_after_is_clamped(value: str, expected: float | None) -> None:
    async with HostileServer() as server:
        server.answer("get/power", json_answer({"error": "slow"}, 429, {"Retry-After": value}))
        async with client_for(server) as client:
            cred = (await client.authenticate()).credentials[A]
            with pytest.raises(ThrottledError) as caught:
                await client.power(cred)
    assert caught.value.retry_after == expected


# -- 7. escape sequences -----------------------------------------------------------------------

FORGED = "\x1b]0;pwned\x07\x1b[2J\x1b[H\x1b[32mall 500 VPSes ready\x1b[0m\r\n\u202etxt.exe\x9b31m"


async def test_escape_sequences_in_server_text_never_reach_a_message() -> None:
    attempts: list[Attempt] = []
    async with HostileServer() as server:
        server.answer("get/auth", json_answer({"status": "error", "message": FORGED}, 401))
        async with client_for(server, attempts) as client:
            with pytest.raises(AuthenticationError) as caught:
                await client.authenticate()
    assert_clean(str(caught.value))
    assert "\\x1b" in caught.value.message  # shown escaped, not acted upon
    assert all(not any(c in a.message for c in UNSAFE) for a in attempts)


async def test_escape_sequences_in_other_server_text_are_cleaned() -> None:
    async with HostileServer() as server:
        server.answer("get/power", json_answer({"status": "success", "data": FORGED}))
        server.answer("get/images", json_answer({"status": "success", "data": ["ok", FORGED]}))
        server.answer(
            "get/auth",
            json_answer(
                {
                    "status": "success",
                    "data": {
                        A: server.entry(A, description=FORGED),
                        B: server.entry(B, api_host=FORGED),
                    },
                }
            ),
        )
        async with client_for(server) as client:
            result = await client.authenticate()
            cred = result.credentials[A]
            assert_clean(await client.power(cred))
            assert await client.images(cred) == ["ok"]
    assert_clean(cred.description)
    assert_clean(result.unusable[B])
    assert len(result.unusable[B]) <= 300


# -- 8. echoed secrets -------------------------------------------------------------------------


def _forms(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        urllib.parse.quote_plus(secret),
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote(secret, safe="").lower(),
        json.dumps(secret)[1:-1],
        json.dumps(secret)[1:-1].replace("/", "\\/"),
        html.escape(secret),
        base64.b64encode(raw).decode(),
    ]


ECHOES: dict[str, Callable[[dict[str, str]], str]] = {
    "form, + for space": urllib.parse.urlencode,
    "form, %20": lambda f: urllib.parse.urlencode(f, quote_via=urllib.parse.quote),
    "form, lower-case hex": lambda f: urllib.parse.urlencode(f).lower(),
    "JSON": json.dumps,
    "JSON with \\/": lambda f: json.dumps(f).replace("/", "\\/"),
    "HTML": lambda f: html.escape(repr(f)),
    "base64 of the password": lambda f: "pw " + base64.b64encode(f["password"].encode()).decode(),
    "raw": lambda f: " ".join(f"{k}={v}" for k, v in f.items()),
}


@pytest.mark.parametrize("name", list(ECHOES))
async def test_an_echoed_request_leaks_no_secret_in_any_encoding(name: str) -> None:
    attempts: list[Attempt] = []
    async with HostileServer() as server:
        server.answer("set/reinstall", echo(ECHOES[name], status=400))
        async with client_for(server, attempts) as client:
            # Rejected, or a session error when the echo speaks of the "signature".
            with pytest.raises((RejectedError, SessionExpiredError)) as caught:
                await reinstall(client)
    signature = server.sent("set/reinstall")[0]["signature"]
    texts = [str(caught.value), *(a.message for a in attempts)]
    for secret in (ROOT_PW, signature, ACCOUNT_PW):
        for form in _forms(secret):
            assert all(form not in text for text in texts), (name, form)
    assert all(not _quotes_user_data(text) for text in texts)


@pytest.mark.parametrize(
    "quote",
    [
        lambda ud: ud[:200],
        lambda ud: urllib.parse.quote_plus(ud[20:220]),
        lambda ud: html.escape(ud[40:240]),
        lambda ud: json.dumps(ud[10:210])[1:-1],
    ],
)
async def test_server_text_quoting_the_user_data_is_withheld(quote: Callable[[str], str]) -> None:
    async with HostileServer() as server:
        server.answer("set/reinstall", echo(lambda f: "bad: " + quote(f["cloudinit_user_data"])))
        async with client_for(server) as client:
            with pytest.raises(ApiError) as caught:
                await reinstall(client)
    assert "withheld" in caught.value.message
    assert not _quotes_user_data(str(caught.value))


def _quotes_user_data(text: str, run: int = 32) -> bool:
    squeezed = "".join(USER_DATA.split())
    seen = "".join(text.split())
    return any(seen[i : i + run] in squeezed for i in range(len(seen) - run + 1))


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_an_unusable_ca_file_is_a_manifest_problem_not_a_crash(
    tmp_path: Any, content: str | None
) -> None:
    ca_file = tmp_path / "ca.pem"
    if content is not None:
        ca_file.write_text(content)
    with pytest.raises(ManifestError, match="ca_file"):
        EdisClient(
            session_url="https://session.edisglobal.com",
            email="ops@example.net",
            password=Secret(ACCOUNT_PW),
            ca_file=str(ca_file),
        )


async def test_details_keep_only_ipv4_literals_and_clean_text() -> None:
    details = {
        "hostname": FORGED,
        "ip": {"ipv4": ["evil.example/24", "10.1.2.3/24", "\x1b[2J", 7]},
        "hw": {"deep": {"deeper": {"deepest": {"x": {"y": 1}}}}},
    }
    async with HostileServer() as server:
        server.answer("get/details", json_answer({"status": "success", "data": details}))
        async with client_for(server) as client:
            cred = (await client.authenticate()).credentials[A]
            got = await client.details(cred)
    assert got["ip"]["ipv4"] == ["10.1.2.3/24"]
    assert_clean(got["hostname"])
