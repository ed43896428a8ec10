"""One rendered user-data document: what it may be, and the problems found in it.

What a rendered document may be:

- ``#cloud-config`` on its first line, then YAML whose top level is a mapping: checked as
  YAML (duplicate keys included) by ``parse_cloud_config``;
- ``#!`` on its first line: a script, sent as is (cloud-init runs it once); only its size
  is checked;
- anything else is refused: MIME multipart, ``#include``, ``#cloud-boothook``, ``## template:
  jinja`` and friends, because the API takes one document and edis-fleet can check only
  the two kinds above.

Every document must stay within the size limit (16 KiB unless the manifest says otherwise);
``classify`` checks size and first line. Problems are raised as ``TemplateFailure``
(positioned in the template, not yet tied to a VPS) and reported as ``TemplateProblem``. No
message holds rendered content: only positions, key paths and the YAML parser's own text.
Rendering is in ``templates``; ``cloud-init schema`` in ``templates_schema``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Literal

from orchestrator.fleet import TemplateSource
from orchestrator.yamldoc import YamlSyntaxError, format_path, load_yaml

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


class TemplateFailure(Exception):
    """One problem found while rendering or checking, before it gets a VPS.

    Raised by ``classify``, ``parse_cloud_config`` and ``Templates.render_text``; callers turn
    it into a ``TemplateProblem``.
    """

    def __init__(self, file: str, line: int, message: str, column: int = 1) -> None:
        super().__init__(message)
        self.file, self.line, self.column, self.message = file, line, column, message


def classify(source: TemplateSource, text: str, max_bytes: int) -> UserData:
    """Check size and header of a document rendered from ``source``; raise
    ``TemplateFailure`` if refused."""
    data = text.encode("utf-8")
    size = len(data)
    if size > max_bytes:
        raise TemplateFailure(
            source.name,
            1 + source.line_offset,
            f"rendered user data is {size} bytes, over the limit of {max_bytes} "
            "(raise defaults.user_data_limit if the provider accepts more)",
        )
    first = text.split("\n", 1)[0].rstrip("\r")
    if first.startswith(SCRIPT):
        kind: Literal["cloud-config", "script"] = "script"
    elif first.rstrip() == CLOUD_CONFIG:
        kind = "cloud-config"
    else:
        raise TemplateFailure(source.name, 1 + source.line_offset, _header_problem(first))
    return UserData(text, kind, size, hashlib.sha256(data).hexdigest())


def parse_cloud_config(source: TemplateSource, text: str) -> None:
    """Check a cloud-config document is YAML with a mapping on top; raise
    ``TemplateFailure``."""
    try:
        doc, problems = load_yaml(text)
    except YamlSyntaxError as exc:
        p = exc.problem
        raise TemplateFailure(
            source.name,
            p.position.line + source.line_offset,
            f"rendered document is not valid YAML at its line {p.position.line}, column "
            f"{p.position.column}: {p.message.removeprefix('YAML syntax error: ')}",
        ) from None
    if problems:
        p = problems[0]
        where = f" at {format_path(p.path)}" if p.path else ""
        raise TemplateFailure(
            source.name,
            p.position.line + source.line_offset,
            f"rendered document, line {p.position.line}{where}: {p.message}",
        )
    if doc.data is not None and not isinstance(doc.data, dict):
        raise TemplateFailure(
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
