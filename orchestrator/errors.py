"""The exception tree of edis-fleet. No logic lives here.

::

    EdisFleetError                     every error this package raises on purpose
    ├── UsageError                     bad command line or options (exit 2)
    │   └── SelectionError             --only/--limit/--exclude that select wrongly; carries all
    ├── ManifestError                  a fleet manifest with problems; carries all of them (exit 2)
    ├── PreflightError                 the account does not match the manifest (exit 2)
    ├── HostNotAllowedError            an API host outside the allowlist, or http:// off loopback
    ├── JournalError                   the journal cannot be used (newer schema, not a journal,
    │   │                              SQLite failure) or refused a write that could resend
    │   └── LockedError                another live run holds some of the VPSes; carries its
    │                                  run id and which VPSes
    └── ApiError                       one API call failed; carries endpoint, kvm_id, status,
        │                              the server's message and the outcome class
        ├── NotSentError               the request never reached the server (safe to resend)
        ├── ThrottledError             429 / 503; ``retry_after`` seconds when the server said
        ├── SessionExpiredError        401 or an error body about session/signature/expiry
        ├── RejectedError              final for that VPS: 400, 403, unknown image, suspended...
        │   ├── AuthenticationError    wrong account email/password: never retried
        │   ├── UnexpectedAnswerError  the session server answered in a shape the API does not
        │   │                          document (not a refusal of the credentials)
        │   └── TlsVerificationError   the server's certificate or host name did not verify:
        │                              nothing was sent, and it will not heal by retrying
        ├── InDoubtError               the server may have acted; never resent blindly
        └── SessionUnavailableError    no usable credentials for a VPS (missing from the
                                       account, or expired on arrival); never a refresh loop

No exception text ever contains a signature, a password or user data: constructors take only
the fields listed above, and callers pass the server's message, never the request.
"""

from __future__ import annotations

from orchestrator.model import Outcome


class EdisFleetError(Exception):
    """Base of every error edis-fleet raises on purpose."""


class UsageError(EdisFleetError):
    """The command line or an option is wrong."""


class SelectionError(UsageError):
    """``--only``/``--limit``/``--exclude`` name unknown VPSes, tags or groups, or select nothing.

    ``problems`` holds every problem found, one sentence each.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems) or "invalid selection")


class ManifestError(EdisFleetError):
    """A fleet manifest has one or more problems.

    ``problems`` holds every problem found, each already formatted as
    ``file:line:col: field.path: message``.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems) or "invalid manifest")


class PreflightError(EdisFleetError):
    """The account does not match the manifest (missing VPS, suspended, image not offered)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems) or "pre-flight failed")


class HostNotAllowedError(EdisFleetError):
    """A URL or ``api_host`` is outside what the user allowed; nothing was sent to it."""


class JournalError(EdisFleetError):
    """The journal cannot be opened or written, or refused a write that could cause a resend.

    Raised for a journal file with a newer schema than this version knows, a file that is not
    a journal, an SQLite failure, or an intent for a VPS whose reinstall was already accepted.
    """


class LockedError(JournalError):
    """Another live run holds locks on some of the VPSes this run wants.

    ``run_id`` is the holding run (the first one, when several hold some), ``holders`` maps
    every holding run id to the VPSes it holds, ``kvm_ids`` lists all of those VPSes.
    """

    def __init__(self, holders: dict[str, list[str]], *, detail: str = "") -> None:
        self.holders = {run: sorted(ids) for run, ids in sorted(holders.items())}
        self.run_id = next(iter(self.holders), "")
        self.kvm_ids = sorted(k for ids in self.holders.values() for k in ids)
        parts = []
        for run, ids in self.holders.items():
            shown = ", ".join(ids[:5]) + (f" (+{len(ids) - 5} more)" if len(ids) > 5 else "")
            parts.append(f"run {run} holds {len(ids)} VPS(es): {shown}")
        text = "; ".join(parts) or "VPSes are locked by another run"
        super().__init__(f"{text}{detail}")


class ApiError(EdisFleetError):
    """One call to the EDIS API failed.

    Attributes: ``endpoint`` (e.g. ``set/reinstall``), ``kvm_id`` (or None for the account-wide
    auth call), ``status`` (HTTP status, None when no response arrived), ``message`` (the
    server's text or a description of the transport failure) and ``outcome`` (the class from
    DESIGN.md that decides what happens next). ``retry_after`` is set on throttling when the
    server said how long to wait.
    """

    outcome: Outcome = Outcome.REJECTED

    def __init__(
        self,
        message: str,
        *,
        endpoint: str,
        kvm_id: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        self.message = message
        self.endpoint = endpoint
        self.kvm_id = kvm_id
        self.status = status
        self.retry_after = retry_after
        if outcome is not None:
            self.outcome = outcome
        where = endpoint if kvm_id is None else f"{endpoint} for {kvm_id}"
        code = "" if status is None else f" (HTTP {status})"
        super().__init__(f"{where}{code}: {message}")


class NotSentError(ApiError):
    """The request never reached the server: DNS, refused, connect timeout, TLS handshake."""

    outcome = Outcome.NOT_SENT


class ThrottledError(ApiError):
    """The server asked us to slow down (429, 503)."""

    outcome = Outcome.THROTTLED


class SessionExpiredError(ApiError):
    """The session signature was refused (401 or an error body about session/signature/expiry)."""

    outcome = Outcome.SESSION


class RejectedError(ApiError):
    """The server refused the call for good (400, 403, unknown image, suspended VPS, redirect)."""

    outcome = Outcome.REJECTED


class AuthenticationError(RejectedError):
    """The account email or password was refused. Never retried: retries risk a lockout."""


class UnexpectedAnswerError(RejectedError):
    """The session server's answer has a shape the API does not document (an unknown
    ``status``, no account data, a redirect): says what arrived. Not a credentials refusal."""


class TlsVerificationError(RejectedError):
    """The server's TLS certificate or host name did not verify. Nothing was sent; final at
    once, since a retry meets the same certificate."""


class InDoubtError(ApiError):
    """The request may have been processed (read timeout, reset mid-response, 500/502/504)."""

    outcome = Outcome.IN_DOUBT


class SessionUnavailableError(ApiError):
    """No usable credentials for a VPS: missing from the account, or expired on arrival."""

    outcome = Outcome.REJECTED
