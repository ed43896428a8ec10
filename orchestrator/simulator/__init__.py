"""The bundled EDIS Global API simulator: a real aiohttp server on loopback with fault injection.

It imports nothing from the rest of ``orchestrator``: it is an independent model of the
provider, so a client bug cannot hide in it. Usage::

    from orchestrator.simulator import Simulator, SimConfig

    async with Simulator(SimConfig(vps_count=5, time_scale=0.001)) as sim:
        sim.session_url                 # POST {session_url}/kvm/v2/get/auth
        sim.set_faults({"http503": 0.1}, endpoint="set/reinstall")
        ...
        assert sim.counters.reinstall_accepted == {...}

Modules: ``config`` (SimConfig), ``account``/``vps`` (the account and each VPS's install state
machine), ``sessions`` (signatures), ``faults`` (kinds, rules, scripts), ``profiles``, ``handlers``
(the provider endpoints), ``middleware`` (throttling, fault injection, logging), ``control``
(``/_sim`` HTTP API), ``runtime`` (state and operations), ``listeners`` (each VPS's TCP "SSH"
port, down while it installs; ``SimConfig(tcp_listeners=True)``), ``server`` (the
``Simulator``).
"""

import importlib
from typing import TYPE_CHECKING, Any

# The names below load their modules on first use (PEP 562), so that the command line can read
# the defaults and profiles without importing aiohttp. (The simulator stands alone: it does not
# use orchestrator.lazy.)
if TYPE_CHECKING:
    from orchestrator.simulator.account import DEFAULT_IMAGE, DEFAULT_IMAGES
    from orchestrator.simulator.config import DEFAULT_EMAIL, DEFAULT_PASSWORD, SimConfig
    from orchestrator.simulator.faults import (
        ENDPOINTS,
        FAULT_KINDS,
        Fault,
        FaultRules,
        parse_fault,
    )
    from orchestrator.simulator.profiles import PROFILES
    from orchestrator.simulator.server import Simulator
    from orchestrator.simulator.stats import Counters, LogEntry
    from orchestrator.simulator.vps import Vps

_EXPORTS = {
    "DEFAULT_IMAGE": "account",
    "DEFAULT_IMAGES": "account",
    "DEFAULT_EMAIL": "config",
    "DEFAULT_PASSWORD": "config",
    "SimConfig": "config",
    "ENDPOINTS": "faults",
    "FAULT_KINDS": "faults",
    "Fault": "faults",
    "FaultRules": "faults",
    "parse_fault": "faults",
    "PROFILES": "profiles",
    "Simulator": "server",
    "Counters": "stats",
    "LogEntry": "stats",
    "Vps": "vps",
}


def __getattr__(name: str) -> Any:
    """Import an exported name from its module on first use; ``AttributeError`` otherwise."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*_EXPORTS, *globals()})


__all__ = [
    "DEFAULT_EMAIL",
    "DEFAULT_IMAGE",
    "DEFAULT_IMAGES",
    "DEFAULT_PASSWORD",
    "ENDPOINTS",
    "FAULT_KINDS",
    "PROFILES",
    "Counters",
    "Fault",
    "FaultRules",
    "LogEntry",
    "SimConfig",
    "Simulator",
    "Vps",
    "parse_fault",
]
