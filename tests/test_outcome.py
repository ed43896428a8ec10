"""The outcome table: every kind of answer or failure, and the class it must get."""

from __future__ import annotations

import email.utils
import json

import pytest

from orchestrator.edis.outcome import (
    HttpAnswer,
    TransportFailure,
    classify,
    parse_retry_after,
)
from orchestrator.model import Outcome

NOW = 1_800_000_000.0


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> HttpAnswer:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return HttpAnswer(status=status, body=raw, headers=headers or {})


HTTP_DATE_IN_90S = email.utils.formatdate(NOW + 90, usegmt=True)

CASES = [
    # (name, attempt, outcome, retry_after)
    ("connection refused", TransportFailure("refused"), Outcome.NOT_SENT, None),
    ("DNS failure", TransportFailure("dns"), Outcome.NOT_SENT, None),
    ("connect timeout", TransportFailure("connect_timeout"), Outcome.NOT_SENT, None),
    ("TLS handshake failure", TransportFailure("tls"), Outcome.NOT_SENT, None),
    (
        "read timeout after the body was sent",
        TransportFailure("read_timeout"),
        Outcome.IN_DOUBT,
        None,
    ),
    ("reset mid-response", TransportFailure("reset"), Outcome.IN_DOUBT, None),
    ("server disconnected", TransportFailure("disconnected"), Outcome.IN_DOUBT, None),
    ("200 success", answer(200, {"status": "success"}), Outcome.ACCEPTED, None),
    (
        "200 with an error body",
        answer(200, {"status": "error", "message": "Image not available"}),
        Outcome.REJECTED,
        None,
    ),
    (
        "200 with a session error body",
        answer(200, {"status": "error", "message": "Session signature expired or invalid"}),
        Outcome.SESSION,
        None,
    ),
    (
        "200 with a rate-limit error body",
        answer(200, {"status": "error", "error": "Too many requests"}),
        Outcome.THROTTLED,
        None,
    ),
    ("200 with a non-JSON body", answer(200, b"<html>ok</html>"), Outcome.IN_DOUBT, None),
    ("200 with an empty body", answer(200, b""), Outcome.IN_DOUBT, None),
    (
        "400",
        answer(400, {"error": "Invalid parameters provided.", "code": 400}),
        Outcome.REJECTED,
        None,
    ),
    (
        "401",
        answer(401, {"error": "Invalid or expired session signature.", "code": 401}),
        Outcome.SESSION,
        None,
    ),
    (
        "401 with a non-JSON body",
        answer(401, b"Unauthorized"),
        Outcome.SESSION,
        None,
    ),
    (
        "403",
        answer(403, {"error": "Access to this resource is denied.", "code": 403}),
        Outcome.REJECTED,
        None,
    ),
    (
        "403 speaking of the session",
        answer(403, {"status": "error", "message": "Unauthorized access, session expired."}),
        Outcome.SESSION,
        None,
    ),
    ("429 without Retry-After", answer(429, {"error": "slow down"}), Outcome.THROTTLED, None),
    (
        "429 with Retry-After seconds",
        answer(429, {"error": "slow down"}, {"Retry-After": "7"}),
        Outcome.THROTTLED,
        7.0,
    ),
    (
        "429 with Retry-After as an HTTP date",
        answer(429, {"error": "slow down"}, {"retry-after": HTTP_DATE_IN_90S}),
        Outcome.THROTTLED,
        90.0,
    ),
    (
        "500",
        answer(500, {"error": "An unexpected error occurred.", "code": 500}),
        Outcome.IN_DOUBT,
        None,
    ),
    ("502", answer(502, b"Bad Gateway"), Outcome.IN_DOUBT, None),
    ("503", answer(503, b"Service Unavailable"), Outcome.THROTTLED, None),
    ("503 with Retry-After", answer(503, b"", {"Retry-After": "30"}), Outcome.THROTTLED, 30.0),
    ("504", answer(504, b"Gateway Timeout"), Outcome.IN_DOUBT, None),
    (
        # Not followed; a server may act on a POST and then redirect: in doubt.
        "307 redirect",
        answer(307, b"", {"Location": "https://evil.example/"}),
        Outcome.IN_DOUBT,
        None,
    ),
    (
        "303 see other after the server acted",
        answer(303, b"", {"Location": "/done"}),
        Outcome.IN_DOUBT,
        None,
    ),
    ("200 with status error and no text", answer(200, {"status": "error"}), Outcome.IN_DOUBT, None),
    ("200 with an unknown status", answer(200, {"status": "queued"}), Outcome.IN_DOUBT, None),
    ("200 with no status", answer(200, {"data": "x"}), Outcome.IN_DOUBT, None),
    ("200 with a JSON list", answer(200, ["success"]), Outcome.IN_DOUBT, None),
    (
        "200 with a message but no error status",
        answer(200, {"status": "pending", "message": "reinstall queued"}),
        Outcome.IN_DOUBT,
        None,
    ),
    (
        "200 in the {error, code} shape",
        answer(200, {"error": "Invalid image", "code": 400}),
        Outcome.REJECTED,
        None,
    ),
    ("202 even with success", answer(202, {"status": "success"}), Outcome.IN_DOUBT, None),
    ("204", answer(204, b""), Outcome.IN_DOUBT, None),
    ("TLS certificate does not verify", TransportFailure("tls_verify"), Outcome.REJECTED, None),
    ("total deadline passed", TransportFailure("deadline"), Outcome.IN_DOUBT, None),
    (
        "deadline passed before connecting",
        TransportFailure("connect_deadline"),
        Outcome.NOT_SENT,
        None,
    ),
    ("answer over the size cap", TransportFailure("oversized"), Outcome.IN_DOUBT, None),
    ("answer body cannot be decoded", TransportFailure("undecodable"), Outcome.IN_DOUBT, None),
    ("404 non-JSON", answer(404, b"Not Found"), Outcome.REJECTED, None),
]


@pytest.mark.parametrize(
    ("attempt", "outcome", "retry_after"),
    [pytest.param(a, o, r, id=name) for name, a, o, r in CASES],
)
def test_classification_table(
    attempt: HttpAnswer | TransportFailure, outcome: Outcome, retry_after: float | None
) -> None:
    result = classify(attempt, now=NOW)
    assert result.outcome is outcome
    assert result.retry_after == retry_after
    assert result.message


def test_error_text_comes_from_the_first_present_field() -> None:
    body = {"status": "error", "msg": "third", "errormsg": "fourth", "error": "second"}
    assert classify(answer(400, body), now=NOW).message == "second"
    assert classify(answer(400, {"errormsg": "only this"}), now=NOW).message == "only this"
    assert classify(answer(400, {"message": "first", "error": "x"}), now=NOW).message == "first"


def test_success_carries_the_data_member() -> None:
    result = classify(answer(200, {"status": "success", "data": ["a", "b"]}), now=NOW)
    assert result.data == ["a", "b"]


def test_long_server_text_is_clipped() -> None:
    result = classify(answer(400, {"error": "x" * 5000}), now=NOW)
    assert len(result.message) <= 300


def test_non_json_error_text_is_quoted_in_the_message() -> None:
    result = classify(answer(502, b"upstream exploded"), now=NOW)
    assert "upstream exploded" in result.message
    assert "502" in result.message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("120", 120.0),
        ("-5", None),
        ("+5", None),
        ("\u0663", None),  # an Arabic-Indic digit is not delta-seconds
        ("9" * 400, 600.0),  # clamped to MAX_RETRY_AFTER, not an OverflowError
        ("100000", 600.0),
        ("soon", None),
        (email.utils.formatdate(NOW - 50, usegmt=True), 0.0),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(NOW + 3600, usegmt=True), 600.0),
        ("Fri, 01 Jan 99999 00:00:00 GMT", None),
    ],
)
def test_retry_after_parsing(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected
