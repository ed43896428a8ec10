"""Writing a file whole: a reader (a CI job, a script polling for it) never sees half of it.

``write_atomic`` is the one way edis-fleet writes its own output files: reports, plan files
and the simulator's URL file. (Generated root passwords have their own, stricter writer in
``orchestrator.secrets``; the simulator package writes no files.)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], text: str, *, mode: int = 0o600) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` with permissions ``mode``.

    The text goes to a temporary file in the same directory, is flushed to disk, and the file
    is renamed over ``path``: a reader sees the old file or the new one, and after a crash
    there is no half-written file under ``path``. The temporary file is removed when anything
    fails. Raises ``OSError`` (e.g. ``FileNotFoundError`` for a missing directory).
    """
    target = Path(path)
    directory = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename itself is durable once the directory is synced; where a directory cannot be
    # opened or synced (some file systems), the file is still whole.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
