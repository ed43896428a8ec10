"""The client over TLS with a private CA (trustme), against the simulator serving https."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from orchestrator.edis.client import EdisClient
from orchestrator.errors import HostNotAllowedError, TlsVerificationError
from orchestrator.secrets.values import Secret
from tests.conftest import SimFactory

# The simulator's api nodes live on 127.0.1.N; the certificate must name them.
NODE_IPS = ["127.0.0.1", *(f"127.0.1.{n}" for n in range(1, 5))]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ssl(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*NODE_IPS).configure_cert(ctx)
    return ctx


async def test_tls_with_a_private_ca_file(
    make_sim: SimFactory, server_ssl: ssl.SSLContext, ca: trustme.CA, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    async with make_sim(vps_count=3, ssl=server_ssl) as sim:
        assert sim.session_url.startswith("https://127.0.0.1:")
        async with EdisClient(
            session_url=sim.session_url,
            email=sim.email,
            password=Secret(sim.password),
            allowed_hosts=["127.0.0.0/8"],
            ca_file=str(ca_file),
        ) as c:
            result = await c.authenticate()
            cred = result.credentials[sim.vps_ids[0]]
            assert cred.base_url.startswith("https://127.0.1.")
            assert await c.images(cred)


async def test_tls_verification_is_on_by_default(
    make_sim: SimFactory, server_ssl: ssl.SSLContext
) -> None:
    async with make_sim(vps_count=1, ssl=server_ssl) as sim:
        async with EdisClient(
            session_url=sim.session_url,
            email=sim.email,
            password=Secret(sim.password),
            allowed_hosts=["127.0.0.0/8"],
        ) as c:
            with pytest.raises(TlsVerificationError, match="ca_file"):
                await c.authenticate()
        assert sim.counters.auth_calls == 0


def test_plain_http_to_a_public_host_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(HostNotAllowedError):
        EdisClient(session_url="http://session.edisglobal.com", email="a@b.c", password=Secret("x"))
