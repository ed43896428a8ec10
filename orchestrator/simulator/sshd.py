"""Each VPS's SSH server: a real asyncssh server on the socket its listener accepted.

The only asyncssh user of the simulator. ``listeners.py`` decides *when* a VPS's port is open
(not while it installs); this module decides *what answers* there:

- before any reinstall, the VPS's original system: its own ed25519 host key (generated once
  per VPS, on first use), nobody may log in;
- after an install that ended ``ok``, the installed system (``System``, built when the
  reinstall was accepted): the host key from the user data's ``ssh_keys``
  (``ed25519_private``) or a fresh one, the public keys of ``ssh_authorized_keys`` and
  ``users[].ssh_authorized_keys`` may log in, and ``cloud-init status ... --format json``
  answers ``running`` until ``cloud_init_seconds`` (scaled) after the install ended, then
  ``done`` (or the injected ``error`` / ``degraded``); ``--wait`` blocks until then.

Faults per VPS (``SshFaults``): cloud-init ends in error (with an error list) or degraded
(recoverable errors), the server refuses every key, or it is slow (a delay before its banner).
"Accepted but nothing installed" is the install outcome ``noop`` (``vps.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncssh
import yaml

from orchestrator.simulator.vps import Vps

CloudInitEnd = Literal["done", "error", "degraded"]
CLOUD_INIT_ENDS: tuple[CloudInitEnd, ...] = ("done", "error", "degraded")
SERVER_VERSION = "EdisSim"
# A connection that has not authenticated by then is dropped (sshd's LoginGraceTime).
LOGIN_TIMEOUT = 30.0
# How often a ``cloud-init status --wait`` re-reads the clock (the clock may be moved).
WAIT_STEP = 0.05
DEFAULT_ERRORS = ("('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted'))",)
DEFAULT_RECOVERABLE = {"WARNING": ["Could not resolve the apt mirror; using the default"]}
_KEY_TYPE = "ssh-ed25519"


@dataclass
class SshFaults:
    """What goes wrong with one VPS's SSH side (see the module docstring)."""

    cloud_init: CloudInitEnd = "done"
    errors: tuple[str, ...] = DEFAULT_ERRORS
    refuse_keys: bool = False
    delay: float = 0.0


@dataclass
class System:
    """What an installed system runs: its host key, who may log in, how cloud-init ends."""

    host_key: asyncssh.SSHKey
    authorized: frozenset[bytes] = frozenset()
    cloud_init: bool = True
    # Filled in when the install ends (``Vps.booted_at``) and by the faults at acceptance.
    end: CloudInitEnd = "done"
    errors: tuple[str, ...] = ()
    recoverable: dict[str, list[str]] = field(default_factory=dict)


class SshServers:
    """The SSH side of every VPS: host keys, installed systems, faults, open connections."""

    def __init__(self, now: Callable[[], float], cloud_init_seconds: float) -> None:
        """``now`` is the simulator clock; ``cloud_init_seconds`` (already time-scaled) is how
        long cloud-init runs after an install ends."""
        self._now = now
        self.cloud_init_seconds = cloud_init_seconds
        self._original: dict[str, asyncssh.SSHKey] = {}
        self.faults: dict[str, SshFaults] = {}
        self._conns: dict[str, set[asyncio.Task[None]]] = {}

    # -- keys and systems -----------------------------------------------------------------------

    def original_key(self, vps: Vps) -> asyncssh.SSHKey:
        """The host key of ``vps``'s original system (generated once, on first use)."""
        key = self._original.get(vps.kvm_id)
        if key is None:
            key = self._original[vps.kvm_id] = asyncssh.generate_private_key(_KEY_TYPE)
        return key

    def host_key_line(self, vps: Vps) -> str:
        """The public host key ``vps`` presents now (``ssh-ed25519 AAAA...``)."""
        return _public_line(self._current(vps).host_key)

    def build_system(self, vps: Vps, image: str, user_data: str | None) -> System:
        """The system a reinstall of ``vps`` with ``image`` and ``user_data`` will run."""
        doc = _cloud_config(user_data) if image.startswith("cloudinit_") else None
        faults = self.faults.get(vps.kvm_id, SshFaults())
        key = _host_key(doc) or asyncssh.generate_private_key(_KEY_TYPE)
        system = System(host_key=key, authorized=_authorized(doc), cloud_init=doc is not None)
        system.end = faults.cloud_init
        if faults.cloud_init == "error":
            system.errors = faults.errors
        elif faults.cloud_init == "degraded":
            system.recoverable = dict(DEFAULT_RECOVERABLE)
        return system

    def done_time(self, vps: Vps) -> float | None:
        """When cloud-init of ``vps``'s installed system ends (simulator time), or None for
        the original system."""
        if not isinstance(vps.system, System) or not vps.system.cloud_init:
            return None
        return vps.booted_at + self.cloud_init_seconds

    def _current(self, vps: Vps) -> System:
        system = vps.system
        if isinstance(system, System):
            return system
        return System(host_key=self.original_key(vps), cloud_init=False)

    # -- connections ----------------------------------------------------------------------------

    def serve(self, vps: Vps, conn: socket.socket) -> None:
        """Run an SSH server for ``vps`` on the accepted ``conn`` (in a task of its own)."""
        task = asyncio.get_running_loop().create_task(self._serve(vps, conn))
        tasks = self._conns.setdefault(vps.kvm_id, set())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def drop(self, kvm_id: str) -> None:
        """Cut every SSH connection of ``kvm_id`` (its system is going away)."""
        for task in list(self._conns.get(kvm_id, ())):
            task.cancel()

    def close(self) -> None:
        """Cut every connection of every VPS."""
        for kvm_id in list(self._conns):
            self.drop(kvm_id)

    async def _serve(self, vps: Vps, conn: socket.socket) -> None:
        faults = self.faults.get(vps.kvm_id, SshFaults())
        system = self._current(vps)
        server: asyncssh.SSHServerConnection | None = None
        try:
            if faults.delay > 0:
                await asyncio.sleep(faults.delay)
            server = await asyncssh.run_server(
                conn,
                server_host_keys=[system.host_key],
                server_factory=lambda: _Server(system, refuse=faults.refuse_keys),
                process_factory=lambda process: self._command(vps, system, process),
                server_version=SERVER_VERSION,
                login_timeout=LOGIN_TIMEOUT,
                agent_forwarding=False,
                allow_scp=False,
                x11_forwarding=False,
            )
            await server.wait_closed()
        except (OSError, asyncssh.Error):
            pass  # the client went away or spoke garbage: nothing to keep
        finally:
            if server is not None:
                server.abort()
            else:
                conn.close()

    async def _command(
        self, vps: Vps, system: System, process: asyncssh.SSHServerProcess[str]
    ) -> None:
        command = (process.command or "").split()
        if command[:2] != ["cloud-init", "status"] or not system.cloud_init:
            process.stderr.write(f"sh: 1: {' '.join(command[:1]) or 'shell'}: not found\n")
            process.exit(127)
            return
        ends = vps.booted_at + self.cloud_init_seconds
        if "--wait" in command:
            # The end is a time on a clock that can be moved, not an event: re-read it.
            while (left := ends - self._now()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(min(left, WAIT_STEP))
        status, code = self._status(system, ends)
        if "--format" in command and "json" in command:
            process.stdout.write(json.dumps(status) + "\n")
        else:
            process.stdout.write(f"status: {status['status']}\n")
        process.exit(code)

    def _status(self, system: System, ends: float) -> tuple[dict[str, Any], int]:
        """cloud-init's own ``status --long --format json`` answer and its exit code."""
        if self._now() < ends:
            return _status_doc("running", "running", (), {}), 0
        if system.end == "error":
            return _status_doc("error", "error", system.errors, {}), 1
        if system.end == "degraded":
            return _status_doc("done", "degraded done", (), system.recoverable), 2
        return _status_doc("done", "done", (), {}), 0


class _Server(asyncssh.SSHServer):
    """Public-key login only, for the keys the installed system authorises."""

    def __init__(self, system: System, *, refuse: bool) -> None:
        self._system = system
        self._refuse = refuse

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is always required

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return not self._refuse and key.public_data in self._system.authorized


def _status_doc(
    status: str, extended: str, errors: Iterable[str], recoverable: dict[str, list[str]]
) -> dict[str, Any]:
    return {
        "boot_status_code": "enabled-by-generator",
        "datasource": "nocloud",
        "detail": "DataSourceNoCloud [seed=/dev/vdb]",
        "errors": list(errors),
        "extended_status": extended,
        "recoverable_errors": recoverable,
        "status": status,
    }


def _public_line(key: asyncssh.SSHKey) -> str:
    return key.export_public_key("openssh").decode("ascii").strip()


def _cloud_config(user_data: str | None) -> dict[str, Any] | None:
    """The user data as a ``#cloud-config`` mapping; ``{}`` for other user data (a script:
    cloud-init still runs it) and for none; None only for a document that does not parse."""
    if not user_data or not user_data.lstrip().startswith("#cloud-config"):
        return {}
    try:
        doc = yaml.safe_load(user_data)
    except yaml.YAMLError:
        return None
    return doc if isinstance(doc, dict) else {}


def _host_key(doc: dict[str, Any] | None) -> asyncssh.SSHKey | None:
    keys = doc.get("ssh_keys") if doc else None
    text = keys.get("ed25519_private") if isinstance(keys, dict) else None
    if not isinstance(text, str):
        return None
    with contextlib.suppress(asyncssh.KeyImportError, ValueError):
        return asyncssh.import_private_key(text)
    return None


def _authorized(doc: dict[str, Any] | None) -> frozenset[bytes]:
    if not doc:
        return frozenset()
    lines: list[Any] = list(doc.get("ssh_authorized_keys") or [])
    users = doc.get("users")
    for user in users if isinstance(users, list) else ():
        if isinstance(user, dict):
            lines.extend(user.get("ssh_authorized_keys") or [])
    found: set[bytes] = set()
    for line in lines:
        if isinstance(line, str):
            with contextlib.suppress(asyncssh.KeyImportError, ValueError):
                found.add(asyncssh.import_public_key(line).public_data)
    return frozenset(found)
