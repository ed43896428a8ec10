"""Which ``ApiError`` an attempt's classification raises: one table for every call, and the
auth call's own reading (a credentials refusal is not an answer of unexpected shape)."""

from __future__ import annotations

from orchestrator.edis.outcome import Classification
from orchestrator.errors import (
    ApiError,
    AuthenticationError,
    InDoubtError,
    NotSentError,
    RejectedError,
    SessionExpiredError,
    ThrottledError,
    TlsVerificationError,
    UnexpectedAnswerError,
)
from orchestrator.model import Outcome

AUTH = "get/auth"
"""The auth endpoint (also ``orchestrator.edis.client.AUTH``)."""

# Statuses at which a refusal of the auth call means the credentials themselves were refused
# (API-NOTES: 400 or 401 with an error body; 403 for a locked account; a 200 error body).
_CREDENTIAL_STATUSES = frozenset({200, 400, 401, 403})

_ERROR_FOR: dict[Outcome, type[ApiError]] = {
    Outcome.NOT_SENT: NotSentError,
    Outcome.THROTTLED: ThrottledError,
    Outcome.SESSION: SessionExpiredError,
    Outcome.REJECTED: RejectedError,
    Outcome.IN_DOUBT: InDoubtError,
}


def raise_unless_accepted(result: Classification, endpoint: str, kvm_id: str | None) -> None:
    """Raise the ``ApiError`` subclass of ``result``'s outcome (``TlsVerificationError`` for a
    certificate that did not verify); return when it was accepted."""
    if result.outcome is Outcome.ACCEPTED:
        return
    error = _ERROR_FOR[result.outcome]
    if result.transport == "tls_verify":
        error = TlsVerificationError
    raise error(
        result.message,
        endpoint=endpoint,
        kvm_id=kvm_id,
        status=result.status,
        retry_after=result.retry_after,
    )


def raise_for_auth(result: Classification, kvm_id: str | None) -> None:
    """Raise the error an auth attempt's classification calls for (nothing if accepted)."""
    outcome, status = result.outcome, result.status
    if outcome in (Outcome.SESSION, Outcome.REJECTED) and status in _CREDENTIAL_STATUSES:
        raise AuthenticationError(
            f"the account credentials were refused: {result.message}",
            endpoint=AUTH,
            kvm_id=kvm_id,
            status=status,
        )
    unexpected = outcome is Outcome.IN_DOUBT and status is not None and status < 500
    if unexpected or (outcome in (Outcome.SESSION, Outcome.REJECTED) and status is not None):
        # A 2xx of unknown shape, a redirect, a 404 (a wrong session_url): not a verdict
        # on the credentials, and asking again will not change it.
        raise UnexpectedAnswerError(
            f"the session server sent an answer of unexpected shape: {result.message}",
            endpoint=AUTH,
            kvm_id=kvm_id,
            status=status,
        )
    raise_unless_accepted(result, AUTH, kvm_id)
