"""What templates see of a VPS's ``vars``: read-only lists and dicts, shared between VPSes.

A large ``vars`` in ``defaults`` is the same for every VPS. Copied for each render it cost
its size times the number of VPSes (100 VPSes sharing 100,000 values: 19 s); here each frozen
value (frozen once per manifest level by ``orchestrator.manifest.vps``) is converted once,
and every render shares the result. Shared values must not change, so they are read-only:
a template that tries gets a ``TypeError``, reported as a template problem.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["ReadOnlyDict", "ReadOnlyList", "SharedVars"]


class _ReadOnly:
    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("vars are read-only in templates; copy them first (e.g. | list)")


class ReadOnlyList(list[Any], _ReadOnly):
    """A list from ``vars``: readable (and JSON-serialisable) like any list, never changed."""

    append = extend = insert = remove = pop = clear = sort = reverse = _ReadOnly._refuse
    __setitem__ = __delitem__ = __iadd__ = __imul__ = _ReadOnly._refuse


class ReadOnlyDict(dict[str, Any], _ReadOnly):
    """A mapping from ``vars``: readable like any dict, never changed."""

    pop = popitem = clear = update = setdefault = _ReadOnly._refuse
    __setitem__ = __delitem__ = __ior__ = _ReadOnly._refuse


class SharedVars:
    """Turns a VPS's frozen ``vars`` into what templates see, sharing the work between VPSes.

    Values frozen once per manifest level (``orchestrator.manifest.vps``) are the same
    objects for every VPS of that level; each is converted once into read-only lists and
    dicts, which every render shares (they cannot be changed, so no render sees another's
    changes). A large ``vars`` then costs its size once, not once per VPS.
    """

    def __init__(self) -> None:
        # id of a frozen value -> (the value, kept alive so the id stays its own; converted)
        self._memo: dict[int, tuple[Any, Any]] = {}

    def thaw(self, frozen: Mapping[str, Any]) -> ReadOnlyDict:
        """Return the template view of one VPS's vars (a fresh top level, shared values)."""
        return ReadOnlyDict((k, self._value(v)) for k, v in frozen.items())

    def _value(self, value: Any) -> Any:
        if not isinstance(value, Mapping | tuple):
            return value
        known = self._memo.get(id(value))
        if known is None:
            if isinstance(value, Mapping):
                converted: Any = ReadOnlyDict((k, self._value(v)) for k, v in value.items())
            else:
                converted = ReadOnlyList(self._value(v) for v in value)
            known = self._memo[id(value)] = (value, converted)
        return known[1]
