"""Package faces that load their modules on first use (PEP 562), so importing a package (and
``edis-fleet --version``) does not import aiohttp, pydantic, Jinja2 or rich.

A face lists what it exports and from which module; the same imports sit under
``TYPE_CHECKING`` in the face, for type checkers and for the layering check (import-linter
counts them).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for ``package``: the name ``n`` is imported from the
    module ``exports[n]`` when first asked for, and cached in the package.

    The returned ``__getattr__`` raises ``AttributeError`` for a name not in ``exports``.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(importlib.import_module(package), name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*exports, *vars(importlib.import_module(package))})

    return __getattr__, __dir__
