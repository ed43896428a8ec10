"""Reading the local files a manifest names, safely: bounded, regular files only, confined.

Every file edis-fleet reads because a manifest (or the command line) names it goes through
``read_text``: the manifest itself, cloud-init templates and their includes, password and
e-mail files. A file is opened with ``O_NONBLOCK`` (a FIFO never blocks the tool), must be a
regular file by ``fstat`` (not ``/dev/zero``, a FIFO, a socket or a directory), and is read
only up to its size cap, so a huge or endless file is a listed problem, never an
out-of-memory. ``check_regular`` does the same checks without reading (``validate`` uses it
where the content is not needed). ``resolve_inside`` confines a relative path to a
directory tree after resolving symlinks (templates may not leave the manifest's directory).

Errors are ``LocalFileError`` whose text says what is wrong with the file, never what is in
it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

__all__ = [
    "MAX_CA_FILE_BYTES",
    "MAX_CREDENTIAL_FILE_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_TEMPLATE_BYTES",
    "LocalFileError",
    "check_regular",
    "read_text",
    "resolve_inside",
]

# A manifest of 50,000 VPSes is about 5 MiB; 64 MiB leaves room and still bounds memory.
MAX_MANIFEST_BYTES = 64 << 20
# A template renders to at most user_data_limit (1 MiB at the most); its source is smaller.
MAX_TEMPLATE_BYTES = 1 << 20
# Password and e-mail files hold one line; a CA bundle is a few hundred KiB.
MAX_CREDENTIAL_FILE_BYTES = 64 << 10
MAX_CA_FILE_BYTES = 4 << 20

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class LocalFileError(OSError):
    """A file that cannot be used; the text says why (never what the file holds).

    An ``OSError``, so that callers that handle unreadable files handle these too.
    """


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _os_reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "not found"
    if exc.errno == errno.ELOOP:
        return "is a symbolic link, which is not followed here"
    return f"cannot be read: {exc.strerror or type(exc).__name__}"


def _open(path: Path, *, follow: bool) -> int:
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
    try:
        return os.open(path, flags)
    except OSError as exc:
        raise LocalFileError(_os_reason(exc)) from None
    except ValueError:  # a NUL character: no file system takes it
        raise LocalFileError("is not a usable path (it holds a NUL character)") from None


def _check(fd: int, max_bytes: int) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise LocalFileError(f"is {_kind(st.st_mode)}, not a regular file")
    if st.st_size > max_bytes:
        raise LocalFileError(f"is {st.st_size:,} bytes, over the limit of {max_bytes:,}")
    return st


def check_regular(path: Path, *, max_bytes: int, follow: bool = True) -> os.stat_result:
    """Check ``path`` is a readable regular file of at most ``max_bytes``; return its stat.

    Opens it without blocking (a FIFO is refused, not waited on) and reads nothing. Raises
    ``LocalFileError``.
    """
    fd = _open(path, follow=follow)
    try:
        return _check(fd, max_bytes)
    finally:
        os.close(fd)


def read_text(path: Path, *, max_bytes: int, follow: bool = True) -> str:
    """Return the UTF-8 text of the regular file ``path``, at most ``max_bytes`` long.

    Never blocks on a FIFO and never reads past the cap (a file that grows while being read
    is refused too). ``follow=False`` refuses a symbolic link as the last component. Raises
    ``LocalFileError`` (not found, not a regular file, too large, unreadable, not UTF-8).
    """
    fd = _open(path, follow=follow)
    try:
        _check(fd, max_bytes)
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - size))
            except OSError as exc:
                raise LocalFileError(_os_reason(exc)) from None
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise LocalFileError(f"grew past the limit of {max_bytes:,} bytes while read")
    finally:
        os.close(fd)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise LocalFileError("is not UTF-8 text") from None


def resolve_inside(base: Path, relative: str) -> Path:
    """Return ``base / relative`` with symlinks resolved, if it stays inside ``base``'s tree.

    ``base`` must already be resolved. An absolute path, or one that leaves the tree (by
    ``..`` or through a symbolic link that points outside), raises ``LocalFileError``.
    """
    if not relative or "\x00" in relative:
        raise LocalFileError("is not a usable path")
    if os.path.isabs(relative) or relative.startswith("~"):
        raise LocalFileError(
            "is an absolute path; templates must be inside the manifest's directory, "
            "named relative to it"
        )
    try:
        resolved = (base / relative).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise LocalFileError("cannot be resolved (a symbolic link loop?)") from None
    if not resolved.is_relative_to(base):
        raise LocalFileError(
            "is outside the manifest's directory (after following '..' and symbolic links); "
            "templates must stay inside it"
        )
    return resolved
