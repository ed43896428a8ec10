"""The TLS context of the client: verifying, with the account's private CA when it has one.

Apart from the transport (``wire.py``) so that the manifest check can try a ``ca_file`` the
way the client will, without importing aiohttp.
"""

from __future__ import annotations

import ssl

from orchestrator.edis.text import clean
from orchestrator.errors import ManifestError


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Return the verifying TLS context, trusting ``ca_file`` too when given.

    Raises ``ManifestError`` when ``ca_file`` cannot be read or holds no certificate.
    """
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        reason = clean(getattr(exc, "strerror", None) or str(exc), 120)
        raise ManifestError(
            [f"account.ca_file: {ca_file} cannot be used as a CA bundle: {reason}"]
        ) from None
