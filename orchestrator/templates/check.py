"""Checking the user data of a whole fleet: every VPS rendered, each document shape once.

``check_templates`` renders every entry's template (``templates.Templates``) and checks the
documents (``templates_document``). Documents that differ only in each VPS's own id, host name
and password are parsed and schema-checked once (``templates_schema`` runs ``cloud-init
schema``), and a problem shared by many VPSes is reported once with a count. No problem text
ever contains the root password or rendered content: messages are built from the template's
own error text, positions and key paths, and pass through a ``Redactor``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.fleet import ReadinessMode, VpsEntry
from orchestrator.secrets import Redactor, Secret, sources
from orchestrator.templates.document import (
    TemplateFailure,
    TemplateProblem,
    classify,
    parse_cloud_config,
)
from orchestrator.templates.hostkey import ssh_readiness_problem
from orchestrator.templates.render import Templates
from orchestrator.templates.sandbox import memory_bound
from orchestrator.templates.schema import CloudInitSchema
from orchestrator.yamldoc import YamlSyntaxError, load_yaml, plain_scalar_tag

__all__ = ["TemplateReport", "check_templates"]


@dataclass
class TemplateReport:
    """Problems and warnings from checking every VPS's user data."""

    problems: list[TemplateProblem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rendered: int = 0
    shapes: int = 0
    schema_checked: int = 0
    schema_unchecked: int = 0
    schema_available: bool = False


class _Collector:
    """Folds equal problems of many VPSes into one, counting the others."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, int, int, str], TemplateProblem] = {}

    def add(self, failure: TemplateFailure, entry: VpsEntry, also: int = 0) -> None:
        """Record ``failure`` for ``entry`` and ``also`` more VPSes."""
        key = (failure.file, failure.line, failure.column, failure.message)
        known = self._items.get(key)
        if known is None:
            self._items[key] = TemplateProblem(
                failure.file,
                failure.line,
                failure.column,
                f"vps[{entry.index}].cloud_init",
                failure.message,
                vps=f"{entry.id} {entry.hostname}",
                more=also,
            )
        else:
            self._items[key] = TemplateProblem(
                known.file,
                known.line,
                known.column,
                known.field,
                known.message,
                known.vps,
                known.more + 1 + also,
            )

    def problems(self) -> list[TemplateProblem]:
        return list(self._items.values())


_PLACEHOLDER = "\x00{}\x00"  # NUL never appears in YAML text, so it cannot collide


_UNCHECKED = object()


def _shape_key(entry: VpsEntry, text: str, password: str) -> tuple[str, str, str]:
    """Key under which documents are YAML-equivalent: per-VPS values replaced by markers.

    Two VPSes' documents that differ only where their own id, host name or password were
    rendered parse to the same structure, as long as those values resolve to the same YAML
    type (a host name like ``on`` or ``123`` would not stay a string), so they are parsed
    and schema-checked once. The key never leaves this process and holds a hash, not text.
    """
    normal = text
    values = sorted(
        ((entry.id, "I"), (entry.hostname, "H"), (password, "P")), key=lambda v: -len(v[0])
    )
    for value, mark in values:
        if value:
            normal = normal.replace(value, _PLACEHOLDER.format(mark))
    digest = hashlib.sha256(normal.encode("utf-8")).hexdigest()
    kinds = plain_scalar_tag(entry.hostname) + " " + plain_scalar_tag(password)
    return (entry.template.key if entry.template else "", kinds, digest)


@dataclass
class _Shape:
    """Documents with one shape: the parse outcome, one real member and how many there are."""

    failure: TemplateFailure | None
    entry: VpsEntry
    text: str = field(repr=False)
    password: Secret = field(repr=False)
    members: int = 1


def check_templates(
    entries: Sequence[VpsEntry],
    templates: Templates,
    password_for: Callable[[VpsEntry], Secret],
    *,
    schema: CloudInitSchema | None,
    secrets: Sequence[Secret] = (),
) -> TemplateReport:
    """Render every entry's template and check the documents; return all problems.

    Equal problems for many VPSes are folded into one (with a count). ``secrets`` are extra
    values to redact from every message, besides each VPS's own password.
    """
    report = TemplateReport(schema_available=schema is not None)
    collector = _Collector()
    # Shared secrets (one password for many VPSes) are redacted at the end; each VPS's own
    # password is scrubbed from its messages when they are made, so that 10,000 generated
    # passwords do not grow one huge pattern.
    redact = Redactor(secrets)
    seen: set[Secret] = set()
    shapes: dict[tuple[str, str, str], _Shape] = {}
    # Readiness mode ssh: the document's problem for it, per shape and operator key.
    ssh_checked: dict[tuple[tuple[str, str, str], Path | None], object] = {}
    with memory_bound():  # once for the fleet, not per render
        for entry in entries:
            source = entry.template
            if source is None:
                continue
            password = password_for(entry)
            if password not in seen and not isinstance(
                entry.root_password, sources.GeneratedPassword
            ):
                seen.add(password)
                redact.add(password)
            try:
                text = templates.render_text(entry, password)
                data = classify(source, text, templates.max_bytes)
            except TemplateFailure as exc:
                collector.add(exc, entry)
                continue
            report.rendered += 1
            if data.kind == "script":
                continue
            key = _shape_key(entry, text, password.reveal())
            shape = shapes.get(key)
            if shape is None:
                failure: TemplateFailure | None = None
                try:
                    parse_cloud_config(source, text)
                except TemplateFailure as exc:
                    exc.message = Redactor([password])(exc.message)
                    failure = exc
                shape = shapes[key] = _Shape(failure, entry, text, password, 0)
            shape.members += 1
            if shape.failure is not None:
                collector.add(shape.failure, entry)
            elif entry.readiness.mode is ReadinessMode.SSH:
                ssh = ssh_checked.get((key, entry.readiness.ssh.identity_file), _UNCHECKED)
                if ssh is _UNCHECKED:
                    ssh = ssh_readiness_problem(text, entry.readiness.ssh.identity_file)
                    ssh_checked[key, entry.readiness.ssh.identity_file] = ssh
                if isinstance(ssh, str):
                    collector.add(TemplateFailure(source.name, 1 + source.line_offset, ssh), entry)
    report.shapes = len(shapes)
    if schema is not None:
        _schema_check(list(shapes.values()), schema, collector, report)
    report.problems = [
        TemplateProblem(p.file, p.line, p.column, p.field, redact(p.message), p.vps, p.more)
        for p in collector.problems()
    ]
    report.warnings = [redact(w) for w in report.warnings]
    return report


def _schema_check(
    shapes: list[_Shape], schema: CloudInitSchema, collector: _Collector, report: TemplateReport
) -> None:
    """Run cloud-init's schema on one document per shape; fold results into the collector.

    With more shapes than the checker's ``max_documents``, the first shape of every template
    goes first, so each template is looked at; the rest are counted as unchecked.
    """
    todo = [s for s in shapes if s.failure is None]
    if schema.max_documents and len(todo) > schema.max_documents:
        first_of_template: dict[str, _Shape] = {}
        for shape in todo:
            first_of_template.setdefault(
                shape.entry.template.key if shape.entry.template else "", shape
            )
        leading = list(first_of_template.values())
        chosen = {id(s) for s in leading}
        ordered = leading + [s for s in todo if id(s) not in chosen]
        report.schema_unchecked = len(todo) - schema.max_documents
        todo = ordered[: schema.max_documents]
    results = schema.check_many([s.text for s in todo])
    report.schema_checked = len(todo)
    for shape, result in zip(todo, results, strict=True):
        source = shape.entry.template
        assert source is not None
        own = Redactor([shape.password])
        if result.failure and not result.errors:
            report.warnings.append(f"{source.name}: {result.failure}")
            continue
        try:
            doc = load_yaml(shape.text)[0]
        except YamlSyntaxError:  # pragma: no cover - parsed before
            continue
        for path, message in result.errors:
            parts = [int(p) if p.isdigit() else p for p in path.split(".")]
            at = doc.position(parts)
            failure = TemplateFailure(
                source.name,
                at.line + source.line_offset,
                own(f"cloud-init schema: {path}: {message}"),
                column=at.column,
            )
            collector.add(failure, shape.entry, shape.members - 1)
        for path, message in result.deprecations:
            report.warnings.append(
                own(f"{source.name}: cloud-init schema deprecation: {path}: {message}")
            )
