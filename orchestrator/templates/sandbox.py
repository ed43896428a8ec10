"""The Jinja2 sandbox templates render in, with bounds on time, memory and output.

Jinja's ``SandboxedEnvironment`` stops attribute escapes but not resource exhaustion:
``{{ 'x' * 10**9 }}`` allocates gigabytes, two nested ``range(99999)`` loops run for hours.
``BoundedEnvironment`` adds, for each render (``Budget``):

- a **deadline** (2 s of wall time) and a cap on **loop iterations** (1,000,000), checked on
  every loop step (each ``{% for %}`` iterable is wrapped), every call (macros included) and
  every intercepted operator; compiling a template has a deadline of its own (5 s);
- caps on **values**: ``*``, ``+``, ``**`` and ``%`` refuse results over 1,000,000 characters
  or items (or integers over 100,000 bits); calls and filters refuse integer arguments above
  1,000,000 and results over the cap; ``replace``, ``join``, ``indent`` and format widths are
  estimated before they run;
- **output**: ``Templates`` renders through ``generate`` and stops past the user-data limit;
- a **memory backstop** (``memory_bound``): while ``check_templates`` renders a fleet (as
  ``validate`` and every command do before anything is sent), the process's address space
  may grow by at most 1 GiB (``RLIMIT_AS``), so anything the checks above miss fails with a
  ``MemoryError`` instead of exhausting the machine.

Exceeding a bound raises ``BoundExceeded`` inside the template, which becomes a template
problem with its file and line.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes
from jinja2.lexer import Token, TokenStream
from jinja2.sandbox import SandboxedEnvironment

__all__ = [
    "MAX_INT_BITS",
    "MAX_LOOP_STEPS",
    "MAX_VALUE_LEN",
    "RENDER_SECONDS",
    "BoundExceeded",
    "BoundedEnvironment",
    "Budget",
    "memory_bound",
]

RENDER_SECONDS = 2.0
COMPILE_SECONDS = 5.0
MAX_LOOP_STEPS = 1_000_000
MAX_VALUE_LEN = 1_000_000
MAX_INT_BITS = 100_000
MEMORY_HEADROOM = 1 << 30
_BOUNDED_ITER = "_edis_fleet_bounded"
# A width or precision in a %-format or str.format spec ("%9999999d", "{:>9999999}").
_PERCENT_WIDTH = re.compile(r"%[#0 +\-]*(\*|[0-9]+)?(?:\.(\*|[0-9]+))?", re.ASCII)
_FORMAT_SPEC = re.compile(r"\{[^{}]*:[^{}]*?([0-9]+)[^{}]*\}", re.ASCII)


class BoundExceeded(Exception):
    """A template went past one of the render bounds; the text says which."""


class Budget:
    """What one render may still spend: a deadline and loop steps."""

    __slots__ = ("deadline", "steps")

    def __init__(self, seconds: float = RENDER_SECONDS, steps: int = MAX_LOOP_STEPS) -> None:
        self.deadline = time.monotonic() + seconds
        self.steps = steps

    def tick(self) -> None:
        """Spend one step; raise ``BoundExceeded`` past the steps or the deadline."""
        self.steps -= 1
        if self.steps & 0xFF == 0:
            if self.steps < 0:
                raise BoundExceeded(
                    f"the template ran more than {MAX_LOOP_STEPS:,} loop steps and calls"
                )
            if time.monotonic() > self.deadline:
                raise BoundExceeded(f"rendering took longer than {RENDER_SECONDS:g} s")


def _weight(value: Any) -> int:
    """The size a value counts for: characters of text, items of a collection (one level)."""
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        return len(value)
    return 1


def _check_len(value: Any, what: str) -> Any:
    if isinstance(value, str | bytes | list | tuple | dict | set | frozenset):
        if len(value) > MAX_VALUE_LEN:
            raise BoundExceeded(f"{what} would be over {MAX_VALUE_LEN:,} characters or items")
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise BoundExceeded(f"{what} would be a number over {MAX_INT_BITS:,} bits")
    return value


def _check_args(args: Iterable[Any], what: str) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_VALUE_LEN:
            raise BoundExceeded(f"{what}: a number argument above {MAX_VALUE_LEN:,} is refused")


def _check_format(text: Any, percent: bool) -> None:
    if not isinstance(text, str):
        return
    if percent:
        widths = [g for m in _PERCENT_WIDTH.finditer(text) for g in m.groups() if g]
    else:
        widths = _FORMAT_SPEC.findall(text)
    for width in widths:
        if width == "*" or len(width) > 6 or int(width) > 10_000:
            raise BoundExceeded("a format width or precision above 10,000 is refused")


def _estimate_replace(text: Any, old: Any, new: Any) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        count = len(text) + 1 if not old else text.count(old)
        if len(text) + count * max(0, len(new) - len(old)) > MAX_VALUE_LEN:
            raise BoundExceeded(f"replace would make over {MAX_VALUE_LEN:,} characters")


def _estimate_join(sep: Any, items: Any) -> None:
    if isinstance(items, list | tuple) and isinstance(sep, str):
        size = len(sep) * len(items) + sum(_weight(i) for i in items)
        if size > MAX_VALUE_LEN:
            raise BoundExceeded(f"join would make over {MAX_VALUE_LEN:,} characters")


def _binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operation whose result would be over the caps, before computing it."""
    ints = isinstance(left, int) and isinstance(right, int)
    if operator == "*":
        if ints:
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise BoundExceeded(f"a product over {MAX_INT_BITS:,} bits is refused")
        elif isinstance(left, int) or isinstance(right, int):
            count, seq = (left, right) if isinstance(left, int) else (right, left)
            if count > 0 and _weight(seq) * count > MAX_VALUE_LEN:
                raise BoundExceeded(
                    f"repeating a value to over {MAX_VALUE_LEN:,} characters or items is refused"
                )
    elif operator == "**":
        if ints and right > 0 and max(1, left.bit_length()) * right > MAX_INT_BITS:
            raise BoundExceeded(f"a power over {MAX_INT_BITS:,} bits is refused")
    elif operator == "+":
        if not ints and _weight(left) + _weight(right) > MAX_VALUE_LEN:
            raise BoundExceeded(f"joining values to over {MAX_VALUE_LEN:,} characters is refused")
    elif operator == "%":
        _check_format(left, percent=True)


# What Jinja passes first to filters marked pass_environment / pass_context / pass_eval_context.
_PASSED = (jinja2.Environment, jinja2.runtime.Context, nodes.EvalContext)


def _bounded_filter(name: str, func: Callable[..., Any], env: BoundedEnvironment) -> Any:
    """Wrap a filter: check its arguments and estimate its result before it runs."""

    estimated = name in ("replace", "join", "indent", "format")
    # The filtered value comes first, after the environment or context for filters that
    # take one; only the arguments after it are checked.
    first = 2 if getattr(func, "jinja_pass_arg", None) is not None else 1

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        env.budget.tick()
        for arg in args[first:]:
            if type(arg) is int and abs(arg) > MAX_VALUE_LEN:
                _check_args(args[first:], f"filter {name}")
        if kwargs:
            _check_args(kwargs.values(), f"filter {name}")
        if estimated:
            _estimate_filter(name, args, kwargs)
        return _check_len(func(*args, **kwargs), f"the result of filter {name}")

    return run


def _estimate_filter(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a filter whose result would be over the caps, before it runs."""
    # Filters marked as taking the environment or context get it first: skip those.
    values = [a for a in args if not isinstance(a, _PASSED)]
    if name == "replace" and len(values) >= 3:
        _estimate_replace(str(values[0]), values[1], values[2])
    elif name == "join" and values:
        items = values[0] if isinstance(values[0], list | tuple) else None
        sep = values[1] if len(values) > 1 else kwargs.get("d", "")
        _estimate_join(sep, items)
    elif name == "indent" and values and isinstance(values[0], str):
        width = values[1] if len(values) > 1 else kwargs.get("width", 4)
        size = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        if len(values[0]) + (values[0].count("\n") + 1) * size > MAX_VALUE_LEN:
            raise BoundExceeded(f"indent would make over {MAX_VALUE_LEN:,} characters")
    elif name == "format" and values:
        _check_format(values[0], percent=True)


class BoundedEnvironment(SandboxedEnvironment):
    """A ``SandboxedEnvironment`` whose renders are bounded (see the module text).

    Set ``budget`` to a fresh ``Budget`` before each render.
    """

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budget = Budget()
        self.globals.pop("lipsum", None)  # makes text by the paragraph; no use in user data
        for name, func in list(self.filters.items()):
            self.filters[name] = _bounded_filter(name, func, self)
        self.filters[_BOUNDED_ITER] = self._bounded_iter

    def _bounded_iter(self, iterable: Any) -> Iterator[Any]:
        tick = self.budget.tick
        for item in iterable:
            tick()
            yield item

    def _tokenize(
        self,
        source: str,
        name: str | None,
        filename: str | None = None,
        state: str | None = None,
    ) -> TokenStream:
        """Tokenize as Jinja does, within a deadline: parsing costs tens of microseconds a
        token, so a dense 1 MiB template would otherwise compile for a long time."""
        stream = super()._tokenize(source, name, filename, state)
        return TokenStream(_timed_tokens(stream), name, filename)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Parse as Jinja does, then wrap every ``{% for %}`` iterable in a step counter."""
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Filter(
                loop.iter, _BOUNDED_ITER, [], [], None, None, lineno=loop.iter.lineno
            )
        return tree

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        """Run an intercepted operator after checking its result stays within the caps."""
        self.budget.tick()
        _binop(operator, left, right)
        return _check_len(super().call_binop(context, operator, left, right), "a value")

    def call(
        __self,  # Jinja's own signature: keyword arguments pass through untouched
        __context: jinja2.runtime.Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Call from a template (functions, methods, macros) within the bounds."""
        __self.budget.tick()
        name = getattr(__obj, "__name__", "a function")
        _check_args([*args, *kwargs.values()], f"calling {name}")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            if name == "replace" and len(args) >= 2:
                _estimate_replace(owner, args[0], args[1])
            elif name == "join" and args:
                _estimate_join(owner, args[0])
            elif (
                name == "expandtabs"
                and owner.count("\t") * (args[0] if args else 8) > MAX_VALUE_LEN
            ):
                raise BoundExceeded(f"expandtabs would make over {MAX_VALUE_LEN:,} characters")
        result = super().call(__context, __obj, *args, **kwargs)
        return _check_len(result, f"the result of {name}")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``str.format`` as the sandbox allows it, refusing huge widths first."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_format(getattr(value, "__self__", None), percent=False)
        return wrapped


def _timed_tokens(tokens: Iterable[Token]) -> Iterator[Token]:
    deadline = time.monotonic() + COMPILE_SECONDS
    for count, token in enumerate(tokens):
        if count & 0xFF == 0 and time.monotonic() > deadline:
            raise BoundExceeded(f"compiling the template took longer than {COMPILE_SECONDS:g} s")
        yield token


def _address_space() -> int | None:
    try:  # os-level calls: this runs once per render in apply (about 10 us)
        fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        try:
            return int(os.read(fd, 200).split()[0]) * _PAGE
        finally:
            os.close(fd)
    except (OSError, ValueError, IndexError):
        return None


_PAGE = resource.getpagesize()


@contextlib.contextmanager
def memory_bound(headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """While inside, let the address space grow by at most ``headroom`` bytes (Linux).

    A backstop for allocations the template checks do not foresee: they fail with
    ``MemoryError`` (a template problem) instead of exhausting the machine. Does nothing where
    the size cannot be read or a lower limit is already set. Nested uses keep the outer one.
    """
    if _bound_depth[0]:
        yield
        return
    _bound_depth[0] += 1
    try:
        with _set_memory_bound(headroom):
            yield
    finally:
        _bound_depth[0] -= 1


# How many memory_bound blocks are open (renders run on one thread at a time).
_bound_depth = [0]


@contextlib.contextmanager
def _set_memory_bound(headroom: int) -> Iterator[None]:
    size = _address_space()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if size is None:
        yield
        return
    limit = size + headroom
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft != resource.RLIM_INFINITY and soft <= limit:
        yield
        return
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ValueError, OSError):
        yield
        return
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
