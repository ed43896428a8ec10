"""``write_atomic``: the one writer of reports, plan files and the simulator's URL file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from orchestrator.atomic import write_atomic


def test_replaces_the_file_whole_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "plan.json"
    target.write_text("old")
    write_atomic(target, "new ü\r\n", mode=0o644)
    assert target.read_bytes() == "new ü\r\n".encode()  # UTF-8, newlines as given
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_private_by_default(tmp_path: Path) -> None:
    target = tmp_path / "report.xml"
    write_atomic(target, "<x/>")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "half \ud800")  # a lone surrogate cannot be written as UTF-8
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "r.xml", "x")
