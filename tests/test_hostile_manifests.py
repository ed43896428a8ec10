"""Hostile manifests, templates and local files: each class is a listed problem, bounded.

Each case is a manifest (and the files next to it) written to crash, hang, exhaust memory,
read files outside the manifest's tree or write through links. Every one must come back as a
problem naming the file, line and field, in bounded time and memory (measured here with
generous bounds: tracemalloc's peak and the elapsed time), with no traceback. A few go
through ``validate`` and ``apply`` in-process, against the simulator, which must then have
received no request at all.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.manifest.loader import check_manifest
from orchestrator.simulator import Simulator
from tests.bounds import within_bounds
from tests.cli_support import run_cli
from tests.manifest_support import BASE, ENV, write_fleet

NOBODY = 65534


def _template(text: str) -> dict[str, str]:
    return {"templates/ok.yaml.j2": text}


def _cloud_init(value: str) -> str:
    return BASE.replace("cloud_init: templates/ok.yaml.j2", f"cloud_init: {value}")


def _root_password(value: str) -> str:
    return BASE.replace("root_password: {env: EDIS_ROOT_PASSWORD}", f"root_password: {value}")


def _mkfifo(rel: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        os.mkfifo(folder / rel)

    return make


def _symlink(rel: str, target: str) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        os.symlink(target, folder / rel)

    return make


def _as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (a device node, a file of another user)")


def _dev_zero_inside(folder: Path) -> None:
    _as_root()
    os.mknod(folder / "templates" / "zero.j2", stat.S_IFCHR | 0o644, os.makedev(1, 5))


def _big_password_file(folder: Path) -> None:
    path = folder / "root.txt"
    with path.open("wb") as f:
        f.truncate(100 << 20)  # 100 MiB on one line (sparse, so the test writes nothing)
    path.chmod(0o600)


def _other_users_file_in_open_dir(folder: Path) -> None:
    _as_root()
    (folder / "shared").mkdir()
    (folder / "shared").chmod(0o777)
    victim = folder / "shared" / "gen.txt"
    victim.write_text("")
    victim.chmod(0o600)
    os.chown(victim, NOBODY, NOBODY)


def _other_users_file(folder: Path) -> None:
    _as_root()
    victim = folder / "gen.txt"
    victim.write_text("")
    victim.chmod(0o600)
    os.chown(victim, NOBODY, NOBODY)


@dataclass(frozen=True)
class Case:
    """A hostile manifest: its text, extra files, a preparation step and what to expect."""

    manifest: str
    expect: str
    field: str
    files: dict[str, str] | None = None
    prepare: Callable[[Path], None] | None = None


CASES: dict[str, Case] = {
    # 9. Templates confined to the manifest's tree.
    "include-proc-environ": Case(
        BASE, "'/proc/self/environ' is an absolute path", "vps[0].cloud_init",
        _template('#cloud-config\n{% include "/proc/self/environ" %}\n'),
    ),
    "include-dotdot": Case(
        BASE, "is outside the manifest's directory", "vps[0].cloud_init",
        _template('#cloud-config\n{% include "../../../../etc/passwd" %}\n'),
    ),
    "import-absolute": Case(
        BASE, "is an absolute path", "vps[0].cloud_init",
        _template('#cloud-config\n{% import "/etc/passwd" as p %}\n'),
    ),
    "from-dotdot": Case(
        BASE, "is outside the manifest's directory", "vps[0].cloud_init",
        _template('#cloud-config\n{% from "templates/../../x.j2" import y %}\n'),
    ),
    "include-symlink-out": Case(
        BASE, "is outside the manifest's directory", "vps[0].cloud_init",
        _template('#cloud-config\n{% include "templates/link.j2" %}\n'),
        _symlink("templates/link.j2", "/etc/passwd"),
    ),
    "cloud-init-absolute": Case(
        _cloud_init("{file: /etc/hostname}"), "is an absolute path", "defaults.cloud_init"
    ),
    "cloud-init-symlink-out": Case(
        _cloud_init("templates/link.j2"), "is outside the manifest's directory",
        "defaults.cloud_init", None, _symlink("templates/link.j2", "/etc/hostname"),
    ),
    # 11. Inputs that crashed or hung.
    "yaml-490-nested-flow-mappings": Case(
        BASE + "x: " + "{a: " * 490 + "1" + "}" * 490 + "\n", "nested more than 64 levels", ""
    ),
    "template-string-repetition": Case(
        BASE, "repeating a value", "vps[0].cloud_init",
        _template("#cloud-config\na: {{ 'x' * 10**9 }}\n"),
    ),
    "template-nested-ranges": Case(
        BASE, "template stopped", "vps[0].cloud_init",  # by its loop steps or its deadline
        _template(
            "#cloud-config\n{% for i in range(99999) %}{% for j in range(99999) %}"
            "{% endfor %}{% endfor %}\n"
        ),
    ),
    "template-exponential-macro": Case(
        BASE, "template stopped", "vps[0].cloud_init",
        _template(
            "#cloud-config\n{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}"
            "{% endmacro %}{{ f(60) }}\n"
        ),
    ),
    "template-format-width": Case(
        BASE, "format width", "vps[0].cloud_init",
        _template("#cloud-config\na: {{ '%999999999d' % 1 }} {{ '{:>999999999}'.format(1) }}\n"),
    ),
    "template-filter-width": Case(
        BASE, "number argument above", "vps[0].cloud_init",
        _template("#cloud-config\na: {{ 'x' | center(999999999) }}\n"),
    ),
    "template-replace-blowup": Case(
        BASE, "replace would make", "vps[0].cloud_init",
        _template("#cloud-config\na: {{ ('x' * 100000).replace('', 'y' * 100000) }}\n"),
    ),
    "template-squaring-loop": Case(
        BASE, "over 100,000 bits", "vps[0].cloud_init",
        _template(
            "#cloud-config\n{% set ns = namespace(v=2) %}{% for i in range(64) %}"
            "{% set ns.v = ns.v * ns.v %}{% endfor %}a: {{ ns.v }}\n"
        ),
    ),
    "template-block-set-blowup": Case(
        BASE, "template stopped", "vps[0].cloud_init",
        _template(
            "#cloud-config\n{% set s = 'x' * 1000000 %}{% set b %}{% for i in range(100000) %}"
            "{{ s }}{% endfor %}{% endset %}a: {{ b | length }}\n"
        ),
    ),
    "template-nested-parentheses": Case(
        BASE, "nested or chained too deeply", "vps[0].cloud_init",
        _template("#cloud-config\na: {{ " + "(" * 5000 + "1" + ")" * 5000 + " }}\n"),
    ),
    "template-30-nested-loops": Case(
        BASE, "too many statically nested blocks", "vps[0].cloud_init",
        _template("#cloud-config\n" + "{% for i in [1] %}" * 30 + "{% endfor %}" * 30 + "\n"),
    ),
    "template-3000-nested-ifs": Case(
        BASE, "cannot be compiled", "vps[0].cloud_init",
        _template("#cloud-config\n" + "{% if true %}" * 3000 + "{% endif %}" * 3000 + "\n"),
    ),
    "template-includes-itself": Case(
        BASE, "nested too deeply", "vps[0].cloud_init",
        _template('#cloud-config\n{% include "templates/ok.yaml.j2" %}\n'),
    ),
    "inline-template-over-1-MiB": Case(
        _cloud_init("{inline: '#cloud-config " + "x" * (1 << 20) + "'}"), "over the limit",
        "defaults.cloud_init",
    ),
    "template-dense-1-MiB": Case(
        BASE, "compiling the template took longer than", "vps[0].cloud_init",
        _template("#cloud-config\n" + "{{ id }} " * 116_000 + "\n"),
    ),
    "template-sandbox-escape-in-a-folded-constant": Case(
        BASE, "not allowed in the template sandbox", "vps[0].cloud_init",
        _template("#cloud-config\na: {{ (1.5.__class__ or 0) }}\n"),
    ),
    "template-endless-output": Case(
        BASE, "far over the limit", "vps[0].cloud_init",
        _template("#cloud-config\n{% for i in range(99999) %}{{ 'x' * 999999 }}{% endfor %}\n"),
    ),
    "cloud-init-file-dev-zero": Case(
        _cloud_init("{file: /dev/zero}"), "is an absolute path", "defaults.cloud_init"
    ),
    "cloud-init-device-inside-the-tree": Case(
        _cloud_init("templates/zero.j2"), "is a character device", "defaults.cloud_init",
        None, _dev_zero_inside,
    ),
    "cloud-init-fifo": Case(
        _cloud_init("templates/fifo.j2"), "is a FIFO", "defaults.cloud_init", None,
        _mkfifo("templates/fifo.j2"),
    ),
    "password-file-100-MiB": Case(
        _root_password("{file: root.txt}"), "over the limit of 65,536", "defaults.root_password",
        None, _big_password_file,
    ),
    "password-file-fifo": Case(
        _root_password("{file: root.txt}"), "is a FIFO", "defaults.root_password", None,
        _mkfifo("root.txt"),
    ),
    "account-password-dev-zero": Case(
        BASE.replace("password: {env: EDIS_PASSWORD}", "password: {file: /dev/zero}"),
        "is a character device", "account.password.file",
    ),
    "password-file-path-with-nul": Case(
        _root_password('{file: "root\\0.txt"}'), "not a usable path", "defaults.root_password"
    ),
    "ca-file-path-with-nul": Case(
        BASE.replace(
            "  password: {env: EDIS_PASSWORD}\n",
            '  password: {env: EDIS_PASSWORD}\n  ca_file: "ca\\0.pem"\n',
        ),
        "not a usable path", "account.ca_file",
    ),
    "template-path-with-escapes": Case(
        _cloud_init('{file: "t\\e]0;owned\\a.j2"}'), "t\\x1b]0;owned\\x07.j2 not found",
        "defaults.cloud_init",
    ),
    # 10. The generated-passwords file.
    "generate-path-with-nul": Case(
        _root_password('{generate: "gen\\0.txt"}'), "not a usable path", "defaults.root_password"
    ),
    "generate-through-symlink": Case(
        _root_password("{generate: gen.txt}"), "is a symbolic link", "defaults.root_password",
        None, _symlink("gen.txt", "victim.txt"),
    ),
    "generate-into-other-users-file": Case(
        _root_password("{generate: gen.txt}"), "belongs to another user",
        "defaults.root_password", None, _other_users_file,
    ),
    "generate-in-world-writable-dir": Case(
        _root_password("{generate: shared/gen.txt}"), "writable by group or others",
        "defaults.root_password", None, _other_users_file_in_open_dir,
    ),
    # 12. Lax validation.
    "id-trailing-newline": Case(
        BASE.replace("id: kvm_100001_200001", 'id: "kvm_100001_200001\\n"'), "malformed id",
        "vps[0].id",
    ),
    "id-5000-digits": Case(
        BASE.replace("kvm_100001_200001", "kvm_" + "1" * 5000 + "_1"), "malformed id", "vps[0].id"
    ),
    "hostname-arabic-digits": Case(
        BASE.replace("hostname: vps-001", "hostname: vps-\u0661\u0662"), "not a valid host name",
        "vps[0].hostname",
    ),
    "rate-400-digits": Case(BASE + "  rate: " + "9" * 400 + "/s\n", "out of range", "rollout.rate"),
    "rate-1e309": Case(BASE + "  rate: 1e309/s\n", "cannot read rate", "rollout.rate"),
    "soak-10-to-30-days": Case(
        BASE + "  soak: 1" + "0" * 30 + "d\n", "out of range", "rollout.soak"
    ),
    "soak-over-30-days": Case(BASE + "  soak: 31d\n", "out of range", "rollout.soak"),
    "wave-huge-count": Case(
        BASE.replace('waves: [1, "100%"]', "waves: [1, " + "9" * 30 + "]"), "above the maximum",
        "rollout.waves",
    ),
    "session-url-arabic-port": Case(
        BASE.replace(
            "  password: {env: EDIS_PASSWORD}\n",
            "  password: {env: EDIS_PASSWORD}\n  session_url: http://127.0.0.1:\u0668\u0660\n",
        ),
        "printable ASCII", "account.session_url",
    ),
}  # fmt: skip


def _write(folder: Path, case: Case) -> Path:
    path = write_fleet(folder, case.manifest, case.files)
    if case.prepare is not None:
        case.prepare(folder)
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_manifest_is_a_listed_problem(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    path = _write(tmp_path, case)
    with within_bounds():
        report = check_manifest(path, ENV)
    assert report.fleet is None
    text = "\n".join(report.problems)
    assert case.expect in text, text
    mine = next(p for p in report.problems if case.expect in p)
    where = mine.split(": ", 1)[0]
    assert where.startswith(str(tmp_path)), mine
    _, line, column = where.rsplit(":", 2)
    assert line.isdigit(), mine
    assert column.isdigit(), mine
    assert case.field in mine, mine
    assert "Traceback" not in text
    assert len(mine) < 600, "the problem echoes the hostile value"


@pytest.mark.parametrize(
    "name",
    ["include-proc-environ", "template-nested-ranges", "yaml-490-nested-flow-mappings",
     "password-file-fifo", "generate-through-symlink", "rate-400-digits"],
)  # fmt: skip
def test_validate_lists_it_and_exits_2(name: str, tmp_path: Path) -> None:
    path = _write(tmp_path, CASES[name])
    done = run_cli(["validate", str(path)], cwd=tmp_path, env=ENV)
    assert done.returncode == 2, done.stderr
    assert CASES[name].expect in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "name", ["include-proc-environ", "template-string-repetition", "cloud-init-fifo",
             "password-file-100-MiB", "id-trailing-newline"],
)  # fmt: skip
def test_apply_refuses_it_before_any_request(
    name: str, thread_sim: Simulator, tmp_path: Path
) -> None:
    case = CASES[name]
    manifest = case.manifest.replace(
        "  password: {env: EDIS_PASSWORD}\n",
        f"  password: {{env: EDIS_PASSWORD}}\n  session_url: {thread_sim.session_url}\n"
        "  allowed_api_hosts: [127.0.0.0/8]\n",
    )
    path = _write(tmp_path, Case(manifest, case.expect, case.field, case.files, case.prepare))
    env = {**ENV, "EDIS_EMAIL": thread_sim.email, "EDIS_PASSWORD": thread_sim.password}
    done = run_cli(["apply", str(path), "--yes"], cwd=tmp_path, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert case.expect in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert sum(thread_sim.counters.requests.values()) == 0


def test_a_template_inside_the_tree_still_includes(tmp_path: Path) -> None:
    files = {
        "templates/ok.yaml.j2": '#cloud-config\n{% include "templates/parts/users.j2" %}\n',
        "templates/parts/users.j2": "users: [{{ hostname | tojson }}]\n",
    }
    os.symlink("parts/users.j2", tmp_path / "alias.j2")  # links inside the tree are fine
    assert check_manifest(write_fleet(tmp_path, BASE, files), ENV).ok


def test_the_bounds_leave_ordinary_templates_alone(tmp_path: Path) -> None:
    template = (
        "#cloud-config\n"
        "a: {{ (10**7) | string }}\n"
        "b: {{ ('ab' * 1000) | length }}\n"
        "c: {{ '%5d' % 42 }} {{ '{:>8}'.format('x') }}\n"
        "d: {{ range(1000) | sum }}\n"
        "e: {{ ['x', 'y'] | join(', ') | replace('x', 'z') | center(20) | trim }}\n"
        "users:\n"
        "{% for i in range(50) %}{% for j in range(20) %}{% if i == j %}"
        "  - u{{ i }}\n{% endif %}{% endfor %}{% endfor %}"
    )
    path = write_fleet(tmp_path, BASE, _template(template))
    report = check_manifest(path, ENV)
    assert report.ok, report.problems


def test_large_shared_vars_cost_their_size_once_not_per_vps(tmp_path: Path) -> None:
    # 300 VPSes sharing 30,000 values: copied for each VPS, this took over 15 s.
    entries = "".join(f"  - {{id: kvm_{i}_{i}, hostname: h{i}}}\n" for i in range(1, 301))
    manifest = BASE.split("vps:\n")[0] + "vps:\n" + entries + "rollout:\n  waves: [1, '100%']\n"
    manifest = manifest.replace(
        "  cloud_init: templates/ok.yaml.j2\n",
        "  cloud_init: templates/ok.yaml.j2\n  vars: {big: [" + "1," * 30_000 + "1]}\n",
    )
    template = "#cloud-config\nn: {{ vars.big | length }}\n"
    with within_bounds():
        report = check_manifest(write_fleet(tmp_path, manifest, _template(template)), ENV)
    assert report.ok, report.problems


def test_templates_cannot_change_vars_other_vpses_see(tmp_path: Path) -> None:
    manifest = BASE.replace(
        "  cloud_init: templates/ok.yaml.j2\n",
        "  cloud_init: templates/ok.yaml.j2\n  vars: {users: [root]}\n",
    )
    template = "#cloud-config\nu: {{ vars.users.append(hostname) }}\n"
    report = check_manifest(write_fleet(tmp_path, manifest, _template(template)), ENV)
    assert any("vars are read-only in templates" in p for p in report.problems), report.problems
