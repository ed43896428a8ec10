"""Which hosts may receive signatures: the session URL and every api_host."""

from __future__ import annotations

import pytest

from orchestrator.edis.hosts import (
    HostPolicy,
    host_pattern_problem,
    is_loopback,
    session_url_problem,
)
from orchestrator.errors import HostNotAllowedError


def test_https_session_url_with_default_allowlist() -> None:
    policy, base = HostPolicy.for_session_url("https://session.edisglobal.com/")
    assert base == "https://session.edisglobal.com"
    assert policy.api_base("123456.edisglobal.com") == "https://123456.edisglobal.com"


@pytest.mark.parametrize(
    "url",
    [
        "http://session.edisglobal.com",  # plain HTTP off loopback
        "http://10.0.0.5:8080",
        "ftp://session.edisglobal.com",
        "https://user:pw@session.edisglobal.com",
        "https://session.edisglobal.com/?x=1",
    ],
)
def test_session_urls_that_are_refused(url: str) -> None:
    with pytest.raises(HostNotAllowedError):
        HostPolicy.for_session_url(url)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765", "http://localhost:1", "http://[::1]:80"])
def test_plain_http_is_allowed_on_loopback(url: str) -> None:
    policy, _ = HostPolicy.for_session_url(url, ["127.0.0.0/8"])
    assert policy.scheme == "http"


@pytest.mark.parametrize(
    "api_host",
    [
        "evil.example.com",
        "edisglobal.com.evil.com",
        "123.edisglobal.com@evil.com",
        "123.edisglobal.com/../x",
        "123.edisglobal.com:443/path",
        "",
    ],
)
def test_api_hosts_outside_the_allowlist_are_refused(api_host: str) -> None:
    policy, _ = HostPolicy.for_session_url("https://session.edisglobal.com")
    with pytest.raises(HostNotAllowedError):
        policy.api_base(api_host)


def test_loopback_api_hosts_need_an_explicit_widening() -> None:
    narrow, _ = HostPolicy.for_session_url("http://127.0.0.1:8765")
    with pytest.raises(HostNotAllowedError, match="not in the allowed hosts"):
        narrow.api_base("127.0.1.5:9000")
    wide, _ = HostPolicy.for_session_url("http://127.0.0.1:8765", ["127.0.0.0/8"])
    assert wide.api_base("127.0.1.5:9000") == "http://127.0.1.5:9000"


def test_http_scheme_never_reaches_a_non_loopback_api_host() -> None:
    policy, _ = HostPolicy.for_session_url("http://127.0.0.1:8765", ["127.0.0.0/8"])
    with pytest.raises(HostNotAllowedError, match="only allowed on loopback"):
        policy.api_base("123.edisglobal.com")


@pytest.mark.parametrize("pattern", ["*", "*.com", "*.edis*", "0.0.0.0/0", "300.0.0.0/8", ""])
def test_too_broad_or_broken_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(HostNotAllowedError):
        HostPolicy.for_session_url("https://session.edisglobal.com", [pattern])


def test_exact_hosts_and_subdomain_globs_are_accepted() -> None:
    policy, _ = HostPolicy.for_session_url(
        "https://session.edisglobal.com", ["api.example.net", "*.example.org"]
    )
    assert policy.allows("api.example.net")
    assert policy.allows("a.b.example.org")
    assert not policy.allows("example.org.attacker.net")


def test_is_loopback() -> None:
    assert is_loopback("127.3.4.5")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("localhost.evil.com")


@pytest.mark.parametrize(
    "url",
    [
        "https://session.edisglobal.com",
        "http://127.0.0.1:8765",
        "http://session.edisglobal.com",
        "ftp://session.edisglobal.com",
        "https://user:pw@session.edisglobal.com",
        "https://session.edisglobal.com/#x",
        "https://",
        "https://session.edisglobal.com\n",
        "https://[::1",
    ],
)
def test_the_client_and_the_manifest_check_apply_one_session_url_rule(url: str) -> None:
    problem = session_url_problem(url)
    if problem is None:
        HostPolicy.for_session_url(url)
    else:
        with pytest.raises(HostNotAllowedError) as refused:
            HostPolicy.for_session_url(url)
        assert str(refused.value) == f"session URL: {problem}"
        assert "pw" not in problem  # a URL with user info is not quoted back


@pytest.mark.parametrize(
    ("pattern", "fine"),
    [
        ("*.example.org", True),
        ("api.example.net", True),
        ("127.0.0.0/8", True),
        ("*.com", False),
        ("0.0.0.0/0", False),
        ("host:443", False),
    ],
)
def test_the_client_and_the_manifest_check_apply_one_pattern_rule(pattern: str, fine: bool) -> None:
    assert (host_pattern_problem(pattern) is None) is fine
    if fine:
        HostPolicy.for_session_url("https://session.edisglobal.com", [pattern])
    else:
        with pytest.raises(HostNotAllowedError, match="allowed api host: "):
            HostPolicy.for_session_url("https://session.edisglobal.com", [pattern])
