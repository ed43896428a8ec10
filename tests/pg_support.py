"""A throwaway PostgreSQL server for the tests (and the benchmark): Debian's binaries,
``initdb``/``pg_ctl`` on a temporary directory, reachable only through a Unix socket.

PostgreSQL refuses to run as root, and CI runs as root: then the cluster is created and run as
the ``postgres`` system user (``runuser``), on directories that user owns. Authentication is
``trust`` on the socket (the directory is private to the test run).

Fixtures (registered from ``conftest.py``):

- ``pg_server`` (session): the running server, started once. When it cannot be started the
  tests that need it are skipped with the reason — except under ``CI=true``, where they fail:
  the PostgreSQL journal must be tested in CI, not skipped.
- ``pg_url`` (function): the URL of a fresh, empty journal (a schema of its own) for one test.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest


def pg_bin() -> Path | None:
    """The directory of the newest installed PostgreSQL server binaries, or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


@dataclass
class PgServer:
    """A running throwaway cluster: its socket directory, port and admin user."""

    root: Path
    socket_dir: Path
    port: int
    user: str
    bin: Path
    as_user: list[str]
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, dbname: str) -> str:
        """The URL of ``dbname`` on this server (over the Unix socket)."""
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def create_database(self, prefix: str = "t") -> str:
        """Create a fresh empty database; return its URL."""
        import psycopg

        name = f"{prefix}{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0 STRATEGY FILE_COPY')
        return self.url(name)

    def fresh_schema(self) -> str:
        """Create a fresh empty schema in the database ``postgres``; return a URL whose
        ``search_path`` is that schema (a new database costs a few hundred ms, a schema
        almost nothing)."""
        import psycopg

        name = f"s{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return f"{self.url('postgres')}&options=-csearch_path%3D{name}"

    def stop(self) -> None:
        """Stop the server and remove its files."""
        subprocess.run(
            [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.root / "data"),
             "-m", "immediate", "-w", "stop"],
            check=False, capture_output=True,
        )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def start_server(*, fsync: bool = False, port: int = 5432) -> PgServer:
    """Create and start a cluster in a new temporary directory; return it.

    ``fsync=False`` (tests) skips disk flushes; the benchmark keeps them, so what it measures
    is a durable commit. Raises ``RuntimeError`` with the server's output when it fails.
    """
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found (Debian package: postgresql)")
    root = Path(tempfile.mkdtemp(prefix="edis-fleet-pg-"))
    as_user: list[str] = []
    user = pwd.getpwuid(os.getuid()).pw_name
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: run it as the postgres system user.
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
        user = "postgres"
    os.chmod(root, 0o700 if not as_user else 0o755)
    data, sock = root / "data", root / "sock"
    run = [*as_user]
    try:
        subprocess.run(
            [*run, "mkdir", "-m", "0700", str(sock)], check=True, capture_output=True, text=True
        )
        subprocess.run(
            [*run, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", user,
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        opts = (
            f"-k {sock} -p {port} -c listen_addresses='' -c max_connections=200"
            f" -c fsync={'on' if fsync else 'off'}"
            f" -c synchronous_commit={'on' if fsync else 'off'}"
            f" -c full_page_writes={'on' if fsync else 'off'} -c shared_buffers=64MB"
        )
        subprocess.run(
            [*run, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
             "-o", opts, "-w", "-t", "30", "start"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    except (subprocess.CalledProcessError, OSError) as exc:
        log = ""
        with contextlib.suppress(OSError):
            log = (root / "log").read_text()[-2000:]
        out = getattr(exc, "stderr", "") or ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"cannot start PostgreSQL: {exc}\n{out}\n{log}") from exc
    return PgServer(root, sock, port, user, bindir, as_user)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The session's throwaway PostgreSQL server (skipped when unavailable, failed in CI)."""
    try:
        server = start_server()
    except RuntimeError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must test the PostgreSQL journal: {exc}")
        pytest.skip(f"no PostgreSQL server for the tests: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """The URL of a fresh, empty journal (its own schema) on the session's server."""
    return pg_server.fresh_schema()
