"""Secret values and the one redaction filter used by logs, reports and the journal.

A ``Secret`` never shows its value in ``str``, ``repr`` or f-strings; code that must send the
value calls ``reveal()`` at the last moment (the HTTP form body), and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


class Secret:
    """A string that refuses to be printed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value. Call only where it goes onto the wire."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)


class Redactor:
    """Replaces every known secret value in a text by ``***``.

    Secrets shorter than 4 characters are not registered: replacing them would mangle
    ordinary text and they would not be secret anyway.
    """

    MIN_LEN = 4

    def __init__(self, secrets: Iterable[str | Secret] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self.add(*secrets)

    def add(self, *secrets: str | Secret) -> None:
        """Register more secret values."""
        for s in secrets:
            value = s.reveal() if isinstance(s, Secret) else s
            if len(value) >= self.MIN_LEN:
                self._values.add(value)
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(self._values, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        """Return ``text`` with every registered secret replaced by ``***``."""
        if self._pattern is None:
            return text
        return self._pattern.sub("***", text)
