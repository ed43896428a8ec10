"""``/_sim/...``: the simulator's own HTTP control API, on the session host, loopback only.

Bodies are JSON objects; answers are JSON. Bad input answers 400 ``{"error": ..., "code": 400}``.

* ``GET /_sim/state``: config summary, counters, fault plan and every VPS's state.
* ``GET /_sim/log[?limit=N]``: the request log (the last N entries).
* ``POST /_sim/migrate`` ``{"kvm_id": ..., "node": optional}`` → ``{"kvm_id", "api_host"}``.
* ``POST /_sim/invalidate`` ``{"kvm_ids": [...]}`` (omitted: every VPS) → ``{"revoked": n}``.
* ``POST /_sim/faults``: any of ``{"clear": true}``, ``{"profile": name}``, random rules
  ``{"endpoint": "*", "rates": {kind: p}, "latency": s | [lo, hi], "latency_rate": p,
  "retry_after": [lo, hi], "burst": [lo, hi]}``, a script ``{"endpoint": ..., "script":
  [fault, ...], "kvm_id": optional}`` or ``{"script": {endpoint: [fault, ...]}}``, where a fault
  is ``null``, a short form (``"429:5"``, ``"503"``, ``"drop"``, ``"lost"``...) or an object
  ``{"kind", "retry_after", "latency", "burst"}``. Applied in that order.
* ``POST /_sim/suspend`` ``{"kvm_id": ..., "suspended": true}``.
* ``POST /_sim/images`` ``{"kvm_id": ..., "images": [...]}``.
* ``POST /_sim/install_outcome`` ``{"kvm_id": ..., "outcome": "ok" | "fail" | "hang" | "noop"}``.
* ``POST /_sim/ssh_fault`` ``{"kvm_id": ..., "cloud_init": "done" | "error" | "degraded",
  "errors": [...], "refuse_keys": bool, "delay": s}`` (any of them): the VPS's SSH side.
* ``POST /_sim/advance`` ``{"seconds": s}``: move the simulator clock forward.
* ``POST /_sim/switches`` ``{"second_reinstall": ..., "error_style": ...}`` (either or both).
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from orchestrator.simulator.config import ERROR_STYLES, SECOND_REINSTALL_MODES
from orchestrator.simulator.faults import Fault
from orchestrator.simulator.responses import json_response
from orchestrator.simulator.runtime import RUNTIME


async def _body(request: web.Request) -> dict[str, Any]:
    """Return the JSON object body; raises ``ValueError`` if it is not one."""
    raw = await request.read()
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("body must be a JSON object") from exc
    if not isinstance(doc, dict):
        raise ValueError("body must be a JSON object")
    return doc


def _kvm_id(doc: dict[str, Any]) -> str:
    value = doc.get("kvm_id")
    if not isinstance(value, str):
        raise ValueError("kvm_id (string) is required")
    return value


def _pair(value: Any, name: str) -> Any:
    if value is None:
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, list) and len(value) == 2:
        return (value[0], value[1])
    raise ValueError(f"{name} must be a number or [low, high]")


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list")
    return value


def _script_entry(entry: Any) -> Fault | str | None:
    if entry is None or isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return Fault(**entry)
    raise ValueError("script entries are a kind, null or an object with 'kind'")


async def state(request: web.Request) -> web.Response:
    """``GET /_sim/state``."""
    return json_response(request.app[RUNTIME].snapshot())


async def log(request: web.Request) -> web.Response:
    """``GET /_sim/log[?limit=N]``; raises ``ValueError`` for a bad limit."""
    entries = request.app[RUNTIME].request_log
    limit = request.query.get("limit")
    if limit is not None:
        n = int(limit)
        entries = entries[-n:] if n > 0 else []
    return json_response({"entries": [e.as_dict() for e in entries]})


async def migrate(request: web.Request) -> web.Response:
    """``POST /_sim/migrate``; raises ``KeyError``/``ValueError`` for bad input."""
    doc = await _body(request)
    kvm_id = _kvm_id(doc)
    node = doc.get("node")
    if node is not None and not isinstance(node, int):
        raise ValueError("node must be an integer")
    api_host = request.app[RUNTIME].migrate(kvm_id, node)
    return json_response({"kvm_id": kvm_id, "api_host": api_host})


async def invalidate(request: web.Request) -> web.Response:
    """``POST /_sim/invalidate``; raises ``KeyError``/``ValueError`` for bad input."""
    doc = await _body(request)
    ids = doc.get("kvm_ids")
    if ids is not None and not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
        raise ValueError("kvm_ids must be a list of strings")
    return json_response({"revoked": request.app[RUNTIME].invalidate_sessions(ids)})


async def faults(request: web.Request) -> web.Response:
    """``POST /_sim/faults``; raises ``ValueError``/``TypeError`` for bad input."""
    rt = request.app[RUNTIME]
    doc = await _body(request)
    if doc.get("clear"):
        rt.clear_faults()
    if "profile" in doc:
        rt.set_profile(str(doc["profile"]))
    if any(k in doc for k in ("rates", "latency", "script")):
        script = doc.get("script")
        if isinstance(script, dict):
            script = {
                ep: [_script_entry(e) for e in _list(q, "script")] for ep, q in script.items()
            }
        elif script is not None:
            script = [_script_entry(e) for e in _list(script, "script")]
        rates = doc.get("rates")
        if rates is not None and not isinstance(rates, dict):
            raise ValueError("rates must be an object")
        rt.set_faults(
            rates,
            endpoint=str(doc.get("endpoint", "*")),
            latency=_pair(doc.get("latency"), "latency"),
            latency_rate=doc.get("latency_rate"),
            retry_after=_pair(doc.get("retry_after", [1, 3]), "retry_after"),
            burst=_pair(doc.get("burst", [3, 8]), "burst"),
            script=script,
            kvm_id=doc.get("kvm_id"),
        )
    return json_response({"profile": rt.profile, "faults": rt.faults.describe()})


async def suspend(request: web.Request) -> web.Response:
    """``POST /_sim/suspend``; raises ``KeyError``/``ValueError`` for bad input."""
    doc = await _body(request)
    kvm_id = _kvm_id(doc)
    request.app[RUNTIME].set_suspended(kvm_id, bool(doc.get("suspended", True)))
    return json_response({"kvm_id": kvm_id, "suspended": bool(doc.get("suspended", True))})


async def images(request: web.Request) -> web.Response:
    """``POST /_sim/images``; raises ``KeyError``/``ValueError`` for bad input."""
    doc = await _body(request)
    kvm_id = _kvm_id(doc)
    names = doc.get("images")
    if not isinstance(names, list):
        raise ValueError("images must be a list")
    request.app[RUNTIME].set_images(kvm_id, names)
    return json_response({"kvm_id": kvm_id, "images": names})


async def install_outcome(request: web.Request) -> web.Response:
    """``POST /_sim/install_outcome``; raises ``KeyError``/``ValueError`` for bad input."""
    doc = await _body(request)
    kvm_id = _kvm_id(doc)
    outcome = doc.get("outcome")
    if outcome not in ("ok", "fail", "hang", "noop"):
        raise ValueError("outcome must be ok, fail, hang or noop")
    request.app[RUNTIME].set_install_outcome(kvm_id, outcome)
    return json_response({"kvm_id": kvm_id, "outcome": outcome})


async def ssh_fault(request: web.Request) -> web.Response:
    """``POST /_sim/ssh_fault``; raises ``KeyError``/``ValueError`` for bad input."""
    doc = await _body(request)
    kvm_id = _kvm_id(doc)
    errors = doc.get("errors")
    if errors is not None and not (
        isinstance(errors, list) and all(isinstance(e, str) for e in errors)
    ):
        raise ValueError("errors must be a list of strings")
    refuse = doc.get("refuse_keys")
    if refuse is not None and not isinstance(refuse, bool):
        raise ValueError("refuse_keys must be true or false")
    delay = doc.get("delay")
    if delay is not None and (isinstance(delay, bool) or not isinstance(delay, int | float)):
        raise ValueError("delay must be a number")
    request.app[RUNTIME].set_ssh_fault(
        kvm_id,
        cloud_init=doc.get("cloud_init"),
        errors=errors,
        refuse_keys=refuse,
        delay=None if delay is None else float(delay),
    )
    return json_response({"kvm_id": kvm_id})


async def advance(request: web.Request) -> web.Response:
    """``POST /_sim/advance``; raises ``ValueError`` for a bad or negative number."""
    doc = await _body(request)
    seconds = doc.get("seconds")
    if not isinstance(seconds, int | float):
        raise ValueError("seconds must be a number")
    rt = request.app[RUNTIME]
    rt.advance_clock(float(seconds))
    return json_response({"time": rt.clock.now()})


async def switches(request: web.Request) -> web.Response:
    """``POST /_sim/switches``; raises ``ValueError`` for an unknown value."""
    doc = await _body(request)
    rt = request.app[RUNTIME]
    mode = doc.get("second_reinstall")
    style = doc.get("error_style")
    if mode is not None:
        if mode not in SECOND_REINSTALL_MODES:
            raise ValueError(f"second_reinstall must be one of {SECOND_REINSTALL_MODES}")
        rt.second_reinstall = mode
    if style is not None:
        if style not in ERROR_STYLES:
            raise ValueError(f"error_style must be one of {ERROR_STYLES}")
        rt.error_style = style
    return json_response({"second_reinstall": rt.second_reinstall, "error_style": rt.error_style})


def add_routes(app: web.Application) -> None:
    """Register every ``/_sim`` route on ``app``."""
    app.router.add_get("/_sim/state", state)
    app.router.add_get("/_sim/log", log)
    for name, handler in (
        ("migrate", migrate),
        ("invalidate", invalidate),
        ("faults", faults),
        ("suspend", suspend),
        ("images", images),
        ("install_outcome", install_outcome),
        ("ssh_fault", ssh_fault),
        ("advance", advance),
        ("switches", switches),
    ):
        app.router.add_post(f"/_sim/{name}", handler)
