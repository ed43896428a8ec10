"""Fleet manifests: YAML to a validated ``Fleet`` (every problem with ``file:line:col`` and a
field path, all at once), and the selection of VPSes for a run."""

from orchestrator.manifest.loader import ManifestReport, check_manifest
from orchestrator.manifest.selection import SelectedFleet, Selection, select

__all__ = ["ManifestReport", "SelectedFleet", "Selection", "check_manifest", "select"]
