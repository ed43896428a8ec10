"""Classify one API attempt into an outcome class (DESIGN.md, "Outcome classes").

``classify`` is the single place that decides what an HTTP answer or a transport failure
means. It is pure: the client turns aiohttp's exceptions into a ``TransportFailure`` and
responses into an ``HttpAnswer``, and the table test in ``tests/test_outcome.py`` checks every
case without a network.
"""

from __future__ import annotations

import email.utils
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from orchestrator.model import Outcome

TransportKind = Literal[
    # The request never left, or never reached the server's application: safe to resend.
    "dns",
    "refused",
    "connect_timeout",
    "tls",
    # The request was written; the server may have acted on it.
    "read_timeout",
    "reset",
    "disconnected",
]

_NOT_SENT_KINDS: frozenset[str] = frozenset({"dns", "refused", "connect_timeout", "tls"})

# Words in an error body that mean "make a new session" (API-NOTES: a 401, or a 200 with an
# error body about session/signature/expiry).
_SESSION_WORDS = re.compile(r"session|signature|expired|valid_until|token", re.IGNORECASE)
# Words in a 200 error body that mean "slow down" on servers that never use real 429s.
_THROTTLE_WORDS = re.compile(r"too many requests|rate.?limit|throttl", re.IGNORECASE)

# The first of these fields that is present carries the server's error text (API-NOTES).
_MESSAGE_FIELDS = ("message", "error", "msg", "errormsg")

MAX_MESSAGE = 300


@dataclass(frozen=True)
class TransportFailure:
    """No HTTP answer arrived. ``kind`` says how far the request got."""

    kind: TransportKind
    detail: str = ""


@dataclass(frozen=True)
class HttpAnswer:
    """An HTTP answer: status, the headers that matter, and the raw body."""

    status: int
    body: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Classification:
    """What an attempt amounts to.

    ``message`` is the server's text (or a description of the failure), at most
    ``MAX_MESSAGE`` characters; ``data`` is the parsed ``data`` member of a success;
    ``retry_after`` is seconds from now when the server sent ``Retry-After``.
    """

    outcome: Outcome
    message: str
    status: int | None = None
    retry_after: float | None = None
    data: object = None


def classify(attempt: TransportFailure | HttpAnswer, *, now: float) -> Classification:
    """Return the outcome class of one attempt.

    ``now`` is the current Unix time, used to turn a ``Retry-After`` HTTP date into seconds.
    Never raises.
    """
    if isinstance(attempt, TransportFailure):
        return _classify_transport(attempt)
    return _classify_answer(attempt, now)


def _classify_transport(failure: TransportFailure) -> Classification:
    detail = f": {failure.detail}" if failure.detail else ""
    if failure.kind in _NOT_SENT_KINDS:
        return Classification(Outcome.NOT_SENT, _clip(f"request not sent ({failure.kind}{detail})"))
    return Classification(
        Outcome.IN_DOUBT, _clip(f"no answer after the request was sent ({failure.kind}{detail})")
    )


def _classify_answer(answer: HttpAnswer, now: float) -> Classification:
    status = answer.status
    body = _parse_json(answer.body)
    message = _message(body, answer.body, status)

    if 300 <= status < 400:
        # Never followed: aiohttp would re-send the POST body (signature, root password) to
        # wherever the Location points. The server did not act on a redirect.
        return Classification(Outcome.REJECTED, _clip(f"redirect refused ({message})"), status)
    if status in (429, 503):
        retry_after = parse_retry_after(_header(answer.headers, "Retry-After"), now=now)
        return Classification(Outcome.THROTTLED, message, status, retry_after=retry_after)
    if status >= 500:
        # 500/502/504 (and any other 5xx): the server, or a proxy in front of it, may have
        # acted before failing. Never resent blindly.
        return Classification(Outcome.IN_DOUBT, message, status)
    if status == 401:
        return Classification(Outcome.SESSION, message, status)
    if status >= 400:
        outcome = Outcome.SESSION if _SESSION_WORDS.search(message) else Outcome.REJECTED
        return Classification(outcome, message, status)
    if not 200 <= status < 300:
        return Classification(Outcome.IN_DOUBT, _clip(f"unexpected HTTP status: {message}"), status)

    # HTTP 2xx: success only with status == "success" (API-NOTES).
    if not isinstance(body, dict):
        # The server answered but we cannot tell what it did.
        return Classification(Outcome.IN_DOUBT, _clip(f"unreadable answer: {message}"), status)
    if body.get("status") == "success":
        return Classification(Outcome.ACCEPTED, "success", status, data=body.get("data"))
    if _THROTTLE_WORDS.search(message):
        return Classification(Outcome.THROTTLED, message, status)
    if _SESSION_WORDS.search(message):
        return Classification(Outcome.SESSION, message, status)
    return Classification(Outcome.REJECTED, message, status)


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Return the wait a ``Retry-After`` header asks for, in seconds (never negative).

    Accepts delta-seconds (``"120"``) or an HTTP date; returns None when absent or unreadable.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return max(0.0, float(int(value)))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _parse_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _message(body: object, raw: bytes, status: int) -> str:
    if isinstance(body, dict):
        for field in _MESSAGE_FIELDS:
            value = body.get(field)
            if isinstance(value, str) and value:
                return _clip(value)
        if body.get("status") == "success":
            return "success"
        return _clip(f"HTTP {status} with no error text")
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return f"HTTP {status} with an empty body"
    return _clip(f"HTTP {status} with a non-JSON body: {text}")


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"
