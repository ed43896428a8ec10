"""The simulator's configuration: one frozen dataclass, checked when it is built.

Every open question of the provider's API (see ``API-NOTES.md``) is a field here, so a test or a
drill states which answer it wants. Times are seconds. ``time_scale`` multiplies install
durations only: signatures carry a real Unix ``valid_until`` that clients compare with their own
clock, so their lifetime is always in real (simulator-clock) seconds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    # Only the annotation of SimConfig.ssl: importing ssl would slow every command start.
    import ssl as ssl_module

ErrorStyle = Literal["status", "http200"]
SecondReinstall = Literal["reject", "restart", "accept"]

ERROR_STYLES: tuple[ErrorStyle, ...] = ("status", "http200")
SECOND_REINSTALL_MODES: tuple[SecondReinstall, ...] = ("reject", "restart", "accept")

DEFAULT_EMAIL = "operator@example.com"
# A documented demo value: the simulator only ever listens on loopback.
DEFAULT_PASSWORD = "sim-pass"  # noqa: S105
DEFAULT_INSTALL_SECONDS: Mapping[str, float] = MappingProxyType({"linux": 300.0, "windows": 900.0})
# One api node per VPS up to this many; more VPSes share nodes.
MAX_DEFAULT_API_NODES = 16
# 127.0.1.N with N in 1..254.
MAX_API_NODES = 254
# The machine's own sshd listens here (often on every address): never bind it.
RESERVED_SSH_PORT = 22


def _default_install_seconds() -> Mapping[str, float]:
    return dict(DEFAULT_INSTALL_SECONDS)


@dataclass(frozen=True, kw_only=True)
class SimConfig:
    """Everything a simulator run can be told.

    ``vps_count``: size of a generated account (ignored when ``account_file`` is given).
    ``seed``: drives the generated account's details and every random fault decision.
    ``email``/``password``: the account credentials ``get/auth`` accepts.
    ``signature_lifetime``: seconds from issue to ``valid_until`` (may be fractional; 0 issues
    signatures that are already expired).
    ``time_scale``: factor on install durations (0.001 makes a 300 s install take 0.3 s).
    ``install_seconds``: install duration per image family (``linux``, ``windows``) or per exact
    image name; a name entry wins over its family.
    ``second_reinstall``: what a reinstall does while one is running: ``reject`` (400),
    ``restart`` (start over with the new image) or ``accept`` (queue it after the running one).
    ``error_style``: ``status`` answers application errors with their 4xx code; ``http200``
    answers them with HTTP 200 and ``{"status": "error", "message": ...}``.
    ``keepalive_timeout``: seconds after which the server closes an idle keep-alive connection.
    ``rate_limit``: requests per second for the whole account (token bucket over every
    endpoint, burst ``rate_burst`` or one second's worth), answering 429; ``None`` = unlimited.
    ``profile``: the named fault profile to start with (see ``profiles.PROFILES``).
    ``clock_offset``: seconds added to the machine's clock to make the simulator's "now"
    (``valid_until`` and the ``Date`` header), for clock-skew tests.
    ``new_session_invalidates_old``: a new auth call revokes older signatures of the same VPS.
    ``api_nodes``: number of per-VPS api hosts (127.0.1.N); default ``min(vps_count, 16)``.
    ``port``: session host port on 127.0.0.1 (0 = ephemeral). With a fixed port every api node
    listens on the same port number on its own address; with 0 each picks its own.
    ``account_file``: a YAML account (format in ``account.py``) instead of a generated one.
    ``ssl``: serve https on every host with this context (its certificate must name the
    loopback addresses used).
    ``request_log_size``: how many request-log entries are kept (oldest dropped first).
    ``tcp_listeners``: bind a TCP listener on every VPS's IP (``listeners.py``) that answers
    with an SSH-like banner while the VPS runs and refuses connections while it installs or
    after a failed install. Off by default: it costs one file descriptor per VPS (50,000 VPSes
    need ``ulimit -n`` raised to about 51,000).
    ``ssh_port``: the port of those listeners on every VPS address; 0 picks one free port and
    uses it for all. Never 22, which belongs to the machine's own sshd. Each is a real SSH
    server (``sshd.py``).
    ``cloud_init_seconds``: how long cloud-init runs after an install ends (times
    ``time_scale``) before ``cloud-init status`` says ``done``.
    """

    vps_count: int = 5
    seed: int = 1
    email: str = DEFAULT_EMAIL
    password: str = DEFAULT_PASSWORD
    signature_lifetime: float = 3600.0
    time_scale: float = 1.0
    install_seconds: Mapping[str, float] = field(default_factory=_default_install_seconds)
    second_reinstall: SecondReinstall = "reject"
    error_style: ErrorStyle = "status"
    keepalive_timeout: float = 5.0
    rate_limit: float | None = None
    rate_burst: float | None = None
    profile: str = "healthy"
    clock_offset: float = 0.0
    new_session_invalidates_old: bool = False
    api_nodes: int | None = None
    port: int = 0
    account_file: str | os.PathLike[str] | None = None
    ssl: ssl_module.SSLContext | None = None
    request_log_size: int = 10_000
    tcp_listeners: bool = False
    ssh_port: int = 0
    cloud_init_seconds: float = 30.0

    def __post_init__(self) -> None:
        """Check every field; raises ``ValueError`` naming the first bad one."""
        _check(self.vps_count >= 1 or self.account_file is not None, "vps_count must be >= 1")
        _check(bool(self.email), "email must not be empty")
        _check(bool(self.password), "password must not be empty")
        _check(
            _finite(self.signature_lifetime) and self.signature_lifetime >= 0,
            "signature_lifetime must be >= 0",
        )
        _check(_finite(self.time_scale) and self.time_scale >= 0, "time_scale must be >= 0")
        for name, seconds in self.install_seconds.items():
            _check(_finite(seconds) and seconds >= 0, f"install_seconds[{name!r}] must be >= 0")
        _check(
            self.second_reinstall in SECOND_REINSTALL_MODES,
            f"second_reinstall must be one of {SECOND_REINSTALL_MODES}",
        )
        _check(self.error_style in ERROR_STYLES, f"error_style must be one of {ERROR_STYLES}")
        _check(
            _finite(self.keepalive_timeout) and self.keepalive_timeout > 0,
            "keepalive_timeout must be > 0",
        )
        if self.rate_limit is not None:
            _check(_finite(self.rate_limit) and self.rate_limit > 0, "rate_limit must be > 0")
        if self.rate_burst is not None:
            _check(_finite(self.rate_burst) and self.rate_burst >= 1, "rate_burst must be >= 1")
        _check(_finite(self.clock_offset), "clock_offset must be finite")
        if self.api_nodes is not None:
            _check(1 <= self.api_nodes <= MAX_API_NODES, f"api_nodes must be in 1..{MAX_API_NODES}")
        _check(0 <= self.port <= 65535, "port must be in 0..65535")
        _check(self.request_log_size >= 0, "request_log_size must be >= 0")
        _check(0 <= self.ssh_port <= 65535, "ssh_port must be in 0..65535")
        _check(
            _finite(self.cloud_init_seconds) and self.cloud_init_seconds >= 0,
            "cloud_init_seconds must be >= 0",
        )
        _check(self.ssh_port != RESERVED_SSH_PORT, "ssh_port must not be 22 (use 0 or e.g. 2222)")

    def nodes_for(self, vps_count: int) -> int:
        """Return how many api nodes to start for an account of ``vps_count`` VPSes."""
        if self.api_nodes is not None:
            return self.api_nodes
        return max(1, min(vps_count, MAX_DEFAULT_API_NODES))


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
