"""Where the journal lives: a SQLite file (the default) or a PostgreSQL database (a URL).

``--journal`` (or ``EDIS_FLEET_JOURNAL``) is either a path or a ``postgresql://`` URL. The
URL's password may be written in it, be a source — ``{env:NAME}`` or ``{file:PATH}`` (its
first line) — or be left out, so that libpq finds it in its own places (``PGPASSWORD``,
``PGPASSFILE``, ``~/.pgpass``). The password is never shown: ``JournalConfig.shown`` and every
message use the URL with the password replaced by ``***``.

The cli builds a ``JournalConfig`` from argv and the environment (it is the only code that
reads ``os.environ``); everything below takes the mapping it is given.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from orchestrator.errors import JournalError
from orchestrator.journal.hostlock import HostLocks, account_scope
from orchestrator.secrets import EnvPassword, FilePassword, Secret, read_source

#: The journal of a run when neither ``--journal`` nor ``EDIS_FLEET_JOURNAL`` says otherwise.
DEFAULT_JOURNAL = Path(".edis-fleet") / "journal.sqlite"
#: The environment variable naming the journal (a path or a URL; a CI secret for a URL).
JOURNAL_ENV = "EDIS_FLEET_JOURNAL"
#: Overrides the host name written into locks (a runner's name in CI; tests play two hosts).
HOSTNAME_ENV = "EDIS_FLEET_HOSTNAME"

_SCHEMES = ("postgresql://", "postgres://")
# ``user:{env:NAME}@`` or ``user:{file:PATH}@`` in the URL's authority. Matched before the URL
# is parsed: a file path contains slashes, which would end the authority early.
_SOURCE = re.compile(r"^(?P<head>[a-z]+://[^:@/]*:)\{(?P<kind>env|file):(?P<ref>[^}]+)\}@")
_PASSWORD = re.compile(r"^(?P<head>[a-z]+://[^:@/]*:)(?P<pw>[^@]*)@", re.IGNORECASE)


def is_url(location: str) -> bool:
    """Return whether ``location`` names a PostgreSQL database rather than a SQLite file."""
    return location.lower().startswith(_SCHEMES)


def redact_url(text: str) -> str:
    """Return ``text`` (a journal location) with any password in it replaced by ``***``."""
    if not is_url(text):
        return text
    text = _SOURCE.sub(lambda m: f"{m['head']}***@", text, count=1)
    return _PASSWORD.sub(lambda m: f"{m['head']}***@", text, count=1)


@dataclass(frozen=True)
class JournalConfig:
    """Which journal a run uses and as whom it takes locks.

    ``location`` is a path or a ``postgresql://`` URL as given (it may hold a password or a
    password source: never print it, print ``shown``); ``hostname`` overrides the host name
    in locks; ``host_lock_dir`` is where the host-wide VPS locks live (``None``: none are taken,
    for tests and tools that only read).
    """

    location: str
    hostname: str | None = None
    host_lock_dir: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_env(cls, location: str | None, env: Mapping[str, str]) -> JournalConfig:
        """Return the config for ``--journal location`` (``None``: ``EDIS_FLEET_JOURNAL``, else
        ``DEFAULT_JOURNAL``), the host name of ``EDIS_FLEET_HOSTNAME`` and the host lock
        directory under ``$XDG_STATE_HOME`` (else ``~/.local/state``)."""
        where = location or env.get(JOURNAL_ENV) or str(DEFAULT_JOURNAL)
        return cls(
            location=where,
            hostname=env.get(HOSTNAME_ENV) or None,
            host_lock_dir=state_dir(env) / "locks",
            env=dict(env),
        )

    @property
    def is_url(self) -> bool:
        """True for a PostgreSQL journal."""
        return is_url(self.location)

    @property
    def shown(self) -> str:
        """The location as it may be printed (password replaced by ``***``)."""
        return redact_url(self.location)

    @property
    def path(self) -> Path:
        """The SQLite file (only for a path location)."""
        return Path(self.location)

    def host_locks(self, endpoint: str, account: str) -> HostLocks | None:
        """The host-wide locks of a run against ``account`` at ``endpoint`` (``None`` when
        this config has no host lock directory). Nothing is touched before the first lock."""
        if self.host_lock_dir is None:
            return None
        return HostLocks(self.host_lock_dir, account_scope(endpoint, account), journal=self.shown)

    def effective_hostname(self) -> str:
        """The host name locks are taken as."""
        return self.hostname or socket.gethostname()

    def conninfo(self) -> tuple[str, Secret | None]:
        """Return the URL to connect with (password source resolved) and the password when
        one was given in the URL (to register with the redactor).

        Raises ``JournalError`` (without the password) when a source cannot be read.
        """
        text = self.location
        match = _SOURCE.match(text)
        if match:
            ref = match["ref"]
            source = EnvPassword(ref) if match["kind"] == "env" else FilePassword(Path(ref), ref)
            try:
                value = read_source(source, self.env)
            except (KeyError, OSError, ValueError) as exc:
                why = "is not set" if isinstance(exc, KeyError) else f"({type(exc).__name__})"
                raise JournalError(
                    f"journal {self.shown}: password {source.describe()} {why}"
                ) from None
            text = f"{match['head']}{quote(value, safe='')}@" + text[match.end() :]
        parts = urlsplit(text)
        password = Secret(unquote(parts.password)) if parts.password else None
        if parts.scheme.lower() not in ("postgresql", "postgres"):
            raise JournalError(f"journal {self.shown}: not a postgresql:// URL")
        return urlunsplit(parts), password


def state_dir(env: Mapping[str, str]) -> Path:
    """The user's state directory for edis-fleet: ``$XDG_STATE_HOME/edis-fleet`` or
    ``~/.local/state/edis-fleet`` (XDG base directories)."""
    base = env.get("XDG_STATE_HOME") or ""
    if not base or not os.path.isabs(base):  # the spec says: relative paths are invalid
        home = env.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".local", "state")
    return Path(base) / "edis-fleet"
