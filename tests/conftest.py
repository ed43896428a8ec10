"""Shared pytest fixtures: a running EDIS API simulator on loopback.

``sim`` is a function-scoped simulator with 5 VPSes and a fast clock (``time_scale=0.001``: a
Linux install takes 0.3 s). ``make_sim`` is a factory for other configurations::

    async def test_x(make_sim):
        async with make_sim(vps_count=2, second_reinstall="accept") as sim:
            ...

``make_thread_sim`` runs the simulator in a background thread with its own event loop, for
synchronous tests that run the CLI in-process (``tests/cli_support.run_cli``: ``main`` runs its
own event loop and wants the main thread for its signal handlers)::

    def test_x(make_thread_sim, tmp_path):
        with make_thread_sim(vps_count=2) as sim:
            run_cli(["apply", ...], cwd=tmp_path, env=...)

Code that must run on the simulator's loop while a command runs (waiting for a moment, then
changing the simulator) goes through ``make_thread_sim.portal``.

``sim_http`` is a bare wire-format client (``SimHttp``) for the simulator's own tests: it has
no retry or session logic, so those tests never depend on the product's client.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from orchestrator.simulator import Simulator

# The throwaway PostgreSQL server of the journal tests: fixtures pg_server and pg_url.
pytest_plugins = ("tests.pg_support",)

# Defaults for every test simulator: small, deterministic and fast.
SIM_DEFAULTS: dict[str, Any] = {"vps_count": 5, "seed": 1, "time_scale": 0.001}

SimFactory = Callable[..., contextlib.AbstractAsyncContextManager["Simulator"]]


@pytest.fixture
def make_sim() -> SimFactory:
    """Return a factory: ``make_sim(**SimConfig kwargs)`` is an async context manager yielding a
    started ``Simulator``; given kwargs override ``SIM_DEFAULTS``."""
    # Imported here so that a broken simulator fails only the tests that use it.
    from orchestrator.simulator import SimConfig, Simulator

    @contextlib.asynccontextmanager
    async def factory(**kwargs: Any) -> AsyncIterator[Simulator]:
        cfg = SimConfig(**{**SIM_DEFAULTS, **kwargs})
        async with Simulator(cfg) as sim:
            yield sim

    return factory


# What ``cloud-init schema`` said about each document, by content hash, for the whole session.
_SCHEMA_ANSWERS: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _shared_schema_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let every ``CloudInitSchema.find()`` checker share one answer cache.

    The product caches ``cloud-init schema`` answers by content hash per checker, i.e. per
    command; tests run the same documents (the example fleet's) through many commands, and
    each ``cloud-init`` start costs about a second on a loaded machine. The answer depends on
    the document only, so sharing the cache changes no outcome. Checkers built directly (the
    schema's own tests) keep their private caches.
    """
    from orchestrator.templates.schema import CloudInitSchema

    found = CloudInitSchema.find.__func__  # type: ignore[attr-defined]

    def find(cls: type[CloudInitSchema], **kwargs: Any) -> CloudInitSchema | None:
        checker: CloudInitSchema | None = found(cls, **kwargs)
        if checker is not None:
            checker._cache = _SCHEMA_ANSWERS
        return checker

    monkeypatch.setattr(CloudInitSchema, "find", classmethod(find))


class ThreadSims:
    """``make_thread_sim``: call it like ``make_sim`` (kwargs override ``SIM_DEFAULTS``) for a
    context manager yielding a started ``Simulator`` served from ``portal``'s thread."""

    def __init__(self, portal: Any) -> None:
        self.portal = portal

    @contextlib.contextmanager
    def __call__(self, **kwargs: Any) -> Iterator[Simulator]:
        from orchestrator.simulator import SimConfig, Simulator

        cfg = SimConfig(**{**SIM_DEFAULTS, **kwargs})
        with self.portal.wrap_async_context_manager(Simulator(cfg)) as sim:
            yield sim


@pytest.fixture
def make_thread_sim() -> Iterator[ThreadSims]:
    """A factory of simulators served by an event loop in a background thread (see the module
    docstring), stopped with the thread after the test."""
    from anyio.from_thread import start_blocking_portal

    with start_blocking_portal() as portal:
        yield ThreadSims(portal)


@pytest.fixture
def thread_sim(make_thread_sim: ThreadSims) -> Iterator[Simulator]:
    """A simulator with the ``SIM_DEFAULTS`` served from a background thread."""
    with make_thread_sim() as s:
        yield s


@pytest.fixture
async def sim(make_sim: SimFactory) -> AsyncIterator[Simulator]:
    """A started simulator with 5 VPSes and a fast clock, stopped after the test."""
    async with make_sim() as s:
        yield s


class SimReply:
    """One HTTP answer from the simulator: status, parsed JSON body (``None`` if not JSON) and
    headers."""

    def __init__(self, status: int, body: Any, headers: Any) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    @property
    def ok(self) -> bool:
        """HTTP 200 with ``"status": "success"``."""
        return (
            self.status == 200
            and isinstance(self.body, dict)
            and self.body.get("status") == "success"
        )

    def __repr__(self) -> str:
        return f"SimReply({self.status}, {self.body!r})"


class SimHttp:
    """A deliberately plain test client for the simulator's wire format (no retries, no
    session logic): tests of the simulator must not depend on the product's client."""

    def __init__(self, http: Any, scheme: str = "http") -> None:
        self.http = http
        self.scheme = scheme

    async def post(self, url: str, data: Any = None, **kwargs: Any) -> SimReply:
        """POST ``data`` (a dict is form-encoded) and return the reply."""
        async with self.http.post(url, data=data, **kwargs) as resp:
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            return SimReply(resp.status, body, resp.headers)

    async def auth(self, sim: Simulator, **fields: str) -> SimReply:
        """POST get/auth with the account's credentials, overridden by ``fields``."""
        form = {"email": sim.email, "pw": sim.password, **fields}
        return await self.post(f"{sim.session_url}/kvm/v2/get/auth", form)

    async def login(self, sim: Simulator, kvm_id: str | None = None) -> dict[str, Any]:
        """Authenticate (whole account or one VPS) and return the ``data`` mapping."""
        reply = await self.auth(sim, **({"kvm_id": kvm_id} if kvm_id else {}))
        assert reply.status == 200, reply
        data: dict[str, Any] = reply.body["data"]
        return data

    async def call(self, entry: dict[str, Any], endpoint: str, **extra: str) -> SimReply:
        """POST ``endpoint`` (``"get/power"``...) to the entry's api_host with its session
        fields plus ``extra``."""
        form = {
            "signature": entry["signature"],
            "kvm_id": entry["kvm_id"],
            "valid_until": str(entry["valid_until"]),
            **extra,
        }
        return await self.post(f"{self.scheme}://{entry['api_host']}/kvm/v2/{endpoint}", form)


@pytest.fixture
async def sim_http() -> AsyncIterator[SimHttp]:
    """A ``SimHttp`` over a fresh aiohttp session, closed after the test."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        yield SimHttp(http)
