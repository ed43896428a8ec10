"""Per-VPS listeners: each VPS's SSH port on its own loopback IP, down while it installs.

With ``SimConfig.tcp_listeners`` the simulator binds a listener on every VPS's primary IP
(``127.0.2.N``...) at one port (``SimConfig.ssh_port``, or a free port picked once for all).
Each accepted connection is handed to ``serve`` (``sshd.SshServers.serve``: a real SSH server
whose banner is ``SSH-2.0-EdisSim``); without one it is sent that banner and closed. The
listener follows the VPS's state:

- ``running``: open;
- reinstall accepted: closed at once, before the ``success`` answer leaves (a connect is
  refused from then on);
- install finished ``ok``: reopened; ``fail``: stays closed; ``hang``: stays closed.

Install state is lazy (``vps.py``: nothing runs while a VPS installs), so something has to act
when an install ends. One timer (``loop.call_later``) waits for the earliest pending install
end, settles the VPSes due by then and reopens the ones that are running again; accepting a
reinstall and moving the simulator clock (``Runtime.advance_clock``) re-run the same check.
Sockets are served with ``loop.add_reader`` rather than ``asyncio`` servers: opening and
closing then happen synchronously, inside the request handler that accepts a reinstall, and a
listener costs one file descriptor and no task.

File descriptors: one per VPS. Opening raises the soft ``RLIMIT_NOFILE`` up to the hard limit
when it is too low; 2,000 VPSes fit the usual limits, 50,000 need ``ulimit -n`` (the hard
limit) raised to about 51,000 first, or opening fails with an ``OSError`` that says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import ipaddress
import socket
from collections.abc import Callable, Iterable

from orchestrator.simulator.vps import Vps

BANNER = b"SSH-2.0-EdisSim\r\n"
# Descriptors kept free for the HTTP hosts, their connections and the rest of the process.
FD_HEADROOM = 512
# Tries to find one free port for every VPS address when ssh_port is 0.
PORT_TRIES = 5
# A reopen that failed (the port was taken meanwhile) is tried again this much later.
REOPEN_RETRY = 0.5
# Connections accepted per readiness event, so one busy listener cannot starve the loop.
ACCEPT_BATCH = 64
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


class SshListeners:
    """The TCP listeners of every VPS of an account (see the module docstring).

    ``port`` is the port every VPS listens on (0 before ``open`` when none was configured).
    """

    def __init__(
        self,
        vpses: Iterable[Vps],
        port: int,
        now: Callable[[], float],
        serve: Callable[[Vps, socket.socket], None] | None = None,
    ) -> None:
        """Prepare listeners for ``vpses`` on ``port`` (0 = pick one free port at ``open``);
        ``now`` is the simulator clock; ``serve`` takes over each accepted connection.
        Raises ``ValueError`` if a VPS's IP is not on loopback or two VPSes share one IP
        (each listener needs its own address)."""
        self._vpses: dict[str, Vps] = {}
        seen: dict[str, str] = {}
        for vps in vpses:
            if ipaddress.IPv4Address(vps.ip) not in LOOPBACK:
                raise ValueError(
                    f"{vps.kvm_id}: ip {vps.ip} is not on loopback (127.0.0.0/8); "
                    "tcp_listeners only binds loopback addresses"
                )
            if vps.ip in seen:
                raise ValueError(f"{vps.kvm_id}: ip {vps.ip} is also {seen[vps.ip]}'s")
            seen[vps.ip] = vps.kvm_id
            self._vpses[vps.kvm_id] = vps
        self._requested = port
        self._serve = serve
        self.port = port
        self._now = now
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sockets: dict[str, socket.socket] = {}
        # Pending install ends: a heap of (end, kvm_id) and the one end that counts per VPS
        # (heap entries that no longer match it are stale and skipped).
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Bind a listener for every running VPS on the running event loop and start watching
        installs. Raises ``OSError`` when the descriptor limit is too low or an address cannot
        be bound (everything opened so far is closed again), ``RuntimeError`` without a running
        loop or when already open."""
        if self._loop is not None:
            raise RuntimeError("the listeners are already open")
        _ensure_fd_limit(len(self._vpses) + FD_HEADROOM)
        self._loop = asyncio.get_running_loop()
        tries = 1 if self._requested else PORT_TRIES
        for attempt in range(1, tries + 1):
            try:
                if not self._requested:
                    self.port = self._free_port()
                for vps in self._vpses.values():
                    self._refresh(vps, strict=True)
                break
            except OSError:
                self._close_sockets()
                if attempt == tries:
                    self.close()
                    raise
        self._schedule()

    def close(self) -> None:
        """Close every listener and stop watching; safe to call twice."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._close_sockets()
        self._heap.clear()
        self._due.clear()
        self._loop = None
        self.port = self._requested

    def is_open(self, kvm_id: str) -> bool:
        """Return whether ``kvm_id``'s listener is accepting connections."""
        return kvm_id in self._sockets

    # -- events ---------------------------------------------------------------------------------

    def install_started(self, vps: Vps) -> None:
        """A reinstall of ``vps`` was accepted: close its listener now and watch for the end."""
        if self._loop is None:
            return
        self._close_one(vps.kvm_id)
        self._watch(vps)
        self._schedule()

    def check(self) -> None:
        """Settle every VPS whose install end has come, reopen those that run again, and set
        the timer for the next end. Called by the timer and when the clock moves."""
        if self._loop is None:
            return
        now = self._now()
        while self._heap and self._heap[0][0] <= now:
            end, kvm_id = heapq.heappop(self._heap)
            if self._due.get(kvm_id) != end:
                continue  # superseded by a restart or a later end
            del self._due[kvm_id]
            self._refresh(self._vpses[kvm_id], strict=False)
        self._schedule()

    # -- internals ------------------------------------------------------------------------------

    def _refresh(self, vps: Vps, *, strict: bool) -> None:
        """Make ``vps``'s listener match its state; ``strict`` lets a bind error propagate,
        otherwise the reopen is retried a little later."""
        state = vps.state
        if state == "running":
            try:
                self._open_one(vps)
            except OSError:
                if strict:
                    raise
                self._push(vps.kvm_id, self._now() + REOPEN_RETRY)
        elif state == "installing":
            self._close_one(vps.kvm_id)
            self._watch(vps)
        else:  # failed: the VPS stays down until another reinstall
            self._close_one(vps.kvm_id)

    def _watch(self, vps: Vps) -> None:
        end = vps.install_ends
        if end is None:  # hangs, or ended already: nothing to wait for
            self._due.pop(vps.kvm_id, None)
            if vps.state == "running":
                self._push(vps.kvm_id, self._now())
            return
        if self._due.get(vps.kvm_id) != end:
            self._push(vps.kvm_id, end)

    def _push(self, kvm_id: str, end: float) -> None:
        self._due[kvm_id] = end
        heapq.heappush(self._heap, (end, kvm_id))

    def _schedule(self) -> None:
        """Point the one timer at the earliest pending end (or cancel it)."""
        loop = self._loop
        if loop is None:
            return
        if not self._heap:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        first = self._heap[0][0]
        if self._timer is not None:
            if self._timer_at == first:
                return
            self._timer.cancel()
        # The simulator clock is wall time plus an offset; the loop's is monotonic. A wake a
        # hair early finds the install unfinished and simply waits again.
        self._timer_at = first
        self._timer = loop.call_later(max(0.0, first - self._now()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.check()

    def _free_port(self) -> int:
        """Return a port that is free on the first VPS's address."""
        first = next(iter(self._vpses.values()), None)
        if first is None:
            return 0
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((first.ip, 0))
            port: int = probe.getsockname()[1]
            return port

    def _open_one(self, vps: Vps) -> None:
        if vps.kvm_id in self._sockets or self._loop is None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            # Lets a reopened listener bind while connections it closed sit in TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((vps.ip, self.port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise OSError(
                exc.errno, f"cannot listen on {vps.ip}:{self.port}: {exc.strerror}"
            ) from exc
        self._loop.add_reader(sock.fileno(), _accept, sock, vps, self._serve)
        self._sockets[vps.kvm_id] = sock

    def _close_one(self, kvm_id: str) -> None:
        sock = self._sockets.pop(kvm_id, None)
        if sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()

    def _close_sockets(self) -> None:
        for kvm_id in list(self._sockets):
            self._close_one(kvm_id)


def _accept(
    sock: socket.socket, vps: Vps, serve: Callable[[Vps, socket.socket], None] | None
) -> None:
    """Hand the connections waiting on ``sock`` to ``serve``, or greet and close them."""
    for _ in range(ACCEPT_BATCH):
        try:
            conn, _ = sock.accept()
        except OSError:  # nothing left (EAGAIN), or the peer gave up already
            return
        if serve is not None:
            conn.setblocking(False)
            serve(vps, conn)
            continue
        with conn:
            conn.setblocking(False)
            # A 17-byte write to a fresh loopback connection never blocks; a peer that already
            # reset just misses the banner.
            with contextlib.suppress(OSError):
                conn.send(BANNER)


def _ensure_fd_limit(needed: int) -> None:
    """Raise the soft descriptor limit to ``needed`` if it is lower and the hard limit
    allows; raises ``OSError`` (EMFILE) with advice when it does not."""
    try:
        import resource  # noqa: PLC0415 -- POSIX only
    except ImportError:  # pragma: no cover - not POSIX: let binding report any shortage
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise OSError(
            errno.EMFILE,
            f"tcp_listeners needs about {needed} file descriptors but the limit is {hard}: "
            f"raise it (ulimit -n {needed}) or turn tcp_listeners off",
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
