"""Classify one API attempt into an outcome class (DESIGN.md, "Outcome classes").

``classify`` is the single place that decides what an HTTP answer or a transport failure
means. It is pure: the client turns aiohttp's exceptions into a ``TransportFailure`` and
responses into an ``HttpAnswer``, and the table test in ``tests/test_outcome.py`` checks every
case without a network.

The question behind every branch is "could the server have acted?": if it could, and the
answer does not say clearly what happened, the attempt is *in doubt*, never a failure that
would be retried (a second reinstall wipes the disk again). Success is only HTTP 200 with
``status: success``; a rejection is only an error status, or a 200 carrying an explicit error
text in a known error shape. Server text is cleaned here (``orchestrator.edis.text``) before
it reaches any message.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from orchestrator.edis.text import clean
from orchestrator.model import Outcome

TransportKind = Literal[
    # The request never left, or never reached the server's application: safe to resend.
    "dns",
    "refused",
    "connect_timeout",
    "connect_deadline",
    "tls",
    # The server's certificate or host name did not verify: nothing was sent, and it will not
    # heal by itself, so it is final at once.
    "tls_verify",
    # The request was written; the server may have acted on it.
    "read_timeout",
    "reset",
    "disconnected",
    "deadline",
    "oversized",
    "undecodable",
]

_NOT_SENT_KINDS: frozenset[str] = frozenset(
    {"dns", "refused", "connect_timeout", "connect_deadline", "tls"}
)

# Words in an error body that mean "make a new session" (API-NOTES: a 401, or a 200 with an
# error body about session/signature/expiry).
_SESSION_WORDS = re.compile(r"session|signature|expired|valid_until|token", re.IGNORECASE)
# Words in a 200 error body that mean "slow down" on servers that never use real 429s.
_THROTTLE_WORDS = re.compile(r"too many requests|rate.?limit|throttl", re.IGNORECASE)

# The first of these fields that is present carries the server's error text (API-NOTES).
_MESSAGE_FIELDS = ("message", "error", "msg", "errormsg")
# A 200 is a clear rejection only in the error shapes API-NOTES lists: a ``status`` that says
# error (with a text in any message field), or no ``status`` and an ``error``/``errormsg``
# text (``{"error": .., "code": N}``).
_ERROR_STATUSES = frozenset({"error", "fail", "failed", "failure"})
_ERROR_FIELDS = ("error", "errormsg")

MAX_MESSAGE = 300

MAX_RETRY_AFTER = 600.0
"""The longest wait a ``Retry-After`` header is obeyed for, in seconds (10 minutes): a
hostile or broken server cannot park a run for days."""

_DELTA_SECONDS = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class TransportFailure:
    """No usable HTTP answer arrived. ``kind`` says how far the request got."""

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

    ``message`` is the server's text (or a description of the failure), cleaned and at most
    ``MAX_MESSAGE`` characters; ``data`` is the parsed ``data`` member of a success;
    ``retry_after`` is seconds from now (at most ``MAX_RETRY_AFTER``) when the server sent a
    readable ``Retry-After``, None when it sent none. ``transport`` is the failure's kind
    when no usable answer arrived.
    """

    outcome: Outcome
    message: str
    status: int | None = None
    retry_after: float | None = None
    data: object = None
    transport: TransportKind | None = None


def classify(attempt: TransportFailure | HttpAnswer, *, now: float) -> Classification:
    """Return the outcome class of one attempt.

    ``now`` is the current Unix time, used to turn a ``Retry-After`` HTTP date into seconds.
    Never raises: an answer that cannot even be examined (say, a body that defeats the JSON
    parser) is *in doubt*.
    """
    try:
        if isinstance(attempt, TransportFailure):
            return _classify_transport(attempt)
        return _classify_answer(attempt, now)
    except Exception as exc:  # the documented promise is "never raises"
        status = getattr(attempt, "status", None)
        return Classification(
            Outcome.IN_DOUBT,
            f"an answer that could not be examined ({type(exc).__name__})",
            status if isinstance(status, int) else None,
        )


def _classify_transport(failure: TransportFailure) -> Classification:
    detail = f": {failure.detail}" if failure.detail else ""
    if failure.kind == "tls_verify":
        return Classification(
            Outcome.REJECTED,
            _clip(f"request not sent: the TLS certificate did not verify{detail}"),
            transport=failure.kind,
        )
    if failure.kind in _NOT_SENT_KINDS:
        return Classification(
            Outcome.NOT_SENT,
            _clip(f"request not sent ({failure.kind}{detail})"),
            transport=failure.kind,
        )
    return Classification(
        Outcome.IN_DOUBT,
        _clip(f"no answer after the request was sent ({failure.kind}{detail})"),
        transport=failure.kind,
    )


def _classify_answer(answer: HttpAnswer, now: float) -> Classification:
    status = answer.status
    body = _parse_json(answer.body)
    message = _message(body, answer.body, status)

    if 300 <= status < 400:
        # Never followed: aiohttp would re-send the POST body (signature, root password) to
        # wherever the Location points. A server may act on a POST and then redirect
        # (post/redirect/get), so a redirect does not say the request was refused.
        where = clean(_header(answer.headers, "Location") or "nowhere", 120)
        return Classification(
            Outcome.IN_DOUBT, _clip(f"redirect to {where} not followed ({message})"), status
        )
    if status in (429, 503):
        retry_after = parse_retry_after(_header(answer.headers, "Retry-After"), now=now)
        return Classification(Outcome.THROTTLED, message, status, retry_after=retry_after)
    if status >= 500:
        # 500/502/504 (and any other 5xx): the server, or a proxy in front of it, may have
        # acted before failing. Never resent blindly.
        return Classification(Outcome.IN_DOUBT, message, status)
    if status == 401:
        return Classification(Outcome.SESSION, message, status)
    if 400 <= status < 500:
        outcome = Outcome.SESSION if _SESSION_WORDS.search(message) else Outcome.REJECTED
        return Classification(outcome, message, status)
    if status != 200:
        # 1xx, 201-299 and nonsense codes: the API documents only 200 for an answer. A 202
        # "accepted" or a 204 may well mean the server acted, but not that it succeeded.
        return Classification(
            Outcome.IN_DOUBT, _clip(f"HTTP {status}, not the API's 200: {message}"), status
        )

    if not isinstance(body, dict):
        # The server answered but we cannot tell what it did.
        return Classification(Outcome.IN_DOUBT, _clip(f"unreadable answer: {message}"), status)
    if body.get("status") == "success":
        return Classification(Outcome.ACCEPTED, "success", status, data=body.get("data"))
    if not _is_error_shape(body):
        # Neither a success nor a rejection the API describes: the server may have acted.
        return Classification(
            Outcome.IN_DOUBT, _clip(f"an answer of unexpected shape ({_shape(body)})"), status
        )
    if _THROTTLE_WORDS.search(message):
        return Classification(Outcome.THROTTLED, message, status)
    if _SESSION_WORDS.search(message):
        return Classification(Outcome.SESSION, message, status)
    return Classification(Outcome.REJECTED, message, status)


def _is_error_shape(body: dict[object, object]) -> bool:
    state = body.get("status")
    if isinstance(state, str) and state.strip().lower() in _ERROR_STATUSES:
        return any(_text(body.get(field)) for field in _MESSAGE_FIELDS)
    if "status" not in body:
        return any(_text(body.get(field)) for field in _ERROR_FIELDS)
    return False


def _shape(body: dict[object, object]) -> str:
    state = body.get("status")
    said = f"status {clean(repr(state), 40)}" if "status" in body else "no status"
    fields = ", ".join(clean(str(k), 30) for k in list(body)[:8])
    more = f" and {len(body) - 8} more" if len(body) > 8 else ""
    return f"{said}; fields: {fields or 'none'}{more}"


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Return the wait a ``Retry-After`` header asks for, in seconds, within
    ``0..MAX_RETRY_AFTER``.

    Accepts delta-seconds (``"120"``, ASCII digits only) or an HTTP date; returns None when
    absent or unreadable. Never raises: a 400-digit value is clamped, not an overflow.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        # Compare as text first: int() of thousands of digits is refused by Python.
        digits = value.lstrip("0") or "0"
        if len(digits) > 6:
            return MAX_RETRY_AFTER
        return min(MAX_RETRY_AFTER, float(int(digits)))
    try:
        when = email.utils.parsedate_to_datetime(value)
        seconds = when.timestamp() - now
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None or not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


def _parse_json(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: a body nested thousands of levels deep.
        return None


def _message(body: object, raw: bytes, status: int) -> str:
    if isinstance(body, dict):
        for field in _MESSAGE_FIELDS:
            value = body.get(field)
            if _text(value):
                assert isinstance(value, str)
                return _clip(value)
        if body.get("status") == "success":
            return "success"
        return _clip(f"HTTP {status} with no error text")
    text = raw[: MAX_MESSAGE * 4].decode("utf-8", "replace").strip()
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
    return clean(text, MAX_MESSAGE)
