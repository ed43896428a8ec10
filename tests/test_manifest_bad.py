"""Malformed manifests: each one, run through ``edis-fleet validate``, exits 2 and names file,
line and field of every problem — and never shows a secret.

Each case marks the line it expects a problem on with ``# <-- here`` (in the manifest or in
the template file named by the expectation), so the expected line numbers are exact.
Every case runs the command in-process (``main(argv)``: the loader, the checks and the
printing); a few (``THROUGH_THE_PROCESS``) also run through the real command in
``tests/test_cli_process.py``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.manifest_support import (
    ACCOUNT_MARKER,
    BASE,
    ENV,
    ROOT_MARKER,
    CliResult,
    cli,
    cli_process,
    marked_line,
    write_fleet,
)

HERE = "# <-- here"


@dataclass(frozen=True)
class Expect:
    """One problem line: in ``file`` at ``line`` (None: the marked line), about ``field``."""

    field: str
    fragment: str
    line: int | None = None
    file: str = "fleet.yaml"


@dataclass(frozen=True)
class Case:
    manifest: str
    expect: list[Expect]
    files: Mapping[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ("--no-schema",)
    env: Mapping[str, str] | None = None


def base_with(old: str, new: str) -> str:
    """BASE with one piece replaced (the piece must be there)."""
    assert old in BASE, old
    return BASE.replace(old, new, 1)


CASES: dict[str, Case] = {
    "yaml-syntax-error": Case(
        base_with("    hostname: vps-001\n", f"    hostname: vps-001: two {HERE}\n"),
        [Expect("", "YAML syntax error: mapping values are not allowed")],
    ),
    "yaml-unclosed-flow": Case(
        base_with('  waves: [1, "100%"]\n', f'  waves: [1, "100%" {HERE}\n'),
        [Expect("", "YAML syntax error", line=16)],
    ),
    "duplicate-key": Case(
        base_with(
            "  image: cloudinit_debian-bookworm\n",
            f"  image: cloudinit_debian-bookworm\n  image: cloudinit_rocky-9 {HERE}\n",
        ),
        [Expect("defaults.image", "duplicate key 'image' (first on line 6)")],
    ),
    "unknown-top-level-key": Case(
        base_with("rollout:\n", f"rollot: {HERE}\n"),
        [Expect("rollot", "unknown key 'rollot'; did you mean 'rollout'?")],
    ),
    "unknown-vps-key": Case(
        base_with("    hostname: vps-002\n", f"    hostnme: vps-002 {HERE}\n"),
        [
            Expect("vps[1].hostnme", "did you mean 'hostname'?"),
            Expect("vps[1].hostname", "required field 'hostname' is missing", line=12),
        ],
    ),
    "unknown-rollout-key": Case(
        base_with('  waves: [1, "100%"]\n', f"  concurency: 4 {HERE}\n"),
        [Expect("rollout.concurency", "did you mean 'concurrency'?")],
    ),
    "unknown-key-no-close-match": Case(
        base_with(
            "  password: {env: EDIS_PASSWORD}\n",
            "  password: {env: EDIS_PASSWORD}\n  zzz: 1 # <-- here\n",
        ),
        [Expect("account.zzz", "expected one of: email, password, session_url")],
    ),
    "wrong-type-concurrency": Case(
        base_with('  waves: [1, "100%"]\n', f"  concurrency: ten {HERE}\n"),
        [Expect("rollout.concurrency", "expected a whole number, got the string 'ten'")],
    ),
    "wrong-type-vps-not-a-list": Case(
        "version: 1\naccount:\n  email: a@b.c\n  password: {env: EDIS_PASSWORD}\n"
        f"vps: kvm_1_2 {HERE}\n",
        [Expect("vps", "expected a list of VPS entries")],
    ),
    "wrong-type-tags": Case(
        base_with("    hostname: vps-001\n", f"    hostname: vps-001\n    tags: web {HERE}\n"),
        [Expect("vps[0].tags", "expected a list")],
    ),
    "wrong-type-yaml-boolean": Case(
        base_with("    hostname: vps-001\n", f"    hostname: yes {HERE}\n"),
        [Expect("vps[0].hostname", "quote the value")],
    ),
    "malformed-id": Case(
        base_with("  - id: kvm_100001_200001\n", f"  - id: kvm-100001 {HERE}\n"),
        [Expect("vps[0].id", "malformed id 'kvm-100001'; expected kvm_<digits>_<digits>")],
    ),
    "duplicate-id": Case(
        base_with("  - id: kvm_100002_200002\n", f"  - id: kvm_100001_200001 {HERE}\n"),
        [Expect("vps[1].id", "duplicate id kvm_100001_200001 (already vps[0] on line 10)")],
    ),
    "duplicate-hostname": Case(
        base_with("    hostname: vps-002\n", f"    hostname: VPS-001 {HERE}\n"),
        [Expect("vps[1].hostname", "duplicate hostname VPS-001 (already vps[0] on line 11)")],
    ),
    "bad-hostname": Case(
        base_with("    hostname: vps-002\n", f"    hostname: vps_002.example {HERE}\n"),
        [Expect("vps[1].hostname", "is not a valid host name")],
    ),
    "bad-rate": Case(
        base_with('  waves: [1, "100%"]\n', f"  rate: 5 per second {HERE}\n"),
        [Expect("rollout.rate", "cannot read rate '5 per second'; expected a rate like '5/s'")],
    ),
    "rate-without-unit": Case(
        base_with('  waves: [1, "100%"]\n', f"  rate: 5 {HERE}\n"),
        [Expect("rollout.rate", "5 has no unit")],
    ),
    "bad-duration": Case(
        base_with('  waves: [1, "100%"]\n', f"  soak: 5 minutes {HERE}\n"),
        [Expect("rollout.soak", "cannot read duration '5 minutes'")],
    ),
    "bad-readiness-deadline": Case(
        base_with(
            "    hostname: vps-001\n",
            f"    hostname: vps-001\n    readiness: {{deadline: 20}} {HERE}\n",
        ),
        [Expect("vps[0].readiness.deadline", "20 has no unit")],
    ),
    "bad-budget": Case(
        base_with('  waves: [1, "100%"]\n', f"  failure_budget: {{wave: lots}} {HERE}\n"),
        [Expect("rollout.failure_budget.wave", "cannot read 'lots'")],
    ),
    "budget-over-100-percent": Case(
        base_with('  waves: [1, "100%"]\n', f'  failure_budget: {{run: "150%"}} {HERE}\n'),
        [Expect("rollout.failure_budget.run", "out of range")],
    ),
    "waves-not-reaching-all": Case(
        base_with('  waves: [1, "100%"]\n', f'  waves: [1, "50%"] {HERE}\n'),
        [Expect("rollout.waves[1]", "covers 1 of 2 VPSes; the last wave must reach all")],
    ),
    "waves-decreasing": Case(
        base_with('  waves: [1, "100%"]\n', f'  waves: [1, "50%", "10%", "100%"] {HERE}\n'),
        [Expect("rollout.waves[2]", "wave 3 (10%) does not grow past wave 2 (50%)")],
    ),
    "waves-zero-percent": Case(
        base_with('  waves: [1, "100%"]\n', f'  waves: ["0%", "100%"] {HERE}\n'),
        [Expect("rollout.waves[0]", "out of range")],
    ),
    "waves-empty": Case(
        base_with('  waves: [1, "100%"]\n', f"  waves: [] {HERE}\n"),
        [Expect("rollout.waves", "give at least one wave")],
    ),
    "empty-vps-list": Case(
        "version: 1\naccount:\n  email: a@b.c\n  password: {env: EDIS_PASSWORD}\n"
        f"vps: [] {HERE}\n",
        [Expect("vps", "the list is empty")],
    ),
    "missing-template-file": Case(
        base_with(
            "  cloud_init: templates/ok.yaml.j2\n", f"  cloud_init: templates/nope.j2 {HERE}\n"
        ),
        [Expect("defaults.cloud_init", "template file templates/nope.j2 not found")],
    ),
    "unset-env-var": Case(
        base_with(
            "  root_password: {env: EDIS_ROOT_PASSWORD}\n",
            f"  root_password: {{env: EDIS_ROOT_PASSWROD}} {HERE}\n",
        ),
        [
            Expect(
                "defaults.root_password.env", "environment variable EDIS_ROOT_PASSWROD is not set"
            )
        ],
    ),
    "unset-account-env-var": Case(
        BASE,
        [Expect("account.password.env", "environment variable EDIS_PASSWORD is not set", line=4)],
        env={k: v for k, v in ENV.items() if k != "EDIS_PASSWORD"},
    ),
    "empty-env-var": Case(
        BASE,
        [Expect("defaults.root_password.env", "EDIS_ROOT_PASSWORD is set but empty", line=7)],
        env={**ENV, "EDIS_ROOT_PASSWORD": ""},
    ),
    "missing-password-file": Case(
        base_with(
            "  root_password: {env: EDIS_ROOT_PASSWORD}\n",
            f"  root_password: {{file: secrets/root.txt}} {HERE}\n",
        ),
        [Expect("defaults.root_password.file", "file secrets/root.txt not found")],
    ),
    "plaintext-root-password": Case(
        base_with(
            "  root_password: {env: EDIS_ROOT_PASSWORD}\n",
            f"  root_password: hunter2-Plaintext {HERE}\n",
        ),
        [Expect("defaults.root_password", "a password written in the manifest is refused")],
    ),
    "plaintext-account-password": Case(
        base_with("  password: {env: EDIS_PASSWORD}\n", f"  password: hunter2-Plaintext {HERE}\n"),
        [Expect("account.password", "{env: VARIABLE}")],
    ),
    "generate-without-file": Case(
        base_with(
            "  root_password: {env: EDIS_ROOT_PASSWORD}\n", f"  root_password: generate {HERE}\n"
        ),
        [Expect("defaults.root_password", "root_password: {generate: FILE}")],
    ),
    "two-password-sources": Case(
        base_with(
            "  root_password: {env: EDIS_ROOT_PASSWORD}\n",
            f"  root_password: {{env: EDIS_ROOT_PASSWORD, file: x}} {HERE}\n",
        ),
        [Expect("defaults.root_password", "give exactly one of")],
    ),
    "bad-in-doubt-policy": Case(
        base_with('  waves: [1, "100%"]\n', f"  in_doubt: retry {HERE}\n"),
        [Expect("rollout.in_doubt", "expected 'report', 'resend-after-window' or 'reconcile'")],
    ),
    "unknown-group": Case(
        base_with("vps:\n", "groups:\n  web: {tags: [w]}\nvps:\n").replace(
            "    hostname: vps-001\n", f"    hostname: vps-001\n    group: wbe {HERE}\n"
        ),
        [Expect("vps[0].group", "unknown group 'wbe'; did you mean 'web'?")],
    ),
    "undeclared-tag": Case(
        base_with("vps:\n", "tags: [web, db]\nvps:\n").replace(
            "    hostname: vps-001\n", f"    hostname: vps-001\n    tags: [wbe] {HERE}\n"
        ),
        [Expect("vps[0].tags[0]", "tag 'wbe' is not declared in the top-level 'tags'")],
    ),
    "no-image-anywhere": Case(
        base_with("  image: cloudinit_debian-bookworm\n", "").replace(
            "  - id: kvm_100001_200001\n", f"  - id: kvm_100001_200001 {HERE}\n"
        ),
        [Expect("vps[0]", "no image")],
    ),
    "readiness-mode": Case(
        base_with(
            "    hostname: vps-001\n",
            f"    hostname: vps-001\n    readiness: {{mode: telnet}} {HERE}\n",
        ),
        [Expect("vps[0].readiness.mode", "expected 'api', 'tcp', 'none' or 'ssh'")],
    ),
    "readiness-port-out-of-range": Case(
        base_with(
            "    hostname: vps-001\n",
            f"    hostname: vps-001\n    readiness: {{port: 70000}} {HERE}\n",
        ),
        [Expect("vps[0].readiness.port", "must be at most 65535, got 70000")],
    ),
    "http-session-url": Case(
        base_with(
            "  password: {env: EDIS_PASSWORD}\n",
            "  password: {env: EDIS_PASSWORD}\n"
            f"  session_url: http://session.example.com {HERE}\n",
        ),
        [Expect("account.session_url", "http:// is only allowed on loopback")],
    ),
    "too-broad-host-pattern": Case(
        base_with(
            "  password: {env: EDIS_PASSWORD}\n",
            f"  password: {{env: EDIS_PASSWORD}}\n  allowed_api_hosts: ['*'] {HERE}\n",
        ),
        [Expect("account.allowed_api_hosts[0]", "too broad")],
    ),
    "python-tag-refused": Case(
        base_with(
            "    hostname: vps-001\n",
            "    hostname: vps-001\n"
            f"    vars: {{x: !!python/object/apply:os.system [ls]}} {HERE}\n",
        ),
        [Expect("vps[0].vars.x", "unsupported YAML tag")],
    ),
    "version-missing": Case(
        BASE.replace("version: 1\n", ""),
        [Expect("", "'version' is missing; start the file with 'version: 1'", line=1)],
    ),
    "version-wrong": Case(
        BASE.replace("version: 1\n", f"version: 2 {HERE}\n"),
        [Expect("version", "unsupported version 2")],
    ),
    "cloud-init-both-forms": Case(
        base_with(
            "  cloud_init: templates/ok.yaml.j2\n",
            f"  cloud_init: {{file: templates/ok.yaml.j2, inline: '#cloud-config'}} {HERE}\n",
        ),
        [Expect("defaults.cloud_init", "give exactly one of {file: PATH} or {inline: TEXT}")],
    ),
    "template-syntax-error": Case(
        base_with("  cloud_init: templates/ok.yaml.j2\n", "  cloud_init: templates/bad.yaml.j2\n"),
        [
            Expect(
                "vps[0].cloud_init",
                "template syntax error: Expected an expression, got 'end of statement block' "
                "(rendered for kvm_100001_200001 vps-001; the same for 1 more VPS)",
                file="templates/bad.yaml.j2",
            )
        ],
        files={"templates/bad.yaml.j2": f"#cloud-config\nhostname: x\na: {{% if %}} {HERE}\n"},
    ),
    "template-undefined-variable": Case(
        base_with("  cloud_init: templates/ok.yaml.j2\n", "  cloud_init: templates/bad.yaml.j2\n"),
        [
            Expect(
                "vps[0].cloud_init",
                "undefined variable: 'dict object' has no attribute 'domian' "
                "(rendered for kvm_100001_200001 vps-001",
                file="templates/bad.yaml.j2",
            )
        ],
        files={
            "templates/bad.yaml.j2": "#cloud-config\nhostname: {{ hostname }}\n"
            f"fqdn: {{{{ hostname }}}}.{{{{ vars.domian }}}} {HERE}\n"
        },
    ),
    "inline-template-undefined-variable": Case(
        base_with(
            "    hostname: vps-002\n",
            "    hostname: vps-002\n    cloud_init: |\n      #cloud-config\n"
            f"      hostname: {{{{ hostnam }}}} {HERE}\n",
        ),
        [Expect("vps[1].cloud_init", "undefined variable: 'hostnam' is undefined")],
    ),
    "rendered-not-cloud-config": Case(
        base_with("  cloud_init: templates/ok.yaml.j2\n", "  cloud_init: templates/bad.yaml.j2\n"),
        [
            Expect(
                "vps[0].cloud_init",
                "rendered user data must start with '#cloud-config'",
                line=1,
                file="templates/bad.yaml.j2",
            )
        ],
        files={"templates/bad.yaml.j2": "hostname: {{ hostname }}\n"},
    ),
    "rendered-not-yaml": Case(
        base_with("  cloud_init: templates/ok.yaml.j2\n", "  cloud_init: templates/bad.yaml.j2\n"),
        [
            Expect(
                "vps[0].cloud_init",
                "rendered document is not valid YAML at its line 4, column 1: while parsing a "
                "flow sequence, did not find expected ',' or ']' (started on line 3)",
                line=4,
                file="templates/bad.yaml.j2",
            )
        ],
        files={
            "templates/bad.yaml.j2": f"#cloud-config\nhostname: {{{{ hostname }}}}\n"
            f"runcmd: [a, b {HERE}\n"
        },
    ),
    "rendered-too-large": Case(
        base_with(
            "  cloud_init: templates/ok.yaml.j2\n",
            "  cloud_init: templates/ok.yaml.j2\n  user_data_limit: 64\n",
        ),
        [
            Expect(
                "vps[0].cloud_init",
                "over the limit of 64",
                line=1,
                file="templates/ok.yaml.j2",
            )
        ],
    ),
    "rendered-mime-multipart": Case(
        base_with("  cloud_init: templates/ok.yaml.j2\n", "  cloud_init: templates/bad.yaml.j2\n"),
        [
            Expect(
                "vps[0].cloud_init",
                "MIME multipart user data is not supported",
                line=1,
                file="templates/bad.yaml.j2",
            )
        ],
        files={"templates/bad.yaml.j2": "Content-Type: multipart/mixed; boundary=x\n\n--x\n"},
    ),
    "non-cloudinit-image-strict": Case(
        base_with(
            "    hostname: vps-002\n",
            f"    hostname: vps-002\n    image: debian-bullseye {HERE}\n",
        ),
        [Expect("vps[1].image", "does not take cloud-init user data")],
        args=("--no-schema", "--strict"),
    ),
    "multiple-problems-at-once": Case(
        "version: 3 # <-- here\n"
        "account:\n  email: a@b.c\n  password: {env: EDIS_PASSWORD}\n"
        "defaults:\n  image: cloudinit_debian-bookworm\n"
        "  root_password: {env: EDIS_ROOT_PASSWORD}\n"
        "vps:\n"
        "  - {id: kvm_1_2, hostname: a}\n"
        "  - {id: kvm_1_2, hostname: b}\n"
        "  - {id: kvm_1_3, hostname: a, color: red}\n"
        "rollout: {rate: fast, soak: 1 week}\n",
        [
            Expect("version", "unsupported version 3"),
            Expect("vps[1].id", "duplicate id kvm_1_2", line=10),
            Expect("vps[2].hostname", "duplicate hostname a", line=11),
            Expect("vps[2].color", "unknown key 'color'", line=11),
            Expect("rollout.rate", "cannot read rate 'fast'", line=12),
            Expect("rollout.soak", "cannot read duration '1 week'", line=12),
        ],
    ),
}


def run_case(name: str, folder: Path, *, process: bool = False) -> CliResult:
    """Write case ``name`` to ``folder`` and validate it (in-process unless ``process``)."""
    case = CASES[name]
    write_fleet(folder, case.manifest, case.files)
    run = cli_process if process else cli
    return run(["validate", "fleet.yaml", *case.args], cwd=folder, env=case.env)


def check_case(name: str, proc: CliResult) -> None:
    """Exit 2, nothing on stdout, and every expected ``file:line:...: field: ...`` problem line
    on stderr; no secret anywhere."""
    case = CASES[name]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("fleet.yaml: ")
    for expect in case.expect:
        if expect.line is not None:
            line = expect.line
        elif expect.file == "fleet.yaml":
            line = marked_line(case.manifest, HERE)
        else:
            line = marked_line(case.files[expect.file], HERE)
        prefix = f"{expect.file}:{line}:"
        middle = f": {expect.field}: " if expect.field else ": "
        matching = [
            text
            for text in lines
            if text.startswith(prefix) and middle in text and expect.fragment in text
        ]
        assert matching, f"no line {prefix}…{middle}…{expect.fragment!r} in:\n{proc.stderr}"
    for secret in (ROOT_MARKER, ACCOUNT_MARKER, "hunter2-Plaintext"):
        assert secret not in proc.stderr


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_bad_manifest(name: str, tmp_path: Path) -> None:
    check_case(name, run_case(name, tmp_path))


# A YAML syntax error, a template file's problem, several problems at once:
# tests/test_cli_process.py runs these through a real process.
THROUGH_THE_PROCESS = ("yaml-syntax-error", "rendered-mime-multipart", "multiple-problems-at-once")


def test_non_cloudinit_image_is_only_a_warning_without_strict(tmp_path: Path) -> None:
    case = CASES["non-cloudinit-image-strict"]
    write_fleet(tmp_path, case.manifest)
    proc = cli(["validate", "fleet.yaml", "--no-schema"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = marked_line(textwrap.dedent(case.manifest), HERE)
    assert f"fleet.yaml:{line}:12: vps[1].image: image debian-bullseye does not take" in proc.stdout
    assert "warnings:     1" in proc.stdout
