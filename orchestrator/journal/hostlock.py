"""Host-wide VPS locks: two runs on one machine never send to the same VPS, whatever journal
each of them uses.

A journal's locks only bind runs that share that journal; two runs started in two working
directories (each with its own ``.edis-fleet/journal.sqlite``) would not see each other. So
every run also registers its VPSes in one place per user and machine — the directory
``$XDG_STATE_HOME/edis-fleet/locks`` (else ``~/.local/state/edis-fleet/locks``), mode 0700:

- ``vps-locks.sqlite`` holds one row per locked VPS: the account scope (a digest of the API
  endpoint and the account e-mail, so accounts and simulators do not collide), the VPS, the
  owner token, the run, the pid and the journal (its printable form).
- ``owner-<token>.lock`` is a file its owner process keeps ``flock``-ed while it runs. The
  kernel drops the ``flock`` when the process dies, however it dies, so a row whose owner file
  can be locked by someone else belongs to a dead process and is taken over — no heartbeat and
  no pid reuse to worry about.

Taking locks is all or none, inside one ``BEGIN IMMEDIATE`` transaction of the SQLite file.
These locks cover one machine and one user (another user's runs have their own state
directory); runners on several machines coordinate through a shared PostgreSQL journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import sqlite3
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from orchestrator.errors import JournalError, LockedError
from orchestrator.journal.sqlite_conn import prepare_file

_log = logging.getLogger("orchestrator.journal.journal")
_CHUNK = 400
_SCHEMA = """
    CREATE TABLE IF NOT EXISTS host_locks (
        scope       TEXT NOT NULL,
        kvm_id      TEXT NOT NULL,
        owner       TEXT NOT NULL,
        run_id      TEXT NOT NULL,
        pid         INTEGER NOT NULL,
        journal     TEXT NOT NULL,
        acquired_at REAL NOT NULL,
        PRIMARY KEY (scope, kvm_id)
    )
"""


def _check_private(directory: Path) -> None:
    """Refuse a lock directory that is a symlink, not ours, or writable by others: whoever
    can write there could fake or delete the locks. Raises ``OSError``."""
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{directory} is not a directory")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise OSError(f"{directory} must belong to this user and not be writable by others")


def account_scope(endpoint: str, account: str) -> str:
    """Return the lock scope of an account: a digest, so the e-mail is not written down."""
    return hashlib.sha256(f"{endpoint}\0{account}".encode()).hexdigest()[:24]


class HostLocks:
    """This process's host-wide locks in ``directory`` for one account ``scope``.

    ``journal`` is the printable journal location (shown to a refused run). Not thread-safe:
    the journal calls it from its worker thread, one call at a time. Raises ``JournalError``
    when the directory or its files cannot be used.
    """

    def __init__(self, directory: Path, scope: str, *, journal: str, pid: int | None = None):
        self.directory = directory
        self.scope = scope
        self.journal = journal
        self.pid = os.getpid() if pid is None else pid
        self.token = secrets.token_hex(8)
        self._fd: int | None = None
        self._conn: sqlite3.Connection | None = None

    # ----------------------------------------------------------------- files

    def _owner_file(self, token: str) -> Path:
        return self.directory / f"owner-{token}.lock"

    def _open(self) -> sqlite3.Connection:
        """Create the directory, this process's owner file (flocked) and the lock table."""
        if self._conn is not None:
            return self._conn
        try:
            if not self.directory.exists():
                self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(self.directory, 0o700)
            _check_private(self.directory)
            # Locked under a temporary name, then renamed: an owner file never exists unlocked
            # under its final name, so a sweep cannot take a starting process for a dead one.
            fresh = self.directory / f"new-{self.token}.lock"
            fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            self._fd = fd
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(fresh, self._owner_file(self.token))
            path = self.directory / "vps-locks.sqlite"
            prepare_file(path)
            conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
            conn.execute(_SCHEMA)
            self._sweep()
        except (OSError, sqlite3.Error) as exc:
            self._close_fd()
            raise JournalError(
                f"cannot use the host lock directory {self.directory}: {exc}"
            ) from exc
        self._conn = conn
        return conn

    def _sweep(self) -> None:
        """Drop the owner files of processes that died (their locks are taken over when a run
        wants those VPSes; the files would only pile up)."""
        for path in self.directory.glob("owner-*.lock"):
            token = path.name[len("owner-") : -len(".lock")]
            if token != self.token:
                self._owner_alive(token)  # unlinks the file of a dead owner

    def _owner_alive(self, token: str) -> bool:
        """Whether the process behind ``token`` still holds its owner file's ``flock``."""
        if token == self.token:
            return True
        try:
            fd = os.open(self._owner_file(token), os.O_RDWR | os.O_NOFOLLOW)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self._owner_file(token).unlink()  # its process died; nobody will need it again
        return False

    def _close_fd(self) -> None:
        if self._fd is not None:
            for path in (self._owner_file(self.token), self.directory / f"new-{self.token}.lock"):
                with contextlib.suppress(OSError):
                    path.unlink()
            os.close(self._fd)
            self._fd = None

    # ----------------------------------------------------------------- locks

    def acquire(self, run_id: str, kvm_ids: Sequence[str]) -> list[str]:
        """Take all of ``kvm_ids`` for ``run_id``, or none; return the VPSes taken over from
        dead processes. Raises ``LockedError`` naming the run, pid and journal of a live holder
        on this machine, ``JournalError`` when the lock files cannot be used."""
        conn = self._open()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                taken = self._acquire(conn, run_id, kvm_ids)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise JournalError(f"host locks in {self.directory}: {exc}") from exc
        if taken:
            _log.warning("host locks: took over %d VPS(es) from processes that died", len(taken))
        return taken

    def _acquire(self, conn: sqlite3.Connection, run_id: str, kvm_ids: Sequence[str]) -> list[str]:
        found: list[tuple[str, str, str, int, str]] = []
        for i in range(0, len(kvm_ids), _CHUNK):
            chunk = list(kvm_ids[i : i + _CHUNK])
            marks = ", ".join("?" * len(chunk))
            found += conn.execute(
                "SELECT kvm_id, owner, run_id, pid, journal FROM host_locks"  # noqa: S608
                f" WHERE scope = ? AND kvm_id IN ({marks})",
                [self.scope, *chunk],
            ).fetchall()
        alive: dict[str, bool] = {}
        conflicts: dict[str, list[str]] = {}
        where: dict[str, str] = {}
        taken: list[str] = []
        for kvm_id, owner, holder, pid, journal in found:
            if owner not in alive:
                alive[owner] = self._owner_alive(owner)
            if not alive[owner]:
                taken.append(kvm_id)
            elif owner != self.token:
                conflicts.setdefault(holder, []).append(kvm_id)
                where[holder] = f"pid {pid} on this host, journal {journal}"
        if conflicts:
            raise LockedError(conflicts, detail=" (" + "; ".join(where.values()) + ")")
        conn.executemany(
            "INSERT OR REPLACE INTO host_locks (scope, kvm_id, owner, run_id, pid, journal,"
            " acquired_at) VALUES (?, ?, ?, ?, ?, ?, strftime('%s', 'now'))",
            [(self.scope, k, self.token, run_id, self.pid, self.journal) for k in kvm_ids],
        )
        return taken

    def release(self, kvm_ids: Iterable[str] | None = None) -> None:
        """Release this process's locks of ``kvm_ids`` (all of them when ``None``)."""
        if self._conn is None:
            return
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if kvm_ids is None:
                    conn.execute("DELETE FROM host_locks WHERE owner = ?", (self.token,))
                else:
                    conn.executemany(
                        "DELETE FROM host_locks WHERE owner = ? AND scope = ? AND kvm_id = ?",
                        [(self.token, self.scope, k) for k in kvm_ids],
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            # Harmless: the rows read as a dead owner's once this process ends.
            _log.warning("host locks: could not release: %s", exc)

    def close(self) -> None:
        """Release every lock of this process and drop its owner file. Idempotent."""
        self.release()
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._close_fd()
