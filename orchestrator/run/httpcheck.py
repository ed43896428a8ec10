"""Readiness mode ssh, optional stage 3: an HTTP health check after cloud-init is done.

``readiness.http: {url: "http://{{ ip }}:8080/healthz", expect: 200, deadline: 5m}``: the URL
(``{{ ip }}`` is the VPS's address) must answer with status ``expect`` within the deadline,
counted from cloud-init's ``done``. Plain ``http://`` only, one ``GET`` per try over a fresh
connection; only the status line is read (bounded in size and time), so a VPS's web server
cannot make edis-fleet read much or wait long. No HTTP library is needed for that much.
"""

from __future__ import annotations

import urllib.parse

import anyio

from orchestrator.fleet import HttpCheck
from orchestrator.model import Clock

# Per try: connect, send and read the status line within this many seconds.
TRY_TIMEOUT = 5.0
TRY_INTERVAL = 1.0
MAX_STATUS_LINE = 4096


def check_url(url: str, ip: str) -> tuple[str, int, str]:
    """Return (host, port, path) of ``url`` with ``{{ ip }}`` replaced by ``ip``; raises
    ``ValueError`` for a URL that is not plain ``http://`` with a host."""
    parts = urllib.parse.urlsplit(url.replace("{{ ip }}", ip).replace("{{ip}}", ip))
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("readiness.http.url must be an http:// URL with a host")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, parts.port or 80, path


async def status_of(host: str, port: int, path: str) -> int | None:
    """One ``GET``: the status code, or None when there was no well-formed answer in time."""
    with anyio.move_on_after(TRY_TIMEOUT):
        try:
            stream = await anyio.connect_tcp(host, port)
        except OSError:
            return None
        async with stream:
            request = f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            try:
                await stream.send(request.encode("ascii", "replace"))
                data = b""
                while b"\r\n" not in data and len(data) < MAX_STATUS_LINE:
                    data += await stream.receive(MAX_STATUS_LINE - len(data))
            except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
                if b"\r\n" not in data:
                    return None
        fields = data.split(b"\r\n", 1)[0].split()
        if len(fields) >= 2 and fields[0].startswith(b"HTTP/") and fields[1].isdigit():
            return int(fields[1])
    return None


async def wait_healthy(check: HttpCheck, ip: str, clock: Clock) -> tuple[bool, str]:
    """Try ``check`` until it answers ``expect`` or its deadline passes: (ok, reason)."""
    try:
        host, port, path = check_url(check.url, ip)
    except ValueError as exc:
        return False, f"health check not made: {exc}"
    deadline = clock.monotonic() + check.deadline_s
    last: int | None = None
    while True:
        last = await status_of(host, port, path)
        if last == check.expect:
            return True, f"health check answered {last}"
        left = deadline - clock.monotonic()
        if left <= 0:
            seen = "no answer" if last is None else f"last status {last}"
            return False, (
                f"health check http://{host}:{port}{path} did not answer {check.expect} "
                f"within {check.deadline_s:g} s ({seen})"
            )
        await clock.sleep(min(TRY_INTERVAL, left))
