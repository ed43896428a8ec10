"""``edis-fleet simulator``: run the bundled EDIS API simulator in the foreground.

It listens on loopback only, prints how to reach it, and runs until SIGINT or SIGTERM (exit 0).
The account password comes from ``--password-file``, else ``$EDIS_SIM_PASSWORD``, else the
documented demo default ``sim-pass``; it is never printed, only where it comes from.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.cli import exitcodes
from orchestrator.simulator.config import DEFAULT_EMAIL, DEFAULT_PASSWORD
from orchestrator.simulator.profiles import PROFILES

if TYPE_CHECKING:
    from orchestrator.simulator import SimConfig, Simulator

PASSWORD_ENV = "EDIS_SIM_PASSWORD"  # noqa: S105 -- the name of a variable, not a value
DEFAULT_PORT = 8765


def register(sub: Any) -> None:
    """Add the ``simulator`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "simulator",
        help="run the bundled EDIS API simulator on loopback",
        description="Serve a simulated EDIS account on 127.0.0.1 (session host) and 127.0.1.N "
        "(api hosts) until SIGINT/SIGTERM. Password: --password-file, else "
        f"${PASSWORD_ENV}, else the demo default {DEFAULT_PASSWORD!r}.",
    )
    p.add_argument("--vps", type=int, default=50, metavar="N", help="generated VPSes (50)")
    p.add_argument("--account", metavar="FILE", help="YAML account file instead of --vps")
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"session port ({DEFAULT_PORT}; 0 = any)"
    )
    p.add_argument("--seed", type=int, default=1, help="seed for the account and faults (1)")
    p.add_argument("--profile", default="healthy", choices=sorted(PROFILES), help="fault profile")
    p.add_argument(
        "--time-scale", type=float, default=1.0, help="factor on install durations (1.0)"
    )
    p.add_argument(
        "--signature-lifetime", type=float, default=3600.0, help="signature lifetime, s (3600)"
    )
    p.add_argument("--rate-limit", type=float, default=None, help="requests/s for the account")
    p.add_argument(
        "--rate-burst",
        type=float,
        default=None,
        help="requests the --rate-limit bucket saves up (default: one second's worth)",
    )
    p.add_argument(
        "--keepalive-timeout", type=float, default=5.0, help="idle keep-alive close, s (5)"
    )
    p.add_argument("--second-reinstall", default="reject", choices=("reject", "restart", "accept"))
    p.add_argument("--error-style", default="status", choices=("status", "http200"))
    p.add_argument("--email", default=DEFAULT_EMAIL, help=f"account email ({DEFAULT_EMAIL})")
    p.add_argument("--password-file", metavar="FILE", help="file holding the account password")
    p.add_argument(
        "--url-file",
        metavar="FILE",
        help="once serving, write the session URL to FILE (for scripts: pair with --port 0)",
    )
    p.add_argument(
        "--tcp-listeners",
        action="store_true",
        help="a real SSH server on every VPS's IP (its own host key, then the user data's after "
        "a reinstall; down while it installs); one file descriptor per VPS",
    )
    p.add_argument(
        "--ssh-port",
        type=int,
        default=0,
        help="port of the --tcp-listeners SSH servers on every VPS IP (0 = one free port for all)",
    )
    p.set_defaults(handler=run)


def _password(args: argparse.Namespace) -> tuple[str, str, str]:
    """Return the password, where it came from (for humans) and a shell expression that yields
    it (for the sample curl command); raises ``OSError`` if the password file is unreadable."""
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as fh:
            value = fh.read().rstrip("\r\n")
        quoted = shlex.quote(args.password_file)
        return value, f"from the file {args.password_file}", f"$(cat {quoted})"
    env = os.environ.get(PASSWORD_ENV)
    if env:
        return env, f"from ${PASSWORD_ENV}", f"${PASSWORD_ENV}"
    return (
        DEFAULT_PASSWORD,
        f"the demo default {DEFAULT_PASSWORD!r} (set ${PASSWORD_ENV} to change it)",
        f"${{{PASSWORD_ENV}:-{DEFAULT_PASSWORD}}}",
    )


def _announce(sim: Simulator, source: str, shell_password: str) -> None:
    """Print how to reach the simulator (never the password itself)."""
    url = sim.session_url
    nodes = sim.node_count
    hosts = "127.0.1.1" if nodes == 1 else f"127.0.1.1-{nodes}"
    curl = (
        f"curl -s --data-urlencode {shlex.quote('email=' + sim.email)} "
        f'--data-urlencode "pw={shell_password}" {url}/kvm/v2/get/auth'
    )
    lines = [
        f"EDIS API simulator: {len(sim.vps_ids)} VPSes on {nodes} api hosts ({hosts}), "
        f"profile {sim.profile}",
        f"session URL: {url}",
        f"email: {sim.email}",
        f"password: {source}",
        f"try: {curl}",
        f"state: {url}/_sim/state",
    ]
    if sim.listeners is not None:
        first = sim.vpses[0].ip
        lines.append(
            f"ssh port: {sim.ssh_port} on every VPS IP (e.g. nc {first} {sim.ssh_port}); "
            "closed while a VPS installs"
        )
    lines.append("stop with Ctrl-C (SIGINT) or SIGTERM")
    print("\n".join(lines), flush=True)


def _write_url(path: Path, url: str) -> None:
    """Write ``url`` whole (``write_atomic``): a script polling for the file never reads half.

    This is the command's file, not the simulator package's: the package itself stands alone
    and writes no files.
    """
    from orchestrator.atomic import write_atomic

    write_atomic(path, url + "\n", mode=0o644)


async def _serve(
    cfg: SimConfig, source: str, shell_password: str, url_file: str | None = None
) -> int:
    """Run the simulator until SIGINT/SIGTERM; return the exit code. Raises ``OSError`` if a
    port cannot be bound and ``ValueError`` for a bad account file."""
    import asyncio

    from orchestrator.simulator import Simulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Simulator(cfg) as sim:
            _announce(sim, source, shell_password)
            if url_file:
                _write_url(Path(url_file), sim.session_url)
            await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    print("simulator stopped", flush=True)
    return exitcodes.OK


def run(args: argparse.Namespace) -> int:
    """Serve the simulator until interrupted; return 0, or 2 for bad options, an unreadable
    password or account file, or a port that cannot be bound."""
    import asyncio

    try:
        cfg, source, shell_password = sim_config(args)
        return asyncio.run(_serve(cfg, source, shell_password, args.url_file))
    except (OSError, ValueError) as exc:
        print(f"edis-fleet simulator: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    except KeyboardInterrupt:  # SIGINT before the handlers were installed
        return exitcodes.OK


def sim_config(args: argparse.Namespace) -> tuple[SimConfig, str, str]:
    """The simulator's configuration from the command's options, with where the password
    came from and a shell expression that yields it (tests start the same simulator
    in-process). Raises ``OSError`` (password file) or ``ValueError`` (bad options)."""
    from orchestrator.simulator import SimConfig

    password, source, shell_password = _password(args)
    return (
        SimConfig(
            vps_count=args.vps,
            seed=args.seed,
            email=args.email,
            password=password,
            signature_lifetime=args.signature_lifetime,
            time_scale=args.time_scale,
            second_reinstall=args.second_reinstall,
            error_style=args.error_style,
            keepalive_timeout=args.keepalive_timeout,
            rate_limit=args.rate_limit,
            rate_burst=args.rate_burst,
            profile=args.profile,
            port=args.port,
            account_file=args.account,
            tcp_listeners=args.tcp_listeners,
            ssh_port=args.ssh_port,
        ),
        source,
        shell_password,
    )
