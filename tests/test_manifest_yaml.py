"""The line-mapping YAML loader: positions, duplicate keys, refused constructs."""

from __future__ import annotations

import datetime as dt
import textwrap

import pytest

from orchestrator.yamldoc import (
    MAX_NODES,
    Position,
    YamlSyntaxError,
    format_path,
    load_yaml,
    plain_scalar_tag,
)

DOC = textwrap.dedent(
    """\
    version: 1
    vps:
      - id: kvm_1_2
        hostname: a
        vars:
          n: 5
          when: 2024-01-02
      - {id: kvm_3_4, hostname: b}
    text: |
      line one
      line two
    """
)


def test_builds_plain_data() -> None:
    doc, problems = load_yaml(DOC)
    assert problems == []
    assert doc.data["vps"][0]["vars"] == {"n": 5, "when": dt.date(2024, 1, 2)}
    assert doc.data["vps"][1] == {"id": "kvm_3_4", "hostname": "b"}
    assert doc.data["text"] == "line one\nline two\n"


@pytest.mark.parametrize(
    ("path", "key", "expected"),
    [
        (("version",), False, Position(1, 10)),
        (("version",), True, Position(1, 1)),
        (("vps",), False, Position(3, 3)),
        (("vps", 0), False, Position(3, 5)),
        (("vps", 0, "hostname"), False, Position(4, 15)),
        (("vps", 0, "hostname"), True, Position(4, 5)),
        (("vps", 0, "vars", "n"), False, Position(6, 10)),
        (("vps", 1, "hostname"), False, Position(8, 29)),
        # Missing pieces fall back to the nearest existing ancestor.
        (("vps", 0, "vars", "missing"), False, Position(6, 7)),
        (("vps", 7, "id"), False, Position(3, 3)),
        (("nothing",), False, Position(1, 1)),
    ],
)
def test_positions(path: tuple[str | int, ...], key: bool, expected: Position) -> None:
    doc, _ = load_yaml(DOC)
    assert doc.position(path, key=key) == expected


def test_block_text_starts_on_the_next_line() -> None:
    doc, _ = load_yaml(DOC)
    assert doc.text_line(("text",)) == 10
    assert doc.text_line(("vps", 0, "hostname")) == 4
    assert doc.text_line(("nope",)) is None


def test_duplicate_keys_are_problems_and_the_first_value_stays() -> None:
    doc, problems = load_yaml("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n")
    assert doc.data == {"a": 1, "b": {"c": 1}}
    assert [(p.position.line, p.path) for p in problems] == [(4, ("b", "c")), (5, ("a",))]
    assert "duplicate key 'c' (first on line 3)" in problems[0].message


@pytest.mark.parametrize(
    ("text", "fragment", "line"),
    [
        ("a: !!python/object/apply:os.system [ls]\n", "unsupported YAML tag", 1),
        ("a: !custom x\n", "unsupported YAML tag !custom", 1),
        ("base: &b {x: 1}\nc:\n  <<: *b\n", "merge keys (<<) are not supported", 3),
        ("a: &r [1, *r]\n", "recursive alias", 1),
        ("? [1, 2]\n: x\n", "a mapping key must be a plain value", 1),
        ("a: 1\n---\nb: 2\n", "expected one YAML document", 2),
    ],
)
def test_refused_constructs(text: str, fragment: str, line: int) -> None:
    try:
        _, problems = load_yaml(text)
    except YamlSyntaxError as exc:
        problems = [exc.problem]
    assert any(fragment in p.message and p.position.line == line for p in problems), problems


def test_syntax_error_has_position_and_no_snippet() -> None:
    with pytest.raises(YamlSyntaxError) as info:
        load_yaml("a: 1\nb: c: d\n")
    problem = info.value.problem
    assert problem.position == Position(2, 5)
    assert problem.message.startswith("YAML syntax error: mapping values are not allowed")
    assert "b: c: d" not in problem.message


def test_alias_bomb_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(YamlSyntaxError) as info:
        load_yaml("\n".join(lines) + "\n")
    assert str(MAX_NODES) in info.value.problem.message


def test_aliases_share_values() -> None:
    doc, problems = load_yaml("a: &x {k: [1, 2]}\nb: *x\n")
    assert problems == []
    assert doc.data["b"] is doc.data["a"]
    assert doc.position(("b", "k")) == doc.position(("a", "k"))


def test_empty_document() -> None:
    doc, problems = load_yaml("# only a comment\n")
    assert doc.data is None
    assert problems == []


def test_format_path() -> None:
    assert format_path(("vps", 3, "readiness", "port")) == "vps[3].readiness.port"
    assert format_path(("rollout", "waves", 0)) == "rollout.waves[0]"
    assert format_path(()) == ""


@pytest.mark.parametrize(
    ("value", "tag"), [("vps-001", "str"), ("123", "int"), ("on", "bool"), ("~", "null")]
)
def test_plain_scalar_tag(value: str, tag: str) -> None:
    assert plain_scalar_tag(value) == tag
