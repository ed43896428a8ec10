"""Starting from the account: ``init`` writes a manifest that validates and plans, ``vps`` and
``images`` list what the account holds, and the examples ship inside the package.
In-process against the simulator (``make_thread_sim``); the login comes from the environment.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import anyio
import pytest

import orchestrator
from orchestrator.cli.output import counter
from orchestrator.run.account import ImageList, group_images
from orchestrator.run.images import fleet_image, own_image
from orchestrator.run.starter import example_files
from orchestrator.simulator import Simulator
from tests.cli_support import REPO, CliResult, run_cli
from tests.conftest import ThreadSims

ROOT_PASSWORD = "init-Root-pass-42"


def env_for(sim: Simulator) -> dict[str, str]:
    return {
        "EDIS_EMAIL": sim.email,
        "EDIS_PASSWORD": sim.password,
        "EDIS_ROOT_PASSWORD": ROOT_PASSWORD,
        "PATH": "/usr/bin:/bin",
    }


def edis(sim: Simulator, tmp: Path, *args: str, env: dict[str, str] | None = None) -> CliResult:
    """``edis-fleet ARGS`` in-process, pointed at the simulator like any account command."""
    endpoint = ["--session-url", sim.session_url, "--allow-api-host", "127.0.0.0/8"]
    return run_cli([*args, *endpoint], cwd=tmp, env=env or env_for(sim))


def test_init_writes_a_manifest_that_validates_and_plans(
    thread_sim: Simulator, tmp_path: Path
) -> None:
    done = edis(thread_sim, tmp_path, "init", "--with-templates")
    assert done.returncode == 0, done.stderr
    text = (tmp_path / "fleet.yaml").read_text()
    for kvm_id, i in zip(thread_sim.vps_ids, range(1, 6), strict=True):
        assert f"{{id: {kvm_id}, hostname: vps-{i:03d}}}" in text
    assert "email: {env: EDIS_EMAIL}" in text
    assert "root_password: {env: EDIS_ROOT_PASSWORD}" in text
    assert "  # cloud_init: templates/base.yaml.j2" in text  # offered, commented out
    assert "protected" not in text.replace("'protected: true'", "")
    assert thread_sim.password not in text
    assert sorted(p.name for p in (tmp_path / "templates").iterdir()) == [
        "base.yaml.j2", "ci-reset.sh.j2", "web.yaml.j2",
    ]  # fmt: skip
    # Every simulated VPS offers the provider's list: the newest Debian wins the tie.
    assert "image: cloudinit_debian-trixie" in text
    env = env_for(thread_sim)
    valid = run_cli(["validate", "fleet.yaml", "--strict"], cwd=tmp_path, env=env)
    assert valid.returncode == 0, valid.stderr
    assert "5 in the manifest, 5 selected" in valid.stdout
    planned = run_cli(["plan", "fleet.yaml"], cwd=tmp_path, env=env)
    assert planned.returncode == 0, planned.stderr
    assert "blast radius: 5 VPS(es) will be WIPED" in planned.stdout
    assert ": 1 VPS(es)," in planned.stdout
    assert ": 4 VPS(es)," in planned.stdout
    # Uncommenting the template (and its vars) is all it takes to send user data.
    text = text.replace("  # cloud_init:", "  cloud_init:").replace("  # vars:", "  vars:")
    text = text.replace("  #   domain:", "    domain:").replace("  #   timezone:", "    timezone:")
    (tmp_path / "fleet.yaml").write_text(text)
    valid = run_cli(["validate", "fleet.yaml", "--strict"], cwd=tmp_path, env=env)
    assert valid.returncode == 0, valid.stderr
    assert "5 document(s) rendered" in valid.stdout


def test_init_never_overwrites_without_force(thread_sim: Simulator, tmp_path: Path) -> None:
    (tmp_path / "fleet.yaml").write_text("mine\n")
    done = edis(thread_sim, tmp_path, "init")
    assert done.returncode == 2
    assert "already exist" in done.stderr
    assert "--force" in done.stderr
    assert (tmp_path / "fleet.yaml").read_text() == "mine\n"
    # A template in the way refuses too, before anything is written.
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "web.yaml.j2").write_text("mine\n")
    done = edis(thread_sim, tmp_path, "init", "other.yaml", "--with-templates")
    assert done.returncode == 2
    assert not (tmp_path / "other.yaml").exists()
    done = edis(thread_sim, tmp_path, "init", "--force", "--with-templates")
    assert done.returncode == 0, done.stderr
    assert "version: 1" in (tmp_path / "fleet.yaml").read_text()
    assert (tmp_path / "templates" / "web.yaml.j2").read_text() != "mine\n"


def test_init_only_and_exclude(thread_sim: Simulator, tmp_path: Path) -> None:
    ids = thread_sim.vps_ids
    done = edis(
        thread_sim, tmp_path, "init", "--only", "vps-00[1-3]", "--only", ids[4],
        "--exclude", ids[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "2 left out by --only/--exclude" in done.stdout
    text = (tmp_path / "fleet.yaml").read_text()
    assert [i for i in ids if i in text] == [ids[0], ids[2], ids[4]]
    assert 'waves: [1, "100%"]' in text
    valid = run_cli(["validate", "fleet.yaml"], cwd=tmp_path, env=env_for(thread_sim))
    assert valid.returncode == 0, valid.stderr
    typo = edis(thread_sim, tmp_path, "init", "typo.yaml", "--only", "vps-0O1")
    assert typo.returncode == 2
    assert "'vps-0O1' matches no VPS; did you mean 'vps-001'?" in typo.stderr
    assert not (tmp_path / "typo.yaml").exists()


ODD_ACCOUNT = """\
vps:
  - {kvm_id: kvm_1_1, hostname: web-1, images: [cloudinit_rocky-9, cloudinit_ubuntu-lts-24-04]}
  - {kvm_id: kvm_2_2, hostname: "Not a host name", images: [cloudinit_ubuntu-lts-24-04]}
  - {kvm_id: kvm_3_3, hostname: web-1, images: [cloudinit_ubuntu-lts-24-04, windows-10]}
  - {kvm_id: kvm_4_4, hostname: legacy, images: [debian-bullseye, windows-server-2022]}
  - {kvm_id: kvm_5_5, hostname: win, images: [windows-server-2022]}
  - {kvm_id: kvm_6_6, hostname: frozen, suspended: true}
"""


def test_init_on_an_uneven_account(make_thread_sim: ThreadSims, tmp_path: Path) -> None:
    account = tmp_path / "account.yaml"
    account.write_text(ODD_ACCOUNT)
    with make_thread_sim(account_file=str(account)) as sim:
        done = edis(sim, tmp_path, "init")
        assert done.returncode == 0, done.stderr
        text = (tmp_path / "fleet.yaml").read_text()
        # Offered to most VPSes, not the preferred Debian no VPS offers.
        assert "image: cloudinit_ubuntu-lts-24-04" in text
        assert "{id: kvm_1_1, hostname: web-1}" in text
        assert "{id: kvm_2_2, hostname: kvm-2-2}" in text  # details' name is no host name
        assert "{id: kvm_3_3, hostname: web-1-2}" in text  # duplicate host name
        assert "hostname: legacy, image: debian-bullseye, cloud_init: null}" in text
        assert "image: windows-server-2022, cloud_init: null, readiness: {port: 3389}}" in text
        assert "  # - {id: kvm_6_6}   # suspended" in text
        assert "1 written commented out" in done.stdout
        assert "kvm_4_4: cloudinit_ubuntu-lts-24-04 is not offered there" in done.stderr
        env = env_for(sim)
        valid = run_cli(["validate", "fleet.yaml"], cwd=tmp_path, env=env)
        assert valid.returncode == 0, valid.stderr
        planned = run_cli(["plan", "fleet.yaml"], cwd=tmp_path, env=env)
        assert planned.returncode == 0, planned.stderr
        # --image must be offered somewhere; a near miss is named.
        bad = edis(sim, tmp_path, "init", "x.yaml", "--image", "cloudinit_rocky-8")
        assert bad.returncode == 2
        assert "did you mean 'cloudinit_rocky-9'?" in bad.stderr


def test_vps_and_images_text_and_json(thread_sim: Simulator, tmp_path: Path) -> None:
    ids = thread_sim.vps_ids
    listed = edis(thread_sim, tmp_path, "vps")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["KVM", "ID", "HOSTNAME", "IPV4", "SUSPENDED", "POWER"]
    assert lines[1].split() == [ids[0], "vps-001", "127.0.2.1", "no", "server", "powered", "on"]
    assert lines[-1] == "5 VPS(es)"
    assert max(len(line) for line in lines) <= 80
    data = json.loads(edis(thread_sim, tmp_path, "vps", "--format", "json").stdout)
    first = data["vps"][0]
    assert (first["kvm_id"], first["hostname"], first["suspended"]) == (ids[0], "vps-001", False)
    assert first["ipv4"][0].startswith("127.0.2.1/")

    one = edis(thread_sim, tmp_path, "images", ids[0])
    assert one.returncode == 0, one.stderr
    assert one.stdout.startswith(f"{ids[0]}: 23 images\n  cloudinit_almalinux-8\n")
    grouped = edis(thread_sim, tmp_path, "images", "--all")
    assert grouped.stdout.startswith("23 images for 5 VPS(es):\n")
    data = json.loads(edis(thread_sim, tmp_path, "images", "--all", "--format", "json").stdout)
    assert [g["kvm_ids"] for g in data["groups"]] == [ids]
    assert "windows-server-2022" in data["vps"][0]["images"]
    missing = edis(thread_sim, tmp_path, "images", ids[0], "kvm_100001_200009")
    assert missing.returncode == 2
    assert "kvm_100001_200009: not in the account; did you mean" in missing.stdout
    both = edis(thread_sim, tmp_path, "images", ids[0], "--all")
    assert both.returncode == 2


def test_a_refused_login_exits_3_and_names_no_password(
    thread_sim: Simulator, tmp_path: Path
) -> None:
    env = {**env_for(thread_sim), "EDIS_PASSWORD": "wrong-password-123"}
    done = edis(thread_sim, tmp_path, "vps", env=env)
    assert done.returncode == 3
    assert "wrong-password-123" not in done.stdout + done.stderr
    unset = {k: v for k, v in env_for(thread_sim).items() if k != "EDIS_EMAIL"}
    done = edis(thread_sim, tmp_path, "init", env=unset)
    assert done.returncode == 2
    assert "set EDIS_EMAIL in the environment" in done.stderr
    bad = edis(thread_sim, tmp_path, "init", "--root-password-env", "ROOT PW")
    assert bad.returncode == 2
    assert "not an environment variable name: 'ROOT PW'" in bad.stderr


def test_the_library_reads_the_account(thread_sim: Simulator) -> None:
    account = orchestrator.AccountOptions(
        session_url=thread_sim.session_url, extra_api_hosts=("127.0.0.0/8",)
    )
    env = env_for(thread_sim)
    heard: list[tuple[str, int, int]] = []

    def progress(what: str, done: int, total: int) -> None:
        heard.append((what, done, total))

    listed = anyio.run(
        lambda: orchestrator.account_vps(account, power=False, env=env, progress=progress)
    )
    assert [(v.kvm_id, v.power) for v in listed] == [(k, None) for k in thread_sim.vps_ids]
    # Every VPS read is heard of, the count climbing to the total.
    assert heard == [("details", n, 5) for n in range(1, 6)]
    lists = anyio.run(lambda: orchestrator.account_images(account, env=env))
    assert len(group_images(lists)) == 1


def test_the_image_choice() -> None:
    offers = {
        "a": ["cloudinit_centos-7", "cloudinit_debian-bookworm", "windows-10"],
        "b": ["cloudinit_centos-7", "cloudinit_debian-bookworm"],
        "c": ["cloudinit_centos-7", "cloudinit_ubuntu-lts-24-04"],
    }
    # centos-7 is offered everywhere but long retired: never a default.
    assert fleet_image(offers) == ("cloudinit_debian-bookworm", 2)
    assert fleet_image({"a": ["windows-10", "debian-bullseye"]}) == (None, 0)
    assert own_image(["windows-10", "debian-bullseye"]) == "debian-bullseye"
    assert own_image(["windows-10"]) == "windows-10"
    lists = [ImageList("x", ("a",)), ImageList("y", ("b",)), ImageList("z", ("a",)),
             ImageList("w", problem="down")]  # fmt: skip
    assert [g.kvm_ids for g in group_images(lists)] == [("x", "z"), ("y",)]


# --------------------------------------------------------------------------- the examples


def test_the_bundled_examples_are_the_repository_examples() -> None:
    bundled = example_files()
    assert set(bundled) == {
        "example.yaml", "templates/base.yaml.j2", "templates/ci-reset.sh.j2",
        "templates/web.yaml.j2",
    }  # fmt: skip
    for name, text in bundled.items():
        # One content, two places: the package (what an installed tool writes) and fleets/
        # (what the repository's commands use). Edit both, or copy fleets/ over.
        assert (REPO / "fleets" / name).read_text() == text, name


def test_init_example_writes_a_manifest_that_validates(tmp_path: Path) -> None:
    env = {"EDIS_EMAIL": "a@example.com", "EDIS_PASSWORD": "x" * 8,
           "EDIS_ROOT_PASSWORD": ROOT_PASSWORD, "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = run_cli(["init", "--example", "demo.yaml"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "templates" / "web.yaml.j2").is_file()
    valid = run_cli(["validate", "demo.yaml", "--strict"], cwd=tmp_path, env=env)
    assert valid.returncode == 0, valid.stderr
    again = run_cli(["init", "--example", "demo.yaml"], cwd=tmp_path, env=env)
    assert again.returncode == 2


@pytest.mark.subprocess
def test_the_wheel_carries_the_examples(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources (no network) and look inside it."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"
    shutil.copytree(REPO / "orchestrator", src / "orchestrator",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--quiet", "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("edis_fleet-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in example_files():
        assert f"orchestrator/examples/{name}" in names
    assert "orchestrator/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_account_counter_shows_on_a_terminal_only() -> None:
    assert counter(io.StringIO()) is None
    err = _Terminal()
    show = counter(err)
    assert show is not None
    show("details", 3, 40)
    assert err.getvalue().strip() == "reading the account: details 3/40"
    show("", 0, 0)
    assert err.getvalue().endswith("\r")
