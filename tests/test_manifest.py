"""Loading a manifest into a ``Fleet``: precedence, parsed rollout, sources, positions."""

from __future__ import annotations

import dataclasses
import os
import stat
from pathlib import Path

import pytest

from orchestrator import fleet as f
from orchestrator import units as u
from orchestrator.errors import ManifestError
from orchestrator.manifest.loader import check_manifest, load_fleet
from orchestrator.secrets import sources
from orchestrator.secrets.values import Secret
from tests.manifest_support import ACCOUNT_MARKER, BASE, ENV, ROOT_MARKER, write_fleet

PRECEDENCE = """\
version: 1
account:
  email: ops@example.net
  password: {file: secrets/account}
defaults:
  image: cloudinit_debian-bookworm
  root_password: {env: EDIS_ROOT_PASSWORD}
  cloud_init: templates/ok.yaml.j2
  vars: {domain: example.net, role: base, size: s}
  tags: [all]
  readiness: {mode: tcp, port: 22, deadline: 10m}
groups:
  db:
    image: cloudinit_ubuntu-lts-24-04
    vars: {role: db}
    tags: [db]
    readiness: {deadline: 30m}
    protected: true
  win:
    image: windows-server-2022
    cloud_init: null
    readiness: {port: 3389}
vps:
  - {id: kvm_1_1, hostname: plain}
  - id: kvm_2_2
    hostname: db-1
    group: db
  - id: kvm_3_3
    hostname: db-2
    group: db
    image: cloudinit_debian-trixie
    vars: {role: replica, extra: 1}
    tags: [replica]
    readiness: {mode: api}
    protected: false
  - id: kvm_4_4
    hostname: win-1
    group: win
    readiness: {deadline: 0}
  - id: kvm_5_5
    hostname: win-2
    group: win
    readiness: {mode: none}
rollout:
  concurrency: 7
  rate: 300/min
  waves: [1, "10%", 3, "100%"]
  soak: 1h30m
  failure_budget: {wave: "20%", run: 2}
  vps_deadline: 45m
  in_doubt: resend-after-window
  in_doubt_window: 30m
"""


@pytest.fixture
def fleet(tmp_path: Path) -> f.Fleet:
    (tmp_path / "secrets").mkdir()
    secret = tmp_path / "secrets" / "account"
    secret.write_text(ACCOUNT_MARKER + "\n")
    secret.chmod(0o600)
    return load_fleet(write_fleet(tmp_path, PRECEDENCE), ENV)


def test_defaults_then_group_then_entry(fleet: f.Fleet) -> None:
    plain, db1, db2, win1, _win2 = fleet.vps
    assert plain.image == "cloudinit_debian-bookworm"
    assert db1.image == "cloudinit_ubuntu-lts-24-04"
    assert db2.image == "cloudinit_debian-trixie"
    # vars merge key by key, the most specific level winning.
    assert dict(plain.vars) == {"domain": "example.net", "role": "base", "size": "s"}
    assert dict(db1.vars) == {"domain": "example.net", "role": "db", "size": "s"}
    assert dict(db2.vars) == {"domain": "example.net", "role": "replica", "size": "s", "extra": 1}
    # tags are the union of every level.
    assert plain.tags == {"all"}
    assert db2.tags == {"all", "db", "replica"}
    # protected: the entry overrides its group.
    assert (plain.protected, db1.protected, db2.protected) == (False, True, False)
    # cloud_init: null in a group switches the default template off.
    assert plain.template is not None
    assert plain.template.name.endswith("templates/ok.yaml.j2")
    assert win1.template is None
    assert plain.template is db1.template  # one source object per file


def test_readiness_fields_resolve_one_by_one(fleet: f.Fleet) -> None:
    plain, db1, db2, win1, win2 = fleet.vps
    assert plain.readiness == f.Readiness("tcp", 22, 600.0)
    assert db1.readiness == f.Readiness("tcp", 22, 1800.0)
    assert db2.readiness == f.Readiness("api", 22, 1800.0)
    # deadline 0 is an explicit value; port from the group.
    assert win1.readiness == f.Readiness("tcp", 3389, 0.0, min_install_s=0.0)
    assert win2.readiness.mode == "none"


def test_default_deadline_depends_on_the_image(tmp_path: Path) -> None:
    text = BASE.replace(
        "    hostname: vps-002\n",
        "    hostname: vps-002\n    image: windows-server-2022\n    cloud_init: null\n"
        "    readiness: {mode: api}\n",
    )
    fleet = load_fleet(write_fleet(tmp_path, text), ENV)
    assert fleet.vps[0].readiness == f.Readiness("tcp", 22, 20 * 60.0)
    assert fleet.vps[1].readiness == f.Readiness("api", 22, 40 * 60.0)


def test_rollout_is_parsed_into_numbers(fleet: f.Fleet) -> None:
    r = fleet.rollout
    assert r.concurrency == 7
    assert r.rate_per_s == pytest.approx(5.0)
    assert r.waves == (
        u.CountOrFraction(count=1),
        u.CountOrFraction(fraction=0.1),
        u.CountOrFraction(count=3),
        u.CountOrFraction(fraction=1.0),
    )
    assert r.soak_s == 5400.0
    assert r.wave_budget == u.CountOrFraction(fraction=0.2)
    assert r.run_budget == u.CountOrFraction(count=2)
    assert r.vps_deadline_s == 2700.0
    assert r.in_doubt is f.InDoubtPolicy.RESEND_AFTER_WINDOW
    assert r.in_doubt_window_s == 1800.0


def test_rollout_defaults(tmp_path: Path) -> None:
    fleet = load_fleet(write_fleet(tmp_path, BASE.replace('  waves: [1, "100%"]\n', "")), ENV)
    assert fleet.rollout == f.Rollout()
    assert fleet.rollout.waves == (u.CountOrFraction(count=1), u.CountOrFraction(fraction=1.0))


def test_account_and_fleet_fields(fleet: f.Fleet, tmp_path: Path) -> None:
    assert fleet.name == "fleet"
    assert fleet.account.email == sources.LiteralValue("ops@example.net")
    assert isinstance(fleet.account.password, sources.FilePassword)
    assert fleet.account.password.path == tmp_path / "secrets" / "account"
    assert fleet.account.session_url == "https://session.edisglobal.com"
    assert fleet.account.allowed_api_hosts == ("*.edisglobal.com",)
    assert fleet.groups == {"db", "win"}
    assert fleet.user_data_limit == 16 * 1024
    assert fleet.get("kvm_3_3") is fleet.vps[2]
    assert fleet.get("kvm_9_9") is None
    assert list(fleet.ids) == ["kvm_1_1", "kvm_2_2", "kvm_3_3", "kvm_4_4", "kvm_5_5"]
    assert fleet.vps[1].where == f"{tmp_path / 'fleet.yaml'}:25"
    assert fleet.tags == {"all", "db", "replica"}


def test_fleet_is_frozen(fleet: f.Fleet) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        fleet.name = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fleet.vps[0].image = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        fleet.vps[0].vars["role"] = "x"  # type: ignore[index]


def test_environment_is_injected_not_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDIS_ROOT_PASSWORD", ROOT_MARKER)
    env = {k: v for k, v in ENV.items() if k != "EDIS_ROOT_PASSWORD"}
    with pytest.raises(ManifestError) as info:
        load_fleet(write_fleet(tmp_path, BASE), env)
    assert "environment variable EDIS_ROOT_PASSWORD is not set" in str(info.value)


def test_problems_carry_file_line_column_and_path(tmp_path: Path) -> None:
    text = BASE.replace("    hostname: vps-002\n", "    hostname: vps-002\n    protected: maybe\n")
    path = write_fleet(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_fleet(path, ENV)
    assert info.value.problems == [
        f"{path}:14:16: vps[1].protected: expected true or false, got the string 'maybe'"
    ]


def test_check_manifest_reports_without_raising(tmp_path: Path) -> None:
    report = check_manifest(write_fleet(tmp_path, "version: 1\n"), ENV)
    assert report.fleet is None
    assert not report.ok
    assert len(report.problems) == 2  # account and vps missing


def test_warnings_are_kept_on_the_fleet(tmp_path: Path) -> None:
    text = BASE.replace(
        "    hostname: vps-002\n", "    hostname: vps-002\n    image: debian-bullseye\n"
    )
    fleet = load_fleet(write_fleet(tmp_path, text), ENV)
    assert len(fleet.warnings) == 1
    assert "does not take cloud-init" in fleet.warnings[0]
    with pytest.raises(ManifestError) as info:
        load_fleet(tmp_path / "fleet.yaml", ENV, strict=True)
    assert info.value.problems[0].endswith("[an error with --strict]")


def test_password_sources(tmp_path: Path) -> None:
    text = BASE.replace(
        "    hostname: vps-002\n",
        "    hostname: vps-002\n    root_password: {generate: out/gen.txt}\n",
    )
    fleet = load_fleet(write_fleet(tmp_path, text), ENV)
    first, second = fleet.vps
    assert first.root_password == sources.EnvPassword("EDIS_ROOT_PASSWORD")
    out = tmp_path / "out" / "gen.txt"
    assert second.root_password == sources.GeneratedPassword(out, str(out))
    book = sources.PasswordBook(ENV)
    assert book.root_password(first).reveal() == ROOT_MARKER
    generated = book.root_password(second)
    assert generated is book.root_password(second)  # one per VPS, remembered
    assert len(generated.reveal()) == 24
    assert str(generated) == "***"
    sources.write_generated_passwords(tmp_path / "out" / "gen.txt", book.generated)
    written = tmp_path / "out" / "gen.txt"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert stat.S_IMODE(written.parent.stat().st_mode) == 0o700
    assert written.read_text() == f"kvm_100002_200002\t{generated.reveal()}\n"


def test_generated_passwords_refuse_a_shared_file(tmp_path: Path) -> None:
    target = tmp_path / "open.txt"
    target.write_text("")
    os.chmod(target, 0o644)
    with pytest.raises(PermissionError):
        sources.write_generated_passwords(target, {"kvm_1_1": Secret("x")})
    assert target.read_text() == ""


def test_generated_password_shape() -> None:
    for _ in range(50):
        value = sources.generate_password().reveal()
        assert value.isalnum()
        assert any(c.isupper() for c in value)
        assert any(c.islower() for c in value)
        assert any(c.isdigit() for c in value)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("1.5h", 5400), ("250ms", 0.25), (0, 0)],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert u.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["30", 30, "5 minutes", "m5", "", True, [1]])
def test_parse_duration_refuses(text: object) -> None:
    with pytest.raises(ValueError, match="expected a duration"):
        u.parse_duration(text)


@pytest.mark.parametrize(
    ("text", "rate"), [("5/s", 5.0), ("300/min", 5.0), ("3600/h", 1.0), ("0.5 / sec", 0.5)]
)
def test_parse_rate(text: str, rate: float) -> None:
    assert u.parse_rate(text) == pytest.approx(rate)


@pytest.mark.parametrize("text", ["5", 5, "5/fortnight", "0/s", "-1/s", "fast"])
def test_parse_rate_refuses(text: object) -> None:
    with pytest.raises(ValueError, match="rate"):
        u.parse_rate(text)


@pytest.mark.parametrize(("text", "size"), [(100, 100), ("16KiB", 16384), ("1m", 1 << 20)])
def test_parse_size(text: object, size: int) -> None:
    assert u.parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "minimum", "expected"),
    [
        (3, 1, u.CountOrFraction(count=3)),
        ("10%", 1, u.CountOrFraction(fraction=0.1)),
        ("12.5 %", 0, u.CountOrFraction(fraction=0.125)),
        (0, 0, u.CountOrFraction(count=0)),
        ("0%", 0, u.CountOrFraction(fraction=0.0)),
    ],
)
def test_parse_count_or_percent(value: object, minimum: int, expected: u.CountOrFraction) -> None:
    assert u.parse_count_or_percent(value, minimum=minimum) == expected


@pytest.mark.parametrize(("value", "minimum"), [(0, 1), ("0%", 1), ("101%", 0), ("5", 0), (1.5, 0)])
def test_parse_count_or_percent_refuses(value: object, minimum: int) -> None:
    with pytest.raises(ValueError, match=r"10%|quoted|range"):
        u.parse_count_or_percent(value, minimum=minimum)


def test_count_or_fraction_resolve() -> None:
    tenth = u.CountOrFraction(fraction=0.1)
    assert tenth.resolve(30) == 3  # no float drift to 4
    assert tenth.resolve(31) == 4
    assert tenth.resolve(31, round_up=False) == 3
    assert u.CountOrFraction(fraction=0.01).resolve(50) == 1
    assert u.CountOrFraction(count=10).resolve(4) == 4
    assert str(tenth) == "10%"
    assert str(u.CountOrFraction(count=2)) == "2"
    with pytest.raises(ValueError, match="exactly one"):
        u.CountOrFraction()


def test_freeze_and_thaw() -> None:
    frozen = f.freeze({"a": [1, {"b": 2}]})
    assert frozen["a"][1]["b"] == 2
    with pytest.raises(TypeError):
        frozen["a"] = 1
    assert f.thaw(frozen) == {"a": [1, {"b": 2}]}


def test_readiness_timing_fields(tmp_path: Path) -> None:
    manifest = BASE.replace(
        "  cloud_init: templates/ok.yaml.j2\n",
        "  cloud_init: templates/ok.yaml.j2\n"
        "  readiness: {mode: api, min_install: 5s, poll_interval: 2s, deadline: 1m}\n",
    )
    fleet = load_fleet(write_fleet(tmp_path, manifest), ENV)
    r = fleet.vps[0].readiness
    assert (r.mode, r.min_install_s, r.poll_interval_s, r.deadline_s) == ("api", 5.0, 2.0, 60.0)


def test_min_install_must_be_shorter_than_the_deadline(tmp_path: Path) -> None:
    manifest = BASE.replace(
        "  cloud_init: templates/ok.yaml.j2\n",
        "  cloud_init: templates/ok.yaml.j2\n  readiness: {min_install: 5m, deadline: 2m}\n",
    )
    with pytest.raises(ManifestError, match=r"min_install \(300s\) must be shorter"):
        load_fleet(write_fleet(tmp_path, manifest), ENV)


def test_default_min_install_never_exceeds_a_short_deadline(tmp_path: Path) -> None:
    manifest = BASE.replace(
        "  cloud_init: templates/ok.yaml.j2\n",
        "  cloud_init: templates/ok.yaml.j2\n  readiness: {deadline: 30s}\n",
    )
    fleet = load_fleet(write_fleet(tmp_path, manifest), ENV)
    assert fleet.vps[0].readiness.min_install_s == 30.0
