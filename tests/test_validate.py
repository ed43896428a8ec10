"""``edis-fleet validate`` end to end: summary, exit codes, selection, and no secret ever shown."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestrator.cli import build_parser
from orchestrator.errors import ManifestError
from orchestrator.manifest.loader import check_manifest, load_fleet
from tests.manifest_support import (
    ACCOUNT_MARKER,
    BASE,
    ENV,
    REPO,
    ROOT_MARKER,
    CliResult,
    cli,
    write_fleet,
)

EXAMPLE = REPO / "fleets" / "example.yaml"


def run_example(*args: str) -> CliResult:
    return cli(["validate", str(EXAMPLE), *args], cwd=REPO)


def test_example_is_valid() -> None:
    proc = run_example()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert f"{EXAMPLE}: valid" in out
    assert "VPSes:        5 in the manifest, 4 selected" in out
    assert "blast radius: 4 of 5 VPSes would be wiped (1 protected left out)" in out
    assert "rollout:      waves [1, 100%], concurrency 4, 5 requests/s" in out
    assert "user data:    4 document(s) rendered" in out
    assert "warnings:     0" in out


@pytest.mark.parametrize(
    ("args", "selected", "radius"),
    [
        (["--only", "tag=web"], 2, "2 of 5 VPSes would be wiped"),
        (["--include-protected"], 5, "5 of 5 VPSes would be wiped, 1 of them protected"),
        (["--limit", "kvm_100001_200001,kvm_100003_200003"], 2, "2 of 5"),
        (["--exclude", "kvm_100001_200001", "--exclude", "kvm_100002_200002"], 2, "2 of 5"),
        (["--only", "tag=db", "--include-protected"], 2, "2 of 5 VPSes would be wiped, 1 of"),
    ],
)
def test_selection_options(args: list[str], selected: int, radius: str) -> None:
    proc = run_example(*args)
    assert proc.returncode == 0, proc.stderr
    assert f"5 in the manifest, {selected} selected" in proc.stdout
    assert radius in proc.stdout


def test_selection_problems_exit_2_with_every_problem() -> None:
    proc = run_example(
        "--limit", "kvm_100009_200009", "--exclude", "kvm-1", "--only", "shape=round"
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0] == f"{EXAMPLE}: 2 problems"
    assert "--exclude: malformed id 'kvm-1'; expected kvm_<digits>_<digits>" in proc.stderr
    assert "--only 'shape=round': expected tag=NAME or group=NAME" in proc.stderr


def test_unknown_id_in_limit() -> None:
    proc = run_example("--limit", "kvm_100009_200009")
    assert proc.returncode == 2
    assert f"--limit: kvm_100009_200009 is not in {EXAMPLE}" in proc.stderr


def test_protected_named_in_limit_needs_the_flag() -> None:
    proc = run_example("--limit", "kvm_100005_200005")
    assert proc.returncode == 2
    assert "kvm_100005_200005 (vps-005) is protected; add --include-protected" in proc.stderr
    assert run_example("--limit", "kvm_100005_200005", "--include-protected").returncode == 0


def test_missing_file() -> None:
    proc = cli(["validate", "fleets/nope.yaml"], cwd=REPO)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "fleets/nope.yaml: 1 problem",
        "fleets/nope.yaml: cannot read the manifest: not found",
    ]


def test_usage_error_exits_2() -> None:
    proc = cli(["validate"], cwd=REPO)
    assert proc.returncode == 2
    assert "FLEET.yaml" in proc.stderr


def test_registered_in_the_parser() -> None:
    args = build_parser().parse_args(["validate", "x.yaml", "--strict", "--only", "tag=a"])
    assert args.command == "validate"
    assert args.strict is True
    assert args.only == ["tag=a"]


def test_warnings_are_shown_with_problems(tmp_path: Path) -> None:
    text = BASE.replace(
        "    hostname: vps-002\n", "    hostname: vps-002\n    image: debian-bullseye\n"
    ).replace('  waves: [1, "100%"]\n', "  rate: fast\n")
    write_fleet(tmp_path, text)
    proc = cli(["validate", "fleet.yaml", "--no-schema"], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "fleet.yaml: 1 problem",
        "fleet.yaml:16:9: rollout.rate: cannot read rate 'fast'; expected a rate like '5/s' or "
        "'300/min'",
        "and 1 warning:",
        "fleet.yaml:14:12: vps[1].image: image debian-bullseye does not take cloud-init user "
        "data (only cloudinit_* images do), so the template would not be used; set "
        "'cloud_init: null' for this VPS",
    ]


# ----------------------------------------------------------------------------- secrets

LEAKY_TEMPLATE = """\
#cloud-config
hostname: {{ hostname }}
a: {{ vars[root_password] }}
"""


def leaky_fleets(folder: Path) -> list[Path]:
    """Manifests whose problems sit right next to the secrets: none may show them."""
    cases = {
        "template-error": BASE.replace(
            "  cloud_init: templates/ok.yaml.j2\n", "  cloud_init: templates/leaky.yaml.j2\n"
        ),
        "not-yaml": BASE.replace(
            "  cloud_init: templates/ok.yaml.j2\n", "  cloud_init: templates/broken.yaml.j2\n"
        ),
        "account-password-file": BASE.replace(
            "  password: {env: EDIS_PASSWORD}\n", "  password: {file: account.txt}\n"
        ),
        "valid": BASE,
    }
    files = {
        "templates/leaky.yaml.j2": LEAKY_TEMPLATE,
        "templates/broken.yaml.j2": "#cloud-config\nusers: [{{ root_password }}\n",
        "account.txt": ACCOUNT_MARKER + "\n",
    }
    paths = []
    for name, text in cases.items():
        sub = folder / name
        sub.mkdir()
        paths.append(write_fleet(sub, text, files))
        (sub / "account.txt").chmod(0o644)  # a warning about the file, never its content
    return paths


@pytest.mark.parametrize("strict", [False, True])
def test_no_secret_in_cli_output(tmp_path: Path, strict: bool) -> None:
    for path in leaky_fleets(tmp_path):
        args = ["validate", path.name, *(["--strict"] if strict else [])]
        proc = cli(args, cwd=path.parent)
        assert proc.returncode in (0, 2)
        for marker in (ROOT_MARKER, ACCOUNT_MARKER):
            assert marker not in proc.stdout
            assert marker not in proc.stderr


def test_no_secret_in_exceptions_or_reports(tmp_path: Path) -> None:
    for path in leaky_fleets(tmp_path):
        report = check_manifest(path, ENV, strict=True)
        texts = [*report.problems, *report.warnings, repr(report.fleet), repr(report)]
        try:
            load_fleet(path, ENV)
        except ManifestError as exc:
            texts += [str(exc), repr(exc), *exc.problems]
        for text in texts:
            assert ROOT_MARKER not in text
            assert ACCOUNT_MARKER not in text


def test_redactor_knows_the_secrets(tmp_path: Path) -> None:
    report = check_manifest(write_fleet(tmp_path, BASE), ENV)
    assert report.redactor(f"x {ROOT_MARKER} {ACCOUNT_MARKER} y") == "x *** *** y"


@pytest.mark.skipif(
    shutil.which("cloud-init") is None,
    reason="Debian's cloud-init is not installed (CI installs it); the schema path is not run",
)
def test_no_secret_in_schema_output(tmp_path: Path) -> None:
    template = (
        "#cloud-config\nusers:\n  - {name: ops, passwd: {{ root_password | tojson }}, "
        "lock_passwd: 7}\n"
    )
    write_fleet(
        tmp_path,
        BASE.replace("templates/ok.yaml.j2", "templates/u.yaml.j2"),
        {"templates/u.yaml.j2": template},
    )
    proc = cli(["validate", "fleet.yaml"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "cloud-init schema: users.0: value is not valid" in proc.stderr
    assert ROOT_MARKER not in proc.stderr + proc.stdout


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_a_ca_file_that_is_no_ca_bundle_is_a_manifest_problem(tmp_path: Path, command: str) -> None:
    """A ``ca_file`` that exists but holds no certificate is caught by the same check the
    client makes, before any connection: exit 2 with its line and field, no traceback."""
    shutil.copytree(REPO / "fleets", tmp_path / "fleets")
    path = tmp_path / "fleets" / "example.yaml"
    (tmp_path / "fleets" / "ca.pem").write_text("not a certificate\n")
    text = path.read_text()
    text = text.replace(
        "  password: {env: EDIS_PASSWORD}\n",
        "  password: {env: EDIS_PASSWORD}\n  ca_file: ca.pem\n",
        1,
    )
    path.write_text(text)
    line = text.splitlines().index("  ca_file: ca.pem") + 1
    proc = cli([command, str(path)], cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"example.yaml:{line}:" in proc.stderr
    assert "account.ca_file: CA file" in proc.stderr
    assert "no usable certificate" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("value", ["\u0663", "\uff13", "1e3", "-1", "99999999", " 3"])
def test_count_options_take_ascii_digits_only(value: str) -> None:
    """``--schema-limit`` (as every count option) refuses other scripts' digits and sizes
    past its range: a usage error, exit 2, before anything is read."""
    proc = run_example("--schema-limit", value)
    assert proc.returncode == 2
    assert "is not a whole number from 0 to 1000000" in proc.stderr
