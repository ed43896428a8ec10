"""``Simulator``: the runtime state served over real loopback HTTP.

One session host on ``127.0.0.1:<port>`` (``get/auth`` and ``/_sim``), and one api node per
``127.0.1.N`` (N = node index + 1) serving the per-VPS endpoints. With
``SimConfig.tcp_listeners`` each VPS also gets an "SSH" listener on ``<its ip>:<ssh_port>``
(``listeners.py``). Each host is its own aiohttp
application and runner, so a node knows which VPSes it serves without looking at addresses.
Nothing ever binds outside 127.0.0.0/8.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from aiohttp import web

from orchestrator.simulator import control, handlers
from orchestrator.simulator.config import SimConfig
from orchestrator.simulator.middleware import sim_middleware
from orchestrator.simulator.runtime import HOST_NAME, NODE, RUNTIME, SESSION_NODE, Runtime

SESSION_ADDRESS = "127.0.0.1"


def node_address(node: int) -> str:
    """Return the loopback address of api node ``node`` (0-based)."""
    return f"127.0.1.{node + 1}"


class Simulator(Runtime):
    """A running EDIS API simulator; use ``async with Simulator(cfg) as sim``.

    Besides the ``Runtime`` API (account, sessions, faults, counters, log, ``ssh_port``,
    ``ssh_open(kvm_id)``): ``session_url``, ``scheme``, ``api_url(kvm_id)``, ``start()`` and
    ``stop()``.
    """

    def __init__(self, config: SimConfig | None = None) -> None:
        """Build the simulator (nothing is bound yet); raises ``ValueError``/``OSError`` like
        ``Runtime``."""
        super().__init__(config)
        self.scheme = "https" if self.config.ssl is not None else "http"
        self._runners: list[web.AppRunner] = []
        self._session_port = 0

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def session_url(self) -> str:
        """Base URL of the session host, e.g. ``http://127.0.0.1:8765``; raises
        ``RuntimeError`` before ``start``."""
        if not self._session_port:
            raise RuntimeError("the simulator is not started")
        return f"{self.scheme}://{SESSION_ADDRESS}:{self._session_port}"

    @property
    def port(self) -> int:
        """The session host's port (0 before ``start``)."""
        return self._session_port

    def api_url(self, kvm_id: str) -> str:
        """Base URL of the api host currently serving ``kvm_id``; raises ``KeyError``."""
        return f"{self.scheme}://{self.vps(kvm_id).api_host}"

    def _app(self, node: int, name: str) -> web.Application:
        app = web.Application(middlewares=[sim_middleware])
        app[RUNTIME] = self
        app[NODE] = node
        app[HOST_NAME] = name
        return app

    async def _serve(self, app: web.Application, address: str, port: int) -> int:
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.config.keepalive_timeout,
            # Every body is read in full except one over the size limit: close that
            # connection after the 413 instead of draining it (10 s by default).
            lingering_time=0.0,
        )
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, address, port, ssl_context=self.config.ssl)
        await site.start()
        bound: int = runner.addresses[0][1]
        return bound

    async def start(self) -> None:
        """Bind the session host and every api node; raises ``OSError`` if a port is taken and
        ``RuntimeError`` if already started."""
        if self._runners:
            raise RuntimeError("the simulator is already started")
        session = self._app(SESSION_NODE, "session")
        session.router.add_post("/kvm/v2/get/auth", handlers.auth)
        control.add_routes(session)
        try:
            self._session_port = await self._serve(session, SESSION_ADDRESS, self.config.port)
            nodes = []
            for node in range(self.node_count):
                app = self._app(node, f"node-{node + 1}")
                app.router.add_post("/kvm/v2/get/images", handlers.images)
                app.router.add_post("/kvm/v2/set/reinstall", handlers.reinstall)
                app.router.add_post("/kvm/v2/get/power", handlers.power)
                app.router.add_post("/kvm/v2/get/details", handlers.details)
                nodes.append(self._serve(app, node_address(node), self.config.port))
            ports = await asyncio.gather(*nodes)
            if self.listeners is not None:
                self.listeners.open()
        except BaseException:
            await self.stop()
            raise
        self.node_hosts = [f"{node_address(i)}:{p}" for i, p in enumerate(ports)]
        for vps in self.vpses:
            vps.api_host = self.node_hosts[vps.node]

    async def stop(self) -> None:
        """Close every host, its connections and every TCP listener; safe to call twice."""
        if self.listeners is not None:
            self.listeners.close()
        if self.ssh is not None:
            self.ssh.close()
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        self._session_port = 0
