"""``edis-fleet vps`` and ``edis-fleet images``: what the account holds, without a manifest.

``vps`` lists every VPS of the account (id, hostname, IPv4 addresses, suspended, power state);
``images KVM_ID...`` (or ``--all``, grouped by identical lists) the images each can install.
Read-only requests, rate-limited and retried; the login comes from the variables
``--email-env`` and ``--password-env`` name. ``--format json`` for scripts.
Exit 0; 1 when some VPS could not be read; 2 (an id not in the account, a usage or connection
problem) or 3 (the login was refused).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from typing import TYPE_CHECKING, Any

from orchestrator.cli import exitcodes
from orchestrator.cli.args import account_options, add_account_arguments
from orchestrator.run.options import ListFormat

if TYPE_CHECKING:
    from orchestrator.run.account import AccountVps, ImageGroup, ImageList

# Ids a group names before "and N more" (--format json lists them all).
_SHOWN_IDS = 20


def register(sub: Any) -> None:
    """Add the ``vps`` and ``images`` subcommands."""
    vps: argparse.ArgumentParser = sub.add_parser(
        "vps",
        help="list the account's VPSes: id, hostname, IPs, suspended, power (read-only)",
        description="List every VPS of the account with its hostname, IPv4 addresses, "
        "whether it is suspended and its power state. Sends only read-only requests.",
    )
    add_account_arguments(vps)
    _add_format(vps)
    vps.set_defaults(handler=run_vps)

    images: argparse.ArgumentParser = sub.add_parser(
        "images",
        help="list the images a VPS can install (read-only)",
        description="List the images each named VPS can install, or (--all) those of every "
        "VPS of the account, grouped by identical lists. Sends only read-only requests.",
    )
    images.add_argument("kvm_ids", nargs="*", metavar="KVM_ID", help="the VPSes to ask about")
    images.add_argument("--all", action="store_true", help="every VPS of the account, grouped")
    add_account_arguments(images)
    _add_format(images)
    images.set_defaults(handler=run_images)


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format",
        choices=[f.value for f in ListFormat],
        default=ListFormat.TEXT.value,
        help="a table (text) or JSON",
    )


def run_vps(args: argparse.Namespace) -> int:
    """List the account's VPSes; return 0, or 1 when some could not be read fully."""
    import anyio

    from orchestrator.cli.output import account_failure, counter
    from orchestrator.errors import EdisFleetError
    from orchestrator.run.account import account_vps

    options = account_options(args)
    show = counter(sys.stderr)
    try:
        listed = anyio.run(lambda: account_vps(options, env=dict(os.environ), progress=show))
    except EdisFleetError as exc:
        return account_failure(exc, os.environ.get(options.password_env, ""), sys.stderr)
    finally:
        if show is not None:
            show("", 0, 0)
    if ListFormat(args.format) is ListFormat.JSON:
        sys.stdout.write(json.dumps({"vps": [v.to_json() for v in listed]}, indent=2) + "\n")
    else:
        sys.stdout.write(vps_table(listed))
    return exitcodes.FAILED if any(v.problem for v in listed) else exitcodes.OK


def vps_table(listed: list[AccountVps]) -> str:
    """Return the VPSes as a table, then one line per VPS that could not be read fully."""
    rows = [("KVM ID", "HOSTNAME", "IPV4", "SUSPENDED", "POWER")]
    for v in listed:
        ips = v.ipv4[0].split("/", 1)[0] if v.ipv4 else "-"
        if len(v.ipv4) > 1:
            ips += f" +{len(v.ipv4) - 1}"
        suspended = "-" if not v.usable else "yes" if v.suspended else "no"
        rows.append((v.kvm_id, v.hostname or "-", ips, suspended, v.power or "-"))
    widths = [min(max(len(r[i]) for r in rows), 32) for i in range(4)]
    lines = ["  ".join(c.ljust(w)[:w] for c, w in zip(r, widths, strict=False)) + "  " + r[4]
             for r in rows]  # fmt: skip
    problems = [f"{v.kvm_id}: {v.problem}" for v in listed if v.problem]
    summary = f"{len(listed)} VPS(es)"
    if problems:
        summary += f", {len(problems)} not read fully:"
    return "\n".join([*lines, summary, *[f"  {p}" for p in problems]]) + "\n"


def run_images(args: argparse.Namespace) -> int:
    """List the images of the named VPSes (or all, grouped); 2 for an id not in the account,
    1 when a list could not be read."""
    import anyio

    from orchestrator.cli.output import account_failure, counter
    from orchestrator.errors import EdisFleetError
    from orchestrator.run.account import account_images, group_images

    if bool(args.kvm_ids) == bool(args.all):
        sys.stderr.write("edis-fleet images: name KVM_IDs, or pass --all (not both)\n")
        return exitcodes.USAGE
    options = account_options(args)
    ids = None if args.all else list(args.kvm_ids)
    show = counter(sys.stderr)
    try:
        lists = anyio.run(lambda: account_images(options, ids, env=dict(os.environ), progress=show))
    except EdisFleetError as exc:
        return account_failure(exc, os.environ.get(options.password_env, ""), sys.stderr)
    finally:
        if show is not None:
            show("", 0, 0)
    groups = group_images(lists)
    if ListFormat(args.format) is ListFormat.JSON:
        data = {
            "vps": [entry.to_json() for entry in lists],
            "groups": [{"kvm_ids": list(g.kvm_ids), "images": list(g.images)} for g in groups],
        }
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    else:
        sys.stdout.write(images_text(lists, groups, grouped=args.all))
    if any(not entry.known for entry in lists):
        return exitcodes.USAGE
    return exitcodes.FAILED if any(entry.problem for entry in lists) else exitcodes.OK


def images_text(lists: list[ImageList], groups: list[ImageGroup], *, grouped: bool) -> str:
    """Return the image lists: per VPS as asked, or one block per group of identical lists;
    then one line per VPS whose list could not be read."""
    lines: list[str] = []
    if grouped:
        for group in groups:
            ids = list(group.kvm_ids[:_SHOWN_IDS])
            more = len(group.kvm_ids) - len(ids)
            named = ", ".join(ids) + (f" and {more} more" if more else "")
            lines.append(f"{len(group.images)} images for {len(group.kvm_ids)} VPS(es):")
            lines += textwrap.wrap(named, 78, initial_indent="  ", subsequent_indent="  ")
            lines += [f"    {image}" for image in group.images]
    else:
        for entry in lists:
            if entry.problem is None:
                lines.append(f"{entry.kvm_id}: {len(entry.images)} images")
                lines += [f"  {image}" for image in entry.images]
    lines += [f"{entry.kvm_id}: {entry.problem}" for entry in lists if entry.problem]
    return "\n".join(lines) + "\n"
