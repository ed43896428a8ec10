"""The ``edis-fleet`` command: argument parsing, wiring, printing and exit codes.

The cli package is the only code that prints or reads ``os.environ`` (besides the default
``env`` of the library API, ``orchestrator.run.library``). Each subcommand lives in a module of
its own with a ``register(subparsers)`` function that adds its parser and sets ``handler`` to a
function ``(args) -> int``. Registering imports nothing heavy (``edis-fleet --help`` stays
fast): it builds typed options (``cli/args.py``) once from argv, and each handler imports the
library when it runs, calls it, prints, and maps the result to an exit code. Command modules do
not import each other (import-linter checks it); shared printing is ``cli/output.py``, the
run's progress, reports and exit codes ``cli/running.py``.

Exit codes: ``cli/exitcodes.py`` (the table of ``--help`` and the README), computed for a
recorded run by ``report.contract.judge`` over the whole run. ``--debug`` shows the traceback of
an internal error (exit 70); without it, one line says what broke and how to resume.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from orchestrator.cli import (
    account_cmd,
    apply_cmd,
    debug,
    exitcodes,
    init_cmd,
    plan_cmd,
    resume_cmd,
    runs_cmd,
    simulator_cmd,
    validate_cmd,
)
from orchestrator.version import __version__

EPILOG = exitcodes.TABLE


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="edis-fleet",
        description="Reinstall whole fleets of EDIS Global KVM VPSes. Reinstall WIPES DISKS.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edis-fleet {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="on an internal error (exit 70), print the full traceback",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (
        init_cmd,
        account_cmd,
        validate_cmd,
        plan_cmd,
        apply_cmd,
        resume_cmd,
        runs_cmd,
        simulator_cmd,
    ):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return exitcodes.USAGE
    token = debug.DEBUG.set(bool(args.debug))
    try:
        code: int = handler(args)
    except Exception as exc:  # the last boundary: an error no handler mapped is internal
        sys.stderr.write(f"edis-fleet: internal error: {type(exc).__name__}\n")
        debug.explain(exc, sys.stderr)
        return exitcodes.CRASHED
    finally:
        debug.DEBUG.reset(token)
    return code
