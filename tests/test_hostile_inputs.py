"""Hostile inputs beyond the manifest corpus: the generated-passwords file, the journal's
rows, unit ranges, work that grew with the product of two sizes, and property tests that
feed generated manifests and templates to the checker (a report, never an exception).

The bounds are measured as in ``test_hostile_manifests`` (tracemalloc peak and elapsed
time, generous).
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator import units
from orchestrator.manifest.loader import check_manifest
from orchestrator.secrets import Secret, sources
from orchestrator.simulator import Simulator
from tests.bounds import SECONDS_LIMIT, within_bounds
from tests.cli_support import run_cli
from tests.manifest_support import BASE, ENV, write_fleet
from tests.test_hostile_manifests import _other_users_file, _template

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


def test_thousands_of_distinct_misspellings_stay_fast(tmp_path: Path) -> None:
    # Each "did you mean" compares with every name: 1,000 x 1,000 took 38 s.
    n = 600
    groups = "groups:\n" + "".join(f"  grp{i:05d}: {{}}\n" for i in range(n))
    entries = "".join(
        f"  - {{id: kvm_{i}_{i}, hostname: h{i}, group: grq{i:05d}}}\n" for i in range(1, n + 1)
    )
    manifest = BASE.split("vps:\n")[0] + groups + "vps:\n" + entries
    with within_bounds():
        report = check_manifest(write_fleet(tmp_path, manifest), ENV)
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
