"""The provider boundary: the EDIS API client, host policy, outcome classes, session book.

The names load their modules on first use (``orchestrator.lazy``), so that the manifest check
can use the host rules (``edis.hosts``) without importing aiohttp.
"""

from typing import TYPE_CHECKING

from orchestrator.lazy import lazy_exports

if TYPE_CHECKING:
    from orchestrator.edis.client import AuthResult, EdisClient, VpsCredentials
    from orchestrator.edis.hosts import HostPolicy
    from orchestrator.edis.outcome import classify
    from orchestrator.edis.session import SessionBook
    from orchestrator.edis.wire import ExchangeLimits

__all__ = [
    "AuthResult",
    "EdisClient",
    "ExchangeLimits",
    "HostPolicy",
    "SessionBook",
    "VpsCredentials",
    "classify",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "AuthResult": "orchestrator.edis.client",
        "EdisClient": "orchestrator.edis.client",
        "VpsCredentials": "orchestrator.edis.client",
        "HostPolicy": "orchestrator.edis.hosts",
        "classify": "orchestrator.edis.outcome",
        "SessionBook": "orchestrator.edis.session",
        "ExchangeLimits": "orchestrator.edis.wire",
    },
)
