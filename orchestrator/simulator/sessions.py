"""Per-VPS session signatures: issue, check, revoke.

Each auth call issues every VPS it covers a fresh random signature with its own integer
``valid_until``. A signature is good for exactly one kvm_id and exactly the ``valid_until``
string issued with it, until that second. Revoked and expired signatures are remembered for a
while so a rejection can say *why* (the request log and counters use the reason), which is how
tests tell "the client sent an expired signature" apart from "the server revoked it".
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Iterable
from typing import Literal

RejectReason = Literal["expired", "revoked", "unknown", "valid_until_mismatch", "wrong_node"]
REJECT_REASONS: tuple[RejectReason, ...] = (
    "expired",
    "revoked",
    "unknown",
    "valid_until_mismatch",
    "wrong_node",
)

# Signatures remembered per VPS. An old one beyond this is forgotten (then reported as
# "unknown"); with new_session_invalidates_old=False it stops working, like a server-side
# session table that evicts its oldest entries.
MAX_SIGNATURES_PER_VPS = 256


class _Issued:
    __slots__ = ("revoked", "valid_until", "valid_until_text")

    def __init__(self, valid_until: int) -> None:
        self.valid_until = valid_until
        self.valid_until_text = str(valid_until)
        self.revoked = False


class SignatureBook:
    """The signatures issued to each VPS of the account."""

    def __init__(
        self,
        kvm_ids: Iterable[str],
        clock: Callable[[], float],
        lifetime: float,
        *,
        new_session_invalidates_old: bool = False,
    ) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self.new_session_invalidates_old = new_session_invalidates_old
        self._issued: dict[str, dict[str, _Issued]] = {k: {} for k in kvm_ids}

    def issue(self, kvm_id: str) -> tuple[str, int]:
        """Return a new ``(signature, valid_until)`` for ``kvm_id``; raises ``KeyError`` if the
        VPS is not in the account."""
        book = self._issued[kvm_id]
        if self.new_session_invalidates_old:
            for old in book.values():
                old.revoked = True
        if len(book) >= MAX_SIGNATURES_PER_VPS:
            # dicts keep insertion order: the first key is the oldest signature.
            del book[next(iter(book))]
        # floor: valid_until never lies beyond the configured lifetime.
        valid_until = math.floor(self._clock() + self.lifetime)
        # 50 characters, like the provider's example signatures.
        signature = secrets.token_hex(25)
        book[signature] = _Issued(valid_until)
        return signature, valid_until

    def check(self, kvm_id: str, signature: str, valid_until: str) -> RejectReason | None:
        """Return ``None`` if ``signature`` with ``valid_until`` (the decimal string sent back)
        is good for ``kvm_id`` now, else why not. Raises ``KeyError`` for an unknown kvm_id."""
        issued = self._issued[kvm_id].get(signature)
        if issued is None:
            return "unknown"
        if issued.revoked:
            return "revoked"
        if valid_until != issued.valid_until_text:
            return "valid_until_mismatch"
        if self._clock() >= issued.valid_until:
            return "expired"
        return None

    def invalidate(self, kvm_ids: Iterable[str] | None = None) -> int:
        """Revoke every live signature of ``kvm_ids`` (all VPSes when ``None``); return how many
        were revoked. Raises ``KeyError`` for a kvm_id not in the account."""
        books = (
            list(self._issued.values()) if kvm_ids is None else [self._issued[k] for k in kvm_ids]
        )
        count = 0
        for book in books:
            for issued in book.values():
                if not issued.revoked:
                    issued.revoked = True
                    count += 1
        return count

    def issued_signatures(self) -> list[str]:
        """Every signature still remembered (up to the per-VPS cap), for leak checks in tests
        and drills."""
        return [signature for book in self._issued.values() for signature in book]

    def live_count(self, kvm_id: str) -> int:
        """Return how many signatures of ``kvm_id`` would be accepted now."""
        now = self._clock()
        return sum(
            1 for i in self._issued[kvm_id].values() if not i.revoked and now < i.valid_until
        )
