"""Cloud-init user data: rendering a fleet's templates per VPS.

Templates are Jinja2, rendered in a bounded sandbox (``templates.sandbox``: time, loop
steps, value sizes and memory are capped; the output stops past the user-data limit) with
``StrictUndefined`` (a
misspelt variable is an error, not an empty string), ``trim_blocks`` and ``lstrip_blocks``
(block tags leave no blank lines or indentation behind, which matters in YAML). The context
of one render is the VPS's ``id`` (also ``kvm_id``), ``hostname``, ``image``, ``tags``
(sorted list), ``group``, ``protected``, ``vars`` and ``root_password`` (a plain string that
exists only inside the render).

``Templates.render`` renders one VPS's document and checks it with ``templates_document``
(which says what a document may be: a ``#cloud-config`` mapping or a ``#!`` script, within the
size limit). ``templates_check.check_templates`` does that for a whole fleet, with
``cloud-init schema`` (``templates_schema``). No problem text ever contains the root password
or rendered content: messages are built from the template's own error text and positions, and
the password is scrubbed from them.

Template files, included, imported or not, are confined to the manifest's directory tree
(after resolving symbolic links): an absolute path, ``..`` out of the tree or a link that
points outside is refused, as are files that are not regular or over 1 MiB.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from orchestrator import fleet
from orchestrator.errors import ManifestError
from orchestrator.fleet import TemplateSource, VpsEntry
from orchestrator.localfiles import MAX_TEMPLATE_BYTES, LocalFileError, read_text, resolve_inside
from orchestrator.secrets import Redactor, Secret
from orchestrator.templates.document import (
    TemplateFailure,
    TemplateProblem,
    UserData,
    classify,
    parse_cloud_config,
)
from orchestrator.templates.sandbox import BoundedEnvironment, BoundExceeded, Budget
from orchestrator.templates.shared_vars import ReadOnlyDict, ReadOnlyList, SharedVars

__all__ = ["Templates"]


class TemplateRefused(jinja2.TemplateNotFound):
    """An included template outside the manifest's tree, or not a usable file."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(name, f"included template {name!r} {reason}")
        self.reason = reason


class _RelativeLoader(jinja2.BaseLoader):
    """Finds ``{% include %}``-d (and imported) templates relative to the manifest's
    directory, never outside its tree (``localfiles.resolve_inside``)."""

    def __init__(self, base: Path, seen: dict[str, str], display_dir: str) -> None:
        self._base = base.resolve()
        self._seen = seen
        self._display_dir = display_dir

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        """Return the text and file name of ``template``; raise ``TemplateNotFound`` (or
        ``TemplateRefused``, one of those, for a path outside the tree or an unusable file)."""
        try:
            path = resolve_inside(self._base, template)
            text = read_text(path, max_bytes=MAX_TEMPLATE_BYTES)
        except LocalFileError as exc:
            if str(exc) == "not found":
                raise jinja2.TemplateNotFound(template) from None
            raise TemplateRefused(template, str(exc)) from None
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
        self._env = BoundedEnvironment(
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # YAML, not HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            loader=_RelativeLoader(base_dir, self._display, display_dir),
        )
        self._compiled: dict[str, jinja2.Template | TemplateFailure] = {}
        # Templates that went past a render bound for one VPS: the others get the same
        # problem at once, so that a hostile template costs one bounded render, not one each.
        self._exhausted: dict[str, TemplateFailure] = {}
        self._vars = SharedVars()

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
        except TemplateFailure as exc:
            raise ManifestError([f"{exc.file}:{exc.line}:{exc.column}: {exc.message}"]) from None

    def syntax_problem(self, source: TemplateSource, field_path: str) -> TemplateProblem | None:
        """Compile ``source``; return its syntax problem (for ``field_path``) or None."""
        try:
            self._template(source)
        except TemplateFailure as exc:
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
                cached = TemplateFailure(file, line, f"template syntax error: {exc.message}")
            except BoundExceeded as exc:
                cached = TemplateFailure(
                    source.name, 1 + source.line_offset, f"template stopped: {exc}"
                )
            except (RecursionError, SyntaxError, MemoryError) as exc:
                # Nesting deeper than Jinja's parser or Python's compiler can take.
                cached = TemplateFailure(source.name, 1 + source.line_offset, _compile_message(exc))
            except Exception as exc:  # e.g. the sandbox refusing a constant Jinja folds
                cached = TemplateFailure(source.name, 1 + source.line_offset, _runtime_message(exc))
            self._compiled[source.key] = cached
        if isinstance(cached, TemplateFailure):
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
            text = self.render_text(entry, root_password)
            data = classify(entry.template, text, self.max_bytes)
            if data.kind == "cloud-config":
                parse_cloud_config(entry.template, text)
        except TemplateFailure as exc:
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

    def render_text(self, entry: VpsEntry, password: Secret) -> str:
        """Render ``entry``'s template to text, unchecked (it holds the password: never show
        it); raise ``TemplateFailure`` (password already scrubbed from its message)."""
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
            "vars": self._vars.thaw(entry.vars),
            "root_password": password.reveal(),
        }
        exhausted = self._exhausted.get(source.key)
        if exhausted is not None:
            raise exhausted
        try:
            return self._generate(source, template, context)
        except jinja2.TemplateSyntaxError as exc:  # in an included template
            file, line = self._where(source, exc.filename, exc.lineno)
            raise TemplateFailure(file, line, f"template syntax error: {exc.message}") from None
        except TemplateFailure:
            raise
        except Exception as exc:  # any failure inside a template becomes a problem
            file, line = self._runtime_where(source, exc)
            message = Redactor([password])(_runtime_message(exc))
            failure = TemplateFailure(file, line, message)
            if isinstance(exc, BoundExceeded | MemoryError | RecursionError):
                self._exhausted[source.key] = failure
            raise failure from None

    def _generate(
        self, source: TemplateSource, template: jinja2.Template, context: dict[str, Any]
    ) -> str:
        """Render within the sandbox's bounds, stopping once the output passes the limit."""
        self._env.budget = Budget()
        parts: list[str] = []
        size = 0
        # The address-space backstop (sandbox.memory_bound) is set once around a whole
        # fleet by check_templates, which renders every VPS before anything is sent.
        for chunk in template.generate(context):
            parts.append(chunk)
            size += len(chunk)
            # Well past the limit: stop (a little past it, ``classify`` says by how much).
            if size > 2 * self.max_bytes + 65536:
                failure = TemplateFailure(
                    source.name,
                    1 + source.line_offset,
                    f"rendered user data is far over the limit of {self.max_bytes} bytes "
                    "(rendering stopped; raise defaults.user_data_limit if the provider "
                    "accepts more)",
                )
                self._exhausted[source.key] = failure
                raise failure
        return "".join(parts)

    def _runtime_where(self, source: TemplateSource, exc: BaseException) -> tuple[str, int]:
        """Find the innermost template frame of a render error (Jinja rewrites tracebacks)."""
        own = source.key if source.path is None else str(source.path)
        found: tuple[str | None, int] = (None, 1)
        for frame, lineno in traceback.walk_tb(exc.__traceback__):
            name = frame.f_code.co_filename
            if name == own or name in self._display:
                found = (name, lineno)
        return self._where(source, found[0], found[1])


_READ_ONLY_DICT = f"{ReadOnlyDict.__module__}.{ReadOnlyDict.__name__} object"
_READ_ONLY_LIST = f"{ReadOnlyList.__module__}.{ReadOnlyList.__name__} object"


def _compile_message(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "template cannot be compiled: it needs more memory than a template may use"
    what = exc.msg if isinstance(exc, SyntaxError) else "maximum nesting depth exceeded"
    return (
        f"template cannot be compiled: {what}; expressions, blocks and filter chains are "
        "nested or chained too deeply"
    )


def _runtime_message(exc: BaseException) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        # vars are read-only dicts and lists in templates; name them as the user wrote them.
        message = str(exc.message).replace(_READ_ONLY_DICT, "dict object")
        return "undefined variable: " + message.replace(_READ_ONLY_LIST, "list object")
    if isinstance(exc, TemplateRefused):
        return exc.message or f"included template {exc.name!r} refused"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"included template not found: {exc.name}"
    if isinstance(exc, BoundExceeded):
        return f"template stopped: {exc}"
    if isinstance(exc, MemoryError):
        return "template stopped: it needed more memory than a render may use"
    if isinstance(exc, RecursionError):
        return "template stopped: macros, includes or expressions nested too deeply"
    if isinstance(exc, SyntaxError):  # an included template Python cannot compile
        return _compile_message(exc)
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"not allowed in the template sandbox: {exc}"
    return f"template failed: {type(exc).__name__}: {exc}"
