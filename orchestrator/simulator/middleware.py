"""The one middleware every request passes: parse, throttle, inject faults, answer, log.

Order for a POST to a provider endpoint:

1. count it and parse the form body (errors are answered by the handler as 400);
2. the account's own rate limit (``SimConfig.rate_limit``) → 429 with ``Retry-After``;
3. the fault plan's decision (``faults.py``): wait, answer 429/5xx without acting, drop the
   connection without acting, revoke every session, or mark the install to fail/hang;
4. the handler; aiohttp's own errors (unknown path, wrong method, body too large) become JSON;
5. ``lost_response``: close the connection instead of answering (the handler has acted);
6. the ``Date`` header from the simulator clock, and one request-log entry.

``/_sim/...`` control requests skip 1-3 and 5 and are served only to loopback peers.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import math
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from aiohttp import web

from orchestrator.simulator.faults import API_PREFIX, ENDPOINTS, HTTP_FAULT_STATUS, INSTALL_KINDS
from orchestrator.simulator.handlers import (
    FORM,
    INSTALL_FAULT,
    INSTALL_FAULT_APPLIED,
    REJECT_REASON,
    Form,
    FormError,
)
from orchestrator.simulator.responses import (
    fault_error,
    http_error,
    json_response,
    reason,
)
from orchestrator.simulator.runtime import HOST_NAME, RUNTIME, Runtime
from orchestrator.simulator.stats import OTHER, LogEntry, log_kvm_id

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FORM_TYPE = "application/x-www-form-urlencoded"
CONTROL_PREFIX = "/_sim/"
# Far more than any endpoint takes; a bound keeps garbage bodies cheap to refuse.
MAX_FIELDS = 64
ENDPOINT_BY_PATH = {API_PREFIX + e: e for e in ENDPOINTS}

logger = logging.getLogger(__name__)


async def read_form(request: web.Request) -> Form:
    """Return the request's form fields (the last value of a repeated name wins), or a
    ``FormError`` for a wrong content type, an unreadable or unparsable body."""
    if request.content_type != FORM_TYPE:
        return FormError(400, f"Content-Type must be {FORM_TYPE}.")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return FormError(413, "Request body too large.")
    try:
        pairs = parse_qsl(
            raw.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=bool(raw),
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except ValueError:  # includes UnicodeDecodeError
        return FormError(400, "Unparsable request body.")
    return dict(pairs)


def _drop(request: web.Request) -> None:
    """Close the connection without an answer (the client sees a disconnect)."""
    transport = request.transport
    if transport is not None:
        transport.close()


def _is_loopback(remote: str | None) -> bool:
    if remote is None:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


async def _call(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Run the handler, turning aiohttp's HTTP errors and bugs into JSON answers."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return http_error(exc)
    except Exception:
        # A simulator bug: say so in the log, answer like the provider's 500.
        logger.exception("simulator handler failed for %s", request.path)
        return json_response({"error": "An unexpected error occurred.", "code": 500}, 500)


async def _control(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _is_loopback(request.remote):
        return json_response({"error": reason(403), "code": 403}, 403)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        return http_error(exc)
    except (KeyError, ValueError, TypeError) as exc:
        text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        return json_response({"error": str(text), "code": 400}, 400)


def _finish(
    rt: Runtime,
    request: web.Request,
    resp: web.StreamResponse,
    endpoint: str,
    kvm_id: str | None,
    *,
    fault: str | None = None,
    sent: bool = True,
) -> web.StreamResponse:
    """Stamp the ``Date`` header and log the request; ``sent`` is false when no answer goes
    out (dropped connection)."""
    resp.headers["Date"] = rt.clock.http_date()
    rt.record(
        LogEntry(
            rt.clock.now(),
            request.app[HOST_NAME],
            endpoint,
            log_kvm_id(kvm_id),
            resp.status if sent else None,
            fault,
            request.get(REJECT_REASON),
        )
    )
    return resp


async def _inject(
    rt: Runtime, request: web.Request, endpoint: str, kvm_id: str | None
) -> tuple[str | None, web.StreamResponse | None]:
    """Apply the fault plan's decision before the handler runs. Return the fault kind and,
    when the request must not reach the handler, the (possibly never sent) answer."""
    decision = rt.faults.decide(endpoint, kvm_id)
    if decision.latency > 0:
        rt.counters.count_fault(endpoint, "latency")
        await asyncio.sleep(decision.latency)
    kind = decision.kind
    if kind is None:
        return None, None
    if kind in INSTALL_KINDS:
        # Counted once the handler says an install really started with it.
        request[INSTALL_FAULT] = kind
        return kind, None
    rt.counters.count_fault(endpoint, kind)
    status = HTTP_FAULT_STATUS.get(kind)
    if status is not None:
        headers = None
        if decision.retry_after is not None:
            headers = {"Retry-After": str(decision.retry_after)}
        return kind, fault_error(endpoint, status, headers)
    if kind == "drop":
        _drop(request)
        # Never written: the transport is closed and aiohttp drops the write quietly.
        return kind, web.Response()
    if kind == "invalidate_sessions":
        rt.book.invalidate()
    return kind, None


@web.middleware
async def sim_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Serve one request as described in the module docstring."""
    rt = request.app[RUNTIME]
    path = request.path
    endpoint = ENDPOINT_BY_PATH.get(path)
    if endpoint is None or request.method != "POST":
        if path.startswith(CONTROL_PREFIX):
            return await _control(request, handler)
        rt.counters.requests[endpoint or OTHER] += 1
        resp = await _call(request, handler)
        return _finish(rt, request, resp, endpoint or OTHER, None)

    rt.counters.requests[endpoint] += 1
    form = await read_form(request)
    request[FORM] = form
    kvm_id = form.get("kvm_id") if isinstance(form, dict) else None

    if rt.bucket is not None:
        wait = rt.bucket.take()
        if wait:
            rt.counters.throttled += 1
            resp = fault_error(endpoint, 429, {"Retry-After": str(max(1, math.ceil(wait)))})
            return _finish(rt, request, resp, endpoint, kvm_id, fault="rate_limit")

    kind: str | None = None
    if rt.faults.active:
        kind, early = await _inject(rt, request, endpoint, kvm_id)
        if early is not None:
            return _finish(rt, request, early, endpoint, kvm_id, fault=kind, sent=kind != "drop")

    resp = await _call(request, handler)
    if kind is not None and kind in INSTALL_KINDS:
        if request.get(INSTALL_FAULT_APPLIED):
            rt.counters.count_fault(endpoint, kind)
        else:
            kind = None  # the reinstall was refused: there is no install to fail
    elif kind == "lost_response":
        _drop(request)
    return _finish(rt, request, resp, endpoint, kvm_id, fault=kind)
