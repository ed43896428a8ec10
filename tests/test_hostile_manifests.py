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
import sqlite3
import stat
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import units
from orchestrator.manifest.loader import check_manifest
from orchestrator.secrets import Secret, sources
from orchestrator.simulator import Simulator
from tests.cli_support import run_cli
from tests.manifest_support import BASE, ENV, write_fleet

PEAK_LIMIT = 200 << 20
SECONDS_LIMIT = 10.0
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


@pytest.fixture
def bounded() -> Iterator[Callable[[], None]]:
    """Measure the test's allocations and time; the returned check asserts the bounds."""
    tracemalloc.start()
    start = time.perf_counter()

    def check() -> None:
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        assert peak < PEAK_LIMIT, f"peak {peak / 2**20:.0f} MiB"
        assert elapsed < SECONDS_LIMIT, f"{elapsed:.1f} s"

    try:
        yield check
    finally:
        tracemalloc.stop()


def _write(folder: Path, case: Case) -> Path:
    path = write_fleet(folder, case.manifest, case.files)
    if case.prepare is not None:
        case.prepare(folder)
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_hostile_manifest_is_a_listed_problem(
    name: str, tmp_path: Path, bounded: Callable[[], None]
) -> None:
    case = CASES[name]
    path = _write(tmp_path, case)
    report = check_manifest(path, ENV)
    bounded()
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


# --------------------------------------------------------------------- generated passwords


def test_generated_passwords_are_never_written_through_a_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    os.symlink(victim, tmp_path / "gen.txt")
    with pytest.raises(PermissionError, match="symbolic link"):
        sources.write_generated_passwords(tmp_path / "gen.txt", {"kvm_1_1": Secret("pw")})
    assert victim.read_text() == "keep\n"


def test_generated_passwords_never_go_into_another_users_file(tmp_path: Path) -> None:
    _other_users_file(tmp_path)
    with pytest.raises(PermissionError, match="another user"):
        sources.write_generated_passwords(tmp_path / "gen.txt", {"kvm_1_1": Secret("pw")})
    assert (tmp_path / "gen.txt").read_text() == ""


def test_generated_passwords_refuse_a_directory_others_can_write(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by group or others"):
        sources.write_generated_passwords(shared / "gen.txt", {"kvm_1_1": Secret("pw")})
    assert not (shared / "gen.txt").exists()


def test_generated_passwords_go_into_a_sticky_shared_directory(tmp_path: Path) -> None:
    # Like /tmp: others cannot remove or replace the file, and a planted one is refused.
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    assert sources.generated_output_problem(shared / "gen.txt", "tmp/gen.txt") is None
    sources.write_generated_passwords(shared / "gen.txt", {"kvm_1_1": Secret("pw")})
    assert stat.S_IMODE((shared / "gen.txt").stat().st_mode) == 0o600


# --------------------------------------------------------------------- the journal


def test_a_journal_row_with_an_unknown_state_is_a_journal_problem(
    thread_sim: Simulator, tmp_path: Path
) -> None:
    from tests.test_apply import apply, env_for, fleet

    path = fleet(thread_sim, tmp_path, 1)
    code, _, err = apply(thread_sim, path, "--quiet")
    assert code == 0, err
    db = sqlite3.connect(tmp_path / ".edis-fleet" / "journal.sqlite")
    try:
        (run_id,) = db.execute("SELECT id FROM runs").fetchone()
        # As a journal of another version (or edited by hand) would hold it.
        db.execute("PRAGMA ignore_check_constraints = ON")
        db.execute("UPDATE targets SET state = 'teleported'")
        db.commit()
    finally:
        db.close()
    for args in (["status", run_id], ["report", run_id], ["resume", run_id]):
        done = run_cli(args, cwd=tmp_path, env=env_for(thread_sim))
        output = done.stdout + done.stderr
        assert done.returncode == 2, (args, output)
        assert "unknown value 'teleported'" in output, (args, output)
        assert "Traceback" not in output
    db = sqlite3.connect(tmp_path / ".edis-fleet" / "journal.sqlite")
    try:
        db.execute("PRAGMA ignore_check_constraints = ON")
        db.execute("UPDATE runs SET status = 'vanished', options_json = '{'")
        db.commit()
    finally:
        db.close()
    done = run_cli(["runs"], cwd=tmp_path, env=env_for(thread_sim))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "options is not readable JSON" in done.stderr + done.stdout
    assert "Traceback" not in done.stderr + done.stdout


# --------------------------------------------------------------------- units


@pytest.mark.parametrize(
    "text", ["5/s\n", "\u0665/s", "9" * 400 + "/s", "1e309/s", "0.5/h", "100001/s"]
)
def test_rates_out_of_shape_or_range_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"rate|range"):
        units.parse_rate(text)


@pytest.mark.parametrize("text", ["1" + "0" * 30 + "d", "31d", "5m\n", "\u0665m", "1d1d1d1d1d1d"])
def test_durations_out_of_shape_or_range_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration|range"):
        units.parse_duration(text)


def test_ranges_hold_at_their_edges() -> None:
    assert units.parse_rate("1/h") == pytest.approx(1 / 3600)
    assert units.parse_rate("100000/s") == 100_000
    assert units.parse_duration("30d") == 30 * 86400
    assert units.parse_size("1MiB") == 1 << 20
    with pytest.raises(ValueError, match="maximum"):
        units.parse_size("2MiB")
    assert units.parse_count_or_percent(1_000_000, minimum=1).count == 1_000_000
    with pytest.raises(ValueError, match="maximum"):
        units.parse_count_or_percent(10**5000, minimum=1)


# --------------------------------------------------------------------- any input


_YAML_BITS = st.sampled_from(
    ["{", "}", "[", "]", ":", ", ", "- ", "\n", "  ", "&a ", "*a", "!!python/object ", "<<: ",
     "'", '"', "|", ">", "#", "%", "{{ ", " }}", "{% for i in range(99999) %}", "\t", "\x00",
     "\u0665", "9" * 50, "kvm_1_1", "1e309", "/s", "d", "~", "..", "/proc/self/environ"]
)  # fmt: skip
_CHUNKS = st.lists(st.one_of(_YAML_BITS, st.text(max_size=8)), max_size=30).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(at=st.integers(min_value=0, max_value=len(BASE)), insert=_CHUNKS, cut=st.integers(0, 20))
def test_any_mangled_manifest_is_a_report_never_an_exception(
    tmp_path_factory: pytest.TempPathFactory, at: int, insert: str, cut: int
) -> None:
    folder = tmp_path_factory.mktemp("fuzz")
    text = BASE[:at] + insert + BASE[at + cut :]
    path = write_fleet(folder, "version: 1\n", {"templates/ok.yaml.j2": "#cloud-config\n"})
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    report = check_manifest(path, ENV)  # raising anything here is the failure
    assert report.ok or report.problems


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


def test_large_shared_vars_cost_their_size_once_not_per_vps(
    tmp_path: Path, bounded: Callable[[], None]
) -> None:
    # 300 VPSes sharing 30,000 values: copied for each VPS, this took over 15 s.
    entries = "".join(f"  - {{id: kvm_{i}_{i}, hostname: h{i}}}\n" for i in range(1, 301))
    manifest = BASE.split("vps:\n")[0] + "vps:\n" + entries + "rollout:\n  waves: [1, '100%']\n"
    manifest = manifest.replace(
        "  cloud_init: templates/ok.yaml.j2\n",
        "  cloud_init: templates/ok.yaml.j2\n  vars: {big: [" + "1," * 30_000 + "1]}\n",
    )
    template = "#cloud-config\nn: {{ vars.big | length }}\n"
    report = check_manifest(write_fleet(tmp_path, manifest, _template(template)), ENV)
    bounded()
    assert report.ok, report.problems


def test_templates_cannot_change_vars_other_vpses_see(tmp_path: Path) -> None:
    manifest = BASE.replace(
        "  cloud_init: templates/ok.yaml.j2\n",
        "  cloud_init: templates/ok.yaml.j2\n  vars: {users: [root]}\n",
    )
    template = "#cloud-config\nu: {{ vars.users.append(hostname) }}\n"
    report = check_manifest(write_fleet(tmp_path, manifest, _template(template)), ENV)
    assert any("vars are read-only in templates" in p for p in report.problems), report.problems


def test_thousands_of_distinct_misspellings_stay_fast(
    tmp_path: Path, bounded: Callable[[], None]
) -> None:
    # Each "did you mean" compares with every name: 1,000 x 1,000 took 38 s.
    n = 600
    groups = "groups:\n" + "".join(f"  grp{i:05d}: {{}}\n" for i in range(n))
    entries = "".join(
        f"  - {{id: kvm_{i}_{i}, hostname: h{i}, group: grq{i:05d}}}\n" for i in range(1, n + 1)
    )
    manifest = BASE.split("vps:\n")[0] + groups + "vps:\n" + entries
    report = check_manifest(write_fleet(tmp_path, manifest), ENV)
    bounded()
    assert len([p for p in report.problems if "unknown group" in p]) == n
    assert "did you mean 'grp00001'?" in report.problems[0]
    assert max(len(p) for p in report.problems) < 400  # ten groups named, not 600


def test_suggestions_stop_when_their_budget_is_spent() -> None:
    from orchestrator.suggest import Suggestions

    names = [f"name{i:04d}" for i in range(1000)]
    hint = Suggestions(budget=2500)
    assert hint("nama0001", names) == "; did you mean 'name0001'?"
    assert hint("nama0001", names) == "; did you mean 'name0001'?"  # remembered, free
    assert hint("nama0002", names) == "; did you mean 'name0002'?"
    assert hint("nama0003", names) == ""  # 2,000 of 2,500 spent: no room for 1,000 more


_ATOMS = st.sampled_from(
    ["1", "-1", "999999", "10**6", "'x'", "'ab' * 1000", "[1, 2]", "range(1000)", "vars",
     "hostname", "root_password", "{'a': 1}", "(2**1000)", "'%s'", "'{}'", "none", "1.5",
     "namespace(v=1)", "cycler(1, 2)", "dict(a=1)", "true"]
)  # fmt: skip
_FILTERS = st.sampled_from(
    ["upper", "center(999999)", "indent(100000)", "join", "join('x' * 1000)", "replace('', 'yy')",
     "list", "sort", "unique", "batch(3)", "slice(1000)", "sum", "length", "tojson", "string",
     "int", "wordwrap(3)", "format(1, 2)", "map('upper')", "items", "dictsort", "xmlattr",
     "urlencode", "round(99)", "first", "pprint", "title", "default('z')", "attr('__class__')"]
)  # fmt: skip
_METHODS = st.sampled_from(
    ["upper()", "replace('', 'zz')", "join(['a'] * 1000)", "ljust(1000000)", "zfill(999999)",
     "expandtabs(999999)", "split()", "format(1)", "count('')", "items()", "append(1)",
     "__class__", "mro()"]
)  # fmt: skip
_OPERATORS = st.sampled_from(["+", "*", "**", "%", "//", "/", "-", "~", "in", "==", "or"])
_EXPRESSIONS = st.recursive(
    _ATOMS,
    lambda inner: st.one_of(
        st.tuples(inner, _OPERATORS, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        st.tuples(inner, _FILTERS).map(lambda t: f"({t[0]} | {t[1]})"),
        st.tuples(inner, _METHODS).map(lambda t: f"{t[0]}.{t[1]}"),
    ),
    max_leaves=6,
)
_STATEMENTS = st.one_of(
    _EXPRESSIONS.map(lambda e: "{{ " + e + " }}"),
    _EXPRESSIONS.map(lambda e: "{% for i in " + e + " %}{{ i }}{% endfor %}"),
    _EXPRESSIONS.map(lambda e: "{% for a in range(300) %}{% for b in " + e + " %}{{ b }}"
                     "{% endfor %}{% endfor %}"),
    _EXPRESSIONS.map(lambda e: "{% set x = " + e + " %}{{ x }}"),
)  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.lists(_STATEMENTS, min_size=1, max_size=3).map("".join))
def test_any_generated_template_is_a_report_never_an_exception(
    tmp_path_factory: pytest.TempPathFactory, body: str
) -> None:
    folder = tmp_path_factory.mktemp("tfuzz")
    path = write_fleet(folder, BASE, _template("#cloud-config\na: |\n  " + body + "\n"))
    start = time.perf_counter()
    report = check_manifest(path, ENV)  # raising anything here is the failure
    assert time.perf_counter() - start < SECONDS_LIMIT
    assert report.ok or report.problems


def test_generated_passwords_directories_are_all_private(tmp_path: Path) -> None:
    sources.write_generated_passwords(tmp_path / "a" / "b" / "gen.txt", {"kvm_1_1": Secret("pw")})
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
