"""Helpers shared by the manifest, template and validate tests (not a test module)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

from tests.cli_support import REPO, CliResult, run_cli, run_cli_process

__all__ = ["REPO", "CliResult"]

# Marker values: if one of them ever shows up in output or exception text, a secret leaked.
ROOT_MARKER = "Root-SECRET-marker-7f3a"
ACCOUNT_MARKER = "Account-SECRET-marker-91c2"
ENV = {
    "EDIS_EMAIL": "ops@example.net",
    "EDIS_PASSWORD": ACCOUNT_MARKER,
    "EDIS_ROOT_PASSWORD": ROOT_MARKER,
}

OK_TEMPLATE = """\
#cloud-config
hostname: {{ hostname }}
chpasswd:
  expire: false
  users:
    - {name: root, password: {{ root_password | tojson }}, type: text}
write_files:
  - path: /etc/edis-fleet
    content: "{{ id }} {{ vars.role | default('none') }}"
"""

BASE = """\
version: 1
account:
  email: {env: EDIS_EMAIL}
  password: {env: EDIS_PASSWORD}
defaults:
  image: cloudinit_debian-bookworm
  root_password: {env: EDIS_ROOT_PASSWORD}
  cloud_init: templates/ok.yaml.j2
vps:
  - id: kvm_100001_200001
    hostname: vps-001
  - id: kvm_100002_200002
    hostname: vps-002
rollout:
  waves: [1, "100%"]
"""


def write_fleet(
    folder: Path, manifest: str, files: Mapping[str, str] | None = None, name: str = "fleet.yaml"
) -> Path:
    """Write a manifest (dedented) and extra files (templates/ok.yaml.j2 always) to ``folder``."""
    all_files = {"templates/ok.yaml.j2": OK_TEMPLATE, **(files or {})}
    for rel, text in all_files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    path = folder / name
    path.write_text(textwrap.dedent(manifest), encoding="utf-8")
    return path


def cli(args: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> CliResult:
    """Run ``edis-fleet ARGS`` in-process in ``cwd`` with ``env`` (default ``ENV``) on top of a
    clean PATH, as a subprocess would see it."""
    full = {"PATH": os.environ.get("PATH", ""), **(ENV if env is None else env)}
    return run_cli(args, cwd=cwd, env=full)


def cli_process(args: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> CliResult:
    """Like ``cli`` but a real ``python -m orchestrator`` process (mark the test ``subprocess``)."""
    return run_cli_process(args, cwd=cwd, env=ENV if env is None else env)


def marked_line(text: str, marker: str = "# <-- here") -> int:
    """Return the 1-based number of the (dedented) line carrying ``marker``."""
    for number, line in enumerate(textwrap.dedent(text).splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"no {marker!r} in the text")


class AnyEnv(Mapping[str, str]):
    """An environment in which every variable is set (to a marker value)."""

    def __getitem__(self, key: str) -> str:
        return f"{ROOT_MARKER}-{key}"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str)

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return self[key]
