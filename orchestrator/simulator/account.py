"""The simulated account: generated from a seed, or read from a YAML file.

Generated accounts are deterministic: the i-th VPS (1-based) is ``kvm_{100000+i}_{200000+i}``
with hostname ``vps-{i:03d}``, primary IP ``127.0.{2 + (i-1)//250}.{(i-1)%250 + 1}``, the default
image list (``DEFAULT_IMAGES``), current image ``cloudinit_debian-bookworm``, running and not
suspended. The seed only picks the hardware plan and location of each VPS.

YAML account format (every key but ``vps`` and ``kvm_id`` is optional)::

    email: operator@example.com        # overrides SimConfig.email
    images: [cloudinit_debian-bookworm, windows-server-2022]   # default list for every VPS
    vps:
      - kvm_id: kvm_123456_789012      # kvm_<digits>_<digits>, unique
        hostname: web-1                # default vps-NNN (N = position)
        description: web frontend      # default: the hostname
        ip: 127.0.2.1                  # default: by position, as above
        images: [...]                  # default: the top-level list or DEFAULT_IMAGES
        image: cloudinit_debian-bookworm   # current image, must be one of images
        suspended: false
        state: running                 # or failed
        install_outcome: ok            # ok | fail | hang | noop: how its reinstalls end
        lps: "01"
        lps_ispremium: false
        hw: {ram: "2048", disk: "40960", cpu_set_cores: socket, drive_boost: "102400"}

Unknown keys are errors (they are usually typos). The password is never read from this file.
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.simulator.vps import INSTALL_OUTCOMES, Vps

# The provider's own example list (management-openapi.json, get/images).
DEFAULT_IMAGES: tuple[str, ...] = (
    "cloudinit_almalinux-8",
    "cloudinit_almalinux-9",
    "cloudinit_arch-linux_20231115",
    "cloudinit_arch-linux_20250815",
    "cloudinit_centos-7",
    "cloudinit_centos-stream-10",
    "cloudinit_centos-stream-8",
    "cloudinit_centos-stream-9",
    "cloudinit_debian-bookworm",
    "cloudinit_debian-trixie",
    "cloudinit_rocky-10",
    "cloudinit_rocky-9",
    "cloudinit_ubuntu-lts-16-04",
    "cloudinit_ubuntu-lts-18-04",
    "cloudinit_ubuntu-lts-20-04",
    "cloudinit_ubuntu-lts-22-04",
    "cloudinit_ubuntu-lts-24-04",
    "debian-bullseye",
    "windows-10",
    "windows-11",
    "windows-server-2019",
    "windows-server-2022",
    "windows-server-2025",
)
DEFAULT_IMAGE = "cloudinit_debian-bookworm"
KVM_ID_RE = re.compile(r"kvm_[0-9]+_[0-9]+")

_PLANS: tuple[dict[str, str], ...] = (
    {"ram": "2048", "disk": "20480", "cpu_set_cores": "socket", "drive_boost": "102400"},
    {"ram": "5120", "disk": "46080", "cpu_set_cores": "socket", "drive_boost": "102400"},
    {"ram": "8192", "disk": "81920", "cpu_set_cores": "socket", "drive_boost": "204800"},
)
_LOCATIONS: tuple[str, ...] = ("01", "02", "03")
_VPS_KEYS = frozenset(
    {
        "kvm_id",
        "hostname",
        "description",
        "ip",
        "images",
        "image",
        "suspended",
        "state",
        "install_outcome",
        "lps",
        "lps_ispremium",
        "hw",
    }
)
_ROOT_KEYS = frozenset({"email", "images", "vps"})


@dataclass(frozen=True)
class Account:
    """The VPSes of the account in order, and the email the account file named (if any)."""

    vpses: list[Vps]
    email: str | None = None


def image_family(image: str) -> str:
    """Return the install-duration family of an image: ``windows`` or ``linux``."""
    return "windows" if image.startswith("windows") else "linux"


def default_ip(index: int) -> str:
    """Return the primary IPv4 of the VPS at 1-based ``index``: 250 per 127.0.X.0/24."""
    return f"127.0.{2 + (index - 1) // 250}.{(index - 1) % 250 + 1}"


def generated_kvm_id(index: int) -> str:
    """Return the kvm_id of the generated VPS at 1-based ``index``."""
    return f"kvm_{100000 + index}_{200000 + index}"


def generate_account(count: int, seed: int, clock: Callable[[], float]) -> Account:
    """Return a generated account of ``count`` VPSes (see the module docstring)."""
    rng = random.Random(seed)
    vpses = []
    for i in range(1, count + 1):
        hostname = f"vps-{i:03d}"
        vpses.append(
            Vps(
                kvm_id=generated_kvm_id(i),
                index=i,
                hostname=hostname,
                description=hostname,
                ip=default_ip(i),
                images=DEFAULT_IMAGES,
                image=DEFAULT_IMAGE,
                clock=clock,
                lps=rng.choice(_LOCATIONS),
                hw=rng.choice(_PLANS),
            )
        )
    return Account(vpses)


def load_account(path: str | os.PathLike[str], clock: Callable[[], float]) -> Account:
    """Read a YAML account file.

    Raises ``OSError`` if it cannot be read and ``ValueError`` naming the file and the field
    for anything invalid in it.
    """
    name = os.fspath(path)
    with open(name, encoding="utf-8") as fh:
        try:
            doc = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ValueError(f"{name}: not valid YAML: {exc}") from exc
    try:
        return _parse_account(doc, clock)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def _parse_account(doc: Any, clock: Callable[[], float]) -> Account:
    if not isinstance(doc, dict):
        raise ValueError("the account must be a mapping with a 'vps' list")
    _no_unknown_keys(doc, _ROOT_KEYS, "")
    email = doc.get("email")
    if email is not None and (not isinstance(email, str) or not email):
        raise ValueError("email: must be a non-empty string")
    default_images = _string_list(doc.get("images", list(DEFAULT_IMAGES)), "images")
    entries = doc.get("vps")
    if not isinstance(entries, list) or not entries:
        raise ValueError("vps: must be a non-empty list")
    vpses: list[Vps] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        where = f"vps[{i - 1}]"
        vps = _parse_vps(entry, i, where, default_images, clock)
        if vps.kvm_id in seen:
            raise ValueError(f"{where}.kvm_id: duplicate {vps.kvm_id}")
        seen.add(vps.kvm_id)
        vpses.append(vps)
    return Account(vpses, email)


def _parse_vps(
    entry: Any, index: int, where: str, default_images: list[str], clock: Callable[[], float]
) -> Vps:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a mapping")
    _no_unknown_keys(entry, _VPS_KEYS, where + ".")
    kvm_id = entry.get("kvm_id")
    if not isinstance(kvm_id, str) or not KVM_ID_RE.fullmatch(kvm_id):
        raise ValueError(f"{where}.kvm_id: must look like kvm_<digits>_<digits>")
    hostname = _string(entry, "hostname", f"vps-{index:03d}", where)
    images = _string_list(entry.get("images", default_images), f"{where}.images")
    image = _string(entry, "image", DEFAULT_IMAGE if DEFAULT_IMAGE in images else images[0], where)
    if image not in images:
        raise ValueError(f"{where}.image: {image} is not in its images")
    ip = _string(entry, "ip", default_ip(index), where)
    try:
        ipaddress.IPv4Address(ip)
    except ValueError as exc:
        raise ValueError(f"{where}.ip: not an IPv4 address") from exc
    state = _string(entry, "state", "running", where)
    if state not in ("running", "failed"):
        raise ValueError(f"{where}.state: must be running or failed")
    outcome = _string(entry, "install_outcome", "ok", where)
    if outcome not in INSTALL_OUTCOMES:
        raise ValueError(f"{where}.install_outcome: must be one of {INSTALL_OUTCOMES}")
    hw = entry.get("hw", _PLANS[1])
    if not isinstance(hw, Mapping):
        raise ValueError(f"{where}.hw: must be a mapping")
    return Vps(
        kvm_id=kvm_id,
        index=index,
        hostname=hostname,
        description=_string(entry, "description", hostname, where),
        ip=ip,
        images=images,
        image=image,
        clock=clock,
        suspended=_bool(entry, "suspended", where),
        state="failed" if state == "failed" else "running",
        install_outcome=next(o for o in INSTALL_OUTCOMES if o == outcome),
        lps=_string(entry, "lps", "01", where),
        lps_ispremium=_bool(entry, "lps_ispremium", where),
        hw={str(k): str(v) for k, v in hw.items()},
    )


def _no_unknown_keys(doc: dict[Any, Any], allowed: frozenset[str], prefix: str) -> None:
    unknown = sorted(str(k) for k in doc if k not in allowed)
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown key (allowed: {sorted(allowed)})")


def _string(entry: dict[Any, Any], key: str, default: str, where: str) -> str:
    value = entry.get(key, default)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}.{key}: must be a non-empty string")
    return value


def _bool(entry: dict[Any, Any], key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key}: must be true or false")
    return value


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: must be a non-empty list of image names")
    if not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}: every image name must be a non-empty string")
    return list(value)
