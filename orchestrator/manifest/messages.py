"""Pydantic errors about the manifest turned into plain sentences.

``describe_error`` says what was wrong and what was expected for one pydantic error, never
showing a value under a password field; ``unknown_key_message`` adds a "did you mean" to an
unknown key. The models themselves are in ``manifest_schema``; ``manifest_check`` positions
these sentences in the file.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from orchestrator.manifest.schema import EmailSource
from orchestrator.suggest import did_you_mean
from orchestrator.units import kind_of

_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
}
_SECRET_FIELDS = frozenset({"password", "root_password"})


def describe_error(model: type[BaseModel], err: ErrorDetails) -> str:
    """Turn one pydantic error into ``what was wrong, what was expected``.

    The offending value is shown only for short non-secret scalars; for anything under a
    password field it is never shown.
    """
    kind = err["type"]
    loc = err["loc"]
    value = err.get("input")
    secret = any(part in _SECRET_FIELDS for part in loc)
    got = "" if secret else f", got {kind_of(value)}"
    if kind == "missing":
        return f"required field '{loc[-1]}' is missing"
    if kind == "extra_forbidden":
        allowed = allowed_keys(model, loc[:-1])
        return unknown_key_message(str(loc[-1]), allowed)
    if kind in _TYPE_WORDS:
        hint = ""
        if kind == "string_type" and isinstance(value, bool):
            hint = " (YAML reads yes/no/on/off/true/false as booleans: quote the value)"
        return f"expected {_TYPE_WORDS[kind]}{got}{hint}"
    if kind in ("literal_error", "enum"):
        expected = err.get("ctx", {}).get("expected", "")
        return f"expected {expected}{got}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        ctx = err.get("ctx", {})
        bound = next(iter(ctx.values()), "")
        words = {
            "greater_than_equal": "at least",
            "less_than_equal": "at most",
            "greater_than": "above",
            "less_than": "below",
        }[kind]
        return f"must be {words} {bound}{got}"
    message = err["msg"]
    return message.removeprefix("Value error, ")


def unknown_key_message(key: str, allowed: Sequence[str]) -> str:
    """Say that ``key`` is unknown, with a "did you mean" or the list of allowed keys."""
    hint = did_you_mean(key, allowed)
    if hint:
        return f"unknown key {key!r}{hint}"
    if allowed:
        return f"unknown key {key!r}; expected one of: {', '.join(allowed)}"
    return f"unknown key {key!r}"


def allowed_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Return the keys the model at ``loc`` inside ``model`` accepts (empty if not a model)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        else:
            origin = typing.get_origin(current)
            args = typing.get_args(current)
            if origin in (list, tuple) and args:
                current = args[0]
            elif origin is dict and len(args) == 2:
                current = args[1]
            else:
                return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [k for k in current.model_fields if k != "value" or current is not EmailSource]
    return []


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` from a type."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp
