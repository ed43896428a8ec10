"""Opening the SQLite journal file: its directory and mode, then a connection in WAL mode.

``store.Store`` opens the journal through ``connect``; ``hostlock.py`` creates its lock file
with ``prepare_file``, so both files get the same private modes.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from orchestrator.errors import JournalError


def prepare_file(path: Path) -> bool:
    """Create the journal's directory (0700) and file (0600) if missing; return if created.

    SQLite's unix VFS gives the ``-wal`` and ``-shm`` files the mode of the database file, so
    creating the database file 0600 first covers them without changing the process-wide umask
    (which every other thread would see meanwhile). Raises ``OSError``.
    """
    parent = path.parent
    if not parent.exists():
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
    try:
        # O_EXCL also refuses a symlink planted where the journal should be.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return True


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode with WAL, full sync, foreign keys and a busy timeout.

    Raises ``JournalError`` (or ``sqlite3.Error``/``OSError``) when that is not possible.
    """
    created = prepare_file(path)
    conn = sqlite3.connect(
        path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
    )
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise JournalError(f"journal {path}: cannot use WAL mode (got {mode!r})")
        # FULL: a commit is on disk when COMMIT returns. Durability is the point.
        conn.execute("PRAGMA synchronous = FULL")
        # Foreign keys are switched on by ``Store`` once the schema is migrated: a migration
        # that rebuilds a table (version 2) must drop the old one, which they would refuse.
        if created:
            for side in (Path(f"{path}-wal"), Path(f"{path}-shm")):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(side, 0o600)
    except BaseException:
        conn.close()
        raise
    return conn
