"""The provider endpoints: get/auth on the session host; get/images, set/reinstall, get/power
and get/details on the api nodes.

The middleware has already parsed the form (``request[FORM]``) and applied any fault. Answers and
the order of checks, for every per-VPS endpoint:

1. unparsable body or wrong content type → 400
2. a missing ``signature``/``kvm_id``/``valid_until`` → 400 ``Missing required parameter: X``
3. a kvm_id not in the account → 403 ``Access to this resource is denied.``
4. the VPS is not served by this node (it migrated), or the signature is unknown, revoked,
   expired, another VPS's, or sent with another ``valid_until`` → 401
   ``Invalid or expired session signature.`` (counted per VPS with its reason)

and then for ``set/reinstall``: suspended VPS → 403; ``pubkey``/``postscript`` (removed from the
API) → 400; missing ``image``/``password`` → 400; an image the VPS does not offer → 400
``Unknown image: X``; a reinstall while one runs → 400 ``A reinstall is already in progress.``
under ``second_reinstall="reject"``.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from orchestrator.simulator.responses import (
    ACCESS_DENIED,
    BAD_CREDENTIALS,
    INVALID_SIGNATURE,
    app_error,
    success,
)
from orchestrator.simulator.runtime import API_RDNS, NODE, RUNTIME, Runtime
from orchestrator.simulator.vps import Install, Vps


def _request_key(name: str) -> Any:
    """Return a request-storage key: typed where aiohttp has them (it warns about plain string
    keys since 3.13), a plain string on older versions."""
    factory = getattr(web, "RequestKey", None)
    return factory(name) if factory is not None else f"sim.{name}"


# Request storage shared by the middleware and the handlers.
FORM = _request_key("form")
INSTALL_FAULT = _request_key("install_fault")
INSTALL_FAULT_APPLIED = _request_key("install_fault_applied")
REJECT_REASON = _request_key("reject_reason")

SESSION_FIELDS = ("signature", "kvm_id", "valid_until")
REMOVED_FIELDS = ("pubkey", "postscript")
POWER_TEXT = {
    "running": "server powered on",
    "installing": "server is being reinstalled",
    "failed": "server powered off",
}
_NETMASK = "255.255.255.0"
# The hostname cloud-init will set: the first hostname/fqdn/set_hostname key of the document.
_CLOUD_HOSTNAME = re.compile(
    r"^(?:hostname|fqdn|set_hostname):[ \t]*[\"']?([A-Za-z0-9][A-Za-z0-9.-]{0,252})", re.M
)


class FormError:
    """Why a request body could not be read as a form: the status and message to answer."""

    __slots__ = ("message", "status")

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message


Form = dict[str, str] | FormError


def _error(rt: Runtime, endpoint: str, status: int, message: str) -> web.Response:
    return app_error(endpoint, status, message, http200=rt.error_style == "http200")


async def auth(request: web.Request) -> web.Response:
    """``POST /kvm/v2/get/auth``: check the account credentials, issue a signature per VPS
    (or for ``kvm_id`` only). A kvm_id not in the account is a 400 (the spec documents no 403
    for this endpoint)."""
    rt = request.app[RUNTIME]
    endpoint = "get/auth"
    rt.counters.auth_calls += 1
    form: Form = request[FORM]
    if isinstance(form, FormError):
        rt.counters.auth_failures += 1
        return _error(rt, endpoint, form.status, form.message)
    for name in ("email", "pw"):
        if not form.get(name):
            rt.counters.auth_failures += 1
            return _error(rt, endpoint, 400, f"Missing required parameter: {name}")
    if not rt.credentials_ok(form["email"], form["pw"]):
        rt.counters.auth_failures += 1
        return _error(rt, endpoint, 401, BAD_CREDENTIALS)
    kvm_id = form.get("kvm_id")
    if kvm_id:
        vps = rt.find(kvm_id)
        if vps is None:
            rt.counters.auth_failures += 1
            return _error(rt, endpoint, 400, "Unknown kvm_id: not a VPS of this account.")
        targets = [vps]
    else:
        targets = rt.vpses
    data: dict[str, object] = {}
    for vps in targets:
        signature, valid_until = rt.book.issue(vps.kvm_id)
        data[vps.kvm_id] = {
            "api_host": vps.api_host,
            "api_rdns": API_RDNS,
            "kvm_id": vps.kvm_id,
            "valid_until": valid_until,
            "signature": signature,
            "suspended": "y" if vps.suspended else "n",
            "description": vps.description,
            "lps": vps.lps,
            "lps_ispremium": vps.lps_ispremium,
        }
    return success(data)


def _lookup(rt: Runtime, request: web.Request, endpoint: str) -> Vps | web.Response:
    """Steps 1-3 of the module docstring: the VPS the request names, or the error answer."""
    form: Form = request[FORM]
    if isinstance(form, FormError):
        return _error(rt, endpoint, form.status, form.message)
    for name in SESSION_FIELDS:
        if not form.get(name):
            return _error(rt, endpoint, 400, f"Missing required parameter: {name}")
    vps = rt.find(form["kvm_id"])
    if vps is None:
        return _error(rt, endpoint, 403, ACCESS_DENIED)
    return vps


def _check_session(
    rt: Runtime, request: web.Request, endpoint: str, vps: Vps
) -> web.Response | None:
    """Step 4 of the module docstring: ``None`` if the session is good, else the 401."""
    form: dict[str, str] = request[FORM]
    reason = (
        "wrong_node"
        if vps.node != request.app[NODE]
        else rt.book.check(vps.kvm_id, form["signature"], form["valid_until"])
    )
    if reason is None:
        return None
    vps.bad_signature += 1
    rt.counters.bad_signature_reasons[reason] += 1
    request[REJECT_REASON] = reason
    return _error(rt, endpoint, 401, INVALID_SIGNATURE)


def _session_vps(request: web.Request, endpoint: str) -> tuple[Runtime, Vps | web.Response]:
    rt = request.app[RUNTIME]
    found = _lookup(rt, request, endpoint)
    if isinstance(found, Vps):
        refused = _check_session(rt, request, endpoint, found)
        if refused is not None:
            return rt, refused
    return rt, found


async def images(request: web.Request) -> web.Response:
    """``POST /kvm/v2/get/images``: the images this VPS offers."""
    _, found = _session_vps(request, "get/images")
    if not isinstance(found, Vps):
        return found
    return success(list(found.images))


async def power(request: web.Request) -> web.Response:
    """``POST /kvm/v2/get/power``: ``server powered on`` when running, ``server is being
    reinstalled`` while installing, ``server powered off`` after a failed install."""
    _, found = _session_vps(request, "get/power")
    if not isinstance(found, Vps):
        return found
    return success(POWER_TEXT[found.state], traffic_suspended=False)


async def details(request: web.Request) -> web.Response:
    """``POST /kvm/v2/get/details``: hardware, suspension, IPs and hostname."""
    _, found = _session_vps(request, "get/details")
    if not isinstance(found, Vps):
        return found
    vps = found
    subnet = vps.ip.rsplit(".", 1)[0]
    return success(
        {
            "hw": dict(vps.hw),
            "suspended": "y" if vps.suspended else "n",
            "ip": {
                "ipv4": [f"{vps.ip}/{_NETMASK}"],
                "ipv4_gw": f"{subnet}.254",
                "ipv4_nm": _NETMASK,
                "ipv6_gw": "fe80::1",
                "ipv6_64": f"fd00:0:0:{vps.index:x}::/64",
            },
            "hostname": vps.hostname,
        }
    )


async def reinstall(request: web.Request) -> web.Response:
    """``POST /kvm/v2/set/reinstall``: accept a reinstall and start the install (see the module
    docstring for every refusal). Counts each request that names a VPS of the account as
    received, and each success as accepted."""
    endpoint = "set/reinstall"
    rt = request.app[RUNTIME]
    found = _lookup(rt, request, endpoint)
    if not isinstance(found, Vps):
        return found
    vps = found
    vps.reinstalls_received += 1
    refused = _check_session(rt, request, endpoint, vps)
    if refused is not None:
        return refused
    form: dict[str, str] = request[FORM]
    if vps.suspended:
        return _error(rt, endpoint, 403, "This VPS is suspended.")
    for name in REMOVED_FIELDS:
        if name in form:
            return _error(rt, endpoint, 400, f"Parameter {name} is no longer supported.")
    for name in ("image", "password"):
        if not form.get(name):
            return _error(rt, endpoint, 400, f"Missing required parameter: {name}")
    image = form["image"]
    if not vps.offers(image):
        return _error(rt, endpoint, 400, f"Unknown image: {image[:100]}")
    mode = rt.second_reinstall
    if mode == "reject" and vps.state == "installing":
        return _error(rt, endpoint, 400, "A reinstall is already in progress.")
    outcome = vps.install_outcome
    fault = request.get(INSTALL_FAULT)
    if fault is not None:
        outcome = "fail" if fault == "install_fail" else "hang"
        request[INSTALL_FAULT_APPLIED] = True
    if outcome == "noop":
        # Answered like any accepted reinstall, but nothing happens: the old system runs on.
        vps.reinstalls_accepted += 1
        return success()
    hostname = None
    user_data = form.get("cloudinit_user_data")
    # Only cloud-init images read user data; others ignore it, as documented.
    if user_data and image.startswith("cloudinit_"):
        match = _CLOUD_HOSTNAME.search(user_data)
        hostname = match.group(1) if match else None
    system = rt.ssh.build_system(vps, image, user_data) if rt.ssh is not None else None
    install = Install(image, rt.install_duration(image), outcome, hostname, system)
    vps.start_install(install, restart=mode == "restart")
    vps.reinstalls_accepted += 1
    # Before the answer leaves: once a client holds "success", the VPS's port is down.
    rt.install_started(vps)
    return success()
