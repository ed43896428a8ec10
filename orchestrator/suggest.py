"""The "did you mean" of every message that names something unknown: one rule, one wording.

Unknown manifest keys, tags and groups, ``--limit``/``--only`` values, kvm ids missing from the
account and images a VPS does not offer all point at the closest known name, when one is
close enough.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable

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


# Name comparisons one ``Suggestions`` may spend: under a second of difflib at the worst.
COMPARISONS = 20_000


class Suggestions:
    """``did_you_mean`` for many unknown names at once, within a budget of comparisons.

    Each suggestion compares a name with every choice, so thousands of distinct unknown
    names against thousands of choices would take minutes. Suggestions are remembered per
    name; once ``budget`` comparisons are spent, the rest go without one.
    """

    def __init__(self, budget: int = COMPARISONS) -> None:
        self._budget = budget
        self._known: dict[tuple[str, str], str] = {}

    def __call__(self, word: str, choices: Collection[str], kind: str = "") -> str:
        """Return ``did_you_mean(word, choices)``, or ``""`` once the budget is spent.
        ``kind`` keeps the answers for different sets of choices apart."""
        key = (kind, word)
        known = self._known.get(key)
        if known is None:
            known = ""
            if self._budget >= len(choices):
                self._budget -= len(choices)
                known = did_you_mean(word, choices)
            self._known[key] = known
        return known
