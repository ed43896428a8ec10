"""The drill record: recovery times, the RTO verdict and exit code, the HTML and Markdown
reports, and JUnit names that stay stable across runs.

Report tests fold records written through the real journal (``tests.test_report.record``) or
built directly when a shape is easier to state that way (hostile text, 450 VPSes). The
command line's side (``report --format``, ``apply --rto``, exit code 7) is in
``test_rto_cli.py``.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from orchestrator.journal import RunRecord, RunStatus, TargetRecord
from orchestrator.model import TargetState
from orchestrator.report import html_report, json_report, junit_report, markdown_report, recovery
from orchestrator.report.formats import REPORT_SCHEMA
from orchestrator.report.recovery import Verdict
from orchestrator.report.timeline import GROUP_ROWS
from orchestrator.version import __version__
from tests.test_report import T0, record

HOSTILE = '<script>alert("x")</script> | **bold** [link](http://evil.example/) &amp;'


def target(
    kvm_id: str,
    wave: int,
    position: int,
    state: TargetState,
    *,
    sent: float | None = None,
    accepted: float | None = None,
    ready: float | None = None,
    ended: float | None = None,
    reason: str = "",
    hostname: str | None = None,
    image: str = "debian-12",
) -> TargetRecord:
    return TargetRecord(
        run_id="r1", kvm_id=kvm_id, wave=wave, position=position, image=image,
        hostname=hostname or f"host-{kvm_id}", user_data_sha256=None, state=state,
        sends=0 if sent is None else 1, queued_at=T0, sent_at=sent, accepted_at=accepted,
        ready_at=ready, ended_at=ended if ended is not None else ready, reason=reason,
    )  # fmt: skip


def run_record(
    status: RunStatus, *, rto_s: float | None = None, ended: float = T0 + 600
) -> RunRecord:
    options: dict[str, Any] = {
        "selection": {"only": [["tag", ["web"]]], "limit": None, "exclude": ["kvm9"],
                      "include_protected": False},
        "rollout": {"soak_s": 30.0},
    }  # fmt: skip
    if rto_s is not None:
        options["rto_s"] = rto_s
    return RunRecord(
        id="20270115-0800-abcdef", manifest_path="fleets/prod.yaml", manifest_sha256="a" * 64,
        plan_sha256="b" * 64, options=options, pid=1, hostname="runner", started_at=T0,
        updated_at=ended, ended_at=ended, status=status, wave_position=2, failures=0,
        retries=0, counters={"throttles": 2, "session_refreshes": 1},
    )  # fmt: skip


def two_waves() -> list[TargetRecord]:
    """Wave 1 (canary): sent at +1, ready at +61. Wave 2 after a soak: sent at +100 and
    +101, ready at +200 and +301."""
    return [
        target("c1", 1, 0, TargetState.READY, sent=T0 + 1, accepted=T0 + 2, ready=T0 + 61),
        target("w1", 2, 0, TargetState.READY, sent=T0 + 100, accepted=T0 + 101, ready=T0 + 200),
        target("w2", 2, 1, TargetState.READY, sent=T0 + 101, accepted=T0 + 102, ready=T0 + 301),
    ]


# --------------------------------------------------------------------------- recovery times


def test_recovery_counts_from_the_first_send_not_from_the_queue() -> None:
    rec = recovery(run_record(RunStatus.DONE), two_waves())
    assert rec.recovery_s == 300.0  # first send +1 → last ready +301
    assert rec.send_to_ready.p50 == 100.0  # 60, 100, 200
    assert rec.send_to_ready.max == 200.0
    assert rec.queue_to_ready.p50 == 200.0  # 61, 200, 301: includes waiting for wave 1
    assert [(w.wave, w.recovery_s) for w in rec.waves] == [(1, 60.0), (2, 201.0)]
    assert rec.install_by_image["debian-12"].count == 3
    assert rec.rto_met is None
    assert rec.verdict is Verdict.OK


@pytest.mark.parametrize(
    ("status", "rto_s", "verdict", "met"),
    [
        (RunStatus.DONE, 300.0, Verdict.OK, True),  # exactly on time is met
        (RunStatus.DONE, 299.0, Verdict.RTO_MISSED, False),
        (RunStatus.FAILED, 299.0, Verdict.FAILED, False),  # failures take precedence
        (RunStatus.IN_DOUBT, 299.0, Verdict.IN_DOUBT, False),
        (RunStatus.INTERRUPTED, 299.0, Verdict.INTERRUPTED, None),  # not judged: not the end
        (RunStatus.ABORTED, 299.0, Verdict.ABORTED, None),
    ],
)
def test_the_rto_verdict_and_its_precedence(
    status: RunStatus, rto_s: float, verdict: Verdict, met: bool | None
) -> None:
    rec = recovery(run_record(status, rto_s=rto_s), two_waves())
    assert (rec.verdict, rec.rto_met) == (verdict, met)


async def test_json_report_carries_recovery_and_verdict_and_keeps_its_schema(
    tmp_path: Path,
) -> None:
    run, targets, attempts = await record(tmp_path / "j.sqlite")
    data = json_report(run, targets, attempts)
    jsonschema.validate(data, REPORT_SCHEMA)
    # One VPS failed and one is in doubt: in doubt is never hidden by anything milder.
    assert data["run"]["verdict"] == "in-doubt"
    assert data["run"]["exit_code"] == 4
    assert data["run"]["rto_s"] is None
    assert data["recovery"]["recovery_s"] == 121.0  # sent at +1, last ready at +122
    assert data["percentiles"]["send_to_ready_s"]["p50"] == 81.0
    assert data["percentiles"]["queue_to_ready_s"]["p50"] == 82.0
    assert data["percentiles"]["time_to_ready_s"]["p50"] == 82.0  # unchanged meaning
    back = [t for t in targets if t.state is TargetState.READY]  # only the VPSes that are back
    missed = json_report(replace(run, status=RunStatus.DONE, options={"rto_s": 60.0}), back)
    jsonschema.validate(missed, REPORT_SCHEMA)
    assert (missed["run"]["verdict"], missed["recovery"]["rto_met"]) == ("rto-missed", False)
    assert missed["run"]["exit_code"] == 7


# --------------------------------------------------------------------------- JUnit


async def test_junit_names_are_the_same_for_two_runs_of_a_fleet(tmp_path: Path) -> None:
    first = await record(tmp_path / "a.sqlite")
    second = await record(tmp_path / "b.sqlite")
    assert first[0].id != second[0].id

    def names(xml: str) -> list[tuple[str | None, str | None]]:
        root = ET.fromstring(xml.encode())
        return [(c.get("classname"), c.get("name")) for c in root.iter("testcase")]

    a, b = names(junit_report(*first)), names(junit_report(*second))
    assert a == b
    assert not any(first[0].id in f"{c}{n}" for c, n in a)
    assert {c for c, _ in a} == {"prod.wave1", "prod.wave2"}


def test_junit_has_a_failing_rto_case_when_the_rto_was_missed() -> None:
    xml = junit_report(run_record(RunStatus.DONE, rto_s=120.0), two_waves())
    root = ET.fromstring(xml.encode())
    (case,) = [c for c in root.iter("testcase") if c.get("classname") == "prod.rto"]
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("type") == "rto_missed"
    assert root.get("tests") == "4"
    assert root.get("failures") == "1"
    met = ET.fromstring(junit_report(run_record(RunStatus.DONE, rto_s=3600.0), two_waves()))
    (ok,) = [c for c in met.iter("testcase") if c.get("classname") == "prod.rto"]
    assert list(ok) == []


# --------------------------------------------------------------------------- HTML


class Page(HTMLParser):
    """Collects what the structural checks need: external references, ids, rows, text."""

    def __init__(self) -> None:
        super().__init__()
        self.external: list[str] = []
        self.tags: set[str] = set()
        self.ids: dict[str, list[str]] = {}
        self.rows = 0
        self.titles: list[str] = []
        self._stack: list[str] = []
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        for key in ("src", "href", "xlink:href", "action", "data"):
            value = a.get(key) or ""
            if re.match(r"\s*(https?:)?//", value, re.IGNORECASE):
                self.external.append(value)
        if re.search(r"url\(", a.get("style") or ""):
            self.external.append(a["style"] or "")
        if tag == "g" and a.get("class") == "row":
            self.rows += 1
        if "id" in a:
            self.ids[a["id"] or ""] = []
        self._stack.append(a.get("id") or tag)

    def handle_endtag(self, tag: str) -> None:
        if self._stack:
            self._stack.pop()

    def handle_data(self, data: str) -> None:
        self._text.append(data)
        for key in self._stack:
            if key in self.ids:
                self.ids[key].append(data)
        if self._stack and self._stack[-1] == "title":
            self.titles.append(data)

    def text(self, key: str) -> str:
        return " ".join(" ".join(self.ids[key]).split())


def parse(page: str) -> Page:
    p = Page()
    p.feed(page)
    p.close()
    return p


def test_html_is_self_contained_with_the_headline_and_every_vps() -> None:
    targets = [
        *two_waves(),
        target("f1", 2, 2, TargetState.FAILED, sent=T0 + 102, ended=T0 + 103, reason=HOSTILE,
               hostname=HOSTILE),
        target("d1", 2, 3, TargetState.IN_DOUBT, sent=T0 + 103, ended=T0 + 300,
               reason="read timeout"),
    ]  # fmt: skip
    page = html_report(run_record(RunStatus.FAILED, rto_s=1800.0), targets)
    p = parse(page)
    assert p.external == []
    assert not {"script", "link", "img", "iframe", "object", "embed"} & p.tags
    assert "svg" in p.tags
    assert p.rows == 5  # one row per VPS
    for kvm_id in ("c1", "w1", "w2", "f1", "d1"):
        assert any(kvm_id in t for t in p.titles), kvm_id
    assert p.text("verdict") == "in-doubt"  # d1 is in doubt: that outranks f1's failure
    assert "prod" in p.text("fleet")
    assert "tag=web" in p.text("selection")
    assert "exclude kvm9" in p.text("selection")
    # First send +1 → last ready +301.
    assert "last ready) 5m00s 2027-01-15 08:00:01 UTC → 2027-01-15 08:05:01 UTC" in p.text(
        "recovery"
    )
    assert "30m00s: met" in p.text("rto")
    assert "a" * 64 in p.text("hashes")
    assert "b" * 64 in p.text("hashes")
    assert f"edis-fleet {__version__}" in p.text("hashes")
    assert p.text("failed").count(HOSTILE) == 2  # host name and reason, shown as text, whole
    assert any(HOSTILE in t for t in p.titles)  # and in the timeline's tooltip
    assert "read timeout" in p.text("in-doubt")
    assert p.text("next") == "edis-fleet retry-failed 20270115-0800-abcdef"
    assert "<script>" not in page
    assert "&lt;script&gt;" in page


def test_html_of_a_large_fleet_groups_rows_and_keeps_every_vps() -> None:
    targets = [target("canary", 1, 0, TargetState.READY, sent=T0 + 1, accepted=T0 + 2,
                      ready=T0 + 50)]  # fmt: skip
    for i in range(449):
        state = (TargetState.FAILED if i % 97 == 5 else TargetState.IN_DOUBT if i % 131 == 7
                 else TargetState.READY)  # fmt: skip
        sent = T0 + 60 + i * 0.2
        targets.append(target(
            f"kvm{i:04d}", 2, i, state, sent=sent,
            accepted=None if state is TargetState.FAILED else sent + 1,
            ready=sent + 100 + i % 40 if state is TargetState.READY else None,
            ended=sent + 5 if state is not TargetState.READY else None,
            reason="" if state is TargetState.READY else f"reason {i}",
        ))  # fmt: skip
    p = parse(html_report(run_record(RunStatus.FAILED), targets))
    assert 2 <= p.rows <= GROUP_ROWS + 2  # grouped, within each wave
    members = " ".join(p.titles)
    assert all(t.kvm_id in members for t in targets)
    failed = sum(t.state is TargetState.FAILED for t in targets)
    assert len(re.findall(r"reason \d+", p.text("failed"))) == failed


# --------------------------------------------------------------------------- Markdown


def test_markdown_leads_with_the_verdict_and_escapes_reasons() -> None:
    targets = [
        *two_waves(),
        target("f1", 2, 2, TargetState.FAILED, sent=T0 + 102, ended=T0 + 103, reason=HOSTILE),
    ]
    text = markdown_report(run_record(RunStatus.FAILED, rto_s=1800.0), targets)
    lines = text.splitlines()
    assert lines[0] == "## ❌ edis-fleet prod: failed"
    assert "| Recovery time (first send → last ready) | 5m00s |" in lines
    assert any(line.startswith("| RTO | 30m00s: met") for line in lines)
    assert "| 2 | 3 | 2 | 1 | 0 | 0 | 3m21s | 1m40s |" in lines  # wave 2: 100 → 301
    (row,) = [line for line in lines if line.startswith("| f1 |")]
    assert row.count(" | ") == 3  # the reason's '|' is escaped: still four cells
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert r"\[link\]" in text
    assert r"\*\*bold\*\*" in text
    assert "**Next:** `edis-fleet retry-failed 20270115-0800-abcdef`" in lines


async def test_markdown_of_an_interrupted_run_says_resume(tmp_path: Path) -> None:
    run, targets, attempts = await record(tmp_path / "j.sqlite", interrupted=True)
    text = markdown_report(run, targets, attempts)
    # Interrupted with a VPS in doubt: the doubt leads (exit 4 outranks 130); resume still next.
    assert text.startswith("## ⚠️ edis-fleet prod: in-doubt")
    assert f"**Next:** `edis-fleet resume {run.id}`" in text


def test_in_doubt_vpses_get_a_step_not_a_command() -> None:
    targets = [
        *two_waves(),
        target("d1", 2, 2, TargetState.IN_DOUBT, sent=T0 + 103, ended=T0 + 300, reason="lost"),
    ]
    text = markdown_report(run_record(RunStatus.IN_DOUBT), targets)
    assert "**Next:** check the 1 in-doubt VPS(es) by hand before anything else" in text
    assert "edis-fleet retry-failed" not in text
    assert "edis-fleet resume" not in text
    p = parse(html_report(run_record(RunStatus.IN_DOUBT), targets))
    assert "next" not in p.ids
    assert "check the 1 in-doubt VPS(es) by hand" in p.text("doubt-step")


def test_the_html_headline_says_the_run_counters_in_words() -> None:
    """Counters with a unit are said with it; the lowest rate only when the provider made the
    run slow down; zero counters are left out."""
    from orchestrator.report.html import _counter_notes

    notes = _counter_notes(
        {"lowest_rate_pct": 60, "cooldown_s": 12.0, "throttles": 3, "fleet_pauses": 0}
    )
    assert "rate down to 60% of the configured" in notes
    assert any(n.startswith("paused ") and n.endswith(" for the provider") for n in notes)
    assert "throttles 3" in notes
    assert not any("fleet pauses" in n or "pct" in n for n in notes)
    assert _counter_notes({"lowest_rate_pct": 100}) == []
