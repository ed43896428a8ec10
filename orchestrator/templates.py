"""Cloud-init user data: rendering templates per VPS, and checking what comes out.

Templates are Jinja2, rendered in a ``SandboxedEnvironment`` with ``StrictUndefined`` (a
misspelt variable is an error, not an empty string), ``trim_blocks`` and ``lstrip_blocks``
(block tags leave no blank lines or indentation behind, which matters in YAML). The context
of one render is the VPS's ``id`` (also ``kvm_id``), ``hostname``, ``image``, ``tags``
(sorted list), ``group``, ``protected``, ``vars`` and ``root_password`` (a plain string that
exists only inside the render).

What a rendered document may be:

- ``#cloud-config`` on its first line, then YAML whose top level is a mapping: checked as
  YAML (duplicate keys included) and, when Debian's ``cloud-init`` is installed, with
  ``cloud-init schema``;
- ``#!`` on its first line: a script, sent as is (cloud-init runs it once); only its size
  is checked;
- anything else is refused: MIME multipart, ``#include``, ``#cloud-boothook``, ``## template:
  jinja`` and friends, because the API takes one document and edis-fleet can check only
  the two kinds above.

Every document must stay within the size limit (16 KiB unless the manifest says otherwise).
``check_templates`` checks a whole fleet: documents that differ only in each VPS's own id,
host name and password are parsed and schema-checked once (``templates_schema`` runs
``cloud-init schema``), and a problem shared by many VPSes is reported once with a count.
No problem text ever contains the root password or rendered content: messages are built from
the template's own error text, positions and key paths, and pass through a ``Redactor``.
"""

from __future__ import annotations

import hashlib
import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from orchestrator import fleet
from orchestrator.errors import ManifestError
from orchestrator.fleet import TemplateSource, VpsEntry
from orchestrator.manifest_yaml import YamlSyntaxError, format_path, load_yaml, plain_scalar_tag
from orchestrator.secrets import Redactor, Secret
from orchestrator.templates_schema import (
    DEFAULT_SCHEMA_DOCUMENTS,
    CloudInitSchema,
    SchemaResult,
    parse_schema_output,
)

__all__ = [
    "DEFAULT_SCHEMA_DOCUMENTS",
    "CloudInitSchema",
    "SchemaResult",
    "TemplateProblem",
    "TemplateReport",
    "Templates",
    "UserData",
    "check_templates",
    "parse_schema_output",
]

CLOUD_CONFIG = "#cloud-config"
SCRIPT = "#!"
_REFUSED_HEADERS = (
    ("content-type:", "MIME multipart user data is not supported"),
    ("mime-version:", "MIME multipart user data is not supported"),
    ("#include", "'#include' user data is not supported"),
    ("#cloud-boothook", "'#cloud-boothook' user data is not supported"),
    ("#part-handler", "'#part-handler' user data is not supported"),
    ("#cloud-config-archive", "'#cloud-config-archive' user data is not supported"),
    ("## template:", "cloud-init's own '## template:' rendering is not supported"),
)
_ONE_DOCUMENT = (
    ": the EDIS API takes one document; write a single '#cloud-config' document (or a '#!' script)"
)


@dataclass(frozen=True, slots=True)
class UserData:
    """One rendered document. ``text`` holds the root password maybe: never print it."""

    text: str = field(repr=False)
    kind: Literal["cloud-config", "script"]
    size: int
    sha256: str


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """A problem with a template or its output, positioned in the template file.

    ``field`` is the manifest path of the VPS (``vps[3].cloud_init``); ``vps`` names the VPS
    it was rendered for; ``more`` counts further VPSes with the very same problem.
    """

    file: str
    line: int
    column: int
    field: str
    message: str
    vps: str = ""
    more: int = 0

    def __str__(self) -> str:
        text = f"{self.file}:{self.line}:{self.column}: {self.field}: {self.message}"
        if self.vps:
            text += f" (rendered for {self.vps}"
            if self.more:
                text += f"; the same for {self.more} more VPS{'es' if self.more > 1 else ''}"
            text += ")"
        return text


class _Failure(Exception):
    """Internal: one problem found while rendering or checking, before it gets a VPS."""

    def __init__(self, file: str, line: int, message: str, column: int = 1) -> None:
        super().__init__(message)
        self.file, self.line, self.column, self.message = file, line, column, message


class _RelativeLoader(jinja2.BaseLoader):
    """Finds ``{% include %}``-d templates relative to the manifest's directory."""

    def __init__(self, base: Path, seen: dict[str, str], display_dir: str) -> None:
        self._base = base
        self._seen = seen
        self._display_dir = display_dir

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        """Return the text and file name of ``template``; raise ``TemplateNotFound``."""
        path = self._base / template
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            raise jinja2.TemplateNotFound(template) from None
        self._seen[str(path)] = os.path.normpath(os.path.join(self._display_dir, template))
        return text, str(path), lambda: True


class Templates:
    """Compiles a fleet's templates once each and renders them per VPS.

    ``base_dir`` is where template paths and includes are resolved (the manifest's
    directory); ``display_dir`` is the same directory as the user named it, for messages.
    """

    def __init__(
        self,
        base_dir: Path,
        *,
        display_dir: str = ".",
        max_bytes: int = fleet.DEFAULT_USER_DATA_LIMIT,
    ) -> None:
        self.max_bytes = max_bytes
        # Template file names (as Jinja sees them) -> how messages show them.
        self._display: dict[str, str] = {}
        self._env = SandboxedEnvironment(
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # YAML, not HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            loader=_RelativeLoader(base_dir, self._display, display_dir),
        )
        self._compiled: dict[str, jinja2.Template | _Failure] = {}

    @classmethod
    def for_fleet(cls, fleet_: fleet.Fleet) -> Templates:
        """Return the renderer for a validated fleet."""
        return cls(
            fleet_.path.parent.resolve(),
            display_dir=str(fleet_.path.parent),
            max_bytes=fleet_.user_data_limit,
        )

    def _where(self, source: TemplateSource, filename: str | None, line: int) -> tuple[str, int]:
        """Map a Jinja file name and template line to a displayed file and line."""
        own = source.key if source.path is None else str(source.path)
        if filename is None or filename == own:
            return source.name, line + source.line_offset
        return self._display.get(filename, filename), line

    def compile(self, source: TemplateSource) -> jinja2.Template:
        """Compile ``source`` (cached by its key); raise ``ManifestError`` on a syntax error."""
        try:
            return self._template(source)
        except _Failure as exc:
            raise ManifestError([f"{exc.file}:{exc.line}:{exc.column}: {exc.message}"]) from None

    def syntax_problem(self, source: TemplateSource, field_path: str) -> TemplateProblem | None:
        """Compile ``source``; return its syntax problem (for ``field_path``) or None."""
        try:
            self._template(source)
        except _Failure as exc:
            return TemplateProblem(exc.file, exc.line, exc.column, field_path, exc.message)
        return None

    def _template(self, source: TemplateSource) -> jinja2.Template:
        cached = self._compiled.get(source.key)
        if cached is None:
            filename = source.key if source.path is None else str(source.path)
            try:
                code = self._env.compile(source.text, name=source.name, filename=filename)
                cached = self._env.template_class.from_code(
                    self._env, code, self._env.make_globals(None), None
                )
            except jinja2.TemplateSyntaxError as exc:
                file, line = self._where(source, exc.filename, exc.lineno)
                cached = _Failure(file, line, f"template syntax error: {exc.message}")
            self._compiled[source.key] = cached
        if isinstance(cached, _Failure):
            raise cached
        return cached

    def render(self, entry: VpsEntry, root_password: Secret) -> UserData:
        """Render and check ``entry``'s user data.

        Raises ``ManifestError`` (one problem, naming the template file, line and the VPS)
        when the template fails or the document is not acceptable; raises ``ValueError`` when
        the entry has no template.
        """
        if entry.template is None:
            raise ValueError(f"{entry.id} has no cloud-init template")
        redact = Redactor([root_password])
        try:
            text = self._render_text(entry, root_password)
            data = self._classify(entry.template, text)
            if data.kind == "cloud-config":
                self._parse(entry.template, text)
        except _Failure as exc:
            problem = TemplateProblem(
                exc.file,
                exc.line,
                exc.column,
                f"vps[{entry.index}].cloud_init",
                redact(exc.message),
                vps=f"{entry.id} {entry.hostname}",
            )
            raise ManifestError([str(problem)]) from None
        return data

    def _render_text(self, entry: VpsEntry, password: Secret) -> str:
        """Render ``entry``'s template; raise ``_Failure`` (password already scrubbed)."""
        source = entry.template
        assert source is not None
        template = self._template(source)
        context: dict[str, Any] = {
            "id": entry.id,
            "kvm_id": entry.id,
            "hostname": entry.hostname,
            "image": entry.image,
            "tags": sorted(entry.tags),
            "group": entry.group,
            "protected": entry.protected,
            "vars": fleet.thaw(entry.vars),
            "root_password": password.reveal(),
        }
        try:
            return template.render(context)
        except jinja2.TemplateSyntaxError as exc:  # in an included template
            file, line = self._where(source, exc.filename, exc.lineno)
            raise _Failure(file, line, f"template syntax error: {exc.message}") from None
        except Exception as exc:  # any failure inside a template becomes a problem
            file, line = self._runtime_where(source, exc)
            message = Redactor([password])(_runtime_message(exc))
            raise _Failure(file, line, message) from None

    def _runtime_where(self, source: TemplateSource, exc: BaseException) -> tuple[str, int]:
        """Find the innermost template frame of a render error (Jinja rewrites tracebacks)."""
        own = source.key if source.path is None else str(source.path)
        found: tuple[str | None, int] = (None, 1)
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            name = frame.f_code.co_filename
            if name == own or name in self._display:
                found = (name, lineno)
        return self._where(source, found[0], found[1])

    def _classify(self, source: TemplateSource, text: str) -> UserData:
        """Check size and header of a rendered document; raise ``_Failure`` if refused."""
        data = text.encode("utf-8")
        size = len(data)
        if size > self.max_bytes:
            raise _Failure(
                source.name,
                1 + source.line_offset,
                f"rendered user data is {size} bytes, over the limit of {self.max_bytes} "
                "(raise defaults.user_data_limit if the provider accepts more)",
            )
        first = text.split("\n", 1)[0].rstrip("\r")
        if first.startswith(SCRIPT):
            kind: Literal["cloud-config", "script"] = "script"
        elif first.rstrip() == CLOUD_CONFIG:
            kind = "cloud-config"
        else:
            raise _Failure(source.name, 1 + source.line_offset, _header_problem(first))
        return UserData(text, kind, size, hashlib.sha256(data).hexdigest())

    def _parse(self, source: TemplateSource, text: str) -> None:
        """Check a cloud-config document is YAML with a mapping on top; raise ``_Failure``."""
        try:
            doc, problems = load_yaml(text)
        except YamlSyntaxError as exc:
            p = exc.problem
            raise _Failure(
                source.name,
                p.position.line + source.line_offset,
                f"rendered document is not valid YAML at its line {p.position.line}, column "
                f"{p.position.column}: {p.message.removeprefix('YAML syntax error: ')}",
            ) from None
        if problems:
            p = problems[0]
            where = f" at {format_path(p.path)}" if p.path else ""
            raise _Failure(
                source.name,
                p.position.line + source.line_offset,
                f"rendered document, line {p.position.line}{where}: {p.message}",
            )
        if doc.data is not None and not isinstance(doc.data, dict):
            raise _Failure(
                source.name,
                2 + source.line_offset,
                "a cloud-config document must be a mapping of modules (key: value) below "
                "its '#cloud-config' line",
            )


def _header_problem(first_line: str) -> str:
    lowered = first_line.strip().lower()
    for prefix, what in _REFUSED_HEADERS:
        if lowered.startswith(prefix):
            return what + _ONE_DOCUMENT
    hint = " (it is empty: check what the template's first lines render to)" if not lowered else ""
    return (
        "rendered user data must start with '#cloud-config' (or '#!' for a script) on its "
        f"first line{hint}"
    )


def _runtime_message(exc: BaseException) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined variable: {exc.message}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"included template not found: {exc.name}"
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"not allowed in the template sandbox: {exc}"
    return f"template failed: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- a whole fleet


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

    def add(self, failure: _Failure, entry: VpsEntry, also: int = 0) -> None:
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

    failure: _Failure | None
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
    for entry in entries:
        source = entry.template
        if source is None:
            continue
        password = password_for(entry)
        if password not in seen and not isinstance(entry.root_password, fleet.GeneratedPassword):
            seen.add(password)
            redact.add(password)
        try:
            text = templates._render_text(entry, password)
            data = templates._classify(source, text)
        except _Failure as exc:
            collector.add(exc, entry)
            continue
        report.rendered += 1
        if data.kind == "script":
            continue
        key = _shape_key(entry, text, password.reveal())
        shape = shapes.get(key)
        if shape is None:
            failure: _Failure | None = None
            try:
                templates._parse(source, text)
            except _Failure as exc:
                exc.message = Redactor([password])(exc.message)
                failure = exc
            shape = shapes[key] = _Shape(failure, entry, text, password, 0)
        shape.members += 1
        if shape.failure is not None:
            collector.add(shape.failure, entry)
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
            failure = _Failure(
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
