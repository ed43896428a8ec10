"""Where credentials come from: sources (env, file, generated, literal) and reading them.

Root passwords are described by *sources* (``EnvPassword``, ``FilePassword``,
``GeneratedPassword``); ``PasswordBook`` turns a source into a ``Secret`` when one is needed,
and ``write_generated_passwords`` keeps generated ones in their 0600 file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.localfiles import MAX_CREDENTIAL_FILE_BYTES, LocalFileError, read_text
from orchestrator.secrets.values import Secret

# The longest credential accepted (a password, an e-mail): far above any real one, and small
# enough that redacting it and rendering it stay cheap.
MAX_SECRET_CHARS = 1024


@dataclass(frozen=True, slots=True)
class EnvPassword:
    """A password read from the environment variable ``name``."""

    name: str

    def describe(self) -> str:
        """Say where the password comes from, without its value."""
        return f"env {self.name}"


@dataclass(frozen=True, slots=True)
class FilePassword:
    """A password read from a file (its first line); ``path`` is resolved, ``shown`` as written."""

    path: Path
    shown: str

    def describe(self) -> str:
        """Say where the password comes from, without its value."""
        return f"file {self.shown}"


@dataclass(frozen=True, slots=True)
class GeneratedPassword:
    """One fresh password per VPS, written to ``output`` (mode 0600) by the run, never printed."""

    output: Path
    shown: str

    def describe(self) -> str:
        """Say where the password comes from."""
        return f"generated, written to {self.shown}"


@dataclass(frozen=True, slots=True)
class LiteralValue:
    """A non-secret value written in the manifest (only the account e-mail may be one)."""

    value: str

    def describe(self) -> str:
        """Return the value itself: it is not a secret."""
        return self.value


PasswordSource = EnvPassword | FilePassword | GeneratedPassword
CredentialSource = EnvPassword | FilePassword | LiteralValue


def read_source(source: EnvPassword | FilePassword | LiteralValue, env: Mapping[str, str]) -> str:
    """Return the value behind a source.

    A file must be a regular file of at most 64 KiB (``localfiles``); the value (a file's
    first line) at most ``MAX_SECRET_CHARS`` characters. Raises ``KeyError`` (variable
    unset), ``OSError`` (file unreadable or unsuitable) or ``ValueError`` (empty, too long);
    none of those messages contain the value.
    """
    if isinstance(source, LiteralValue):
        return source.value
    if isinstance(source, EnvPassword):
        value = env[source.name]
    else:
        try:
            text = read_text(source.path, max_bytes=MAX_CREDENTIAL_FILE_BYTES)
        except LocalFileError as exc:
            raise LocalFileError(f"{source.describe()} {exc}") from None
        value = text.splitlines()[0] if text else ""
    if not value:
        raise ValueError(f"{source.describe()} is empty")
    if len(value) > MAX_SECRET_CHARS:
        raise ValueError(
            f"{source.describe()} holds a value of {len(value):,} characters; "
            f"at most {MAX_SECRET_CHARS} are accepted"
        )
    return value


_ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = 24) -> Secret:
    """Return a fresh random password (letters and digits, at least one of each class).

    Letters and digits only, so the password needs no quoting in YAML, shell or form bodies.
    """
    while True:
        value = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        if (
            any(c.islower() for c in value)
            and any(c.isupper() for c in value)
            and any(c.isdigit() for c in value)
        ):
            return Secret(value)


class HasRootPassword(Protocol):
    """What ``PasswordBook`` needs of a fleet entry (``orchestrator.fleet.VpsEntry``)."""

    @property
    def id(self) -> str: ...

    @property
    def root_password(self) -> PasswordSource: ...


class PasswordBook:
    """Hands out root passwords per VPS from their sources; generated ones are remembered.

    ``env`` is the process environment, injected by the command line.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._read: dict[PasswordSource, Secret] = {}
        self.generated: dict[str, Secret] = {}

    def root_password(self, entry: HasRootPassword) -> Secret:
        """Return the root password for ``entry``; raises like ``read_source``."""
        source = entry.root_password
        if isinstance(source, GeneratedPassword):
            if entry.id not in self.generated:
                self.generated[entry.id] = generate_password()
            return self.generated[entry.id]
        if source not in self._read:
            self._read[source] = Secret(read_source(source, self._env))
        return self._read[source]


# The file of generated passwords. Others must not be able to read it, replace it, or make
# the tool write into a file of theirs: the file is opened with O_NOFOLLOW (a symbolic link
# is refused), must be a regular file owned by the current user with no group or other
# permissions, and its directory must be owned by the current user or root and not be
# writable by group or others unless it has the sticky bit (like /tmp: there nobody else can
# remove or replace the file, and a file planted in advance is refused by its owner).


# Linux's limits on a whole path and on one of its names, in bytes.
_PATH_MAX = 4096
_NAME_MAX = 255


def _directory_problem(st: os.stat_result, shown: str) -> str | None:
    if not stat.S_ISDIR(st.st_mode):
        return f"{shown} is not a directory"
    if st.st_uid not in (os.geteuid(), 0):
        return f"directory {shown} belongs to another user (uid {st.st_uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        mode = stat.S_IMODE(st.st_mode)
        return (
            f"directory {shown} is writable by group or others (mode {mode:04o}), who could "
            "replace the file; use a private directory (chmod go-w, or 0700)"
        )
    return None


def _file_problem(st: os.stat_result, shown: str) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return f"{shown} is a symbolic link; generated passwords are never written through one"
    if not stat.S_ISREG(st.st_mode):
        return f"{shown} exists and is not a regular file"
    if st.st_uid != os.geteuid():
        return f"{shown} belongs to another user (uid {st.st_uid}); it is never appended to"
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        mode = stat.S_IMODE(st.st_mode)
        return (
            f"{shown} is accessible by group or others (mode {mode:04o}); generated "
            "passwords are only written to a private file: chmod 600 it"
        )
    return None


def generated_output_problem(path: Path, shown: str) -> str | None:
    """Say why generated passwords could not be written safely to ``path``, or None.

    Writes nothing: used by ``validate``. Missing directories are fine (they are created
    with mode 0700) when the nearest existing one passes the directory rules.
    """
    raw = os.fsencode(path)
    if b"\x00" in raw or len(raw) >= _PATH_MAX or any(len(p) > _NAME_MAX for p in raw.split(b"/")):
        return f"{shown} is not a usable path (a NUL character, or too long)"
    ancestor = path.parent
    try:
        while not os.path.lexists(ancestor) and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        at = (os.path.dirname(shown) or ".") if ancestor == path.parent else str(ancestor)
        problem = _directory_problem(os.stat(ancestor), at)
        if problem is not None or ancestor != path.parent:
            return problem
        if not os.path.lexists(path):
            return None
        return _file_problem(os.lstat(path), shown)
    except OSError as exc:
        return f"cannot check {shown}: {exc.strerror or type(exc).__name__}"


def _make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each with mode 0700 (``mkdir -p`` would
    give the parents the default mode)."""
    missing: list[Path] = []
    while not os.path.lexists(directory) and directory != directory.parent:
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        # Made meanwhile by someone else: the checks that follow judge it.
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)


def write_generated_passwords(
    path: Path, passwords: Mapping[str, Secret], *, shown: str | None = None
) -> None:
    """Append ``kvm_id<TAB>password`` lines to ``path``, creating it with mode 0600 (and
    missing directories with mode 0700).

    The rules above are checked on the opened directory and file (not on names that could
    change in between). Raises ``PermissionError`` saying which rule the file or its
    directory breaks, or ``OSError`` from the file system; nothing is written then.
    """
    name = shown or str(path)
    _make_private_dirs(path.parent)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        problem = _directory_problem(os.fstat(dir_fd), os.path.dirname(name) or ".")
        if problem is not None:
            raise PermissionError(problem)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK
        try:
            fd = os.open(path.name, flags | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                raise PermissionError(
                    f"{name} is a symbolic link; generated passwords are never written through one"
                ) from None
            raise
    finally:
        os.close(dir_fd)
    try:
        problem = _file_problem(os.fstat(fd), name)
        if problem is not None:
            raise PermissionError(problem)
        data = "".join(f"{k}\t{v.reveal()}\n" for k, v in passwords.items())
        os.write(fd, data.encode("utf-8"))
    finally:
        os.close(fd)
