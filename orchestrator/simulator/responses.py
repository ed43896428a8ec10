"""JSON answers in each endpoint's documented shape.

The provider's spec gives every endpoint its own error body:

* ``get/auth``: ``{"error": <reason>, "code": N, "message": <detail>}``
* ``get/details``: ``{"status": "error", "error": <detail>}``
* every other endpoint (and unknown paths): ``{"error": <detail>, "code": N}``

With ``error_style="http200"`` application errors (not injected faults, throttling, 404/405)
are sent as HTTP 200 with ``{"status": "error", "message": <detail>}``, the other shape the
provider is known to use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import web

JSON = "application/json"
SUCCESS_BODY = b'{"status":"success"}'

# Texts the provider uses (spec examples), so clients match on real wording.
INVALID_SIGNATURE = "Invalid or expired session signature."
BAD_CREDENTIALS = "Invalid WHMCS credentials. Please provide correct credentials."
ACCESS_DENIED = "Access to this resource is denied."
INTERNAL_ERROR = "An unexpected error occurred on the server."
TOO_MANY_REQUESTS = "Too many requests. Please slow down."
_FAULT_TEXT: Mapping[int, str] = {
    429: TOO_MANY_REQUESTS,
    500: INTERNAL_ERROR,
    502: "Bad gateway.",
    503: "Service temporarily unavailable.",
    504: "Gateway timeout.",
}


def reason(status: int) -> str:
    """Return the HTTP reason phrase of ``status``."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def json_response(
    payload: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Return ``payload`` as a compact JSON response."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)


def success(data: object = None, **extra: object) -> web.Response:
    """Return ``{"status": "success"[, "data": data], **extra}`` with HTTP 200."""
    if data is None and not extra:
        return web.Response(body=SUCCESS_BODY, content_type=JSON)
    payload: dict[str, object] = {"status": "success"}
    if data is not None:
        payload["data"] = data
    payload.update(extra)
    return json_response(payload)


def error_body(endpoint: str | None, status: int, message: str) -> dict[str, object]:
    """Return the error body ``endpoint`` documents for ``status`` with ``message``."""
    if endpoint == "get/auth":
        return {"error": reason(status), "code": status, "message": message}
    if endpoint == "get/details":
        return {"status": "error", "error": message}
    return {"error": message, "code": status}


def app_error(endpoint: str, status: int, message: str, *, http200: bool = False) -> web.Response:
    """Return an application error (bad input, session, refusal) in the configured style."""
    if http200:
        return json_response({"status": "error", "message": message})
    return json_response(error_body(endpoint, status, message), status)


def fault_error(
    endpoint: str | None, status: int, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Return an injected or rate-limit error: always its real HTTP status."""
    text = _FAULT_TEXT.get(status, reason(status))
    return json_response(error_body(endpoint, status, text), status, headers)


def http_error(exc: web.HTTPException) -> web.Response:
    """Return aiohttp's own 4xx/5xx (unknown path, wrong method, body too large) as JSON."""
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return json_response({"error": reason(exc.status), "code": exc.status}, exc.status, headers)
