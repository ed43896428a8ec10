"""The validated fleet: frozen types the manifest loader produces and later layers consume.

Nothing here reads YAML or renders templates. ``orchestrator.manifest`` builds a ``Fleet``
from a file; ``plan``, ``scheduler`` and the commands read it. The unit parsers (rates,
durations, sizes, counts or percentages) live here too, so that every layer reads ``"5/s"`` or
``"10%"`` the same way.

Root passwords are described by *sources* (``EnvPassword``, ``FilePassword``,
``GeneratedPassword``); ``PasswordBook`` turns a source into a ``Secret`` when one is needed.
"""

from __future__ import annotations

import enum
import math
import os
import re
import secrets
import stat
import string
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from orchestrator.secrets import Secret

KVM_ID_RE = re.compile(r"^kvm_[0-9]+_[0-9]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)

DEFAULT_SESSION_URL = "https://session.edisglobal.com"
DEFAULT_ALLOWED_API_HOSTS = ("*.edisglobal.com",)
DEFAULT_USER_DATA_LIMIT = 16 * 1024
LINUX_READY_DEADLINE_S = 20 * 60.0
WINDOWS_READY_DEADLINE_S = 40 * 60.0
DEFAULT_READY_PORT = 22
# A VPS that answers right after an accepted reinstall has not started installing yet.
DEFAULT_MIN_INSTALL_S = 60.0
DEFAULT_POLL_INTERVAL_S = 15.0
ReadinessMode = Literal["api", "tcp", "none"]
DEFAULT_READY_MODE: ReadinessMode = "tcp"


# --------------------------------------------------------------------------- units


@dataclass(frozen=True, slots=True)
class CountOrFraction:
    """Either an absolute count (``3``) or a fraction of some total (``"10%"`` is 0.1).

    Exactly one of ``count`` and ``fraction`` is set. ``resolve`` turns it into a count.
    """

    count: int | None = None
    fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.count is None) == (self.fraction is None):
            raise ValueError("CountOrFraction needs exactly one of count and fraction")

    @property
    def is_fraction(self) -> bool:
        """True for a percentage."""
        return self.fraction is not None

    def resolve(self, total: int, *, round_up: bool = True) -> int:
        """Return the count this amounts to for ``total`` items, capped at ``total``.

        Fractions round up by default (a ``"1%"`` canary of 50 VPSes is one VPS, not none);
        pass ``round_up=False`` for failure budgets, where rounding down is the safe side.
        """
        if self.count is not None:
            return min(self.count, total)
        assert self.fraction is not None
        # The epsilon keeps 0.1 * 30 == 3.0000000000000004 from rounding up to 4.
        exact = self.fraction * total
        value = math.ceil(exact - 1e-9) if round_up else math.floor(exact + 1e-9)
        return max(0, min(value, total))

    def __str__(self) -> str:
        if self.count is not None:
            return str(self.count)
        assert self.fraction is not None
        return f"{self.fraction * 100:g}%"


CountOrFractions = tuple[CountOrFraction, ...]

_PERCENT_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*$")


def parse_count_or_percent(value: object, *, minimum: int) -> CountOrFraction:
    """Read ``3`` or ``"10%"``; counts must be at least ``minimum``, percentages in 0..100
    (above 0 when ``minimum`` is above 0).

    Raises ``ValueError`` with a message that says what was expected.
    """
    expected = f"expected a count like {max(minimum, 1)} or a percentage like '10%'"
    if isinstance(value, bool):
        raise ValueError(f"got {kind_of(value)}, {expected}")
    if isinstance(value, int):
        if value < minimum:
            raise ValueError(f"{value} is below {minimum}; {expected}")
        return CountOrFraction(count=value)
    if isinstance(value, str):
        m = _PERCENT_RE.match(value)
        if m is None:
            if value.strip().isdigit():
                raise ValueError(f"{value!r} is quoted; write a bare number, or add '%'")
            raise ValueError(f"cannot read {value!r}; {expected}")
        pct = float(m.group(1))
        if pct > 100 or (minimum > 0 and pct == 0):
            bound = "above 0% and at most 100%" if minimum > 0 else "between 0% and 100%"
            raise ValueError(f"{value!r} is out of range; a percentage must be {bound}")
        return CountOrFraction(fraction=pct / 100.0)
    raise ValueError(f"got {kind_of(value)}, {expected}")


_RATE_RE = re.compile(
    r"^\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|sec|second|min|minute|h|hr|hour)s?\s*$", re.IGNORECASE
)
_PER = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0}
_PER |= {"h": 3600.0, "hr": 3600.0, "hour": 3600.0}


def parse_rate(value: object) -> float:
    """Read a request rate such as ``"5/s"`` or ``"300/min"``; return requests per second.

    Raises ``ValueError`` for anything else, including a bare number (the unit is required
    because ``5`` per second and ``5`` per minute differ by 60x).
    """
    expected = "expected a rate like '5/s' or '300/min'"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"got {kind_of(value)}, {expected}")
    if isinstance(value, int | float):
        raise ValueError(f"{value!r} has no unit; {expected}")
    m = _RATE_RE.match(value)
    if m is None:
        raise ValueError(f"cannot read rate {value!r}; {expected}")
    rate = float(m.group(1)) / _PER[m.group(2).lower()]
    if rate <= 0:
        raise ValueError(f"rate {value!r} must be above zero; {expected}")
    return rate


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(?:[0-9]+(?:\.[0-9]+)?\s*(?:ms|s|m|h|d)\s*)+$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Read a duration such as ``"30s"``, ``"5m"``, ``"1h30m"``; return seconds.

    A bare ``0`` is accepted (zero needs no unit); any other bare number is refused because
    ``30`` could mean seconds or minutes. Raises ``ValueError``.
    """
    expected = "expected a duration like '30s', '5m' or '1h30m'"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"got {kind_of(value)}, {expected}")
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f"{value!r} has no unit; {expected}")
    if _DURATION_RE.match(value) is None:
        raise ValueError(f"cannot read duration {value!r}; {expected}")
    return sum(float(n) * _SECONDS[u.lower()] for n, u in _DURATION_PART.findall(value))


_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*(b|k|kb|kib|m|mb|mib)?\s*$", re.IGNORECASE)
_BYTES = {"b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20}


def parse_size(value: object) -> int:
    """Read a size in bytes: ``16384``, ``"16KiB"``, ``"1MiB"`` (k and m are powers of 1024).

    Raises ``ValueError``.
    """
    expected = "expected a size like 16384 or '16KiB'"
    if isinstance(value, bool):
        raise ValueError(f"got {value!r}, {expected}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str) and (m := _SIZE_RE.match(value)) is not None:
        size = int(m.group(1)) * _BYTES[(m.group(2) or "b").lower()]
    else:
        raise ValueError(f"cannot read size {value!r}; {expected}")
    if size <= 0:
        raise ValueError(f"size must be above zero; {expected}")
    return size


def kind_of(value: object) -> str:
    """Name the YAML kind of a value for messages, without showing long content."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}" if len(value) <= 40 else "a long string"
    if isinstance(value, int | float):
        return repr(value)
    return f"a {type(value).__name__}"


def is_windows_image(image: str) -> bool:
    """Return whether an image is a Windows image (its name contains ``windows``)."""
    return "windows" in image.lower()


def takes_cloud_init(image: str) -> bool:
    """Return whether an image uses ``cloudinit_user_data`` (its name starts ``cloudinit_``)."""
    return image.startswith("cloudinit_")


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True, slots=True)
class EnvPassword:
    """A password read from the environment variable ``name``."""

    name: str

    def describe(self) -> str:
        """Say where the password comes from, without its value."""
        return f"env {self.name}"


@dataclass(frozen=True, slots=True)
class FilePassword:
    """A password read from a file (its first line); ``path`` is resolved, ``shown`` as written."""

    path: Path
    shown: str

    def describe(self) -> str:
        """Say where the password comes from, without its value."""
        return f"file {self.shown}"


@dataclass(frozen=True, slots=True)
class GeneratedPassword:
    """One fresh password per VPS, written to ``output`` (mode 0600) by the run, never printed."""

    output: Path
    shown: str

    def describe(self) -> str:
        """Say where the password comes from."""
        return f"generated, written to {self.shown}"


@dataclass(frozen=True, slots=True)
class LiteralValue:
    """A non-secret value written in the manifest (only the account e-mail may be one)."""

    value: str

    def describe(self) -> str:
        """Return the value itself: it is not a secret."""
        return self.value


PasswordSource = EnvPassword | FilePassword | GeneratedPassword
CredentialSource = EnvPassword | FilePassword | LiteralValue


def read_source(source: EnvPassword | FilePassword | LiteralValue, env: Mapping[str, str]) -> str:
    """Return the value behind a source.

    Raises ``KeyError`` (variable unset), ``OSError`` (file unreadable) or ``ValueError``
    (empty); none of those messages contain the value.
    """
    if isinstance(source, LiteralValue):
        return source.value
    if isinstance(source, EnvPassword):
        value = env[source.name]
    else:
        text = source.path.read_text(encoding="utf-8")
        value = text.splitlines()[0] if text else ""
    if not value:
        raise ValueError(f"{source.describe()} is empty")
    return value


_ALPHABET = string.ascii_letters + string.digits


def generate_password(length: int = 24) -> Secret:
    """Return a fresh random password (letters and digits, at least one of each class).

    Letters and digits only, so the password needs no quoting in YAML, shell or form bodies.
    """
    while True:
        value = "".join(secrets.choice(_ALPHABET) for _ in range(length))
        if (
            any(c.islower() for c in value)
            and any(c.isupper() for c in value)
            and any(c.isdigit() for c in value)
        ):
            return Secret(value)


class PasswordBook:
    """Hands out root passwords per VPS from their sources; generated ones are remembered.

    ``env`` is the process environment, injected by the command line.
    """

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env
        self._read: dict[PasswordSource, Secret] = {}
        self.generated: dict[str, Secret] = {}

    def root_password(self, entry: VpsEntry) -> Secret:
        """Return the root password for ``entry``; raises like ``read_source``."""
        source = entry.root_password
        if isinstance(source, GeneratedPassword):
            if entry.id not in self.generated:
                self.generated[entry.id] = generate_password()
            return self.generated[entry.id]
        if source not in self._read:
            self._read[source] = Secret(read_source(source, self._env))
        return self._read[source]


def write_generated_passwords(path: Path, passwords: Mapping[str, Secret]) -> None:
    """Append ``kvm_id<TAB>password`` lines to ``path``, creating it with mode 0600 (and
    missing directories with mode 0700).

    Raises ``PermissionError`` when an existing file is readable by group or others (the
    passwords would leak), or ``OSError`` from the file system.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        mode = os.fstat(fd).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(f"{path} is accessible by group or others; chmod 600 it first")
        data = "".join(f"{k}\t{v.reveal()}\n" for k, v in passwords.items())
        os.write(fd, data.encode("utf-8"))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the fleet


@dataclass(frozen=True, slots=True)
class TemplateSource:
    """A cloud-init template: a file next to the manifest, or text inline in it.

    ``name`` is how messages show it (the file path relative to the working directory, or
    the manifest file for inline text); ``line_offset`` is added to template line numbers to
    get file line numbers (non-zero for inline templates). ``key`` identifies the template
    (two VPSes naming the same file share one key).
    """

    kind: Literal["file", "inline"]
    text: str = field(repr=False)
    name: str
    path: Path | None = None
    line_offset: int = 0

    @property
    def key(self) -> str:
        """Identity of the template: its resolved path, or its place and text in the manifest."""
        if self.path is not None:
            return str(self.path)
        # str hashes are cached on the string, so this stays cheap per VPS.
        return f"{self.name}@{self.line_offset}#{hash(self.text) & 0xFFFFFFFFFFFF:x}"


@dataclass(frozen=True, slots=True)
class Readiness:
    """How to tell that a reinstalled VPS is back.

    ``mode``: ``api`` (power state through the API), ``tcp`` (a TCP port on the VPS's IP) or
    ``none`` (accepted is enough). ``deadline_s`` counts from the accepted reinstall; the VPS
    is not declared back before ``min_install_s``; probes run every ``poll_interval_s``.
    """

    mode: ReadinessMode
    port: int
    deadline_s: float
    min_install_s: float = DEFAULT_MIN_INSTALL_S
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S


class InDoubtPolicy(enum.Enum):
    """What to do with a reinstall that may or may not have been processed."""

    REPORT = "report"
    RESEND_AFTER_WINDOW = "resend-after-window"


@dataclass(frozen=True, slots=True)
class Rollout:
    """Rollout settings parsed into numbers.

    ``waves`` are cumulative (each says how much of the selected fleet is done after it; the
    last covers all). Budgets are failures tolerated before the run stops: ``wave_budget`` of
    one wave's size, ``run_budget`` of the selected fleet. ``vps_deadline_s`` caps one VPS's
    whole flow (None: no cap beyond readiness). ``in_doubt_window_s`` is how long after an
    in-doubt send a resend may happen (None: the VPS's readiness deadline).
    """

    concurrency: int = 10
    rate_per_s: float = 5.0
    waves: tuple[CountOrFraction, ...] = (CountOrFraction(count=1), CountOrFraction(fraction=1.0))
    soak_s: float = 0.0
    wave_budget: CountOrFraction = CountOrFraction(count=0)
    run_budget: CountOrFraction = CountOrFraction(count=0)
    vps_deadline_s: float | None = None
    in_doubt: InDoubtPolicy = InDoubtPolicy.REPORT
    in_doubt_window_s: float | None = None


@dataclass(frozen=True, slots=True)
class Account:
    """Where the account credentials come from, and where the API may be reached."""

    email: CredentialSource
    password: EnvPassword | FilePassword
    session_url: str = DEFAULT_SESSION_URL
    allowed_api_hosts: tuple[str, ...] = DEFAULT_ALLOWED_API_HOSTS
    ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class VpsEntry:
    """One VPS with every setting resolved (defaults < group < entry).

    ``vars`` is read-only (mappings are ``MappingProxyType``, lists are tuples); ``template``
    is None when the VPS gets no cloud-init user data. ``index`` is its position in the
    manifest's ``vps`` list and ``where`` its ``file:line`` for messages.
    """

    id: str
    hostname: str
    image: str
    template: TemplateSource | None
    vars: Mapping[str, Any]
    tags: frozenset[str]
    group: str | None
    protected: bool
    readiness: Readiness
    root_password: PasswordSource
    index: int
    where: str


@dataclass(frozen=True, slots=True)
class Fleet:
    """A validated fleet manifest.

    ``name`` is the manifest's file stem; ``vps`` keeps manifest order. ``warnings`` are
    problems that did not stop validation (``--strict`` turns some into errors).
    ``declared_tags`` is the manifest's ``tags`` section (empty when it has none).
    """

    name: str
    path: Path
    account: Account
    vps: tuple[VpsEntry, ...]
    rollout: Rollout
    groups: frozenset[str] = frozenset()
    declared_tags: frozenset[str] = frozenset()
    user_data_limit: int = DEFAULT_USER_DATA_LIMIT
    warnings: tuple[str, ...] = ()
    _by_id: Mapping[str, VpsEntry] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_id", MappingProxyType({v.id: v for v in self.vps}))

    def __len__(self) -> int:
        return len(self.vps)

    def __iter__(self) -> Iterator[VpsEntry]:
        return iter(self.vps)

    def get(self, kvm_id: str) -> VpsEntry | None:
        """Return the entry with that id, or None."""
        return self._by_id.get(kvm_id)

    @property
    def ids(self) -> Iterable[str]:
        """Every kvm id, in manifest order."""
        return self._by_id.keys()

    @property
    def tags(self) -> frozenset[str]:
        """Every tag used by some VPS, plus the declared ones."""
        used: set[str] = set(self.declared_tags)
        for v in self.vps:
            used |= v.tags
        return frozenset(used)


def freeze(value: Any) -> Any:
    """Return a read-only deep copy: dicts become ``MappingProxyType``, lists tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Return a plain mutable deep copy of a frozen value (dicts and lists), for templates."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value
