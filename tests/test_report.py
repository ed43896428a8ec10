"""Reports folded from journal records: text, JSON (against its schema), JUnit XML, NDJSON.

The records come from a real journal in ``tmp_path``, written through its API with a fake
clock, so the reports are tested on exactly what a run leaves behind.
"""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from orchestrator.clock import FakeClock
from orchestrator.journal.journal import Journal, RunStatus, TargetSpec, TargetState
from orchestrator.journal.records import AttemptRecord, RunRecord, TargetRecord
from orchestrator.model import Attempt, Outcome, TargetEvent
from orchestrator.report.formats import (
    IN_DOUBT_ADVICE,
    REPORT_SCHEMA,
    NdjsonSink,
    event_objects,
    json_report,
    junit_report,
    ndjson_events,
    percentile,
    text_report,
    write_atomic,
)

NASTY = "Unknown image <&\"'> «débian» 東京 — token hunter2"
T0 = 1_800_000_000.0  # FakeClock's start: 2027-01-15 08:00:00 UTC


@dataclass
class Recorded:
    run: RunRecord
    targets: list[TargetRecord]
    attempts: list[AttemptRecord]

    @property
    def args(self) -> tuple[RunRecord, list[TargetRecord], list[AttemptRecord]]:
        return self.run, self.targets, self.attempts


def spec(kvm_id: str, wave: int, position: int) -> TargetSpec:
    return TargetSpec(kvm_id, wave, position, "debian-12", f"host-{kvm_id}")


async def record(
    path: Path, *, interrupted: bool = False
) -> tuple[RunRecord, list[TargetRecord], list[AttemptRecord]]:
    """Write a run through the journal's API. Wave 1: a, b ready, d failed; wave 2: c ready,
    e in doubt, f skipped. Interrupted instead: g pending, h intent, i accepted."""
    clock = FakeClock(T0)
    async with Journal(path, clock=clock) as j:
        run_id = await j.create_run(
            manifest_path="fleets/prod.yaml", manifest_sha256="a" * 64, plan_sha256="b" * 64
        )
        if interrupted:
            await j.add_targets(run_id, [spec("g", 1, 0), spec("h", 1, 1), spec("i", 1, 2)])
            await j.acquire_locks(run_id, ["g", "h", "i"])
            clock.advance(1)
            await j.write_intents(run_id, ["h", "i"])
            clock.advance(2)
            await j.record_outcome(run_id, "i", TargetState.ACCEPTED)
            await j.finish_run(run_id, RunStatus.INTERRUPTED)
            return await j.run(run_id), await j.targets(run_id), await j.attempts(run_id)
        specs = [spec("a", 1, 0), spec("b", 1, 1), spec("d", 1, 2)]
        specs += [spec("c", 2, 0), spec("e", 2, 1), spec("f", 2, 2)]
        await j.add_targets(run_id, specs)
        await j.acquire_locks(run_id, [s.kvm_id for s in specs])
        clock.advance(1)
        await j.write_intents(run_id, ["a", "b", "d", "c", "e"])
        for kvm_id, outcome, status in [
            (None, Outcome.ACCEPTED, 200),
            ("a", Outcome.THROTTLED, 429),
            ("a", Outcome.THROTTLED, 429),
            ("b", Outcome.SESSION, 401),
            ("a", Outcome.ACCEPTED, 200),
            ("b", Outcome.ACCEPTED, 200),
            ("c", Outcome.ACCEPTED, 200),
            ("d", Outcome.REJECTED, 400),
            ("e", Outcome.IN_DOUBT, None),
        ]:
            attempt = Attempt("set/reinstall", kvm_id, outcome, status, "", 0.2)
            await j.record_attempt(run_id, attempt)
        clock.advance(1)
        for kvm_id in ("a", "b", "c"):
            await j.record_outcome(run_id, kvm_id, TargetState.ACCEPTED)
        await j.record_outcome(run_id, "d", TargetState.FAILED, reason=NASTY)
        await j.record_outcome(run_id, "e", TargetState.IN_DOUBT, reason="read timeout")
        await j.record_outcome(run_id, "f", TargetState.SKIPPED, reason="run budget exceeded")
        for kvm_id, wait in (("a", 60), ("b", 20), ("c", 40)):  # ready at T0+62, +82, +122
            clock.advance(wait)
            await j.record_outcome(run_id, kvm_id, TargetState.READY, reason="port 22 open")
        await j.save_progress(run_id, retries=3, counters={"throttles": 2})
        await j.finish_run(run_id, RunStatus.FAILED)
        return await j.run(run_id), await j.targets(run_id), await j.attempts(run_id)


@pytest.fixture
async def rec(tmp_path: Path) -> Recorded:
    return Recorded(*(await record(tmp_path / "journal.sqlite")))


@pytest.fixture
async def unfinished(tmp_path: Path) -> Recorded:
    return Recorded(*(await record(tmp_path / "journal.sqlite", interrupted=True)))


def hide(text: str) -> str:
    return text.replace("hunter2", "***")


# --------------------------------------------------------------------------- percentiles


@pytest.mark.parametrize(
    ("values", "p", "expected"),
    [
        ([], 50, None),
        ([7.0], 50, 7.0),
        ([7.0], 95, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([4.0, 1.0, 3.0, 2.0], 100, 4.0),
        ([float(v) for v in range(1, 11)], 50, 5.0),
        ([float(v) for v in range(1, 11)], 95, 10.0),
        ([float(v) for v in range(1, 21)], 95, 19.0),
        ([float(v) for v in range(1, 101)], 95, 95.0),
        ([float(v) for v in range(1, 101)], 50, 50.0),
        ([62.0, 82.0, 122.0], 50, 82.0),
        ([62.0, 82.0, 122.0], 95, 122.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], p: float, expected: float | None) -> None:
    assert percentile(values, p) == expected


@pytest.mark.parametrize("p", [0, -1, 101])
def test_percentile_refuses_out_of_range(p: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        percentile([1.0], p)


# --------------------------------------------------------------------------- text


async def test_text_report_counts_reasons_and_advice(rec: Recorded) -> None:
    text = text_report(*rec.args)
    assert text.startswith(f"edis-fleet run {rec.run.id}: failed\n")
    table = {
        line.split()[0]: line.split()[1:]
        for line in text.splitlines()
        if re.match(r"^(state|ready|failed|in doubt|skipped|all)\b", line)
    }
    assert table["state"] == ["total", "wave", "1", "wave", "2"]
    assert table["ready"] == ["3", "2", "1"]
    assert table["failed"] == ["1", "1", "0"]
    assert table["in"] == ["doubt", "1", "0", "1"]
    assert table["skipped"] == ["1", "0", "1"]
    assert table["all"] == ["6", "3", "3"]
    # Sent at +1 s, ready at +62, +82, +122 s: recovery counts from the first send; queue →
    # ready includes the wait before the send, send → ready does not.
    assert "Recovery (first send → last ready): 2m01s" in text
    assert "Per wave (first send → last ready): wave 1 1m21s, wave 2 2m01s" in text
    assert "Per VPS, send → ready (3 of 6): p50 1m21s, p95 2m01s, max 2m01s" in text
    assert "Per VPS, queue → ready (3 of 6): p50 1m22s, p95 2m02s, max 2m02s" in text
    assert "RTO" not in text  # none was set
    assert f"Failed (1):\n  d host-d (wave 1): {NASTY}\n" in text
    assert "In doubt (1): the reinstall may have run; it was not resent.\n" in text
    assert "  e host-e (wave 2): read timeout\n" in text
    flat = " ".join(text.split())
    assert "Check each of these VPSes by hand" in flat
    assert "--limit KVM_ID" in flat
    assert "Skipped (1): never sent.\n  f host-f (wave 2): run budget exceeded\n" in text
    # Outcome classes in their enum order, the ones never seen left out.
    assert "API calls: 9 (throttled 2, session 1, rejected 1, accepted 4, in_doubt 1)\n" in text
    assert "retries 3, throttles 2" in text
    timings = {line.split()[0]: line.split() for line in text.splitlines() if line[:4] == "  a "}
    assert timings["a"] == ["a", "host-a", "1", "ready", "1", "1.0s", "1.0s", "1m00s", "1m02s"]


async def test_text_report_names_unfinished_vpses(unfinished: Recorded) -> None:
    text = text_report(*unfinished.args)
    assert "i host-i (wave 1): reinstall accepted; readiness not confirmed" in text
    assert "g host-g (wave 1): never sent" in text
    assert "In doubt (1)" in text
    assert "h host-h (wave 1): sent, but no outcome" in text
    assert "Recovery: no VPS became ready." in text


async def test_text_report_without_per_vps_timings(rec: Recorded) -> None:
    assert "Timings per VPS" in text_report(*rec.args)
    assert "Timings per VPS" not in text_report(*rec.args, per_vps=False)


# --------------------------------------------------------------------------- JSON


async def test_json_report_validates_against_its_schema(rec: Recorded) -> None:
    jsonschema.Draft202012Validator.check_schema(REPORT_SCHEMA)
    data = json_report(*rec.args)
    jsonschema.validate(data, REPORT_SCHEMA, cls=jsonschema.Draft202012Validator)
    assert data["schema"] == "edis-fleet/report/v1"
    assert data["run"]["status"] == "failed"
    assert data["run"]["fleet"] == "prod"
    assert data["run"]["retries"] == 3
    assert data["run"]["counters"] == {"throttles": 2}
    assert data["run"]["duration_s"] == 122.0
    assert data["totals"] == {
        "targets": 6, "pending": 0, "intent": 0, "accepted": 0,
        "ready": 3, "failed": 1, "in_doubt": 1, "skipped": 1,
    }  # fmt: skip
    assert [(w["wave"], w["targets"], w["ready"]) for w in data["waves"]] == [(1, 3, 2), (2, 3, 1)]
    assert data["percentiles"]["time_to_ready_s"] == {
        "count": 3, "p50": 82.0, "p95": 122.0, "max": 122.0,
    }  # fmt: skip
    assert data["attempts"] == {
        "total": 9, "not_sent": 0, "throttled": 2, "session": 1,
        "rejected": 1, "accepted": 4, "in_doubt": 1,
    }  # fmt: skip
    by_id = {t["kvm_id"]: t for t in data["targets"]}
    assert [t["kvm_id"] for t in data["targets"]] == ["a", "b", "d", "c", "e", "f"]
    assert by_id["a"]["timings"] == {
        "queued_at": T0, "sent_at": T0 + 1, "accepted_at": T0 + 2,
        "ready_at": T0 + 62, "ended_at": T0 + 62, "time_to_ready_s": 62.0,
    }  # fmt: skip
    assert by_id["f"]["timings"]["sent_at"] is None
    assert by_id["f"]["sends"] == 0
    assert by_id["e"]["timings"]["time_to_ready_s"] is None


async def test_json_schema_is_not_vacuous(rec: Recorded) -> None:
    data = json_report(*rec.args)
    broken: list[dict[str, Any]] = [json.loads(json.dumps(data)) for _ in range(3)]
    del broken[0]["totals"]["ready"]
    broken[1]["targets"][0]["state"] = "done"
    broken[2]["percentiles"]["time_to_ready_s"]["p50"] = "fast"
    for doc in broken:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, REPORT_SCHEMA, cls=jsonschema.Draft202012Validator)


async def test_unfinished_and_empty_runs_validate(unfinished: Recorded) -> None:
    data = json_report(*unfinished.args)
    jsonschema.validate(data, REPORT_SCHEMA, cls=jsonschema.Draft202012Validator)
    assert (data["totals"]["pending"], data["totals"]["intent"], data["totals"]["accepted"]) == (
        1, 1, 1,
    )  # fmt: skip
    empty = json_report(unfinished.run, [], [])
    jsonschema.validate(empty, REPORT_SCHEMA, cls=jsonschema.Draft202012Validator)
    assert empty["percentiles"]["time_to_ready_s"] == {
        "count": 0, "p50": None, "p95": None, "max": None,
    }  # fmt: skip
    assert "no VPS became ready" in text_report(unfinished.run, [], [])
    assert ET.fromstring(junit_report(unfinished.run, [], []).encode()).get("tests") == "0"


async def test_special_characters_survive_json(rec: Recorded) -> None:
    data = json.loads(json.dumps(json_report(*rec.args), ensure_ascii=False))
    assert {t["kvm_id"]: t["reason"] for t in data["targets"]}["d"] == NASTY


# --------------------------------------------------------------------------- JUnit


async def test_junit_parses_with_counts_and_one_testcase_per_vps(rec: Recorded) -> None:
    xml = junit_report(*rec.args)
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml.encode("utf-8"))
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    for node in (root, suite):
        counts = {k: node.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
        assert counts == {
            "tests": "6", "failures": "2", "errors": "0", "skipped": "1", "time": "122.000",
        }  # fmt: skip
    assert suite.get("name") == "prod"  # the run id is a property, not part of any name
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == [f"{k} host-{k}" for k in ("a", "b", "d", "c", "e", "f")]
    assert {n: c.get("classname") for n, c in cases.items()} == {
        f"{k} host-{k}": f"prod.wave{1 if k in 'abd' else 2}" for k in "abdcef"
    }
    assert cases["a host-a"].get("time") == "62.000"
    assert list(cases["a host-a"]) == []
    failure = cases["d host-d"].find("failure")
    assert failure is not None
    assert (failure.get("type"), failure.get("message"), failure.text) == ("failed", NASTY, NASTY)
    doubt = cases["e host-e"].find("failure")
    assert doubt is not None
    assert doubt.get("type") == "in_doubt"
    assert doubt.get("message") == "read timeout"
    assert IN_DOUBT_ADVICE in (doubt.text or "")
    skipped = cases["f host-f"].find("skipped")
    assert skipped is not None
    assert skipped.get("message") == "run budget exceeded"


async def test_junit_for_an_unfinished_run(unfinished: Recorded) -> None:
    root = ET.fromstring(junit_report(*unfinished.args).encode())
    assert (root.get("failures"), root.get("skipped")) == ("2", "1")
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["g host-g"].find("skipped") is not None
    intent = cases["h host-h"].find("failure")
    accepted = cases["i host-i"].find("failure")
    assert intent is not None
    assert intent.get("type") == "in_doubt"
    assert accepted is not None
    assert accepted.get("type") == "not_ready"


async def test_junit_survives_characters_xml_cannot_hold(rec: Recorded) -> None:
    bad = "boom\x00\x1b[31m\ud800 <&\"'> ünï\n2nd line"
    targets = [replace(t, reason=bad) if t.kvm_id == "d" else t for t in rec.targets]
    root = ET.fromstring(junit_report(rec.run, targets, rec.attempts).encode())
    failure = next(c for c in root.iter("testcase") if c.get("name") == "d host-d").find("failure")
    assert failure is not None
    assert failure.get("message") == "boom\ufffd\ufffd[31m\ufffd <&\"'> ünï\n2nd line"
    assert json.loads(json.dumps(json_report(rec.run, targets)))["targets"][2]["reason"] == bad


# --------------------------------------------------------------------------- NDJSON


async def test_ndjson_events_are_ordered_state_changes(rec: Recorded) -> None:
    text = ndjson_events(rec.run, rec.targets)
    assert text.endswith("\n")
    events = [json.loads(line) for line in text.splitlines()]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert len(events) == 6 + 5 + 3 + 6  # queued, sent, accepted, final
    per_vps: dict[str, list[str]] = {}
    for e in events:
        per_vps.setdefault(e["kvm_id"], []).append(e["state"])
        assert e["run_id"] == rec.run.id
        assert e["hostname"] == f"host-{e['kvm_id']}"
    assert per_vps["a"] == ["pending", "intent", "accepted", "ready"]
    assert per_vps["d"] == ["pending", "intent", "failed"]
    assert per_vps["e"] == ["pending", "intent", "in_doubt"]
    assert per_vps["f"] == ["pending", "skipped"]
    last_d = next(e for e in events if e["kvm_id"] == "d" and e["state"] == "failed")
    assert last_d["reason"] == NASTY
    assert last_d["wave"] == 1
    assert events[-1] == {
        "at": T0 + 122, "time": "2027-01-15T08:02:02.000Z", "run_id": rec.run.id,
        "kvm_id": "c", "hostname": "host-c", "wave": 2, "state": "ready",
        "reason": "port 22 open",
    }  # fmt: skip
    assert event_objects(rec.run, rec.targets) == events


async def test_ndjson_for_an_unfinished_run(unfinished: Recorded) -> None:
    events = [json.loads(line) for line in ndjson_events(*unfinished.args[:2]).splitlines()]
    states = [(e["kvm_id"], e["state"]) for e in events]
    assert ("h", "intent") in states
    assert ("i", "accepted") in states
    assert not any(s in ("ready", "failed", "in_doubt", "skipped") for _, s in states)


def test_ndjson_sink_streams_one_flushed_line_per_event() -> None:
    class Stream(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1

    out = Stream()
    sink = NdjsonSink(out, run_id="r1", hostnames={"k1": "vps-1"}, redact=hide)
    sink.emit(TargetEvent("k1", TargetState.PENDING, 2, T0))
    sink.emit(TargetEvent("k1", TargetState.INTENT, 2, T0 + 1))
    # A send cancelled mid-flight comes with wave 0; the line keeps the VPS's real wave.
    sink.emit(TargetEvent("k1", TargetState.IN_DOUBT, 0, T0 + 2, "cut: hunter2"))
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert out.flushes == 3
    assert [(e["state"], e["wave"], e["hostname"]) for e in lines] == [
        ("pending", 2, "vps-1"), ("intent", 2, "vps-1"), ("in_doubt", 2, "vps-1"),
    ]  # fmt: skip
    assert lines[2]["reason"] == "cut: ***"
    assert lines[2]["time"] == "2027-01-15T08:00:02.000Z"


async def test_ndjson_sink_never_raises_into_the_scheduler() -> None:
    out = io.StringIO()
    sink = NdjsonSink(out)
    await sink.before_send("k1", 1)
    out.close()
    sink.emit(TargetEvent("k1", TargetState.PENDING, 1, T0))
    sink.emit(TargetEvent("k1", TargetState.INTENT, 1, T0))
    assert isinstance(sink.error, ValueError)


# --------------------------------------------------------------------------- secrets, files


async def test_redact_reaches_every_format(rec: Recorded) -> None:
    outputs = [
        text_report(*rec.args, redact=hide),
        json.dumps(json_report(*rec.args, redact=hide), ensure_ascii=False),
        junit_report(*rec.args, redact=hide),
        ndjson_events(rec.run, rec.targets, redact=hide),
    ]
    for out in outputs:
        assert "hunter2" not in out
        assert "token ***" in out


def test_write_atomic_replaces_the_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")
    write_atomic(target, "new ü\n")
    assert target.read_text(encoding="utf-8") == "new ü\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "missing" / "r.xml", "x")
