"""Helpers of the manifest loader: positioned problem reporting, and the files and
environment variables a manifest names (templates, passwords, output files).

``Reporter`` turns (field path, message) into ``file:line:col: field.path: message`` using the
positions ``manifest_yaml`` kept. ``Sources`` checks that what the manifest points at exists,
once per distinct source, and never looks at or shows a secret value except to register it
with the ``Redactor`` callers use to scrub their output.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from orchestrator import fleet as f
from orchestrator.localfiles import (
    MAX_CREDENTIAL_FILE_BYTES,
    MAX_TEMPLATE_BYTES,
    LocalFileError,
    check_regular,
    read_text,
    resolve_inside,
)
from orchestrator.manifest.messages import describe_error
from orchestrator.manifest.schema import (
    AccountPasswordSource,
    CloudInitSource,
    EmailSource,
    RootPasswordSource,
)
from orchestrator.secrets import Redactor, sources
from orchestrator.yamldoc import FieldPath, Position, YamlDocument, format_path

M = TypeVar("M", bound=BaseModel)


class Reporter:
    """Collects problems and warnings about one manifest, each with its position."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.doc: YamlDocument | None = None
        self.problems: list[tuple[Position, str]] = []
        self.warnings: list[tuple[Position, str]] = []
        # The field path of each problem, in the order recorded.
        self.problem_paths: list[FieldPath] = []

    def line(self, position: Position, path: FieldPath, message: str) -> str:
        """Format one problem line."""
        where = f"{self.shown}:{position.line}:{position.column}"
        return f"{where}: {format_path(path)}: {message}" if path else f"{where}: {message}"

    def position(self, path: FieldPath, *, key: bool = False) -> Position:
        """Return where ``path`` is in the file (its nearest existing ancestor if absent)."""
        return Position(1, 1) if self.doc is None else self.doc.position(path, key=key)

    def problem(self, path: FieldPath, message: str, *, key: bool = False) -> None:
        """Record a problem about the value (or, with ``key``, the key) at ``path``."""
        position = self.position(path, key=key)
        self.problems.append((position, self.line(position, path, message)))
        self.problem_paths.append(path)

    def problems_under(self, prefix: FieldPath, since: int = 0) -> bool:
        """Return whether a problem at or below ``prefix`` was recorded after ``since``."""
        n = len(prefix)
        return any(p[:n] == prefix for p in self.problem_paths[since:])

    def warn(self, path: FieldPath, message: str) -> None:
        """Record a warning about the value at ``path``."""
        position = self.position(path)
        self.warnings.append((position, self.line(position, path, message)))

    def validate(self, model: type[M], data: Any, path: FieldPath) -> M | None:
        """Validate ``data`` against ``model``; record each error at its position.

        Returns the model, or None when there were errors (all of them recorded).
        """
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                # pydantic marks a problem with a mapping key by a "[key]" entry in the loc.
                on_key = "[key]" in err["loc"]
                loc = tuple(p for p in err["loc"] if p != "[key]")
                message = describe_error(model, err)
                if on_key:
                    message = f"key {loc[-1]!r}: {message}"
                key = on_key or err["type"] == "extra_forbidden"
                self.problem((*path, *loc), message, key=key)
            return None

    def sorted(self) -> tuple[list[str], list[str]]:
        """Return (problems, warnings) as lines, in file order."""

        def order(item: tuple[Position, str]) -> tuple[int, int]:
            return item[0].line, item[0].column

        return (
            [text for _, text in sorted(self.problems, key=order)],
            [text for _, text in sorted(self.warnings, key=order)],
        )


class Sources:
    """Checks the templates, password sources and files a manifest names.

    ``base`` is the manifest's directory (relative paths start there), ``display_dir`` the
    same directory as the user wrote it. Each distinct source is checked once; the sources
    are returned even when broken (the problem is recorded), so that later checks go on.
    """

    def __init__(
        self, reporter: Reporter, base: Path, display_dir: str, env: Mapping[str, str]
    ) -> None:
        self.reporter = reporter
        self.base = base
        self.display_dir = display_dir
        self.env = env
        self.redactor = Redactor()
        self._files: dict[str, f.TemplateSource | None] = {}
        self._resolved: dict[str, str] = {}
        # Why a template file could not be used, by its key.
        self._unreadable: dict[str, str] = {}
        self._inline: dict[FieldPath, f.TemplateSource] = {}
        self._missing_reported: set[tuple[str, FieldPath]] = set()
        self._passwords: dict[tuple[str | None, ...], sources.PasswordSource] = {}
        # Every template source named anywhere, with where it was first named.
        self.named_templates: dict[str, tuple[f.TemplateSource, FieldPath]] = {}

    def shown_path(self, relative: str) -> str:
        """Return a manifest-relative path as the user would see it: control characters
        escaped (a path must not rewrite the terminal), cut short past 200 characters."""
        text = os.path.normpath(os.path.join(self.display_dir, relative))
        if not text.isprintable():
            text = text.encode("unicode_escape").decode("ascii")
        return text if len(text) <= 200 else text[:197] + "..."

    # ---------------------------------------------------------------- templates

    def template(self, source: CloudInitSource, path: FieldPath) -> f.TemplateSource | None:
        """Return the template named at ``path``; None (reported) when the file is missing."""
        result: f.TemplateSource | None
        if source.file is not None:
            resolved = self._resolved.get(source.file)
            if resolved is None:
                resolved = self._resolved[source.file] = self._resolve(source.file)
            if resolved not in self._files:
                self._files[resolved] = self._read(source.file, resolved)
            result = self._files[resolved]
            if result is None and (resolved, path) not in self._missing_reported:
                self._missing_reported.add((resolved, path))
                why = self._unreadable.get(resolved, "cannot be read")
                self.reporter.problem(path, f"template file {self.shown_path(source.file)} {why}")
        else:
            assert source.inline is not None
            result = self._inline.get(path)
            if result is None and len(source.inline) > MAX_TEMPLATE_BYTES:
                self.reporter.problem(
                    path, f"inline template is over the limit of {MAX_TEMPLATE_BYTES:,} characters"
                )
                return None
            if result is None:
                doc = self.reporter.doc
                at = (*path, "inline") if doc is not None and doc.has((*path, "inline")) else path
                line = doc.text_line(at) if doc is not None else None
                result = self._inline[path] = f.TemplateSource(
                    kind="inline",
                    text=source.inline,
                    name=self.reporter.shown,
                    path=None,
                    line_offset=(line or 1) - 1,
                )
        if result is not None:
            self.named_templates.setdefault(result.key, (result, path))
        return result

    def _resolve(self, written: str) -> str:
        """Return the key of a template file: its resolved path, or ``!written`` (with the
        reason kept) when it is outside the manifest's tree."""
        try:
            return str(resolve_inside(self.base, written))
        except LocalFileError as exc:
            key = "!" + written
            self._unreadable[key] = str(exc)
            return key

    def _read(self, written: str, resolved: str) -> f.TemplateSource | None:
        if resolved in self._unreadable:
            return None
        try:
            text = read_text(Path(resolved), max_bytes=MAX_TEMPLATE_BYTES)
        except LocalFileError as exc:
            self._unreadable[resolved] = str(exc)
            return None
        return f.TemplateSource(
            kind="file", text=text, name=self.shown_path(written), path=Path(resolved)
        )

    # ---------------------------------------------------------------- passwords

    def credential(
        self, model: EmailSource | AccountPasswordSource, path: FieldPath
    ) -> sources.CredentialSource:
        """Return the source of an account credential; report it if it names nothing."""
        if isinstance(model, EmailSource) and model.value is not None:
            return sources.LiteralValue(model.value)
        if model.env is not None:
            secret = isinstance(model, AccountPasswordSource)
            self.check_env(model.env, (*path, "env"), secret=secret)
            return sources.EnvPassword(model.env)
        assert model.file is not None
        source = sources.FilePassword(self.base / model.file, self.shown_path(model.file))
        self.check_file(source, (*path, "file"))
        return source

    def root_password(self, model: RootPasswordSource, path: FieldPath) -> sources.PasswordSource:
        """Return a root password source; each distinct source is checked (and reported) once."""
        key = (model.env, model.file, model.generate)
        known = self._passwords.get(key)
        if known is not None:
            return known
        result: sources.PasswordSource
        if model.env is not None:
            self.check_env(model.env, (*path, "env"))
            result = sources.EnvPassword(model.env)
        elif model.file is not None:
            result = sources.FilePassword(self.base / model.file, self.shown_path(model.file))
            self.check_file(result, (*path, "file"))
        else:
            assert model.generate is not None
            result = sources.GeneratedPassword(
                self.base / model.generate, self.shown_path(model.generate)
            )
            self.check_output(result, (*path, "generate"))
        self._passwords[key] = result
        return result

    def check_env(self, name: str, path: FieldPath, *, secret: bool = True) -> bool:
        """Report an unset or empty variable (by name only); register its value as secret."""
        value = self.env.get(name)
        if value is None:
            self.reporter.problem(path, f"environment variable {name} is not set")
            return False
        if not value:
            self.reporter.problem(path, f"environment variable {name} is set but empty")
            return False
        if len(value) > sources.MAX_SECRET_CHARS:
            self.reporter.problem(
                path,
                f"environment variable {name} holds {len(value):,} characters; at most "
                f"{sources.MAX_SECRET_CHARS} are accepted",
            )
            return False
        if secret:
            self.redactor.add(value)
        return True

    def check_file(self, source: sources.FilePassword, path: FieldPath) -> bool:
        """Report a missing, empty, oversized or non-regular credential file (never waiting on
        a FIFO); warn if others can read it."""
        try:
            st = check_regular(source.path, max_bytes=MAX_CREDENTIAL_FILE_BYTES)
        except LocalFileError as exc:
            self.reporter.problem(path, f"file {source.shown} {exc}")
            return False
        if st.st_size == 0:
            self.reporter.problem(path, f"file {source.shown} is empty")
            return False
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            self.reporter.warn(
                path, f"file {source.shown} is readable by others (mode {mode:04o}); chmod 600 it"
            )
        return True

    def check_output(self, source: sources.GeneratedPassword, path: FieldPath) -> bool:
        """Check the generated-passwords file could be written safely (nothing is written):
        the rules of ``sources.write_generated_passwords`` (no symbolic link, owned by the
        current user, private; a directory others cannot write)."""
        problem = sources.generated_output_problem(source.output, source.shown)
        if problem is not None:
            self.reporter.problem(path, problem)
            return False
        return True
