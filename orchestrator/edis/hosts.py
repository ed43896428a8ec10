"""Which hosts may receive signatures and root passwords.

Every URL the client posts to is checked here first: the session URL given by the user and
every ``api_host`` the session call returns. ``http://`` is refused unless the host is on
loopback, and an ``api_host`` must match the allowlist (default ``*.edisglobal.com``; widened
explicitly, e.g. with ``127.0.0.0/8``, to point the tool at the bundled simulator).
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from orchestrator.errors import HostNotAllowedError

DEFAULT_ALLOWED = ("*.edisglobal.com",)

_PLAIN_DOMAIN = re.compile(r"\A[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+\Z", re.ASCII)

# A host name or IPv4 literal with an optional port; nothing that could smuggle in a path,
# user info or a second URL.
_HOST_RE = re.compile(
    r"\A(?P<host>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)(?::(?P<port>[0-9]{1,5}))?\Z",
    re.ASCII,  # \A..\Z and [0-9]: no trailing newline, no Unicode digits
)


@dataclass(frozen=True)
class HostPolicy:
    """The allowlist for api hosts, and the scheme every API URL uses.

    ``patterns`` are shell-style host globs (``*.edisglobal.com``) or IP networks in CIDR
    form (``127.0.0.0/8``). ``scheme`` is ``https`` or, for loopback only, ``http``.
    """

    patterns: tuple[str, ...] = DEFAULT_ALLOWED
    scheme: str = "https"

    @classmethod
    def for_session_url(
        cls, session_url: str, extra_allowed: Sequence[str] = ()
    ) -> tuple[HostPolicy, str]:
        """Check the session URL and return the policy plus the normalised base URL.

        The api hosts use the same scheme as the session URL. Raises ``HostNotAllowedError``
        for a URL that is not ``https://`` (or ``http://`` on loopback), or that carries
        user info, a query or a fragment.
        """
        parts = urlsplit(session_url)
        if parts.scheme not in ("https", "http"):
            raise HostNotAllowedError(f"session URL must start with https://, got {session_url!r}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise HostNotAllowedError("session URL must not carry user info, a query or fragment")
        host = parts.hostname or ""
        if parts.scheme == "http" and not is_loopback(host):
            raise HostNotAllowedError(
                f"refusing http:// to {host}: plain HTTP is only allowed on loopback"
            )
        patterns = tuple(dict.fromkeys((*DEFAULT_ALLOWED, *extra_allowed)))
        for pattern in patterns:
            _check_pattern(pattern)
        base = f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
        return cls(patterns=patterns, scheme=parts.scheme), base

    def api_base(self, api_host: str) -> str:
        """Return ``scheme://api_host`` after checking the host; raise ``HostNotAllowedError``."""
        m = _HOST_RE.match(api_host)
        if m is None:
            raise HostNotAllowedError(f"api_host {api_host!r} is not a plain host[:port]")
        host = m.group("host")
        if self.scheme == "http" and not is_loopback(host):
            raise HostNotAllowedError(
                f"refusing http:// to api_host {host}: plain HTTP is only allowed on loopback"
            )
        if not self.allows(host):
            raise HostNotAllowedError(
                f"api_host {host} is not in the allowed hosts ({', '.join(self.patterns)}); "
                "widen the allowlist explicitly if this host is yours"
            )
        return f"{self.scheme}://{api_host}"

    def allows(self, host: str) -> bool:
        """Return whether ``host`` (no port) matches one of the patterns."""
        host = host.lower().rstrip(".")
        address = _ip(host)
        for pattern in self.patterns:
            if "/" in pattern:
                if address is not None and address in ipaddress.ip_network(pattern, strict=False):
                    return True
            elif fnmatch.fnmatchcase(host, pattern.lower()):
                return True
        return False


def is_loopback(host: str) -> bool:
    """Return whether ``host`` is ``localhost`` or a loopback IP literal."""
    if host.lower() == "localhost":
        return True
    address = _ip(host)
    return address is not None and address.is_loopback


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _check_pattern(pattern: str) -> None:
    if "/" in pattern:
        try:
            network = ipaddress.ip_network(pattern, strict=False)
        except ValueError as exc:
            raise HostNotAllowedError(f"allowed host {pattern!r} is not a valid network") from exc
        if network.prefixlen == 0:
            raise HostNotAllowedError(f"allowed host pattern {pattern!r} is too broad")
    elif not pattern or (
        any(c in pattern for c in "*?[")
        and not (pattern.startswith("*.") and _PLAIN_DOMAIN.match(pattern[2:]))
    ):
        # "*", "*.com" or "*.edis*" would hand credentials to hosts nobody chose: a wildcard
        # may only stand for the leftmost labels of a domain that has at least two labels.
        raise HostNotAllowedError(
            f"allowed host pattern {pattern!r} is too broad; use '*.example.com' or an exact host"
        )
