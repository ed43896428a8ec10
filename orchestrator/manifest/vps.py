"""The ``vps`` list of a manifest: each entry validated, then merged with its group and the
defaults into a ``VpsEntry``.

Precedence is defaults < group < entry: single values come from the most specific level that
sets them, ``vars`` merge key by key, ``tags`` are the union, and ``cloud_init: null`` at a
more specific level switches off a template set below it. A level with problems of its own
(invalid defaults, an unknown group) does not cause follow-up "missing setting" problems in
every entry: the first mistake is reported once, where it is.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from orchestrator import fleet as f
from orchestrator.manifest.check import Reporter, Sources
from orchestrator.manifest.schema import DefaultsModel, GroupModel, SettingsModel, VpsModel
from orchestrator.suggest import Suggestions
from orchestrator.units import kind_of
from orchestrator.yamldoc import FieldPath


@dataclass(frozen=True, slots=True)
class Level:
    """One level of settings for a VPS: the model and where it sits in the file."""

    model: SettingsModel
    path: FieldPath


@dataclass
class Entries:
    """The outcome of the ``vps`` list.

    ``entries`` resolved fine (possibly naming broken sources, reported separately);
    ``invalid`` counts the entries that did not; ``renderable`` are the entries whose
    settings are complete enough to render their templates.
    """

    entries: list[f.VpsEntry]
    invalid: int
    renderable: list[f.VpsEntry]

    @property
    def total(self) -> int:
        """Every entry in the list, valid or not."""
        return len(self.entries) + self.invalid


class VpsResolver:
    """Validates and resolves the ``vps`` list against defaults and groups."""

    def __init__(
        self,
        reporter: Reporter,
        sources: Sources,
        *,
        defaults: DefaultsModel | None,
        groups: dict[str, GroupModel | None] | None,
        declared_tags: Sequence[str],
    ) -> None:
        self.reporter = reporter
        self.sources = sources
        self.defaults = defaults
        self.groups = groups
        self.declared = declared_tags
        self._declared_set = frozenset(declared_tags)  # membership for every entry's tags
        # id of a level's raw vars -> (the raw vars, kept alive; its frozen values)
        self._frozen: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
        # "did you mean" for unknown tags and groups, within a budget (suggest.Suggestions).
        self._hint = Suggestions()

    def run(self, raw: list[Any]) -> Entries:
        """Check every entry of ``raw`` (the YAML list); report every problem."""
        shared: list[tuple[SettingsModel | None, FieldPath]] = [(self.defaults, ("defaults",))]
        shared += [(group, ("groups", name)) for name, group in (self.groups or {}).items()]
        for level_model, level_path in shared:
            if level_model is not None:
                self._check_level(Level(level_model, level_path))
        seen_ids: dict[str, int] = {}
        seen_hosts: dict[str, int] = {}
        result = Entries([], 0, [])
        used_groups: set[str] = set()
        for i, item in enumerate(raw):
            path: FieldPath = ("vps", i)
            self._check_unique(item, i, seen_ids, seen_hosts)
            model: VpsModel | None = None
            if isinstance(item, dict):
                model = self.reporter.validate(VpsModel, item, path)
            else:
                self.reporter.problem(
                    path, f"expected a mapping with id and hostname, got {kind_of(item)}"
                )
            entry, complete = None, False
            if model is not None:
                used_groups.add(model.group or "")
                entry, complete = self._resolve(i, model)
            if entry is None:
                result.invalid += 1
                continue
            result.entries.append(entry)
            if complete:
                result.renderable.append(entry)
        for name in self.groups or {}:
            if name not in used_groups:
                self.reporter.warn(("groups", name), f"group {name!r} is not used by any VPS")
        return result

    def _check_unique(
        self, item: Any, i: int, seen_ids: dict[str, int], seen_hosts: dict[str, int]
    ) -> None:
        """Report a repeated id or host name, even in entries that are otherwise invalid."""
        if not isinstance(item, dict):
            return
        kvm_id, host = item.get("id"), item.get("hostname")
        if isinstance(kvm_id, str):
            first = seen_ids.setdefault(kvm_id, i)
            if first != i:
                line = self.reporter.position(("vps", first, "id")).line
                self.reporter.problem(
                    ("vps", i, "id"),
                    f"duplicate id {kvm_id} (already vps[{first}] on line {line}); "
                    "each VPS may appear once",
                )
        if isinstance(host, str):
            # Host names are case-insensitive.
            first = seen_hosts.setdefault(host.lower(), i)
            if first != i:
                line = self.reporter.position(("vps", first, "hostname")).line
                self.reporter.problem(
                    ("vps", i, "hostname"),
                    f"duplicate hostname {host} (already vps[{first}] on line {line})",
                )

    def _check_level(self, level: Level) -> None:
        """Check what one level names (tags, password source, template), used or not."""
        model = level.model
        if self.declared and model.tags:
            for j, tag in enumerate(model.tags):
                if tag not in self._declared_set:
                    hint = self._hint(tag, self.declared, "tag")
                    self.reporter.problem(
                        (*level.path, "tags", j),
                        f"tag {tag!r} is not declared in the top-level 'tags'{hint}",
                    )
        if model.root_password is not None:
            self.sources.root_password(model.root_password, (*level.path, "root_password"))
        if model.cloud_init is not None:
            self.sources.template(model.cloud_init, (*level.path, "cloud_init"))

    def _group_level(self, name: str, path: FieldPath) -> Level | None:
        """Return the group's level, or None (an unknown group is reported here)."""
        groups = self.groups
        group = None if groups is None else groups.get(name)
        if group is not None:
            return Level(group, ("groups", name))
        if groups is not None and name not in groups:
            hint = self._hint(name, groups, "group")
            known = f" (groups: {_first(groups)})" if groups and not hint else ""
            self.reporter.problem((*path, "group"), f"unknown group {name!r}{hint}{known}")
        return None

    def _resolve(self, i: int, model: VpsModel) -> tuple[f.VpsEntry | None, bool]:
        """Merge defaults < group < entry for one VPS; return (entry, settings complete)."""
        path: FieldPath = ("vps", i)
        # Incomplete: a level above has problems of its own, so settings may be missing
        # because of them; no "missing" problems and no rendering for this entry then.
        complete = True
        levels: list[Level] = []
        if self.defaults is not None:
            levels.append(Level(self.defaults, ("defaults",)))
        else:
            complete = False
        if model.group is not None:
            group = self._group_level(model.group, path)
            if group is None:
                complete = False
            else:
                levels.append(group)
        levels.append(Level(model, path))
        self._check_level(levels[-1])

        image, image_at = _pick(levels, "image")
        source, password_at = _pick(levels, "root_password")
        if image is None or source is None or password_at is None:
            if complete:
                self._report_missing(path, image is None)
            return None, False
        password = self.sources.root_password(source, (*password_at, "root_password"))
        template = self._template(levels)
        if template is not None and not f.takes_cloud_init(image):
            self.reporter.warn(
                (*path, "image") if image_at == path else path,
                f"image {image} does not take cloud-init user data (only cloudinit_* images "
                "do), so the template would not be used; set 'cloud_init: null' for this VPS",
            )
        vars_: dict[str, Any] = {}
        tags: set[str] = set()
        for level in levels:
            if level.model.vars:
                vars_.update(self._frozen_vars(level.model.vars))
            if level.model.tags:
                tags.update(level.model.tags)
        protected, _ = _pick(levels, "protected")
        entry = f.VpsEntry(
            id=model.id,
            hostname=model.hostname,
            image=image,
            template=template,
            vars=MappingProxyType(vars_),
            tags=frozenset(tags),
            group=model.group,
            protected=bool(protected),
            readiness=self._readiness(levels, image, path),
            root_password=password,
            index=i,
            where=f"{self.reporter.shown}:{self.reporter.position(path).line}",
        )
        return entry, complete

    def _frozen_vars(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Return one level's vars with each value frozen, once per level: the VPSes of a
        level share the frozen values, so a large ``vars`` costs its size once, not once per
        VPS."""
        known = self._frozen.get(id(raw))
        if known is None:
            known = self._frozen[id(raw)] = (raw, {k: f.freeze(v) for k, v in raw.items()})
        return known[1]

    def _report_missing(self, path: FieldPath, image: bool) -> None:
        if image:
            self.reporter.problem(path, "no image: set 'image' here, in its group or in defaults")
        else:
            self.reporter.problem(
                path,
                "no root password source: set root_password ({env: VAR}, {file: PATH} or "
                "{generate: FILE}) here, in its group or in defaults",
            )

    def _template(self, levels: Sequence[Level]) -> f.TemplateSource | None:
        for level in reversed(levels):
            # Set explicitly, even to null, at this level: that decides.
            if "cloud_init" in level.model.model_fields_set:
                source = level.model.cloud_init
                if source is None:
                    return None
                return self.sources.template(source, (*level.path, "cloud_init"))
        return None

    def _readiness(self, levels: Sequence[Level], image: str, path: FieldPath) -> f.Readiness:
        mode: f.ReadinessMode | None = None
        port: int | None = None
        deadline: float | None = None
        min_install: float | None = None
        poll_interval: float | None = None
        ssh = f.SshLogin()
        http: f.HttpCheck | None = None
        for level in levels:
            r = level.model.readiness
            if r is None:
                continue
            ssh = self._ssh_login(ssh, r.ssh)
            if r.http is not None:
                http = f.HttpCheck(r.http.url, r.http.expect, r.http.deadline or 300.0)
            mode = r.mode if r.mode is not None else mode
            port = r.port if r.port is not None else port
            deadline = r.deadline if r.deadline is not None else deadline
            min_install = r.min_install if r.min_install is not None else min_install
            poll_interval = r.poll_interval if r.poll_interval is not None else poll_interval
        windows = f.is_windows_image(image)
        if mode in (None, f.ReadinessMode.TCP) and port is None and windows:
            self.reporter.warn(
                path,
                f"image {image} is a Windows image, which does not answer on port 22: set "
                "readiness.port (3389 for RDP) or readiness.mode: api",
            )
        if deadline is None:
            deadline = f.default_ready_deadline(image)
        if min_install is not None and min_install >= deadline:
            self.reporter.problem(
                (*path, "readiness", "min_install"),
                f"min_install ({min_install:g}s) must be shorter than the deadline ({deadline:g}s)",
            )
        return f.Readiness(
            mode=mode or f.DEFAULT_READY_MODE,
            port=port or f.DEFAULT_READY_PORT,
            deadline_s=deadline,
            # The default never exceeds a short deadline set on purpose.
            min_install_s=min(f.DEFAULT_MIN_INSTALL_S, deadline)
            if min_install is None
            else min_install,
            poll_interval_s=f.DEFAULT_POLL_INTERVAL_S if poll_interval is None else poll_interval,
            ssh=ssh,
            http=http,
        )

    def _ssh_login(self, below: f.SshLogin, model: Any) -> f.SshLogin:
        """``readiness.ssh`` of one level over the levels below it (field by field)."""
        if model is None:
            return below
        identity = below.identity_file
        if model.identity is not None:
            file = model.identity.file
            identity = None if file is None else self.sources.base / file
        return f.SshLogin(
            user=model.user if model.user is not None else below.user,
            identity_file=identity,
            cloud_init_deadline_s=below.cloud_init_deadline_s
            if model.cloud_init_deadline is None
            else model.cloud_init_deadline,
        )


def _first(names: Collection[str], shown: int = 10) -> str:
    """Name the first few of ``names`` (a message lists ten, not ten thousand)."""
    more = f", and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(itertools.islice(names, shown)) + more


def _pick(levels: Sequence[Level], attr: str) -> tuple[Any, FieldPath | None]:
    """Return the value of ``attr`` from the most specific level that sets it, and where."""
    for level in reversed(levels):
        value = getattr(level.model, attr)
        if value is not None:
            return value, level.path
    return None, None
