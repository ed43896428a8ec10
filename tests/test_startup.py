"""Fast start: building every parser and importing the library face load none of the heavy
dependencies (only a fresh interpreter shows what an import pulls in). How fast it starts is
measured by tests/bench/startup.py, not here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("aiohttp", "pydantic", "jinja2", "rich", "jsonschema", "yaml", "anyio", "tenacity")

PROBE = """
import json, sys
import orchestrator
from orchestrator.cli import build_parser
build_parser()
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.subprocess
def test_parsers_and_the_library_face_import_nothing_heavy() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = set(json.loads(done.stdout))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
