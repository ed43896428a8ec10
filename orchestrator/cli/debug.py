"""Whether ``--debug`` was given: an internal error then prints its full traceback.

Set by ``cli.main`` for the duration of one command (a context variable, so a library caller
running several commands in one process never inherits another's setting).
"""

from __future__ import annotations

import contextvars
import traceback
from typing import TextIO

DEBUG: contextvars.ContextVar[bool] = contextvars.ContextVar("edis_fleet_debug", default=False)


def explain(exc: BaseException, err: TextIO) -> None:
    """With ``--debug``, write the full traceback of ``exc`` (and its causes) to ``err``;
    without it, a hint that ``--debug`` shows it. Tracebacks carry no secrets of ours: every
    secret is a ``Secret`` whose repr is masked, and messages are redacted where they are
    made."""
    if DEBUG.get():
        err.write("".join(traceback.format_exception(exc)))
    else:
        err.write("(run with --debug for the full traceback)\n")
