"""Readiness mode ``ssh``: proof that a VPS was reinstalled with this run's user data, then
cloud-init's own verdict.

Stages, each with its own deadline, each reported in the VPS's reason:

1. *Host-key proof* (``readiness.deadline``, counted from acceptance). With ``pinned`` set
   (a ``#cloud-config`` user data that carries this run's ed25519 host key in ``ssh_keys``),
   the VPS counts as reinstalled only when its SSH server presents exactly that key. Without
   it (a ``#!`` script, an image without cloud-init), the weaker proof is "the host key
   changed from the one recorded by a key scan just before the send". While the port is
   down only a TCP connect is tried (cheap); a key exchange is made only when it answers.
2. *cloud-init completion* (``readiness.ssh.cloud_init_deadline``, counted from the proof).
   Log in as ``readiness.ssh.user`` trusting only the proven key, run ``cloud-init status
   --wait --long --format json``: ``done`` is ready (recoverable errors become warnings in
   the reason), ``error`` / ``degraded`` fail with cloud-init's first errors. Skipped when
   no login is configured or the user data is not ``#cloud-config``.

Nothing here calls the provider's API: the address comes from the scheduler, which looks it
up before the send (it also needs it for the pre-send key scan).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.fleet import HttpCheck, Readiness
from orchestrator.model import Clock
from orchestrator.run.httpcheck import wait_healthy
from orchestrator.run.readiness import ReadyResult, tcp_connect
from orchestrator.secrets import Secret
from orchestrator.templates.hostkey import with_host_key

STATUS_COMMAND = "cloud-init status --wait --long --format json"
# The first login, made as soon as the port answers again, proves the key (the server's host
# key is verified before anything else) and waits for cloud-init on the same connection: one
# handshake per VPS after its install. The login itself must happen within SCAN_TIMEOUT.
# A key scan or login that hangs longer than this counts as "no answer" for that probe.
SCAN_TIMEOUT = 5.0
# While the port is down it is probed this often (a TCP connect costs ~0.1 ms); a key scan
# (a key exchange, ~2 ms of CPU) follows only when it answers.
DOWN_INTERVAL = 0.5
# At most this long between two looks while the old system still answers.
MAX_INTERVAL = 2.0
# How many of cloud-init's error lines a failed VPS's reason carries.
ERROR_LINES = 3
# The proven host key ends the VPS's reason as a known_hosts line, so the journal, every
# report and ``--known-hosts`` (from the journal: a resumed run's too) all have it.
KNOWN_HOSTS_MARK = "; known_hosts: "
# The proof each phrase names, as the journal and the JSON report record it (``proof``).
PROOF_KINDS = {
    "proof: this run's host key": "pinned",
    "proof: host key changed since the pre-send scan": "key-changed",
    "proof (weaker): SSH down before the send, answering since": "weaker",
}


@dataclass(frozen=True)
class ProofSpec:
    """What one VPS's proof needs. ``pinned``: the public host key put into its user data
    (None: the key-changed fallback). ``user``: who logs in for cloud-init (None: the stage is
    skipped); ``identity_file`` (None: the SSH agent). ``cloud_init_deadline_s``: the second
    stage's deadline."""

    pinned: str | None
    user: str | None
    identity_file: Path | None
    cloud_init_deadline_s: float
    cloud_init: bool = True
    # Stage 3 (optional): an HTTP health check after cloud-init is done.
    http: HttpCheck | None = None


def prepare_proof(
    user_data: Secret | None,
    readiness: Readiness,
    *,
    seed: Secret | None = None,
    label: str = "",
) -> tuple[Secret | None, ProofSpec, Secret | None]:
    """Make this run's host key for one VPS and put it into its ``#cloud-config`` user data.

    With ``seed`` the key is derived from it and ``label`` (a per-run nonce and the kvm id:
    a resumed run makes the very same key and so recognises the VPSes it reinstalled before
    the interruption); without, it is random.

    Returns the user data to send, the VPS's ``ProofSpec`` and the private host key (a
    secret for the redactor; None when the user data cannot carry it: a ``#!`` script or no
    user data, which get the key-changed fallback). Raises ``HostKeyConflict`` (a
    ``ValueError``) when the template sets ``ssh_keys`` itself.
    """
    login = readiness.ssh
    text = None if user_data is None else user_data.reveal()
    if text is None or not text.startswith("#cloud-config"):
        spec = ProofSpec(None, login.user, login.identity_file, login.cloud_init_deadline_s, False)
        return user_data, spec, None
    from orchestrator.run import ssh as ssh_module  # noqa: PLC0415 -- only in mode ssh

    key = ssh_module.new_host_key() if seed is None else ssh_module.derived_host_key(seed, label)
    sent = Secret(with_host_key(text, key.private, key.public))
    spec = ProofSpec(
        key.public,
        login.user,
        login.identity_file,
        login.cloud_init_deadline_s,
        http=readiness.http,
    )
    return sent, spec, key.private


@dataclass
class Observation:
    """What was seen of a VPS while waiting: for reasons and for reconciliation."""

    pre_key: str | None = None
    # The pre-send scan was made (and found ``pre_key``, None: nothing answered).
    pre_scanned: bool = False
    last_key: str | None = None
    seen_down: bool = False
    scans: int = 0


@dataclass
class Prover:
    """Runs the stages for every VPS of a run and remembers what it saw (the pre-send keys,
    the proven keys for ``--known-hosts``)."""

    clock: Clock
    port: int = 22
    observed: dict[str, Observation] = field(default_factory=dict)
    proven: dict[str, str] = field(default_factory=dict)
    proof_kind: dict[str, str] = field(default_factory=dict)
    # Each proven VPS's host key as a known_hosts line (for the journal's facts).
    known_hosts: dict[str, str] = field(default_factory=dict)
    _identities: dict[Path | None, Any] = field(default_factory=dict)
    # What the first login read (a CommandResult, or the SshLoginError of a refused key).
    _early: dict[str, Any] = field(default_factory=dict)
    # When each VPS's key was proven (clock.monotonic()): stage 2's deadline counts from it.
    _proved_at: dict[str, float] = field(default_factory=dict)

    def _ssh(self) -> Any:
        from orchestrator.run import ssh  # noqa: PLC0415 -- 0.35 s: only runs in mode ssh

        return ssh

    async def before_send(self, kvm_id: str, host: str, port: int) -> str:
        """Record the host key ``kvm_id`` presents just before its send and return it as the
        journal keeps it (the public key's type and base64; ``""`` when nothing answered)."""
        key = await self._ssh().scan_host_key(host, port, limit=SCAN_TIMEOUT)
        seen = self.observed.setdefault(kvm_id, Observation())
        seen.pre_key, seen.pre_scanned = key, True
        return "" if key is None else " ".join(key.split()[:2])

    def recall(self, kvm_id: str, presend_key: str) -> None:
        """Resume: take the pre-send key the journal recorded for ``kvm_id`` (``""``: nothing
        answered) as if this process had scanned it, unless it already looked itself."""
        seen = self.observed.setdefault(kvm_id, Observation())
        if not seen.pre_scanned:
            seen.pre_key, seen.pre_scanned = presend_key or None, True

    def facts(self, kvm_id: str) -> tuple[str, str]:
        """The proof ``kvm_id`` got (``PROOF_KINDS``) and its known_hosts line; ``("", "")``
        when its reinstall was not proven."""
        kind = PROOF_KINDS.get(self.proof_kind.get(kvm_id, ""), "")
        return kind, self.known_hosts.get(kvm_id, "") if kind else ""

    async def wait(
        self, kvm_id: str, spec: ProofSpec, host: str, port: int, deadline_s: float
    ) -> ReadyResult:
        """Run the stages for ``kvm_id`` (accepted just now) and return how they ended."""
        start = self.clock.monotonic()
        proof = await self.prove(kvm_id, spec, host, port, deadline_s)
        if proof is None:
            seen = self.observed[kvm_id]
            elapsed = self.clock.monotonic() - start
            return ReadyResult(False, _unproven(seen, spec, deadline_s), elapsed, seen.scans)
        return await self.finish(kvm_id, spec, host, port, start)

    async def prove(
        self, kvm_id: str, spec: ProofSpec, host: str, port: int, deadline_s: float
    ) -> str | None:
        """Stage 1 for ``kvm_id`` within ``deadline_s``: return what proved the reinstall
        (one phrase, for the reason), or None when nothing did (``observed`` says what was
        seen)."""
        seen = self.observed.setdefault(kvm_id, Observation())
        deadline = self.clock.monotonic() + deadline_s
        proof = await self._host_key_stage(kvm_id, seen, spec, host, port, deadline=deadline)
        if proof is None:
            return None
        proven, key = proof
        self.proven[kvm_id] = key
        self.proof_kind[kvm_id] = proven
        return proven

    async def finish(
        self, kvm_id: str, spec: ProofSpec, host: str, port: int, start: float
    ) -> ReadyResult:
        """Stage 2 for ``kvm_id``, whose host key ``prove`` proved: cloud-init's verdict.
        ``start`` (``clock.monotonic()``) is when the wait began, for the elapsed time."""
        proven, key = self.proof_kind[kvm_id], self.proven[kvm_id]
        scans = self.observed[kvm_id].scans
        self.known_hosts[kvm_id] = _known_hosts_line(host, port, key)
        entry = f"{KNOWN_HOSTS_MARK}{self.known_hosts[kvm_id]}"
        if spec.user is None or not spec.cloud_init:
            why = "no readiness.ssh.user" if spec.user is None else "user data is not cloud-config"
            reason = f"{proven}; cloud-init not checked ({why}){entry}"
            return ReadyResult(True, reason, self.clock.monotonic() - start, scans)
        ready, verdict = await self._cloud_init_stage(
            spec,
            host,
            port,
            key,
            early=self._early.pop(kvm_id, None),
            proved_at=self._proved_at.pop(kvm_id, self.clock.monotonic()),
        )
        elapsed = self.clock.monotonic() - start
        if ready and spec.http is not None:
            ready, health = await wait_healthy(spec.http, host, self.clock)
            verdict = f"{verdict}; {health}"
            elapsed = self.clock.monotonic() - start
        return ReadyResult(ready, f"{proven}; {verdict}{entry}", elapsed, scans)

    def _identity(self, spec: ProofSpec) -> Any:
        if spec.identity_file not in self._identities:
            self._identities[spec.identity_file] = self._ssh().load_identity(spec.identity_file)
        return self._identities[spec.identity_file]

    async def _first_login(self, kvm_id: str, spec: ProofSpec, host: str, port: int) -> bool:
        """Log in trusting only the pinned key; return whether the server proved it (the
        login worked, or only the user's key was refused). Keeps what it read for stage 2."""
        ssh = self._ssh()
        if spec.pinned is None or spec.user is None or not spec.cloud_init:
            return False
        begun = self.clock.monotonic()
        try:
            done = await ssh.run_pinned(
                host,
                port,
                host_key=spec.pinned,
                user=spec.user,
                identity=self._identity(spec),
                command=STATUS_COMMAND,
                limit=spec.cloud_init_deadline_s,
                handshake_limit=SCAN_TIMEOUT,
            )
        except ssh.SshLoginError as exc:
            if exc.verified:  # refused, or cloud-init did not end in time: the key is proven
                self._early[kvm_id] = exc
                self._proved_at[kvm_id] = begun
            return bool(exc.verified)
        self._early[kvm_id] = done
        self._proved_at[kvm_id] = begun
        return True

    async def _host_key_stage(
        self,
        kvm_id: str,
        seen: Observation,
        spec: ProofSpec,
        host: str,
        port: int,
        *,
        deadline: float,
    ) -> tuple[str, str] | None:
        ssh = self._ssh()
        interval = DOWN_INTERVAL
        while True:
            if seen.seen_down and not await tcp_connect(host, port, connect_timeout=SCAN_TIMEOUT):
                key = None
            elif seen.seen_down and await self._first_login(kvm_id, spec, host, port):
                seen.last_key = spec.pinned
                return "proof: this run's host key", str(spec.pinned)
            else:
                key = await ssh.scan_host_key(host, port, limit=SCAN_TIMEOUT)
                seen.scans += 1
            if key is None:
                seen.seen_down = True
                interval = DOWN_INTERVAL
            else:
                seen.last_key = key
                if spec.pinned is not None and ssh.same_key(key, spec.pinned):
                    return "proof: this run's host key", key
                changed = seen.pre_key is not None and not ssh.same_key(key, seen.pre_key)
                if spec.pinned is None and changed:
                    return "proof: host key changed since the pre-send scan", key
                if spec.pinned is None and seen.pre_scanned and seen.pre_key is None:
                    # Dead before the send (a disaster-recovery rebuild), answering now.
                    return "proof (weaker): SSH down before the send, answering since", key
                # The old system still answers (the install may not have started yet).
                interval = min(MAX_INTERVAL, interval * 2)
            now = self.clock.monotonic()
            if now >= deadline:
                return None
            await self.clock.sleep(min(interval, deadline - now))

    async def _cloud_init_stage(
        self,
        spec: ProofSpec,
        host: str,
        port: int,
        key: str,
        *,
        early: Any,
        proved_at: float,
    ) -> tuple[bool, str]:
        ssh = self._ssh()
        last = "no answer"
        if isinstance(early, ssh.SshLoginError):
            if early.refused:
                return False, f"cloud-init not checked: {early.reason}"
            # Logged in, then cloud-init did not finish in time (or the connection broke):
            # the stage goes on with what is left of its deadline, counted from the proof.
            last = early.reason
        if isinstance(early, ssh.CommandResult):
            verdict = _verdict(early.exit_status, early.stdout)
            if verdict is not None:
                return verdict
        identity = self._identity(spec)
        deadline = proved_at + spec.cloud_init_deadline_s
        while True:
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return False, (
                    f"cloud-init not done within {spec.cloud_init_deadline_s:g} s ({last})"
                )
            try:
                done = await ssh.run_pinned(
                    host,
                    port,
                    host_key=key,
                    user=spec.user or "root",
                    identity=identity,
                    command=STATUS_COMMAND,
                    limit=left,
                )
            except ssh.SshLoginError as exc:
                if exc.refused:
                    return False, f"cloud-init not checked: {exc.reason}"
                last = exc.reason  # sshd may still be starting: try again
                await self.clock.sleep(min(DOWN_INTERVAL, max(0.0, left)))
                continue
            verdict = _verdict(done.exit_status, done.stdout)
            if verdict is not None:
                return verdict
            last = "cloud-init still running"
            await self.clock.sleep(min(DOWN_INTERVAL, max(0.0, left)))


def known_hosts_text(reasons: Iterable[str]) -> str:
    """The known_hosts file of a run: one line per VPS whose host key was proven, read from
    the reasons the journal recorded (``KNOWN_HOSTS_MARK``)."""
    lines = []
    for reason in reasons:
        _, mark, line = reason.rpartition(KNOWN_HOSTS_MARK)
        parts = line.split()
        if mark and len(parts) == 3 and parts[1].startswith("ssh-"):
            lines.append(" ".join(parts))
    return "".join(f"{line}\n" for line in lines)


def _known_hosts_line(host: str, port: int, public: str) -> str:
    """One known_hosts line for ``host:port`` (``[host]:port`` unless the port is 22)."""
    name = host if port == 22 else f"[{host}]:{port}"
    return f"{name} {' '.join(public.split()[:2])}"


def _verdict(exit_status: int | None, stdout: str) -> tuple[bool, str] | None:
    """Read ``cloud-init status --long --format json``: (ready, reason), or None while it
    still runs. Never raises for odd output."""
    try:
        doc = json.loads(stdout)
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return False, f"cloud-init status gave no JSON (exit {exit_status})"
    status = str(doc.get("status", ""))
    extended = str(doc.get("extended_status", status))
    errors = [str(e) for e in doc.get("errors") or []][:ERROR_LINES]
    if status in ("running", "not started", "not run"):
        return None
    if status == "error" or (extended.startswith("degraded") and errors):
        shown = "; ".join(e[:300] for e in errors) or "no error text"
        return False, f"cloud-init {extended}: {shown}"
    if status == "done":
        warnings = _recoverable(doc.get("recoverable_errors"))
        return True, "cloud-init done" + (f" (warnings: {warnings})" if warnings else "")
    return False, f"cloud-init status {status!r}"


def _recoverable(value: object) -> str:
    if not isinstance(value, dict):
        return ""
    lines = [f"{level}: {m}" for level, ms in value.items() for m in (ms or [])[:ERROR_LINES]]
    return "; ".join(line[:200] for line in lines[:ERROR_LINES])


def _unproven(seen: Observation, spec: ProofSpec, deadline_s: float) -> str:
    """Why the host-key stage ended without proof: what was seen, in one sentence."""
    head = f"no proof within {deadline_s:g} s: "
    if seen.last_key is None:
        return head + "the SSH server never answered"
    if seen.pre_key is not None and seen.last_key.split()[:2] == seen.pre_key.split()[:2]:
        if not seen.seen_down:
            return head + (
                "it still presents the pre-send host key and was never seen down "
                "(accepted, but nothing was installed)"
            )
        return head + "it presents the pre-send host key again (the old system)"
    if spec.pinned is not None:
        return head + "it presents a host key that is neither this run's nor the pre-send one"
    return head + "the host key did not change"
