"""Options shared by several subcommands, and the typed options built from them.

Parsers are registered without loading the run: this module imports only the light
``orchestrator.run.options``. Each ``*_options(args)`` builds an immutable options object once,
from the parsed argv; handlers pass those to the library, never the ``Namespace``.
"""

from __future__ import annotations

import argparse
import re

from orchestrator.run.options import (
    DEFAULT_JOURNAL,
    AccountOptions,
    Confirmation,
    Endpoint,
    LoadOptions,
    LogFormat,
    OutputOptions,
    SelectionOptions,
)


def add_selection_arguments(p: argparse.ArgumentParser) -> None:
    """Add FLEET and the selection options shared by validate, plan and run."""
    p.add_argument("fleet", metavar="FLEET.yaml", help="the fleet manifest")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=VALUE[,VALUE]",
        help="keep VPSes with this tag (tag=web) or group (group=db); repeat to narrow further",
    )
    p.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="KVM_ID[,KVM_ID]",
        help="keep only these VPSes",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="KVM_ID[,KVM_ID]",
        help="leave these VPSes out",
    )
    p.add_argument(
        "--include-protected",
        action="store_true",
        help="also select VPSes marked 'protected: true' (they are left out otherwise)",
    )


def add_account_overrides(p: argparse.ArgumentParser) -> None:
    """Options that point a manifest at another API endpoint (a rehearsal on the simulator)."""
    p.add_argument(
        "--session-url",
        metavar="URL",
        help="use this session URL instead of the manifest's (e.g. the bundled simulator)",
    )
    p.add_argument(
        "--allow-api-host",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also allow these api hosts (a host, '*.domain' or a CIDR such as 127.0.0.0/8)",
    )


def add_journal_argument(p: argparse.ArgumentParser) -> None:
    """Add ``--journal``."""
    p.add_argument(
        "--journal",
        default=None,
        metavar="PATH|URL",
        help=(
            "the run journal: a SQLite file, or a postgresql:// URL shared by several runners "
            f"(default: $EDIS_FLEET_JOURNAL, else {DEFAULT_JOURNAL})"
        ),
    )


def add_output_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by the commands that run reinstalls (apply, resume, retry-failed)."""
    add_journal_argument(p)
    p.add_argument("--report-json", metavar="FILE", help="write the JSON report here at the end")
    p.add_argument("--junit", metavar="FILE", help="write a JUnit XML report here at the end")
    p.add_argument(
        "--known-hosts",
        metavar="FILE",
        help="readiness mode ssh: write each proven VPS's new host key here (known_hosts format)",
    )
    p.add_argument(
        "--events",
        metavar="FILE",
        help="stream one JSON line per state change to FILE ('-' for stdout)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress and no final report on the terminal"
    )
    p.add_argument(
        "--details",
        action="store_true",
        help="print the per-VPS report before the verdict (else: edis-fleet report RUN_ID)",
    )
    p.add_argument(
        "--log-format",
        choices=[f.value for f in LogFormat],
        default=LogFormat.TEXT.value,
        help="progress as text (a live view on a terminal) or as JSON lines",
    )


def selection_options(args: argparse.Namespace) -> SelectionOptions:
    """Return the selection options given on the command line."""
    return SelectionOptions(
        only=tuple(args.only),
        limit=tuple(args.limit),
        exclude=tuple(args.exclude),
        include_protected=args.include_protected,
    )


def load_options(args: argparse.Namespace) -> LoadOptions:
    """Return which manifest to load, with the selection and ``--strict``."""
    return LoadOptions(fleet=args.fleet, selection=selection_options(args), strict=args.strict)


def endpoint(args: argparse.Namespace) -> Endpoint:
    """Return the endpoint overrides (``--session-url``, ``--allow-api-host``)."""
    return Endpoint(session_url=args.session_url, extra_api_hosts=tuple(args.allow_api_host))


def output_options(args: argparse.Namespace) -> OutputOptions:
    """Return the journal, report and progress options of a run."""
    return OutputOptions(
        journal=args.journal,
        report_json=args.report_json,
        junit=args.junit,
        known_hosts=args.known_hosts,
        events=args.events,
        quiet=args.quiet,
        log_format=LogFormat(args.log_format),
        details=args.details,
    )


def confirmation(args: argparse.Namespace) -> Confirmation:
    """Return ``--yes`` and ``--confirm-count``."""
    return Confirmation(yes=args.yes, count=args.confirm_count)


def add_account_arguments(p: argparse.ArgumentParser) -> None:
    """Options of the commands that read an account without a manifest (init, vps, images):
    where the login is read from, the endpoint overrides and the request rate."""
    defaults = AccountOptions()
    p.add_argument(
        "--email-env",
        default=defaults.email_env,
        metavar="VAR",
        help=f"the environment variable holding the account's e-mail ({defaults.email_env})",
    )
    p.add_argument(
        "--password-env",
        default=defaults.password_env,
        metavar="VAR",
        help=f"the environment variable holding its password ({defaults.password_env})",
    )
    p.add_argument(
        "--session-url",
        metavar="URL",
        help="the session URL, when not the provider's (e.g. the bundled simulator's); init "
        "writes it into the manifest",
    )
    p.add_argument(
        "--allow-api-host",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also allow these api hosts (a host, '*.domain' or a CIDR such as 127.0.0.0/8)",
    )
    p.add_argument("--ca-file", metavar="PEM", help="also trust this CA (a private proxy)")
    p.add_argument(
        "--rate",
        type=_rate,
        default=defaults.rate,
        metavar="N",
        help=f"at most N requests per second ({defaults.rate:g}); every request is read-only",
    )


def account_options(args: argparse.Namespace) -> AccountOptions:
    """Return the account options given on the command line."""
    return AccountOptions(
        email_env=args.email_env,
        password_env=args.password_env,
        session_url=args.session_url,
        extra_api_hosts=tuple(args.allow_api_host),
        ca_file=args.ca_file,
        rate=args.rate,
    )


def count(text: str) -> int:
    """An argparse type: a whole number written in ASCII digits, 0 to 1,000,000 (``int``
    alone would take other scripts' digits and any size).

    Raises ``argparse.ArgumentTypeError`` for anything else.
    """
    if not re.fullmatch(r"[0-9]{1,7}", text, re.ASCII) or int(text) > 1_000_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 0 to 1000000")
    return int(text)


def _rate(text: str) -> float:
    # ASCII only: float() would also read other scripts' digits.
    try:
        value = float(text) if re.fullmatch(r"[0-9.eE+-]{1,32}", text, re.ASCII) else 0.0
    except ValueError:
        value = 0.0
    if not 0.01 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate from 0.01 to 1000 per second")
    return value
