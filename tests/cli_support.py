"""Running ``edis-fleet`` from tests: in-process by default, a real process where only a
process shows the behaviour (not a test module).

``run_cli`` calls ``orchestrator.cli.main(argv)`` in this thread with exactly the environment,
working directory and standard streams a subprocess would get (``os.environ`` replaced, not
merged; stdin an empty non-terminal unless given), and returns what a subprocess returns:
exit code, stdout, stderr. ``main`` may call ``anyio.run`` itself, and installs signal
handlers that only work in the main thread, so a test that needs a simulator runs it in a
background thread (the ``make_thread_sim`` fixture of ``tests/conftest.py``) and calls
``run_cli`` from the test's own (main) thread. Not thread-safe: one call at a time per process
(pytest-xdist workers are separate processes).

``run_cli_process`` is the real thing, ``python -m orchestrator ARGS``; tests that use it carry
the ``subprocess`` marker.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO, TypeVar

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")


@dataclass(frozen=True)
class CliResult:
    """What a command left behind: like ``subprocess.CompletedProcess`` with text streams."""

    returncode: int
    stdout: str
    stderr: str


class _Stdin(io.StringIO):
    """Standard input with the given text; a terminal only when ``tty``."""

    def __init__(self, text: str, *, tty: bool) -> None:
        super().__init__(text)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


class _CliLogFilter(logging.Filter):
    """Keep the product's records, drop the simulator's (it is not part of the command)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("orchestrator.simulator")


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _stderr_logging(stream: TextIO) -> Iterator[None]:
    """Send WARNING and above to ``stream``, as Python's last-resort handler does in a process
    without logging configuration (under pytest the root logger has handlers, so it would not)."""
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    handler.addFilter(_CliLogFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def run_cli(
    args: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str],
    stdin: str = "",
    tty: bool = False,
) -> CliResult:
    """Run ``edis-fleet ARGS`` in this process in ``cwd`` with exactly ``env``; return its exit
    code and what it printed. ``stdin``/``tty`` give its standard input. An exception that
    escapes ``main`` propagates (a process would die with a traceback, exit 1)."""
    from orchestrator.cli import main

    out, err = io.StringIO(), io.StringIO()
    here = Path.cwd()
    try:
        with (
            _environment(env),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            _stderr_logging(err),
        ):
            saved_stdin, sys.stdin = sys.stdin, _Stdin(stdin, tty=tty)
            os.chdir(cwd)
            try:
                code = main(list(args))
            except SystemExit as exc:  # as ``raise SystemExit(main())`` would end a process
                code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
                if not isinstance(exc.code, int | None):
                    print(exc.code, file=sys.stderr)  # Python prints a message and exits 1
            finally:
                sys.stdin = saved_stdin
                os.chdir(here)
    finally:
        # ``execute`` freezes the heap for the run (gc.freeze); a process would exit here.
        gc.unfreeze()
    return CliResult(code, out.getvalue(), err.getvalue())


def process_env(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` plus what a child interpreter needs to import the checkout (PATH, PYTHONPATH)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), **env}


def cli_argv(*args: str) -> list[str]:
    """The argv of the real command: ``python -m orchestrator ARGS``."""
    return [sys.executable, "-m", "orchestrator", *args]


def run_cli_process(
    args: Sequence[str], *, cwd: Path | str, env: Mapping[str, str], timeout: float = 120.0
) -> CliResult:
    """Run ``python -m orchestrator ARGS`` as a real process (blocking this thread)."""
    done = subprocess.run(
        cli_argv(*args),
        cwd=cwd,
        env=process_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def wait_until(what: str, predicate: Callable[[], bool], *, timeout: float = 60.0) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what`` after ``timeout`` seconds (a
    bound against a hang on a loaded machine, not a speed check)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never reached: {what}")
        time.sleep(0.01)


def run_serving_cli(
    args: Sequence[str],
    *,
    cwd: Path | str,
    env: Mapping[str, str],
    url_file: Path,
    use: Callable[[str], T],
    stop: int = signal.SIGINT,
) -> tuple[CliResult, T]:
    """Run a serving command (``edis-fleet simulator ... --url-file URL_FILE``) in-process;
    once it wrote its URL, call ``use(url)`` in a helper thread, then send ``stop`` to this
    process, which the command's own handler turns into a clean exit. Return the command's
    result and what ``use`` returned.

    The signal is sent only after the URL file exists, i.e. after the command installed its
    handlers (it writes the file once serving); ``use`` failing still stops the command.
    """

    def client() -> T:
        try:
            wait_until("the URL file", url_file.exists, timeout=60)
            return use(url_file.read_text(encoding="utf-8").strip())
        finally:
            if url_file.exists():
                os.kill(os.getpid(), stop)

    with ThreadPoolExecutor(max_workers=1) as pool:
        used = pool.submit(client)
        done = run_cli([*args, "--url-file", str(url_file)], cwd=cwd, env=env)
        return done, used.result(timeout=60)


def running(proc: subprocess.Popen[Any], what: Callable[[], bool]) -> Callable[[], bool]:
    """``what``, for ``wait_until``, failing at once (with the process's output) if ``proc``
    ended first instead of waiting out the timeout."""

    def check() -> bool:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the process ended ({proc.returncode}) first:\n{out}\n{err}")
        return what()

    return check
