"""Which image a new manifest gives its VPSes: the most widely offered sensible Linux image.

"Sensible" means a ``cloudinit_`` image (it takes the manifest's user data) of a maintained
Linux distribution; ties are broken by a preference order (newest Debian first, then Ubuntu
LTS, then the RHEL family). A VPS that is not offered the fleet's image gets its own best
choice, falling back to any Linux image and, last, to what it offers at all.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

from orchestrator.fleet import is_windows_image, takes_cloud_init

# Preferred first among images offered to equally many VPSes. The provider's own list
# (management-openapi.json, get/images) names these; any other cloud-init Linux image ranks
# after them, by name.
PREFERRED: tuple[str, ...] = (
    "cloudinit_debian-trixie",
    "cloudinit_debian-bookworm",
    "cloudinit_ubuntu-lts-24-04",
    "cloudinit_ubuntu-lts-22-04",
    "cloudinit_rocky-10",
    "cloudinit_almalinux-10",
    "cloudinit_rocky-9",
    "cloudinit_almalinux-9",
    "cloudinit_centos-stream-10",
)
# Releases past their end of life: offered by the provider, never chosen by default.
_RETIRED = re.compile(
    r"centos-7|centos-stream-8|ubuntu-lts-1[68]-04|ubuntu-lts-20-04|debian-(buster|bullseye)"
    r"|almalinux-8|arch-linux",
)


def sensible(image: str) -> bool:
    """Return whether ``image`` may be chosen by default: a cloud-init Linux image of a
    maintained release (rolling releases such as Arch are left to the operator)."""
    return takes_cloud_init(image) and not is_windows_image(image) and not _RETIRED.search(image)


def _rank(image: str) -> tuple[int, str]:
    """Sort key: preferred images in their order, then the other sensible ones by name."""
    if image in PREFERRED:
        return (PREFERRED.index(image), "")
    return (len(PREFERRED), image)


def fleet_image(offers: Mapping[str, Sequence[str]]) -> tuple[str | None, int]:
    """Return the sensible image offered to the most VPSes (ties by preference) and how many
    VPSes offer it; ``(None, 0)`` when no VPS offers a sensible image."""
    counts = Counter(image for images in offers.values() for image in set(images))
    candidates = [image for image in counts if sensible(image)]
    if not candidates:
        return None, 0
    best = min(candidates, key=lambda image: (-counts[image], _rank(image)))
    return best, counts[best]


def own_image(images: Iterable[str]) -> str | None:
    """Return the best image for one VPS from its own list: a sensible one, else any Linux
    image (cloud-init first), else the first offered; ``None`` for an empty list."""
    offered = list(images)
    good = sorted((i for i in offered if sensible(i)), key=_rank)
    if good:
        return good[0]
    linux = [i for i in offered if not is_windows_image(i)]
    linux.sort(key=lambda i: (not takes_cloud_init(i), i))
    if linux:
        return linux[0]
    return offered[0] if offered else None


def offered_anywhere(image: str, offers: Mapping[str, Sequence[str]]) -> int:
    """Return how many VPSes offer ``image``."""
    return sum(1 for images in offers.values() if image in images)
