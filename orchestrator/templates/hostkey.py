"""Putting this run's SSH host key into a rendered ``#cloud-config`` document.

Readiness mode ``ssh`` proves a reinstall by the host key the VPS presents afterwards: a key
made for this VPS and this run, handed to cloud-init in its ``ssh_keys`` module
(``ed25519_private`` / ``ed25519_public``). A template that sets ``ssh_keys`` itself would
take that proof away, so it is refused (``HostKeyConflict``).
"""

from __future__ import annotations

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
