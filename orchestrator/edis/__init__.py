"""The provider boundary: the EDIS API client, host policy, outcome classes, session book."""

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
