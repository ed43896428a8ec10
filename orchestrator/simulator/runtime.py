"""The simulator's state and every operation on it, without the HTTP serving.

``Runtime`` holds the account, signatures, faults, counters and log; the request handlers and
the ``/_sim`` control API work on it, and ``Simulator`` (``server.py``) adds starting and
stopping the hosts. Everything runs on one event loop, so nothing here needs a lock.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from orchestrator.simulator.account import Account, generate_account, image_family, load_account
from orchestrator.simulator.clock import SimClock
from orchestrator.simulator.config import (
    DEFAULT_INSTALL_SECONDS,
    ErrorStyle,
    SecondReinstall,
    SimConfig,
)
from orchestrator.simulator.faults import Fault, FaultPlan, FaultRules
from orchestrator.simulator.listeners import SshListeners
from orchestrator.simulator.profiles import Profile, get_profile
from orchestrator.simulator.sessions import SignatureBook
from orchestrator.simulator.sshd import CLOUD_INIT_ENDS, CloudInitEnd, SshFaults, SshServers
from orchestrator.simulator.stats import Counters, LogEntry, RequestLog
from orchestrator.simulator.vps import INSTALL_OUTCOMES, InstallOutcome, Vps

# A scripted fault sequence: Fault objects, None (no fault) or short strings ("429:5").
Script = Iterable[Fault | str | None]
# The api_rdns value every auth entry carries (spec example).
API_RDNS = "dns-api.edis.at"


class TokenBucket:
    """The account's own rate limit: ``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = time.monotonic()

    def take(self) -> float:
        """Take one token: return 0.0 if there was one, else the seconds until there is."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class Runtime:
    """Account, sessions, install state, faults and bookkeeping of one simulator."""

    def __init__(self, config: SimConfig | None = None) -> None:
        """Build the state from ``config``; raises ``ValueError`` for a bad config, profile or
        account file and ``OSError`` if the account file cannot be read."""
        self.config = cfg = config or SimConfig()
        self.clock = SimClock(cfg.clock_offset)
        account: Account = (
            load_account(cfg.account_file, self.clock.now)
            if cfg.account_file is not None
            else generate_account(cfg.vps_count, cfg.seed, self.clock.now)
        )
        self.email: str = account.email or cfg.email
        self.password: str = cfg.password
        self._password_bytes = cfg.password.encode()
        self._order: list[Vps] = account.vpses
        self._by_id: dict[str, Vps] = {v.kvm_id: v for v in self._order}
        self.node_count = cfg.nodes_for(len(self._order))
        for position, vps in enumerate(self._order):
            vps.node = position % self.node_count
        # "host:port" of each api node, known once the sites are bound.
        self.node_hosts: list[str] = [""] * self.node_count
        self.second_reinstall: SecondReinstall = cfg.second_reinstall
        self.error_style: ErrorStyle = cfg.error_style
        self.faults = FaultPlan(cfg.seed)
        profile = get_profile(cfg.profile)
        self.faults.load_rules(profile.rules)
        self.profile = cfg.profile
        self.book = SignatureBook(
            self._by_id,
            self.clock.now,
            self._lifetime(profile),
            new_session_invalidates_old=cfg.new_session_invalidates_old,
        )
        self.counters = Counters(lambda: self._order)
        self.log = RequestLog(cfg.request_log_size)
        self.bucket: TokenBucket | None = None
        if cfg.rate_limit is not None:
            burst = cfg.rate_burst if cfg.rate_burst is not None else max(1.0, cfg.rate_limit)
            self.bucket = TokenBucket(cfg.rate_limit, burst)
        # Per-VPS SSH servers (sshd.py) behind listeners bound by Simulator.start
        # (listeners.py).
        self.ssh: SshServers | None = None
        self.listeners: SshListeners | None = None
        if cfg.tcp_listeners:
            self.ssh = SshServers(self.clock.now, cfg.cloud_init_seconds * cfg.time_scale)
            self.listeners = SshListeners(self._order, cfg.ssh_port, self.clock.now, self.ssh.serve)

    # -- the account ----------------------------------------------------------------------------

    @property
    def vps_ids(self) -> list[str]:
        """Every kvm_id of the account, in account order."""
        return [v.kvm_id for v in self._order]

    def vps(self, kvm_id: str) -> Vps:
        """Return the VPS ``kvm_id``; raises ``KeyError`` if it is not in the account."""
        try:
            return self._by_id[kvm_id]
        except KeyError:
            raise KeyError(f"no VPS {kvm_id!r} in the simulated account") from None

    def find(self, kvm_id: str) -> Vps | None:
        """Return the VPS ``kvm_id``, or ``None``."""
        return self._by_id.get(kvm_id)

    @property
    def vpses(self) -> list[Vps]:
        """The VPS objects, in account order."""
        return list(self._order)

    def credentials_ok(self, email: str, password: str) -> bool:
        """Return whether ``email``/``password`` are the account's (email case-insensitive)."""
        same_pw = hmac.compare_digest(password.encode(), self._password_bytes)
        return same_pw and email.strip().casefold() == self.email.casefold()

    def install_duration(self, image: str) -> float:
        """Return the real seconds an install of ``image`` takes: its configured duration
        (by exact name, else by family) times ``time_scale``."""
        table = self.config.install_seconds
        family = image_family(image)
        seconds = table.get(image, table.get(family, DEFAULT_INSTALL_SECONDS[family]))
        return seconds * self.config.time_scale

    def set_suspended(self, kvm_id: str, suspended: bool = True) -> None:
        """Mark a VPS suspended (reinstalls refused with 403) or not; raises ``KeyError``."""
        self.vps(kvm_id).suspended = suspended

    def set_images(self, kvm_id: str, images: Iterable[str]) -> None:
        """Replace the images a VPS offers; raises ``KeyError`` or ``ValueError``."""
        self.vps(kvm_id).set_images(images)

    def set_install_outcome(self, kvm_id: str, outcome: InstallOutcome) -> None:
        """Make the next reinstalls of a VPS end ``ok``, ``fail`` or ``hang`` (until changed);
        raises ``KeyError`` or ``ValueError``."""
        if outcome not in INSTALL_OUTCOMES:
            raise ValueError(f"outcome must be one of {INSTALL_OUTCOMES}")
        self.vps(kvm_id).install_outcome = outcome

    def advance_clock(self, seconds: float) -> None:
        """Move the simulator's clock forward (ages signatures and installs, and reopens the
        TCP listeners of installs that end by then); raises ``ValueError`` if negative."""
        self.clock.advance(seconds)
        if self.listeners is not None:
            self.listeners.check()

    def install_started(self, vps: Vps) -> None:
        """Called when a reinstall of ``vps`` is accepted: its listener (if any) closes until
        the install ends ``ok``, and its SSH connections are cut."""
        if self.listeners is not None:
            self.listeners.install_started(vps)
        if self.ssh is not None:
            self.ssh.drop(vps.kvm_id)

    def set_ssh_fault(
        self,
        kvm_id: str,
        *,
        cloud_init: CloudInitEnd | None = None,
        errors: Iterable[str] | None = None,
        refuse_keys: bool | None = None,
        delay: float | None = None,
    ) -> None:
        """Change what goes wrong on ``kvm_id``'s SSH side (``sshd.SshFaults``): how the
        cloud-init of its next installs ends (and with which errors), whether its server
        refuses every key, and the seconds its server waits before its banner. Raises
        ``KeyError`` for an unknown VPS, ``ValueError`` for bad values or without SSH servers."""
        vps = self.vps(kvm_id)
        if self.ssh is None:
            raise ValueError("the simulator runs no SSH servers (SimConfig.tcp_listeners)")
        faults = self.ssh.faults.setdefault(vps.kvm_id, SshFaults())
        if cloud_init is not None:
            if cloud_init not in CLOUD_INIT_ENDS:
                raise ValueError(f"cloud_init must be one of {CLOUD_INIT_ENDS}")
            faults.cloud_init = cloud_init
        if errors is not None:
            faults.errors = tuple(str(e) for e in errors)
        if refuse_keys is not None:
            faults.refuse_keys = refuse_keys
        if delay is not None:
            if not delay >= 0:
                raise ValueError("delay must be >= 0")
            faults.delay = delay

    def host_key(self, kvm_id: str) -> str:
        """The public SSH host key ``kvm_id`` presents now (``ssh-ed25519 AAAA...``); raises
        ``KeyError`` for an unknown VPS and ``ValueError`` without SSH servers."""
        vps = self.vps(kvm_id)
        if self.ssh is None:
            raise ValueError("the simulator runs no SSH servers (SimConfig.tcp_listeners)")
        return self.ssh.host_key_line(vps)

    @property
    def ssh_port(self) -> int:
        """The port of every VPS's TCP listener; 0 when ``tcp_listeners`` is off or before
        ``start``."""
        return self.listeners.port if self.listeners is not None else 0

    def ssh_open(self, kvm_id: str) -> bool:
        """Return whether ``kvm_id``'s TCP listener accepts connections now; raises
        ``KeyError`` for an unknown VPS."""
        vps = self.vps(kvm_id)
        return self.listeners is not None and self.listeners.is_open(vps.kvm_id)

    # -- sessions and hosts ---------------------------------------------------------------------

    def migrate(self, kvm_id: str, node: int | None = None) -> str:
        """Move a VPS to api node ``node`` (default: the next one) and revoke its signatures;
        return its new api_host. Raises ``KeyError`` for an unknown VPS and ``ValueError`` if
        there is no other node (``api_nodes`` < 2) or ``node`` is out of range."""
        vps = self.vps(kvm_id)
        if self.node_count < 2:
            raise ValueError("migration needs at least two api nodes (SimConfig.api_nodes)")
        target = (vps.node + 1) % self.node_count if node is None else node
        if not 0 <= target < self.node_count or target == vps.node:
            raise ValueError(f"node must be another node in 0..{self.node_count - 1}")
        vps.node = target
        vps.api_host = self.node_hosts[target]
        self.book.invalidate([kvm_id])
        return vps.api_host

    def invalidate_sessions(self, kvm_ids: Iterable[str] | None = None) -> int:
        """Revoke the signatures of ``kvm_ids`` (every VPS when ``None``); return how many
        live signatures were revoked. Raises ``KeyError`` for an unknown VPS."""
        ids = None if kvm_ids is None else [self.vps(k).kvm_id for k in kvm_ids]
        return self.book.invalidate(ids)

    # -- faults ---------------------------------------------------------------------------------

    def set_profile(self, name: str) -> None:
        """Replace the fault rules with a named profile (``profiles.PROFILES``) and apply its
        signature lifetime cap; raises ``ValueError`` for an unknown name."""
        profile = get_profile(name)
        self.faults.load_rules(profile.rules)
        self.profile = name
        self.book.lifetime = self._lifetime(profile)

    def set_faults(
        self,
        rates: Mapping[str, float] | FaultRules | None = None,
        *,
        endpoint: str = "*",
        latency: float | tuple[float, float] | None = None,
        latency_rate: float | None = None,
        retry_after: tuple[int, int] = (1, 3),
        burst: tuple[int, int] = (3, 8),
        script: Script | Mapping[str, Script] | None = None,
        kvm_id: str | None = None,
    ) -> None:
        """Configure faults of ``endpoint`` (``"set/reinstall"`` ... or ``"*"``).

        Random rules: ``rates`` maps fault kinds to per-request probabilities (or is a ready
        ``FaultRules``); ``latency`` (seconds, or a ``(low, high)`` range) is added with
        probability ``latency_rate`` (default 1 when ``latency`` is given). These replace the
        endpoint's rules; with neither ``rates``, ``latency`` nor ``script`` its rules are removed.

        Scripts: ``script`` is a sequence of faults appended to the queue of ``endpoint`` (of
        ``kvm_id`` only, if given), or a mapping endpoint → sequence. Entries are ``Fault``
        objects, ``None`` (no fault) or the short notation of ``faults.parse_fault``
        (``"429:5"``, ``"503"``, ``"drop"``, ``"lost"``, ``"latency:1.0"``...).

        Raises ``ValueError`` for unknown endpoints, kinds or bad numbers, and when ``kvm_id``
        is given without ``script``.
        """
        if kvm_id is not None and script is None:
            raise ValueError("kvm_id applies to scripted faults only")
        if rates is not None or latency is not None:
            if isinstance(rates, FaultRules):
                rules = rates
            else:
                lat = (latency, latency) if isinstance(latency, int | float) else latency
                rules = FaultRules(
                    rates=dict(rates or {}),
                    latency=lat or (0.0, 0.0),
                    latency_rate=latency_rate
                    if latency_rate is not None
                    else (1.0 if lat else 0.0),
                    retry_after=retry_after,
                    burst=burst,
                )
            self.faults.set_rules(endpoint, rules)
        elif script is None:
            self.faults.set_rules(endpoint, None)
        if isinstance(script, Mapping):
            for name, faults in script.items():
                self.faults.add_script(name, faults, kvm_id)
        elif script is not None:
            self.faults.add_script(endpoint, script, kvm_id)

    def script_faults(self, endpoint: str, faults: Script, kvm_id: str | None = None) -> None:
        """Queue explicit faults for the next requests of ``endpoint`` (of ``kvm_id`` only, if
        given); ``None`` lets one request through. Raises ``ValueError`` for unknown names."""
        self.faults.add_script(endpoint, faults, kvm_id)

    def clear_faults(self) -> None:
        """Remove every fault rule and script (the profile becomes ``healthy``)."""
        self.faults.clear()
        self.profile = "healthy"
        self.book.lifetime = self.config.signature_lifetime

    # -- inspection -----------------------------------------------------------------------------

    @property
    def request_log(self) -> list[LogEntry]:
        """The last requests (oldest first); no signature, password or user data in them."""
        return self.log.entries()

    def record(self, entry: LogEntry) -> None:
        """Append a request to the log."""
        self.log.add(entry)

    def vps_snapshot(self, vps: Vps) -> dict[str, Any]:
        """Return one VPS's state as plain data."""
        return {
            "kvm_id": vps.kvm_id,
            "api_host": vps.api_host,
            "node": vps.node,
            "hostname": vps.hostname,
            "ip": vps.ip,
            "image": vps.image,
            "state": vps.state,
            "queued_installs": vps.queued_installs,
            "suspended": vps.suspended,
            "install_outcome": vps.install_outcome,
            "reinstalls_received": vps.reinstalls_received,
            "reinstalls_accepted": vps.reinstalls_accepted,
            "bad_signature": vps.bad_signature,
            "live_signatures": self.book.live_count(vps.kvm_id),
            "ssh_open": self.listeners is not None and self.listeners.is_open(vps.kvm_id),
            "cloud_init_done_at": None if self.ssh is None else self.ssh.done_time(vps),
        }

    def snapshot(self) -> dict[str, Any]:
        """Return the whole state as plain data (what ``GET /_sim/state`` answers)."""
        return {
            "time": self.clock.now(),
            "email": self.email,
            "profile": self.profile,
            "second_reinstall": self.second_reinstall,
            "error_style": self.error_style,
            "signature_lifetime": self.book.lifetime,
            "rate_limit": self.config.rate_limit,
            "api_nodes": list(self.node_hosts),
            "ssh_port": self.ssh_port,
            "counters": self.counters.as_dict(),
            "faults": self.faults.describe(),
            "vps": [self.vps_snapshot(v) for v in self._order],
        }

    def _lifetime(self, profile: Profile) -> float:
        cap = profile.max_signature_lifetime
        lifetime = self.config.signature_lifetime
        return lifetime if cap is None else min(lifetime, cap)


# Application keys shared by the handlers and the middleware.
RUNTIME = web.AppKey("runtime", Runtime)
# Index of the api node an application serves; -1 on the session host.
NODE = web.AppKey("node", int)
# "session" or "node-N", for the request log.
HOST_NAME = web.AppKey("host_name", str)
SESSION_NODE = -1
