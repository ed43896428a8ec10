"""``edis-fleet plan`` end to end against the simulator, and the plan's arithmetic."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from orchestrator.fleet import Rollout
from orchestrator.run.plan import resolve_waves
from orchestrator.simulator import Simulator
from orchestrator.units import CountOrFraction
from tests.cli_support import run_cli

ROOT = Path(__file__).resolve().parent.parent
MARKER_ROOT = "root-MARKER-5521"


def manifest(sim: Simulator, tmp: Path, vps_yaml: str, *, extra: str = "") -> Path:
    shutil.copytree(ROOT / "fleets" / "templates", tmp / "templates", dirs_exist_ok=True)
    path = tmp / "fleet.yaml"
    path.write_text(
        f"""version: 1
account:
  email: {{env: EDIS_EMAIL}}
  password: {{env: EDIS_PASSWORD}}
  session_url: {sim.session_url}
  allowed_api_hosts: [127.0.0.0/8]
defaults:
  image: cloudinit_debian-bookworm
  cloud_init: templates/base.yaml.j2
  root_password: {{env: EDIS_ROOT_PASSWORD}}
  vars: {{domain: example.net, timezone: UTC}}
  readiness: {{mode: api}}
vps:
{vps_yaml}
rollout:
  waves: [1, "100%"]
{extra}""",
        encoding="utf-8",
    )
    return path


def vps_lines(sim: Simulator, count: int) -> str:
    return "\n".join(
        f"  - {{id: {kvm_id}, hostname: host-{i}}}" for i, kvm_id in enumerate(sim.vps_ids[:count])
    )


@pytest.fixture
def sim(thread_sim: Simulator) -> Simulator:
    """The commands run in-process: the simulator serves from a background thread."""
    return thread_sim


def plan(sim: Simulator, path: Path, *args: str) -> tuple[int, str, str]:
    """``edis-fleet plan PATH ARGS`` in-process (the simulator serves from its own thread)."""
    env = {
        "EDIS_EMAIL": sim.email,
        "EDIS_PASSWORD": sim.password,
        "EDIS_ROOT_PASSWORD": MARKER_ROOT,
        "PATH": "/usr/bin:/bin",
    }
    done = run_cli(["plan", str(path), *args], cwd=path.parent, env=env)
    return done.returncode, done.stdout, done.stderr


def test_plan_prints_waves_and_writes_a_plan_file(sim: Simulator, tmp_path: Path) -> None:
    path = manifest(sim, tmp_path, vps_lines(sim, 4))
    code, out, err = plan(sim, path, "-o", "plan.json")
    assert code == 0, err
    assert "4 VPS(es) will be WIPED" in out
    assert "wave 1: 1 VPS(es)" in out
    assert "wave 2: 3 VPS(es)" in out
    data = json.loads((tmp_path / "plan.json").read_text())
    assert [t["kvm_id"] for t in data["targets"]] == sim.vps_ids[:4]
    assert all(t["user_data_sha256"] for t in data["targets"])
    assert MARKER_ROOT not in out + err + (tmp_path / "plan.json").read_text()
    assert sum(sim.counters.reinstall_received.values()) == 0
    assert sim.counters.auth_calls == 1


def test_plan_hash_binds_the_rendered_user_data(sim: Simulator, tmp_path: Path) -> None:
    path = manifest(sim, tmp_path, vps_lines(sim, 2))
    _, first, _ = plan(sim, path, "--format", "json")
    template = tmp_path / "templates" / "base.yaml.j2"
    template.write_text(template.read_text() + "\n# changed\n")
    _, second, _ = plan(sim, path, "--format", "json")
    assert json.loads(first)["content_hash"] != json.loads(second)["content_hash"]


def test_missing_vps_suspended_vps_and_image_not_offered(sim: Simulator, tmp_path: Path) -> None:
    a, b, c, d = sim.vps_ids[:4]
    sim.set_suspended(b, True)
    sim.set_images(c, ["debian-bullseye", "cloudinit_debian-trixie"])
    vps = "\n".join(
        [
            f"  - {{id: {a}, hostname: a}}",
            f"  - {{id: {b}, hostname: b}}",
            f"  - {{id: {c}, hostname: c}}",
            "  - {id: kvm_100099_200099, hostname: gone}",
            f"  - {{id: {d}, hostname: d, image: cloudinit_debian-bookworn}}",
        ]
    )
    path = manifest(sim, tmp_path, vps)
    code, out, err = plan(sim, path)
    assert code == 2, out
    assert f"{b} is suspended" in err
    assert f"{c}: image 'cloudinit_debian-bookworm' is not offered for this VPS" in err
    # c's own list differs from the others: the suggestion comes from c's list.
    assert "did you mean 'cloudinit_debian-trixie'" in err
    assert "kvm_100099_200099 is not in the account" in err
    assert f"{d}: image 'cloudinit_debian-bookworn' is not offered" in err
    assert "did you mean 'cloudinit_debian-bookworm'" in err
    assert "fleet.yaml:" in err  # every problem names where the manifest says it
    assert sum(sim.counters.reinstall_received.values()) == 0


def test_wrong_account_password_exits_3_after_one_auth_call(sim: Simulator, tmp_path: Path) -> None:
    path = manifest(sim, tmp_path, vps_lines(sim, 1))
    sim_password = sim.password
    sim.password = "changed-on-the-server"  # type: ignore[misc]
    try:
        code, _, err = plan(sim, path)
    finally:
        sim.password = sim_password  # type: ignore[misc]
    assert code == 3
    assert "credentials were refused" in err
    assert sim.counters.auth_calls <= 1


@pytest.mark.parametrize(
    ("vps", "extra"),
    [
        ("  - {id: kvm_1, hostname: a}", ""),
        ("  - {id: kvm_100001_200001, hostname: a, imag: x}", ""),
        ("  - {id: kvm_100001_200001, hostname: a}", "  rate: fast\n"),
    ],
)
def test_a_bad_manifest_sends_nothing(sim: Simulator, tmp_path: Path, vps: str, extra: str) -> None:
    path = manifest(sim, tmp_path, vps, extra=extra)
    code, _, err = plan(sim, path)
    assert code == 2
    assert "fleet.yaml:" in err
    assert sum(sim.counters.requests.values()) == 0


def test_waves_resolve_to_counts_and_always_cover_the_selection() -> None:
    def waves(*items: CountOrFraction) -> Rollout:
        return Rollout(waves=items)

    one, pct10, all_ = (
        CountOrFraction(count=1),
        CountOrFraction(fraction=0.1),
        CountOrFraction(fraction=1.0),
    )
    assert resolve_waves(waves(one, pct10, all_), 100) == [1, 9, 90]
    assert resolve_waves(waves(one, pct10, all_), 5) == [1, 4]  # the empty 10% wave is dropped
    assert resolve_waves(waves(one, all_), 1) == [1]
    assert resolve_waves(waves(CountOrFraction(count=3)), 10) == [10]
