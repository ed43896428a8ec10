"""The validated fleet: frozen types the manifest loader produces and later layers consume.

Nothing here reads YAML or renders templates. ``orchestrator.manifest.loader`` builds a ``Fleet``
from a file; ``plan``, ``scheduler`` and the commands read it. The unit parsers (rates,
durations, sizes, counts or percentages) and ``CountOrFraction`` are in ``orchestrator.units``.

Root passwords and account credentials are described by *sources*, defined with the code that
reads them in ``orchestrator.secrets``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from orchestrator.secrets import (
    CredentialSource,
    EnvPassword,
    FilePassword,
    PasswordSource,
)
from orchestrator.units import CountOrFraction

# Anchored with \A and \Z (``$`` also matches before a trailing newline) and ASCII-only, so
# they hold with ``match`` as well as ``fullmatch``. Each number of an id has 1 to 18 digits.
KVM_ID_RE = re.compile(r"\Akvm_[0-9]{1,18}_[0-9]{1,18}\Z", re.ASCII)
ENV_NAME_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,254}\Z", re.ASCII)
# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
HOSTNAME_RE = re.compile(
    r"\A(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\Z",
    re.ASCII | re.DOTALL,
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


class ReadinessMode(enum.StrEnum):
    """How to tell that a reinstalled VPS is back (``orchestrator.run.readiness`` waits).

    ``API``: the power state through the API; ``TCP``: a TCP port on the VPS's IP answers
    again; ``SSH``: the VPS's SSH server presents this run's host key, then cloud-init reports
    done; ``NONE``: accepted is enough. The values are the manifest's words.
    """

    API = "api"
    TCP = "tcp"
    NONE = "none"
    # Proof of reinstall over SSH (orchestrator/run/proof.py): this run's host key, then
    # cloud-init's own status.
    SSH = "ssh"


DEFAULT_READY_MODE = ReadinessMode.TCP


# --------------------------------------------------------------------------- images


def is_windows_image(image: str) -> bool:
    """Return whether an image is a Windows image (its name contains ``windows``)."""
    return "windows" in image.lower()


def default_ready_deadline(image: str) -> float:
    """Return the default readiness deadline in seconds: 40 min for Windows images, else 20."""
    return WINDOWS_READY_DEADLINE_S if is_windows_image(image) else LINUX_READY_DEADLINE_S


def takes_cloud_init(image: str) -> bool:
    """Return whether an image uses ``cloudinit_user_data`` (its name starts ``cloudinit_``)."""
    return image.startswith("cloudinit_")


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


DEFAULT_CLOUD_INIT_DEADLINE_S = 15 * 60.0


@dataclass(frozen=True, slots=True)
class SshLogin:
    """Readiness mode ``ssh``'s login for the cloud-init stage: ``user``, the operator's
    private key file ``identity_file`` (None: the SSH agent), and the stage's deadline
    ``cloud_init_deadline_s`` (counted from the host-key proof)."""

    user: str | None = None
    identity_file: Path | None = None
    cloud_init_deadline_s: float = DEFAULT_CLOUD_INIT_DEADLINE_S


@dataclass(frozen=True, slots=True)
class HttpCheck:
    """``readiness.http``: after cloud-init is done, ``GET url`` (``{{ ip }}``: the VPS's
    address) must answer ``expect`` within ``deadline_s``."""

    url: str
    expect: int = 200
    deadline_s: float = 300.0


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
    ssh: SshLogin = SshLogin()
    http: HttpCheck | None = None


class InDoubtPolicy(enum.StrEnum):
    """What to do with a reinstall that may or may not have been processed.

    The values are the manifest's words, and what plans and the journal store.
    """

    REPORT = "report"
    RESEND_AFTER_WINDOW = "resend-after-window"
    # Readiness mode ssh: look at the VPS for the install window and decide by its host key
    # (orchestrator/run/reconcile.py); the default where that proof is available.
    RECONCILE = "reconcile"


@dataclass(frozen=True, slots=True)
class Rollout:
    """Rollout settings parsed into numbers.

    ``waves`` are cumulative (each says how much of the selected fleet is done after it; the
    last covers all). Budgets are failures tolerated before the run stops: ``wave_budget`` of
    one wave's size, ``run_budget`` of the selected fleet. ``vps_deadline_s`` caps one VPS's
    whole flow (None: no cap beyond readiness). ``in_doubt_window_s`` is how long after an
    in-doubt send a resend may happen (None: the VPS's readiness deadline).
    ``rto_s`` is the recovery time objective (first send to last ready), checked and
    reported at the end of a run; it changes nothing in how the run goes (None: no target).
    """

    concurrency: int = 10
    rate_per_s: float = 5.0
    waves: tuple[CountOrFraction, ...] = (CountOrFraction(count=1), CountOrFraction(fraction=1.0))
    soak_s: float = 0.0
    # CountOrFraction is a frozen dataclass (ruff cannot see that across modules).
    wave_budget: CountOrFraction = CountOrFraction(count=0)  # noqa: RUF009
    run_budget: CountOrFraction = CountOrFraction(count=0)  # noqa: RUF009
    vps_deadline_s: float | None = None
    in_doubt: InDoubtPolicy = InDoubtPolicy.REPORT
    in_doubt_window_s: float | None = None
    rto_s: float | None = None
    # rollout.in_doubt was not written: VPSes whose reinstall can be proven reconcile.
    in_doubt_default: bool = True


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
