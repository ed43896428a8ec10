"""edis-fleet: reinstall whole fleets of EDIS Global KVM VPSes safely."""

from orchestrator.version import __version__

__all__ = ["__version__"]
