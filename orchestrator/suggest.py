"""The "did you mean" of every message that names something unknown: one rule, one wording.

Unknown manifest keys, tags and groups, ``--limit``/``--only`` values, kvm ids missing from the
account and images a VPS does not offer all point at the closest known name, when one is
close enough.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# difflib's similarity ratio a suggestion needs: below it, a guess misleads more than it helps.
CUTOFF = 0.6


def closest(word: str, choices: Iterable[str]) -> str | None:
    """Return the choice most like ``word`` (difflib ratio at least ``CUTOFF``), or None."""
    matches = difflib.get_close_matches(word, list(choices), n=1, cutoff=CUTOFF)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or ``""`` when none is close,
    to be appended to a message about ``word``."""
    match = closest(word, choices)
    return "" if match is None else f"; did you mean {match!r}?"
