"""Where credentials come from: sources (env, file, generated, literal) and reading them.

Root passwords are described by *sources* (``EnvPassword``, ``FilePassword``,
``GeneratedPassword``); ``PasswordBook`` turns a source into a ``Secret`` when one is needed,
and ``write_generated_passwords`` keeps generated ones in their 0600 file.
"""

from __future__ import annotations

import os
import secrets
import stat
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.secrets.values import Secret


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

    Raises ``KeyError`` (variable unset), ``OSError`` (file unreadable) or ``ValueError``
    (empty); none of those messages contain the value.
    """
    if isinstance(source, LiteralValue):
        return source.value
    if isinstance(source, EnvPassword):
        value = env[source.name]
    else:
        text = source.path.read_text(encoding="utf-8")
        value = text.splitlines()[0] if text else ""
    if not value:
        raise ValueError(f"{source.describe()} is empty")
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


def write_generated_passwords(path: Path, passwords: Mapping[str, Secret]) -> None:
    """Append ``kvm_id<TAB>password`` lines to ``path``, creating it with mode 0600 (and
    missing directories with mode 0700).

    Raises ``PermissionError`` when an existing file is readable by group or others (the
    passwords would leak), or ``OSError`` from the file system.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"{path} is accessible by group or others; chmod 600 it first")
        data = "".join(f"{k}\t{v.reveal()}\n" for k, v in passwords.items())
        os.write(fd, data.encode("utf-8"))
    finally:
        os.close(fd)
