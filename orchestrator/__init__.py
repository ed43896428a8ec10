"""edis-fleet: reinstall whole fleets of EDIS Global KVM VPSes safely."""

__version__ = "0.1.0"
