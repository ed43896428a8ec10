"""The SSH client side of readiness mode ``ssh``: the one module that uses asyncssh.

Four operations, each bounded by a timeout and none raising for network trouble:

- ``new_host_key()`` / ``derived_host_key(secret, label)``: an ed25519 host key for one VPS
  and one run (private half a ``Secret``: it goes into that VPS's user data and nowhere
  else), fresh or derived (``cryptography``, asyncssh's own dependency, makes the key from
  its seed);
- ``scan_host_key(host, port)``: the host key a server presents (the key exchange only, no
  login), as an OpenSSH public-key line, or ``None`` when nothing answered;
- ``run_pinned(...)``: log in, trusting exactly one host key, run one command and return its
  exit status and output;
- ``load_identity(path)``: read the operator's private key (``None``: the SSH agent).

asyncssh is imported by this module only, and this module only on first use (it costs about
0.35 s to import), so runs in other readiness modes never load it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from orchestrator.secrets import Secret

if TYPE_CHECKING:
    from collections.abc import Sequence

_KEY_TYPE = "ssh-ed25519"
# A command's output is read whole; cloud-init's JSON status is a few hundred bytes.
MAX_OUTPUT = 256 * 1024


@dataclass(frozen=True)
class HostKey:
    """A host key made for one VPS in one run: ``private`` (OpenSSH format, a secret) and
    ``public`` (``ssh-ed25519 AAAA...``, what the VPS must present)."""

    private: Secret
    public: str


@dataclass(frozen=True)
class CommandResult:
    """How a command run over SSH ended: ``exit_status`` (None if the server sent none),
    its ``stdout`` and ``stderr`` (each cut at ``MAX_OUTPUT``)."""

    exit_status: int | None
    stdout: str
    stderr: str


class SshLoginError(Exception):
    """The login did not happen: ``reason`` says why (host key mismatch, key refused,
    timeout, connection refused...)."""

    def __init__(
        self, reason: str, *, refused: bool = False, wrong_key: bool = False, verified: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        # The server presented the trusted host key (the failure came after that).
        self.verified = verified
        # The server answered but would not let us in (key refused): retrying will not help.
        # Its host key was verified first, so the key is proven all the same.
        self.refused = refused
        # The server presented another host key than the one trusted.
        self.wrong_key = wrong_key


def new_host_key() -> HostKey:
    """Return a fresh ed25519 host key."""
    key = asyncssh.generate_private_key(_KEY_TYPE)
    private = key.export_private_key("openssh").decode("ascii")
    return HostKey(Secret(private), _public_line(key))


def derived_host_key(secret: Secret, label: str) -> HostKey:
    """Return the ed25519 host key derived from ``secret`` and ``label`` (HMAC-SHA256 of the
    label keyed by the secret is the key's seed): the same inputs give the same key, so a
    resumed run recognises the key it sent before the interruption."""
    seed = hmac.new(
        secret.reveal().encode(), b"edis-fleet/ssh-host-key/v1\0" + label.encode(), hashlib.sha256
    ).digest()
    private = Ed25519PrivateKey.from_private_bytes(seed)
    text = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode("ascii")
    return HostKey(Secret(text), _public_line(asyncssh.import_private_key(text)))


def public_of(private: Secret) -> str:
    """Return the OpenSSH public line of a private key; raises ``ValueError`` if it does not
    parse."""
    try:
        return _public_line(asyncssh.import_private_key(private.reveal()))
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise ValueError("not an OpenSSH private key") from exc


def same_key(a: str | None, b: str | None) -> bool:
    """Return whether two OpenSSH public-key lines name the same key (comments ignored)."""
    if a is None or b is None:
        return False
    return a.split()[:2] == b.split()[:2]


def load_identity(path: Path | None) -> Sequence[asyncssh.SSHKey] | None:
    """Return the operator's key read from ``path`` (unencrypted OpenSSH or PEM), or ``None``
    to use the SSH agent. Raises ``ValueError`` naming the file when it cannot be read or
    parsed (never with its content)."""
    if path is None:
        return None
    try:
        return [asyncssh.read_private_key(str(path))]
    except (OSError, asyncssh.KeyImportError, ValueError) as exc:
        kind = type(exc).__name__
        raise ValueError(f"cannot read the SSH identity {path}: {kind}") from None


def identity_public(keys: Sequence[asyncssh.SSHKey] | None) -> str | None:
    """The OpenSSH public line of the first identity key (None for the agent)."""
    return _public_line(keys[0]) if keys else None


async def scan_host_key(host: str, port: int, *, limit: float) -> str | None:
    """Return the ed25519 host key ``host:port`` presents, or ``None`` when the connection
    is refused, times out or the handshake fails. Never raises for network trouble."""
    try:
        key = await asyncio.wait_for(
            # config=None: the operator's ~/.ssh/config must not redirect the scan.
            asyncssh.get_server_host_key(host, port, server_host_key_algs=[_KEY_TYPE], config=None),
            limit,
        )
    except (OSError, asyncssh.Error, TimeoutError):
        return None
    return None if key is None else _public_line(key)


async def run_pinned(
    host: str,
    port: int,
    *,
    host_key: str,
    user: str,
    identity: Sequence[asyncssh.SSHKey] | None,
    command: str,
    limit: float,
    handshake_limit: float | None = None,
) -> CommandResult:
    """Log in to ``host:port`` as ``user`` trusting only ``host_key``, run ``command`` and
    return how it ended, all within ``limit`` s (the login itself within ``handshake_limit``
    when given). ``identity`` is the operator's key, or
    ``None`` for the SSH agent. Raises ``SshLoginError`` when the connection or the login
    fails or time runs out (``refused`` set when the server would not accept the key)."""
    trusted = asyncssh.import_public_key(host_key)
    logged_in = False
    options: dict[str, object] = {"client_keys": identity} if identity is not None else {}
    if handshake_limit is not None:
        # Connecting and logging in may take this long; the command may take the rest.
        options["connect_timeout"] = handshake_limit
    if identity is not None:
        options["agent_path"] = None
    try:
        async with asyncio.timeout(limit):
            async with asyncssh.connect(
                host,
                port,
                username=user,
                known_hosts=([trusted], [], []),
                server_host_key_algs=[_KEY_TYPE],
                config=None,
                **options,
            ) as conn:
                logged_in = True
                done = await conn.run(command, check=False)
    except TimeoutError:
        what = "the command did not end" if logged_in else "no login"
        raise SshLoginError(f"{what} within {limit:g} s", verified=logged_in) from None
    except asyncssh.HostKeyNotVerifiable:
        raise SshLoginError("the server presented another host key", wrong_key=True) from None
    except asyncssh.PermissionDenied:
        # Authentication comes after the key exchange: the host key was verified.
        raise SshLoginError(
            f"the server refused the key of user {user!r}", refused=True, verified=True
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise SshLoginError(f"{type(exc).__name__}: {str(exc)[:200]}", verified=logged_in) from None
    return CommandResult(done.exit_status, _text(done.stdout), _text(done.stderr))


def _public_line(key: asyncssh.SSHKey) -> str:
    return " ".join(key.export_public_key("openssh").decode("ascii").split()[:2])


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value or "")[:MAX_OUTPUT]
