"""Fleet manifest (YAML) -> validated ``Fleet``, with every problem reported at once.

``load_fleet`` reads ``fleets/<name>.yaml``, checks it completely and returns a frozen
``orchestrator.fleet.Fleet``, or raises ``ManifestError`` whose ``problems`` lists every
mistake as ``file:line:col: field.path: what was wrong, what was expected``.
``check_manifest`` does the same but returns a ``ManifestReport`` (problems, warnings and the
fleet when there were no problems) instead of raising.

The work is split over a few modules: ``manifest_yaml`` (safe YAML with positions),
``manifest_schema`` (the shape, as pydantic models), ``manifest_messages`` (pydantic errors as
sentences), ``manifest_check`` (positioned reporting; files and variables the manifest names),
``manifest_vps`` (the VPS list and precedence), ``manifest_rollout`` (the rollout section and
its waves against the fleet size) and ``templates_check`` (rendering every VPS's user data and
checking it). This module reads the file, checks the other sections and assembles the fleet.

The process environment is an input (``env``): nothing here reads ``os.environ``. Every
variable the manifest names must be set; no value is ever shown.
"""

from __future__ import annotations

import gc
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator import fleet as f
from orchestrator.edis.hosts import session_url_problem
from orchestrator.edis.tls import tls_context
from orchestrator.errors import ManifestError
from orchestrator.localfiles import (
    MAX_CA_FILE_BYTES,
    MAX_MANIFEST_BYTES,
    LocalFileError,
    check_regular,
    read_text,
)
from orchestrator.manifest.check import Reporter, Sources
from orchestrator.manifest.messages import unknown_key_message
from orchestrator.manifest.rollout import check_waves, read_rollout
from orchestrator.manifest.schema import (
    TOP_LEVEL_KEYS,
    AccountModel,
    AccountPasswordSource,
    DefaultsModel,
    EmailSource,
    GroupModel,
    TagsModel,
)
from orchestrator.manifest.vps import Entries, VpsResolver
from orchestrator.secrets import Redactor, Secret, sources
from orchestrator.templates import CloudInitSchema, TemplateReport, Templates, check_templates
from orchestrator.units import kind_of
from orchestrator.yamldoc import FieldPath, YamlSyntaxError, format_path, load_yaml

SUPPORTED_VERSION = 1
# Stands in for a root password that could not be read (the missing variable or file is
# reported on its own), so that the templates can still be checked.
_PLACEHOLDER_PASSWORD = Secret("placeholder-Root-Password-0")
STRICT_SUFFIX = " [an error with --strict]"


@dataclass
class ManifestReport:
    """Everything ``check_manifest`` found. ``fleet`` is set only when ``problems`` is empty.

    ``redactor`` knows every secret value the check read (account and root passwords), so
    that callers can scrub anything they print.
    """

    fleet: f.Fleet | None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    templates: TemplateReport | None = None
    redactor: Redactor = field(default_factory=Redactor)

    @property
    def ok(self) -> bool:
        """True when the manifest has no problems."""
        return not self.problems


def load_fleet(
    path: Path | str,
    env: Mapping[str, str],
    *,
    strict: bool = False,
    render: bool = True,
    schema: CloudInitSchema | None = None,
) -> f.Fleet:
    """Read and validate a fleet manifest; return the ``Fleet``.

    ``env`` is the environment credentials are read from. ``strict`` turns warnings into
    problems. ``render`` renders every VPS's template and checks the documents; ``schema``
    also runs ``cloud-init schema`` on them. Raises ``ManifestError`` with every problem.
    """
    report = check_manifest(path, env, strict=strict, render=render, schema=schema)
    if report.fleet is None:
        raise ManifestError(report.problems)
    return report.fleet


def check_manifest(
    path: Path | str,
    env: Mapping[str, str],
    *,
    strict: bool = False,
    render: bool = True,
    schema: CloudInitSchema | None = None,
) -> ManifestReport:
    """Like ``load_fleet``, but return a ``ManifestReport`` instead of raising."""
    # Validation makes a few hundred thousand small objects that all stay alive until the
    # end; pausing the cyclic collector saves a third of the time for 10,000 VPSes.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _Checker(Path(path), env, strict=strict).run(render=render, schema=schema)
    finally:
        if collecting:
            gc.enable()


_Parts = tuple[f.Account, Entries, f.Rollout, tuple[str, ...], tuple[str, ...], int]


class _Checker:
    """One validation pass over one manifest file."""

    def __init__(self, path: Path, env: Mapping[str, str], *, strict: bool) -> None:
        self.path = path
        self.env = env
        self.strict = strict
        self.report = Reporter(str(path))
        self.sources = Sources(self.report, path.parent.resolve(), str(path.parent), env)
        self.templates: TemplateReport | None = None
        self.extra_problems: list[str] = []

    def run(self, *, render: bool, schema: CloudInitSchema | None) -> ManifestReport:
        """Check the file; return the report (with the fleet when nothing is wrong)."""
        shown = self.report.shown
        try:
            text = read_text(self.path, max_bytes=MAX_MANIFEST_BYTES)
        except LocalFileError as exc:
            why = str(exc).removeprefix("cannot be read: ")
            return ManifestReport(None, [f"{shown}: cannot read the manifest: {why}"])
        try:
            doc, yaml_problems = load_yaml(text)
        except YamlSyntaxError as exc:
            p = exc.problem
            return ManifestReport(None, [self.report.line(p.position, (), p.message)])
        self.report.doc = doc
        for yp in yaml_problems:
            self.report.problems.append((yp.position, self.report.line(*_parts(yp))))
        parts = self._check(doc.data, render=render, schema=schema)
        problems, warnings = self.report.sorted()
        problems += self.extra_problems
        if self.templates is not None:
            problems += [str(p) for p in self.templates.problems]
            warnings += self.templates.warnings
        if self.strict and warnings:
            problems += [w + STRICT_SUFFIX for w in warnings]
            warnings = []
        redactor = self.sources.redactor
        if problems or parts is None:
            problems = problems or ["invalid manifest"]
            return ManifestReport(None, problems, warnings, self.templates, redactor)
        account, entries, rollout, groups, declared, limit = parts
        fleet = f.Fleet(
            name=self.path.stem,
            path=self.path,
            account=account,
            vps=tuple(entries.entries),
            rollout=rollout,
            groups=frozenset(groups),
            declared_tags=frozenset(declared),
            user_data_limit=limit,
            warnings=tuple(warnings),
        )
        return ManifestReport(fleet, [], warnings, self.templates, redactor)

    def _check(self, data: Any, *, render: bool, schema: CloudInitSchema | None) -> _Parts | None:
        """Check every section; return the pieces of the fleet, or None when one is unusable."""
        if not isinstance(data, dict):
            what = "empty" if data is None else "not a mapping"
            self.report.problem(
                (), f"the manifest is {what}; expected a mapping with version, account and vps"
            )
            return None
        for key in data:
            if key not in TOP_LEVEL_KEYS:
                message = unknown_key_message(str(key), TOP_LEVEL_KEYS)
                self.report.problem((str(key),), message, key=True)
        self._version(data)
        account = self._account(data)
        defaults = self._defaults(data)
        groups = self._groups(data)
        declared = self._declared_tags(data)
        rollout = read_rollout(self.report, data)
        raw = self._vps_list(data)
        if raw is None:
            return None
        resolver = VpsResolver(
            self.report, self.sources, defaults=defaults, groups=groups, declared_tags=declared
        )
        entries = resolver.run(raw)
        if isinstance(rollout, tuple):
            check_waves(self.report, rollout, entries.total)
        elif rollout is not None:
            check_waves(self.report, rollout.waves, entries.total)
        limit = f.DEFAULT_USER_DATA_LIMIT
        if defaults is not None and defaults.user_data_limit is not None:
            limit = defaults.user_data_limit
        if render:
            self._render(entries.renderable, limit, schema)
        if account is None or not isinstance(rollout, f.Rollout) or groups is None:
            return None
        return account, entries, rollout, tuple(groups), declared, limit

    # ---------------------------------------------------------------- sections

    def _version(self, data: dict[Any, Any]) -> None:
        if "version" not in data:
            self.report.problem(
                (), f"'version' is missing; start the file with 'version: {SUPPORTED_VERSION}'"
            )
        elif data["version"] != SUPPORTED_VERSION or isinstance(data["version"], bool):
            self.report.problem(
                ("version",),
                f"unsupported version {data['version']!r}; this edis-fleet reads "
                f"version {SUPPORTED_VERSION}",
            )

    def _account(self, data: dict[Any, Any]) -> f.Account | None:
        if "account" not in data:
            self.report.problem((), "'account' is missing; say where the credentials come from")
            return None
        base: FieldPath = ("account",)
        raw = data["account"]
        before = len(self.report.problem_paths)
        model = self.report.validate(AccountModel, raw, base)
        if model is None:
            if isinstance(raw, dict):
                self._account_sources(raw, before)
            return None
        email = self.sources.credential(model.email, (*base, "email"))
        password = self.sources.credential(model.password, (*base, "password"))
        assert not isinstance(password, sources.LiteralValue)
        self._session_url(model.session_url, (*base, "session_url"))
        for i, pattern in enumerate(model.allowed_api_hosts):
            if "/" in pattern and not ipaddress.ip_network(pattern, strict=False).is_loopback:
                self.report.warn(
                    (*base, "allowed_api_hosts", i),
                    f"{pattern} is not a loopback network; networks are meant for the "
                    "simulator on 127.0.0.0/8",
                )
        ca_file = None
        if model.ca_file is not None:
            ca_file = self.sources.base / model.ca_file
            shown = self.sources.shown_path(model.ca_file)
            try:
                check_regular(ca_file, max_bytes=MAX_CA_FILE_BYTES)
            except LocalFileError as exc:
                self.report.problem((*base, "ca_file"), f"CA file {shown} {exc}")
            else:
                # The same check the client makes before its first connection, so a file that
                # is no CA bundle is a manifest problem here and not a surprise in plan/apply.
                try:
                    tls_context(str(ca_file))
                except ManifestError:
                    self.report.problem(
                        (*base, "ca_file"),
                        f"CA file {shown} holds no usable certificate (expected PEM certificates)",
                    )
        hosts = tuple(dict.fromkeys((*f.DEFAULT_ALLOWED_API_HOSTS, *model.allowed_api_hosts)))
        return f.Account(
            email=email,
            password=password,
            session_url=model.session_url,
            allowed_api_hosts=hosts,
            ca_file=ca_file,
        )

    def _account_sources(self, raw: dict[Any, Any], since: int) -> None:
        """With other account fields wrong, still check the credential sources that are fine."""
        for key, model in (("email", EmailSource), ("password", AccountPasswordSource)):
            path: FieldPath = ("account", key)
            if key not in raw or self.report.problems_under(path, since):
                continue
            try:
                source = model.model_validate(raw[key])
            except ValidationError:  # pragma: no cover - reported with the section
                continue
            self.sources.credential(source, path)

    def _session_url(self, url: str, path: FieldPath) -> None:
        # The client refuses by the same rule (edis.hosts); here it gets the field's line.
        problem = session_url_problem(url)
        if problem is not None:
            self.report.problem(path, problem)

    def _defaults(self, data: dict[Any, Any]) -> DefaultsModel | None:
        raw = data.get("defaults")
        if raw is None:
            return DefaultsModel()
        return self.report.validate(DefaultsModel, raw, ("defaults",))

    def _groups(self, data: dict[Any, Any]) -> dict[str, GroupModel | None] | None:
        raw = data.get("groups")
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.report.problem(
                ("groups",), f"expected a mapping of group name to settings, got {kind_of(raw)}"
            )
            return None
        groups: dict[str, GroupModel | None] = {}
        for name, body in raw.items():
            path: FieldPath = ("groups", str(name))
            if not isinstance(name, str):
                self.report.problem(path, "group names must be text", key=True)
                continue
            groups[name] = self.report.validate(GroupModel, {} if body is None else body, path)
        return groups

    def _declared_tags(self, data: dict[Any, Any]) -> tuple[str, ...]:
        if data.get("tags") is None:
            return ()
        model = self.report.validate(TagsModel, {"tags": data["tags"]}, ())
        return () if model is None else model.tags

    def _vps_list(self, data: dict[Any, Any]) -> list[Any] | None:
        raw = data.get("vps")
        if raw is None:
            self.report.problem((), "'vps' is missing; list the VPSes of this fleet under 'vps'")
        elif not isinstance(raw, list):
            self.report.problem(("vps",), f"expected a list of VPS entries, got {kind_of(raw)}")
        elif not raw:
            self.report.problem(("vps",), "the list is empty; a fleet needs at least one VPS")
        else:
            return raw
        return None

    # ---------------------------------------------------------------- templates

    def _render(
        self, entries: Sequence[f.VpsEntry], limit: int, schema: CloudInitSchema | None
    ) -> None:
        """Render every complete entry's template; compile the templates no VPS rendered."""
        book = sources.PasswordBook(self.env)
        added: set[Secret] = set()
        redactor = self.sources.redactor

        def password_for(entry: f.VpsEntry) -> Secret:
            try:
                secret = book.root_password(entry)
            except (KeyError, OSError, ValueError):
                return _PLACEHOLDER_PASSWORD
            generated = isinstance(entry.root_password, sources.GeneratedPassword)
            if secret not in added and not generated:
                added.add(secret)
                redactor.add(secret)
            return secret

        templates = Templates(
            self.sources.base, display_dir=self.sources.display_dir, max_bytes=limit
        )
        self.templates = check_templates(entries, templates, password_for, schema=schema)
        # A template no complete VPS uses still gets its syntax checked.
        used = {e.template.key for e in entries if e.template is not None}
        for key, (source, path) in self.sources.named_templates.items():
            if key not in used:
                problem = templates.syntax_problem(source, format_path(path))
                if problem is not None:
                    self.extra_problems.append(str(problem))


def _parts(problem: Any) -> tuple[Any, FieldPath, str]:
    return problem.position, problem.path, problem.message
