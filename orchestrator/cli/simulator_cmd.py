"""``edis-fleet simulator``: run the bundled EDIS API simulator in the foreground."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``simulator`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser(
        "simulator", help="run the bundled EDIS API simulator on loopback"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Serve the simulator until interrupted."""
    raise NotImplementedError
