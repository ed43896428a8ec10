"""``cloud-init schema`` as a checker of rendered user data.

When Debian's ``cloud-init`` is installed, ``CloudInitSchema`` runs
``cloud-init schema --config-file FILE`` on documents (each in a private 0600 temporary file,
deleted right after), caches the answer by content hash, and reads the answer with
``parse_schema_output``, which keeps key paths and what the schema expected but drops the
offending values: they are user data and may hold a password.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from orchestrator.templates.defaults import DEFAULT_SCHEMA_DOCUMENTS
from orchestrator.yamldoc import YamlSyntaxError, load_yaml


@dataclass(frozen=True, slots=True)
class SchemaResult:
    """What ``cloud-init schema`` said: errors and deprecations as (key path, message)."""

    errors: tuple[tuple[str, str], ...] = ()
    deprecations: tuple[tuple[str, str], ...] = ()
    failure: str | None = None


_GENERIC_PATH = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
# The tail of a jsonschema message, after the offending value, which is not shown.
_TAILS = (
    " is not ",
    " is a required property",
    " is too ",
    " does not match ",
    " has non-unique elements",
    " should be ",
)


def _sanitize(message: str) -> str:
    """Keep what the schema expected; drop the offending value (it may be user data)."""
    if message.startswith("Additional properties are not allowed"):
        return message  # names keys of the document, not values
    cut = max(message.rfind(t) for t in _TAILS)
    if cut >= 0:
        return "value" + message[cut:]
    if message.startswith(("DEPRECATED", "Deprecated")):
        return message.split(".", 1)[0]
    return "rejected by the cloud-init schema"


def _entries(text: str, pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    matches = list(pattern.finditer(text))
    out: list[tuple[str, str]] = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        out.append((m.group(1), _sanitize(text[m.end() : end].strip())))
    return out


def parse_schema_output(output: str, roots: Collection[str] | None = None) -> SchemaResult:
    """Read what ``cloud-init schema --config-file`` prints (cloud-init 22.x and later).

    cloud-init joins its messages with ", ", and a message quotes the offending value, which
    may itself hold ", key: ". With ``roots`` (the document's top-level keys) only paths that
    start with one of them begin a new message, which keeps values from being split into
    fake entries. Messages are reduced to what the schema expected (``_sanitize``).
    """
    if roots:
        alternatives = "|".join(re.escape(r) for r in sorted(roots, key=len, reverse=True))
        path = rf"(?:{alternatives})(?:\.[A-Za-z0-9_\-]+)*"
    else:
        path = _GENERIC_PATH
    pattern = re.compile(rf"(?:^|, )({path}): ")
    errors: list[tuple[str, str]] = []
    deprecations: list[tuple[str, str]] = []
    for line in output.splitlines():
        for label, into in (
            ("Cloud config schema errors:", errors),
            ("Cloud config schema deprecations:", deprecations),
        ):
            at = line.find(label)
            if at >= 0:
                into.extend(_entries(line[at + len(label) :].strip(), pattern))
    return SchemaResult(tuple(errors), tuple(deprecations))


class CloudInitSchema:
    """Runs ``cloud-init schema --config-file`` on rendered documents, cached by content.

    Each document is written to a private temporary file (mode 0600) that is removed right
    after the check. Documents are checked in parallel, a few at a time. One run costs about
    0.2 s (cloud-init's start-up), so a fleet check looks at no more than ``max_documents``
    distinct documents (0: no limit); ``check_templates`` says how many it left out.
    """

    def __init__(
        self,
        executable: str,
        *,
        timeout: float = 120.0,
        workers: int = 0,
        max_documents: int = DEFAULT_SCHEMA_DOCUMENTS,
    ) -> None:
        self.executable = executable
        self.timeout = timeout
        self.workers = workers or max(2, os.cpu_count() or 1)
        self.max_documents = max_documents
        self._cache: dict[str, SchemaResult] = {}
        self.runs = 0

    @classmethod
    def find(cls, *, max_documents: int = DEFAULT_SCHEMA_DOCUMENTS) -> CloudInitSchema | None:
        """Return a checker when the ``cloud-init`` command is installed, else None."""
        exe = shutil.which("cloud-init")
        return None if exe is None else cls(exe, max_documents=max_documents)

    def check_many(self, texts: Sequence[str]) -> list[SchemaResult]:
        """Check every document; identical documents are checked once.

        Never raises for a failing ``cloud-init``: the result's ``failure`` says what happened.
        """
        keys = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
        todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in self._cache}
        if todo:
            with ThreadPoolExecutor(max_workers=self.workers) as pool:
                for key, result in zip(todo, pool.map(self._run, todo.values()), strict=True):
                    self._cache[key] = result
        return [self._cache[k] for k in keys]

    def _run(self, text: str) -> SchemaResult:
        self.runs += 1
        fd, name = tempfile.mkstemp(prefix="edis-fleet-", suffix=".yaml")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            try:
                proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                    [self.executable, "schema", "--config-file", name],
                    capture_output=True,
                    text=True,
                    timeout=self.timeout,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return SchemaResult(
                    failure=f"cloud-init schema could not run: {type(exc).__name__}"
                )
        finally:
            os.unlink(name)
        result = parse_schema_output(proc.stdout + "\n" + proc.stderr, _top_level_keys(text))
        if proc.returncode != 0 and not result.errors:
            return SchemaResult(
                result.errors,
                result.deprecations,
                failure=f"cloud-init schema exited with status {proc.returncode}",
            )
        return result


def _top_level_keys(text: str) -> list[str]:
    try:
        data = load_yaml(text)[0].data
    except YamlSyntaxError:
        return []
    return [str(k) for k in data] if isinstance(data, dict) else []
