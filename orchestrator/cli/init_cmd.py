"""``edis-fleet init [FLEET.yaml]``: write a first manifest from the account, or the example.

Reads the account with read-only requests (login from the variables ``--email-env`` and
``--password-env`` name), and writes every VPS it lists with its hostname, a default image
most of them offer (or ``--image``), the login and root password as ``{env: ...}``
references, a commented-out cloud-init template and a canary-first rollout. ``--example``
writes the bundled example instead, without any account. Never overwrites without ``--force``.
Exit 0, 2 (a file exists, a pattern or image matches nothing, the account cannot be read) or 3
(the login was refused).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from orchestrator.cli import exitcodes
from orchestrator.cli.args import account_options, add_account_arguments

DEFAULT_PATH = "fleet.yaml"


def register(sub: Any) -> None:
    """Add the ``init`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "init",
        help="write a first fleet manifest from the account (read-only requests)",
        description="Write a fleet manifest listing the account's VPSes: hostnames, a default "
        "image they offer, credentials read from the environment, a commented-out cloud-init "
        "template and a canary-first rollout. Nothing is wiped; no file is overwritten "
        "without --force.",
    )
    p.add_argument(
        "fleet",
        nargs="?",
        default=DEFAULT_PATH,
        metavar="FLEET.yaml",
        help=f"where to write the manifest (default {DEFAULT_PATH})",
    )
    add_account_arguments(p)
    p.add_argument("--image", help="the default image (default: the one most VPSes offer)")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="keep VPSes whose id or hostname matches (e.g. 'web-*'); repeat for more",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave out VPSes whose id or hostname matches; repeat for more",
    )
    p.add_argument(
        "--root-password-env",
        default="EDIS_ROOT_PASSWORD",
        metavar="VAR",
        help="the variable the manifest reads the new root password from (EDIS_ROOT_PASSWORD)",
    )
    p.add_argument(
        "--with-templates",
        action="store_true",
        help="also write the example cloud-init templates to templates/ beside the manifest",
    )
    p.add_argument(
        "--example",
        action="store_true",
        help="write the bundled example manifest (the simulator's five VPSes) and its "
        "templates instead; no account is read",
    )
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Write the manifest (and templates); print what was written and what to run next."""
    import anyio

    from orchestrator.cli.output import account_failure, counter
    from orchestrator.errors import EdisFleetError
    from orchestrator.run.starter import init, write_example

    options = account_options(args)
    secret = os.environ.get(options.password_env, "")
    show = counter(sys.stderr)
    try:
        if args.example:
            written = write_example(args.fleet, force=args.force)
            for path in written:
                sys.stdout.write(f"wrote {path}\n")
            sys.stdout.write(_next_steps(args.fleet, example=True))
            return exitcodes.OK
        result = anyio.run(
            lambda: init(
                args.fleet,
                account=options,
                image=args.image,
                only=tuple(args.only),
                exclude=tuple(args.exclude),
                root_password_env=args.root_password_env,
                with_templates=args.with_templates,
                force=args.force,
                env=dict(os.environ),
                progress=show,
            )
        )
    except (EdisFleetError, OSError) as exc:
        return account_failure(exc, secret, sys.stderr)
    finally:
        if show is not None:
            show("", 0, 0)
    lines = [f"wrote {result.written[0]}: {result.vps} VPS(es), default image {result.image} "
             f"(offered to {result.offered_by})"]  # fmt: skip
    if result.overrides:
        lines.append(f"  {result.overrides} VPS(es) get an image of their own (not offered it)")
    if result.commented:
        lines.append(f"  {len(result.commented)} written commented out (not reinstallable now):")
        lines += [f"    {kvm_id}: {why}" for kvm_id, why in result.commented]
    if result.left_out:
        lines.append(f"  {result.left_out} left out by --only/--exclude")
    lines += [f"wrote {path}" for path in result.written[1:]]
    sys.stdout.write("\n".join(lines) + "\n")
    for warning in result.warnings:
        sys.stderr.write(f"warning: {warning}\n")
    sys.stdout.write(_next_steps(args.fleet, example=False))
    return exitcodes.OK


def _next_steps(fleet: str, *, example: bool) -> str:
    """Return the commands to run next (the example names the simulator's account)."""
    lines = ["next:"]
    if example:
        lines += [
            "  it names the bundled simulator's first five VPSes: start `edis-fleet simulator`",
            "  (it prints its URL and login), set EDIS_EMAIL, EDIS_PASSWORD and",
            "  EDIS_ROOT_PASSWORD, then:",
            f"  edis-fleet validate {fleet}",
            f"  edis-fleet plan {fleet} --session-url URL --allow-api-host 127.0.0.0/8",
        ]
    else:
        lines += [
            f"  edis-fleet validate {fleet}",
            f"  edis-fleet plan {fleet}",
            f"  edis-fleet apply {fleet}   # WIPES THE DISKS of the selected VPSes",
        ]
    return "\n".join(lines) + "\n"
