"""Putting this run's SSH host key into a rendered ``#cloud-config`` document.

Readiness mode ``ssh`` proves a reinstall by the host key the VPS presents afterwards: a key
made for this VPS and this run, handed to cloud-init in its ``ssh_keys`` module
(``ed25519_private`` / ``ed25519_public``). A template that sets ``ssh_keys`` itself would
take that proof away, so it is refused (``HostKeyConflict``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.secrets import Secret
from orchestrator.yamldoc import YamlSyntaxError, load_yaml

SSH_KEYS = "ssh_keys"


class HostKeyConflict(ValueError):
    """The document cannot carry this run's host key (it sets ``ssh_keys`` itself, or is
    not a cloud-config mapping)."""


def cloud_config_data(text: str) -> dict[str, Any] | None:
    """The top-level mapping of a ``#cloud-config`` document, or None when it is not one."""
    if not text.startswith("#cloud-config"):
        return None
    try:
        data = load_yaml(text)[0].data
    except YamlSyntaxError:
        return None
    return data if isinstance(data, dict) else ({} if data is None else None)


def sets_ssh_keys(text: str) -> bool:
    """Return whether a ``#cloud-config`` document sets ``ssh_keys`` itself."""
    data = cloud_config_data(text)
    return data is not None and SSH_KEYS in data


def authorized_keys(text: str) -> list[str]:
    """The public keys a ``#cloud-config`` document authorises (``ssh_authorized_keys`` and
    every ``users[].ssh_authorized_keys``), as written."""
    data = cloud_config_data(text) or {}
    found: list[Any] = list(data.get("ssh_authorized_keys") or [])
    users = data.get("users")
    for user in users if isinstance(users, list) else ():
        if isinstance(user, dict):
            found.extend(user.get("ssh_authorized_keys") or [])
    return [k for k in found if isinstance(k, str)]


def with_host_key(text: str, private: Secret, public: str) -> str:
    """Return ``text`` (a rendered ``#cloud-config`` document) with an ``ssh_keys`` module
    that installs the ed25519 host key ``private`` / ``public``.

    Raises ``HostKeyConflict`` when the document sets ``ssh_keys`` itself or is not a
    cloud-config mapping. The message never contains the key.
    """
    data = cloud_config_data(text)
    if data is None:
        raise HostKeyConflict("the user data is not a #cloud-config mapping")
    if SSH_KEYS in data:
        raise HostKeyConflict(
            "the template sets ssh_keys itself; readiness mode ssh puts this run's host key "
            "there to prove the reinstall: remove ssh_keys from the template (or use another "
            "readiness mode)"
        )
    body = "\n".join("    " + line for line in private.reveal().strip().splitlines())
    block = f"{SSH_KEYS}:\n  ed25519_private: |\n{body}\n  ed25519_public: {public}\n"
    joined = text if text.endswith("\n") else text + "\n"
    result = joined + block
    # A document that ends in a way that swallows the appended block (an open flow
    # collection, an explicit end marker) must not go out without the key.
    check = cloud_config_data(result) or {}
    keys = check.get(SSH_KEYS)
    if not isinstance(keys, dict) or keys.get("ed25519_public") != public:
        raise HostKeyConflict("ssh_keys could not be added at the end of the document")
    return result


# A .pub file is one line; anything bigger is not one.
MAX_PUBLIC_KEY_FILE = 16 * 1024


def ssh_readiness_problem(text: str, identity_file: Path | None) -> str | None:
    """What keeps readiness mode ``ssh`` from working with this rendered ``#cloud-config``
    document, or None: it sets ``ssh_keys`` itself, or the public half of the operator's key
    (``identity_file`` + ``.pub``, when that file exists) is not among the keys it authorises.
    With the SSH agent (``identity_file`` None) the key cannot be checked here."""
    if sets_ssh_keys(text):
        return (
            "the template sets ssh_keys itself; readiness mode ssh puts this run's host key "
            "there to prove the reinstall: remove ssh_keys from the template (or use another "
            "readiness mode)"
        )
    public = _public_key_of(identity_file)
    if public is None:
        return None
    authorised = {" ".join(k.split()[:2]) for k in authorized_keys(text)}
    if public in authorised:
        return None
    return (
        f"readiness mode ssh logs in with {identity_file}, but its public half "
        f"({identity_file}.pub) is not in the user data's ssh_authorized_keys or "
        "users[].ssh_authorized_keys: the cloud-init stage could not log in"
    )


def _public_key_of(identity_file: Path | None) -> str | None:
    """``type base64`` of ``identity_file.pub`` when it is a small regular file, else None."""
    if identity_file is None:
        return None
    path = identity_file.with_name(identity_file.name + ".pub")
    try:
        if not path.is_file() or path.stat().st_size > MAX_PUBLIC_KEY_FILE:
            return None
        parts = path.read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None
    return " ".join(parts[:2]) if len(parts) >= 2 else None
