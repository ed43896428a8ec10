"""Which hosts may receive signatures and root passwords.

Every URL the client posts to is checked here first: the session URL given by the user and
every ``api_host`` the session call returns. ``http://`` is refused unless the host is on
loopback, and an ``api_host`` must match the allowlist (default ``*.edisglobal.com``; widened
explicitly, e.g. with ``127.0.0.0/8``, to point the tool at the bundled simulator).

The rules for a session URL (``session_url_problem``) and for an allowlist pattern
(``host_pattern_problem``) are written here once: the manifest check reports them with the
field's line, the client refuses with them.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from orchestrator.errors import HostNotAllowedError
from orchestrator.fleet import DEFAULT_ALLOWED_API_HOSTS, HOSTNAME_RE

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

    patterns: tuple[str, ...] = DEFAULT_ALLOWED_API_HOSTS
    scheme: str = "https"

    @classmethod
    def for_session_url(
        cls, session_url: str, extra_allowed: Sequence[str] = ()
    ) -> tuple[HostPolicy, str]:
        """Check the session URL and return the policy plus the normalised base URL.

        The api hosts use the same scheme as the session URL. Raises ``HostNotAllowedError``
        for a URL that breaks ``session_url_problem``'s rule, or an allowlist pattern that
        breaks ``host_pattern_problem``'s.
        """
        problem = session_url_problem(session_url)
        if problem is not None:
            raise HostNotAllowedError(f"session URL: {problem}")
        parts = urlsplit(session_url)
        patterns = tuple(dict.fromkeys((*DEFAULT_ALLOWED_API_HOSTS, *extra_allowed)))
        for pattern in patterns:
            problem = host_pattern_problem(pattern)
            if problem is not None:
                raise HostNotAllowedError(f"allowed api host: {problem}")
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


def session_url_problem(url: str) -> str | None:
    """Return why ``url`` may not be the session URL, or None when it may.

    The rule: printable ASCII without spaces; ``https://host``, or ``http://`` only when the
    host is on loopback (the simulator: signatures and passwords never cross a network in
    clear); no user info, query or fragment. Never raises.
    """
    if not url.isascii() or not url.isprintable() or any(c.isspace() for c in url):
        # urlsplit would drop a newline or tab, and int() reads non-ASCII digits in a port.
        return "must be printable ASCII without spaces, like https://host"
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        userinfo = parts.username or parts.password
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return "is not a URL; expected https://host"
    if userinfo or parts.query or parts.fragment:
        # Checked first: the URL is not quoted back when it may hold a password.
        return "must not carry user info, a query or a fragment"
    if parts.scheme not in ("https", "http") or not host:
        return f"{url!r} is not a URL; expected https://host"
    if parts.scheme == "http" and not is_loopback(host):
        return f"http:// is only allowed on loopback (the simulator); use https://{host}"
    return None


def host_pattern_problem(pattern: str) -> str | None:
    """Return why ``pattern`` may not be an allowed api host, or None when it may.

    A pattern is an exact host name, ``*.domain`` (the wildcard only for the leftmost labels
    of a domain of at least two labels), or an IP network in CIDR form other than ``/0``:
    ``*``, ``*.com`` or ``*.edis*`` would hand credentials to hosts nobody chose. Never raises.
    """
    if "/" in pattern:
        try:
            network = ipaddress.ip_network(pattern, strict=False)
        except ValueError:
            return f"{pattern!r} is not a valid network (CIDR like 127.0.0.0/8)"
        if network.prefixlen == 0:
            return f"{pattern!r} would allow every address; name a narrower network"
        return None
    if any(c in pattern for c in "*?["):
        if pattern.startswith("*.") and _PLAIN_DOMAIN.match(pattern[2:]):
            return None
        return (
            f"host pattern {pattern!r} is too broad or malformed; use '*.example.com', an exact "
            "host, or a network like 127.0.0.0/8"
        )
    if not HOSTNAME_RE.fullmatch(pattern):
        return f"{pattern!r} is not a host name, '*.domain' pattern or network"
    return None


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
