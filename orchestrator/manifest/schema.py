"""The manifest's shape as pydantic models.

These models check one section (or one ``vps`` entry) at a time, so that a mistake in one
place does not hide the others. They only check shape and single values; checks across the
file (duplicates, groups, waves against the fleet size, files and variables that must exist)
are in ``orchestrator.manifest.loader``. Turning pydantic's errors into plain sentences is
``manifest_messages``'s job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from orchestrator import fleet, units
from orchestrator.edis.hosts import host_pattern_problem
from orchestrator.units import CountOrFraction

T = TypeVar("T")

# An enum field that takes the enum's values as written in YAML (strict mode alone would take
# only enum members); a wrong word reads "expected 'a', 'b' or 'c'" (``manifest.messages``).
_Enum = Annotated[T, Field(strict=False)]

# Full-match, ASCII-only patterns (``$`` would let a trailing newline through).
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", re.ASCII)


def _custom(parse: Callable[[Any], T]) -> Callable[[Any], T]:
    """Wrap a parser so its ``ValueError`` becomes a pydantic error with just our message."""

    def run(value: Any) -> T:
        try:
            return parse(value)
        except ValueError as exc:
            raise PydanticCustomError("invalid", str(exc)) from None

    return run


def _kvm_id(value: str) -> str:
    if not fleet.KVM_ID_RE.fullmatch(value):
        raise ValueError(
            f"malformed id {units.shorten(value)}; expected kvm_<digits>_<digits> (1 to 18 "
            "digits each), like kvm_100001_200001"
        )
    return value


def _hostname(value: str) -> str:
    if not fleet.HOSTNAME_RE.fullmatch(value):
        raise ValueError(
            f"{units.shorten(value)} is not a valid host name; expected letters, digits and inner "
            "hyphens, in dot-separated labels of at most 63 characters"
        )
    return value


def _name(what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not _NAME_RE.fullmatch(value):
            raise ValueError(
                f"{what} {units.shorten(value)} may only hold letters, digits, '_', '.' and '-', "
                "and must start with a letter or digit"
            )
        return value

    return check


def _env_name(value: str) -> str:
    if not fleet.ENV_NAME_RE.fullmatch(value):
        raise ValueError(f"{units.shorten(value)} is not an environment variable name")
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _duration(*, minimum: float, maximum: float = units.MAX_DURATION_S) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        return units.parse_duration(value, minimum=minimum, maximum=maximum)

    return parse


def _wave(value: Any) -> CountOrFraction:
    return units.parse_count_or_percent(value, minimum=1)


def _budget(value: Any) -> CountOrFraction:
    return units.parse_count_or_percent(value, minimum=0)


def _host_pattern(value: str) -> str:
    # The client refuses by the same rule (edis.hosts); here it gets the field's line.
    problem = host_pattern_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _tags_section(value: Any) -> tuple[str, ...]:
    """Read the top-level ``tags``: a list of names, or a mapping of name to description."""
    if isinstance(value, Mapping):
        names = list(value)
        bad = [v for v in value.values() if v is not None and not isinstance(v, str)]
        if bad:
            raise ValueError("a tag's description must be text")
    elif isinstance(value, list):
        names = value
    else:
        raise ValueError(f"got {units.kind_of(value)}, expected a list of tag names")
    check = _name("tag")
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"tag names must be text, got {units.kind_of(name)}")
        check(name)
    return tuple(names)


KvmId = Annotated[str, AfterValidator(_custom(_kvm_id))]
Hostname = Annotated[str, AfterValidator(_custom(_hostname))]
TagName = Annotated[str, AfterValidator(_custom(_name("tag")))]
GroupName = Annotated[str, AfterValidator(_custom(_name("group")))]
EnvName = Annotated[str, AfterValidator(_custom(_env_name))]
NonEmpty = Annotated[str, AfterValidator(_custom(_non_empty))]
Duration = Annotated[float, PlainValidator(_custom(units.parse_duration))]
# A VPS deadline or poll interval of zero would mean "give up at once" or "poll without pause".
PositiveDuration = Annotated[float, PlainValidator(_custom(_duration(minimum=1.0)))]
PollInterval = Annotated[
    float, PlainValidator(_custom(_duration(minimum=0.1, maximum=units.ONE_HOUR_S)))
]
Rate = Annotated[float, PlainValidator(_custom(units.parse_rate))]
Size = Annotated[int, PlainValidator(_custom(units.parse_size))]
Wave = Annotated[CountOrFraction, PlainValidator(_custom(_wave))]
Budget = Annotated[CountOrFraction, PlainValidator(_custom(_budget))]
HostPattern = Annotated[str, AfterValidator(_custom(_host_pattern))]
TagsSection = Annotated[tuple[str, ...], PlainValidator(_custom(_tags_section))]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _exactly_one(model: BaseModel, keys: Sequence[str], hint: str) -> None:
    given = [k for k in keys if getattr(model, k) is not None]
    if len(given) != 1:
        raise PydanticCustomError("one_of", hint)


_PLAINTEXT = (
    "a password written in the manifest is refused (manifests end up in git and CI logs); "
    "read it from the environment with {{env: VARIABLE}} or from a file with {{file: PATH}}"
    "{extra}"
)


class EmailSource(_Model):
    """The account e-mail: written as is, or read from ``env`` or ``file``."""

    value: NonEmpty | None = None
    env: EnvName | None = None
    file: NonEmpty | None = None

    @model_validator(mode="before")
    @classmethod
    def _literal(cls, data: Any) -> Any:
        return {"value": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one(self) -> EmailSource:
        _exactly_one(self, ("value", "env", "file"), "give the e-mail, {env: VAR} or {file: PATH}")
        return self


class AccountPasswordSource(_Model):
    """The account password: from ``env`` or ``file``, never written in the manifest."""

    env: EnvName | None = None
    file: NonEmpty | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_plaintext(cls, data: Any) -> Any:
        if isinstance(data, str | int | float) and not isinstance(data, bool):
            raise PydanticCustomError("plaintext_password", _PLAINTEXT.format(extra=""))
        return data

    @model_validator(mode="after")
    def _one(self) -> AccountPasswordSource:
        _exactly_one(self, ("env", "file"), "give exactly one of {env: VAR} or {file: PATH}")
        return self


class RootPasswordSource(_Model):
    """A root password: ``env``, ``file``, or ``generate`` (path of the 0600 output file)."""

    env: EnvName | None = None
    file: NonEmpty | None = None
    generate: NonEmpty | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_plaintext(cls, data: Any) -> Any:
        if data == "generate":
            raise PydanticCustomError(
                "generate_needs_file",
                "say where the generated passwords are written: "
                "root_password: {generate: FILE} (created with mode 0600, never printed)",
            )
        if isinstance(data, str | int | float) and not isinstance(data, bool):
            raise PydanticCustomError(
                "plaintext_password",
                _PLAINTEXT.format(extra=", or let edis-fleet make one per VPS: {generate: FILE}"),
            )
        return data

    @model_validator(mode="after")
    def _one(self) -> RootPasswordSource:
        _exactly_one(
            self,
            ("env", "file", "generate"),
            "give exactly one of {env: VAR}, {file: PATH} or {generate: FILE}",
        )
        return self


class CloudInitSource(_Model):
    """A cloud-init template: ``file`` (relative to the manifest) or ``inline`` text.

    A plain string is a file path, unless it starts with ``#`` or spans several lines, in
    which case it is the template text itself.
    """

    file: NonEmpty | None = None
    inline: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"inline": data} if data.startswith("#") or "\n" in data else {"file": data}
        return data

    @model_validator(mode="after")
    def _one(self) -> CloudInitSource:
        _exactly_one(self, ("file", "inline"), "give exactly one of {file: PATH} or {inline: TEXT}")
        return self


class SshIdentityModel(_Model):
    """The operator's private key for the cloud-init stage: ``{file: PATH}`` (relative to the
    manifest), or ``agent`` (the SSH agent of ``SSH_AUTH_SOCK``)."""

    file: NonEmpty | None = None
    agent: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"agent": True} if data == "agent" else data

    @model_validator(mode="after")
    def _one(self) -> SshIdentityModel:
        _exactly_one(self, ("file", "agent"), "give exactly one of {file: PATH} or agent")
        return self


class SshReadinessModel(_Model):
    """``readiness.ssh``: who logs in to read cloud-init's status, with which key, and how
    long that stage may take (counted from the host-key proof)."""

    user: NonEmpty | None = None
    identity: SshIdentityModel | None = None
    cloud_init_deadline: Duration | None = None


class HttpReadinessModel(_Model):
    """``readiness.http``: a health check after cloud-init (readiness mode ssh)."""

    # "http://{{ ip }}:8080/healthz": {{ ip }} is replaced by the VPS's address.
    url: Annotated[str, Field(pattern=r"^http://[^\s].*$", max_length=2048)]
    expect: Annotated[int, Field(ge=100, le=599)] = 200
    deadline: Duration | None = None


class ReadinessModel(_Model):
    """How to tell a reinstalled VPS is back; every field falls through when not set."""

    mode: _Enum[fleet.ReadinessMode] | None = None
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    deadline: Duration | None = None
    min_install: Duration | None = None
    poll_interval: PollInterval | None = None
    ssh: SshReadinessModel | None = None
    http: HttpReadinessModel | None = None


class SettingsModel(_Model):
    """What defaults, a group and a VPS entry may each set."""

    image: NonEmpty | None = None
    cloud_init: CloudInitSource | None = None
    root_password: RootPasswordSource | None = None
    vars: dict[str, Any] | None = None
    tags: list[TagName] | None = None
    readiness: ReadinessModel | None = None
    protected: bool | None = None


class DefaultsModel(SettingsModel):
    """The ``defaults`` section: settings plus the user-data size limit."""

    user_data_limit: Size | None = None


class GroupModel(SettingsModel):
    """One named set of settings."""

    description: str | None = None


class VpsModel(SettingsModel):
    """One entry of the ``vps`` list."""

    id: KvmId
    hostname: Hostname
    group: GroupName | None = None


class BudgetModel(_Model):
    """Failures tolerated: per wave (of the wave's size) and for the run (of the fleet)."""

    wave: Budget = CountOrFraction(count=0)
    run: Budget = CountOrFraction(count=0)


class WavesModel(_Model):
    """Just the waves, to check them against the fleet when the rest of rollout is wrong."""

    waves: list[Wave]


class RolloutModel(_Model):
    """The ``rollout`` section."""

    concurrency: Annotated[int, Field(ge=1, le=10_000)] = 10
    rate: Rate = 5.0
    waves: list[Wave] = Field(
        default_factory=lambda: [CountOrFraction(count=1), CountOrFraction(fraction=1.0)]
    )
    soak: Duration = 0.0
    failure_budget: BudgetModel = BudgetModel()
    vps_deadline: PositiveDuration | None = None
    in_doubt: _Enum[fleet.InDoubtPolicy] | None = None
    in_doubt_window: Duration | None = None
    # The recovery time objective: first send -> last ready, checked at the end of a run.
    rto: PositiveDuration | None = None


class AccountModel(_Model):
    """The ``account`` section: where credentials come from and where the API is."""

    email: EmailSource
    password: AccountPasswordSource
    session_url: NonEmpty = fleet.DEFAULT_SESSION_URL
    allowed_api_hosts: list[HostPattern] = Field(default_factory=list)
    ca_file: NonEmpty | None = None


class GroupsModel(_Model):
    """Wrapper so that group names and bodies are checked in one go."""

    groups: dict[GroupName, GroupModel]


class TagsModel(_Model):
    """Wrapper for the top-level ``tags`` section."""

    tags: TagsSection


TOP_LEVEL_KEYS = ("version", "account", "defaults", "groups", "tags", "vps", "rollout")
