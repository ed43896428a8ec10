"""Properties over anything a server can send: classify, the session-answer parsing, the
session book, the text cleaner and the redactor never raise and keep their promises."""

from __future__ import annotations

import asyncio
import base64
import html
import json
import unicodedata
import urllib.parse
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.clock import SystemClock
from orchestrator.edis import EdisClient, SessionBook
from orchestrator.edis.auth import MAX_VALID_UNTIL, AuthResult, parse_entries
from orchestrator.edis.hosts import HostPolicy
from orchestrator.edis.outcome import (
    MAX_MESSAGE,
    MAX_RETRY_AFTER,
    HttpAnswer,
    TransportFailure,
    classify,
    parse_retry_after,
)
from orchestrator.edis.text import clean
from orchestrator.errors import UnexpectedAnswerError
from orchestrator.model import Outcome
from orchestrator.secrets import Redactor, Secret

NOW = 1_800_000_000.0
POLICY, _ = HostPolicy.for_session_url("http://127.0.0.1:9", ["127.0.0.0/8"])
FAST = settings(
    max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# Values a JSON answer can hold, hostile numbers included.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.sampled_from(["success", "error", "failed", "kvm_1_1", "127.0.0.1:8", "9" * 400])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["status", "message", "error", "msg", "errormsg", "data", "code", "kvm_id"]
            )
            | st.text(max_size=8),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)


def _encode(value: object) -> bytes:
    try:
        return json.dumps(value).encode()
    except (ValueError, TypeError):
        return b"{}"


bodies = (
    st.binary(max_size=200)
    | json_values.map(_encode)
    | st.integers(min_value=1, max_value=200_000).map(lambda n: b"[" * n)
    | st.text(max_size=100).map(lambda t: json.dumps({"status": "error", "message": t}).encode())
)
headers = st.dictionaries(
    st.sampled_from(["Retry-After", "retry-after", "Date", "Location", "X-Other"])
    | st.text(max_size=10),
    st.text(max_size=40) | st.sampled_from(["9" * 400, "-1", "1e999", "Mon, 01 Jan 99999"]),
    max_size=4,
)
statuses = st.integers(min_value=-1000, max_value=10_000) | st.sampled_from([200, 202, 303, 429])


def _is_clean(text: str) -> bool:
    return all(unicodedata.category(c) not in {"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"} for c in text)


@FAST
@given(status=statuses, body=bodies, header=headers)
def test_classify_never_raises_and_its_message_is_clean(
    status: int, body: bytes, header: dict[str, str]
) -> None:
    result = classify(HttpAnswer(status, body, header), now=NOW)
    assert isinstance(result.outcome, Outcome)
    assert len(result.message) <= MAX_MESSAGE
    assert _is_clean(result.message)
    if result.retry_after is not None:
        assert 0.0 <= result.retry_after <= MAX_RETRY_AFTER
    if result.outcome is Outcome.ACCEPTED:
        assert status == 200


@FAST
@given(body=json_values)
def test_a_200_is_a_failure_only_when_it_carries_an_error_text(body: Any) -> None:
    result = classify(HttpAnswer(200, _encode(body), {}), now=NOW)
    if result.outcome in (Outcome.REJECTED, Outcome.SESSION, Outcome.THROTTLED):
        assert isinstance(body, dict)
        texts = [body.get(f) for f in ("message", "error", "msg", "errormsg")]
        assert any(isinstance(t, str) and t.strip() for t in texts)
        assert body.get("status") != "success"


@FAST
@given(kind=st.sampled_from(["dns", "tls", "tls_verify", "reset", "deadline"]), detail=st.text())
def test_classify_never_raises_for_transport_failures(kind: Any, detail: str) -> None:
    result = classify(TransportFailure(kind, detail), now=NOW)
    assert _is_clean(result.message)
    assert len(result.message) <= MAX_MESSAGE


@FAST
@given(value=st.none() | st.text(max_size=60) | st.sampled_from(["9" * 5000, "00000000000042"]))
def test_retry_after_is_within_bounds_or_none(value: str | None) -> None:
    seconds = parse_retry_after(value, now=NOW)
    assert seconds is None or 0.0 <= seconds <= MAX_RETRY_AFTER


entry = st.fixed_dictionaries(
    {},
    optional={
        "kvm_id": scalars,
        "api_host": st.sampled_from(["127.0.0.1:8", "evil.example", "\x1b[2J"]) | scalars,
        "signature": scalars,
        "valid_until": scalars,
        "suspended": scalars,
        "description": scalars,
    },
)
session_data = st.dictionaries(
    st.sampled_from(["kvm_1_1", "kvm_2_2"]) | st.text(max_size=20), entry | json_values, max_size=4
)


@FAST
@given(data=session_data)
def test_the_session_answer_parsing_never_raises_and_keys_win(data: dict[object, Any]) -> None:
    credentials, unusable = parse_entries(data, POLICY)
    for key, cred in credentials.items():
        assert cred.kvm_id == key
        assert cred.form()["kvm_id"] == key
        assert 0 <= cred.valid_until <= MAX_VALID_UNTIL
    assert all(_is_clean(why) and len(why) <= 300 for why in unusable.values())


class _Auth:
    def __init__(self, result: AuthResult) -> None:
        self.result = result

    async def authenticate(self, kvm_id: str | None = None) -> AuthResult:
        return self.result


@FAST
@given(data=json_values | session_data, date=st.text(max_size=40))
def test_the_client_and_the_book_read_any_auth_answer_without_crashing(
    data: Any, date: str
) -> None:
    try:
        result = CLIENT._parse_auth(data, HttpAnswer(200, b"", {"Date": date}), None)
    except UnexpectedAnswerError:
        assert not isinstance(data, dict)
        return
    book = SessionBook(_Auth(result), clock=SystemClock())
    accounts = LOOP.run_until_complete(book.accounts())
    assert all(cred.kvm_id == key for key, cred in accounts.items())


# Built once: a client loads the system CA bundle, and a loop per example would dominate.
CLIENT = EdisClient(
    session_url="http://127.0.0.1:9",
    email="a@b.c",
    password=Secret("pw-1234"),
    allowed_hosts=["127.0.0.0/8"],
)
LOOP = asyncio.new_event_loop()


@FAST
@given(text=st.text())
def test_clean_output_is_safe_and_capped(text: str) -> None:
    out = clean(text, 50)
    assert len(out) <= 50
    assert _is_clean(out)
    assert "\n" not in out


@settings(max_examples=100, deadline=None, database=None)
@given(secret=st.text(min_size=4, max_size=30).filter(lambda s: s.strip() == s and len(s) >= 4))
def test_the_redactor_masks_a_secret_in_every_encoding(secret: str) -> None:
    redact = Redactor([secret])
    raw = secret.encode()
    for form in (
        secret,
        urllib.parse.quote_plus(secret),
        urllib.parse.quote(secret, safe=""),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        html.escape(secret),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ):
        out = redact(f"echo: [{form}] end")
        assert form not in out
        assert secret not in out


def test_a_line_that_only_decodes_to_a_secret_is_withheld_and_others_kept() -> None:
    redact = Redactor(["A 2/+&=x"])
    out = redact("first line\npw=A%202/+%26=x mixed encodings\nlast line")
    assert out.split("\n") == ["first line", Redactor.WITHHELD, "last line"]


def test_plain_text_is_masked_case_sensitively() -> None:
    assert Redactor(["Summer2026"])("summer2026 Summer2026") == "summer2026 ***"
