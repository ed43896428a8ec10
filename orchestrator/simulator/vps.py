"""One simulated VPS: its static facts and its reinstall state machine.

The install runs "in the background" without a task: each accepted reinstall records when it
ends, and every read of ``state`` or ``image`` first settles whatever has finished by then. That
keeps thousands of VPSes free (no timers) and lets a moved clock finish installs at once.

States: ``running`` → (reinstall accepted) → ``installing`` → ``running`` with the new image, or
``failed`` (an install that fails; power reports off) — or ``installing`` forever (one that
hangs). Under ``second_reinstall="accept"`` further reinstalls queue behind the running one and
start when it ends; under ``"restart"`` the running one is abandoned.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

VpsState = Literal["running", "installing", "failed"]
# ``noop``: the reinstall is answered ``success`` but nothing is installed (the old system
# keeps running): the case only a proof of reinstall catches.
InstallOutcome = Literal["ok", "fail", "hang", "noop"]

VPS_STATES: tuple[VpsState, ...] = ("running", "installing", "failed")
INSTALL_OUTCOMES: tuple[InstallOutcome, ...] = ("ok", "fail", "hang", "noop")


class Install:
    """One accepted reinstall: what it installs, how long it takes and how it ends."""

    __slots__ = ("duration", "hostname", "image", "outcome", "system")

    def __init__(
        self,
        image: str,
        duration: float,
        outcome: InstallOutcome,
        hostname: str | None,
        system: object = None,
    ) -> None:
        self.image = image
        self.duration = duration
        self.outcome: InstallOutcome = outcome
        # The hostname cloud-init will set, if the user data names one.
        self.hostname = hostname
        # What the installed system runs (its sshd's host key, who may log in, cloud-init:
        # ``sshd.System``), opaque here; None when the simulator runs no SSH servers.
        self.system = system


class Vps:
    """A VPS of the simulated account.

    Public attributes: ``kvm_id``, ``index`` (1-based position in the account),
    ``description``, ``ip`` (primary IPv4), ``suspended``, ``lps``, ``lps_ispremium``, ``hw``,
    ``install_outcome`` (what its next reinstalls do), ``node`` and ``api_host`` (where it is
    served), and the counters ``reinstalls_received``, ``reinstalls_accepted`` and
    ``bad_signature``; ``system`` (what the running system is, ``sshd.System``, or None for
    the one it had from the start) and ``booted_at`` (simulator time its last install ended).
    ``state``, ``image`` and ``images`` are read-only properties and
    ``hostname`` a property; each first settles finished installs.
    """

    __slots__ = (
        "_clock",
        "_current",
        "_ends",
        "_hostname",
        "_image",
        "_image_set",
        "_images",
        "_queue",
        "_state",
        "api_host",
        "bad_signature",
        "booted_at",
        "description",
        "hw",
        "index",
        "install_outcome",
        "ip",
        "kvm_id",
        "lps",
        "lps_ispremium",
        "node",
        "reinstalls_accepted",
        "reinstalls_received",
        "suspended",
        "system",
    )

    def __init__(
        self,
        *,
        kvm_id: str,
        index: int,
        hostname: str,
        description: str,
        ip: str,
        images: Iterable[str],
        image: str,
        clock: Callable[[], float],
        suspended: bool = False,
        state: VpsState = "running",
        install_outcome: InstallOutcome = "ok",
        lps: str = "01",
        lps_ispremium: bool = False,
        hw: Mapping[str, str] | None = None,
    ) -> None:
        """Build a VPS; raises ``ValueError`` for an empty image list or a bad state."""
        self.kvm_id = kvm_id
        self.index = index
        self._hostname = hostname
        self.description = description
        self.ip = ip
        self.suspended = suspended
        self.lps = lps
        self.lps_ispremium = lps_ispremium
        self.hw: dict[str, str] = dict(hw or {})
        if install_outcome not in INSTALL_OUTCOMES:
            raise ValueError(f"install_outcome must be one of {INSTALL_OUTCOMES}")
        self.install_outcome: InstallOutcome = install_outcome
        if state not in ("running", "failed"):
            raise ValueError("a VPS starts 'running' or 'failed'")
        self._state: VpsState = state
        self._image = image
        self._clock = clock
        self._images: tuple[str, ...] = ()
        self._image_set: frozenset[str] = frozenset()
        self.set_images(images)
        self._current: Install | None = None
        # End of the current install in simulator time; None while it hangs.
        self._ends: float | None = None
        self._queue: deque[Install] = deque()
        self.node = 0
        self.api_host = ""
        self.reinstalls_received = 0
        self.reinstalls_accepted = 0
        self.bad_signature = 0
        self.system: object = None
        self.booted_at = 0.0

    def __repr__(self) -> str:
        return f"Vps({self.kvm_id!r}, state={self.state!r}, image={self.image!r})"

    @property
    def hostname(self) -> str:
        """The hostname, as of now: a finished cloud-init install may have changed it."""
        self.settle()
        return self._hostname

    @hostname.setter
    def hostname(self, value: str) -> None:
        self._hostname = value

    # -- images ---------------------------------------------------------------------------------

    @property
    def images(self) -> tuple[str, ...]:
        """The image names ``get/images`` offers for this VPS, in order."""
        return self._images

    def set_images(self, images: Iterable[str]) -> None:
        """Replace the offered images; raises ``ValueError`` if empty or not all strings."""
        names = tuple(images)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{self.kvm_id}: images must be a non-empty list of names")
        self._images = names
        self._image_set = frozenset(names)

    def offers(self, image: str) -> bool:
        """Return whether ``image`` may be installed on this VPS."""
        return image in self._image_set

    # -- state machine --------------------------------------------------------------------------

    @property
    def state(self) -> VpsState:
        """``running``, ``installing`` or ``failed``, as of now."""
        self.settle()
        return self._state

    @property
    def image(self) -> str:
        """The image on the disk: while installing, the one being written."""
        self.settle()
        return self._image

    @property
    def queued_installs(self) -> int:
        """How many accepted reinstalls wait behind the running one."""
        self.settle()
        return len(self._queue)

    @property
    def install_ends(self) -> float | None:
        """When the running install ends (simulator time), as of now; ``None`` when no install
        runs or the running one hangs."""
        self.settle()
        return self._ends if self._state == "installing" else None

    def settle(self) -> None:
        """Apply every install that has ended by now (and start queued ones)."""
        if self._state != "installing":
            return
        now = self._clock()
        while self._state == "installing" and self._ends is not None and now >= self._ends:
            ended_at = self._ends
            self._finish(ended_at)
            if self._queue:
                self._begin(self._queue.popleft(), ended_at)

    def start_install(self, install: Install, *, restart: bool) -> None:
        """Accept a reinstall: start it, or, while one runs, restart with it (``restart``) or
        queue it behind the running one."""
        self.settle()
        if self._state == "installing" and not restart:
            self._queue.append(install)
            return
        self._queue.clear()
        self._begin(install, self._clock())

    def _begin(self, install: Install, start: float) -> None:
        self._state = "installing"
        self._image = install.image
        self._current = install
        self._ends = None if install.outcome == "hang" else start + install.duration

    def _finish(self, ended_at: float) -> None:
        install = self._current
        self._current = None
        self._ends = None
        if install is None or install.outcome == "fail":
            self._state = "failed"
            return
        self._state = "running"
        self.system = install.system
        self.booted_at = ended_at
        if install.hostname:
            self._hostname = install.hostname
