"""Typed options of a run: what to select, which endpoint, where to journal and report.

Built once (by the command line from argv, or by a Python caller) and never changed: a derived
option set is a copy (``dataclasses.replace``). This module imports nothing heavy, so the
command line can build its parsers from these defaults without loading the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

DEFAULT_JOURNAL = Path(".edis-fleet") / "journal.sqlite"
# More VPSes than this in one run (or any protected one) needs an explicit confirmation.
GUARD_LIMIT = 10


class LogFormat(StrEnum):
    """How progress is written: text (a live view on a terminal) or JSON lines."""

    TEXT = "text"
    JSON = "json"


class PlanFormat(StrEnum):
    """How a plan is printed: the text a person reads, or the plan file's JSON."""

    TEXT = "text"
    JSON = "json"


class ReportFormat(StrEnum):
    """The formats of a run's report."""

    TEXT = "text"
    JSON = "json"
    JUNIT = "junit"
    NDJSON = "ndjson"
    MARKDOWN = "markdown"
    HTML = "html"


@dataclass(frozen=True)
class SelectionOptions:
    """The selection as the user wrote it: each item may hold comma-separated values.

    ``only`` items are ``tag=NAME[,NAME]`` or ``group=NAME[,NAME]`` (all must match);
    ``limit`` keeps only the named VPSes, ``exclude`` drops them; protected VPSes are left out
    unless ``include_protected``. Parsed (and checked) when a manifest is loaded.
    """

    only: tuple[str, ...] = ()
    limit: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    include_protected: bool = False

    @property
    def narrows(self) -> bool:
        """True when any option was given (everything not protected is selected otherwise)."""
        return bool(self.only or self.limit or self.exclude or self.include_protected)

    @classmethod
    def from_recorded(cls, chosen: Mapping[str, Any]) -> SelectionOptions:
        """Return the selection that plans and runs record (``Plan.selection``)."""
        return cls(
            only=tuple(f"{key}={','.join(values)}" for key, values in chosen.get("only", [])),
            limit=(",".join(chosen["limit"]),) if chosen.get("limit") else (),
            exclude=(",".join(chosen["exclude"]),) if chosen.get("exclude") else (),
            include_protected=bool(chosen.get("include_protected")),
        )


@dataclass(frozen=True)
class Endpoint:
    """Where the API is, when not where the manifest says: ``session_url`` replaces the
    manifest's (e.g. the bundled simulator) and ``extra_api_hosts`` are allowed besides the
    manifest's (a host, ``*.domain`` or a CIDR such as ``127.0.0.0/8``)."""

    session_url: str | None = None
    extra_api_hosts: tuple[str, ...] = ()

    def or_recorded(self, recorded: Mapping[str, Any]) -> Endpoint:
        """Return this endpoint, completed from a run's recorded options where it says nothing.

        A resumed rehearsal stays a rehearsal: it talks to the API the run talked to.
        """
        url = self.session_url
        if not url and isinstance(recorded.get("session_url"), str):
            url = recorded["session_url"]
        hosts = self.extra_api_hosts
        if not hosts and isinstance(recorded.get("allow_api_host"), list):
            hosts = tuple(str(h) for h in recorded["allow_api_host"])
        return Endpoint(session_url=url, extra_api_hosts=hosts)


@dataclass(frozen=True)
class LoadOptions:
    """Which manifest to load and how: ``fleet`` is its path as given (messages quote it),
    ``strict`` turns warnings into problems."""

    fleet: str
    selection: SelectionOptions = SelectionOptions()
    strict: bool = False


@dataclass(frozen=True)
class Confirmation:
    """The operator's say-so for a large or protected run: ``yes``, or ``count`` equal to the
    number of VPSes the run would wipe."""

    yes: bool = False
    count: int | None = None


@dataclass(frozen=True)
class OutputOptions:
    """Where a run is journaled and reported, and how its progress is shown.

    ``journal`` is ``--journal`` as given: a SQLite path or a ``postgresql://`` URL (``None``:
    ``EDIS_FLEET_JOURNAL``, else ``DEFAULT_JOURNAL``). ``events`` is a file for one JSON line
    per state change (``-``: stdout); ``quiet`` shows neither progress nor the final report;
    ``details`` prints the per-VPS report before the closing verdict.
    """

    journal: str | None = None
    report_json: str | None = None
    junit: str | None = None
    # Readiness mode ssh: a known_hosts file with each proven VPS's new host key.
    known_hosts: str | None = None
    events: str | None = None
    quiet: bool = False
    log_format: LogFormat = LogFormat.TEXT
    details: bool = False


@dataclass(frozen=True)
class AccountOptions:
    """How to reach an account without a manifest (``init``, ``vps``, ``images``).

    ``email_env`` and ``password_env`` name the environment variables that hold the login (the
    values never travel in argv); ``session_url`` replaces the provider's session host (e.g.
    the bundled simulator; ``None``: the provider's) and ``extra_api_hosts`` are allowed besides
    ``*.edisglobal.com``. ``rate`` caps the requests per second and ``concurrency`` the
    requests in flight; every call is read-only.
    """

    email_env: str = "EDIS_EMAIL"
    password_env: str = "EDIS_PASSWORD"  # noqa: S105 (a variable name, not a password)
    session_url: str | None = None
    extra_api_hosts: tuple[str, ...] = ()
    ca_file: str | None = None
    rate: float = 5.0
    concurrency: int = 8


class ListFormat(StrEnum):
    """How ``vps`` and ``images`` print: a table a person reads, or JSON."""

    TEXT = "text"
    JSON = "json"
