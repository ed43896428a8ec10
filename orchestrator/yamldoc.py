"""Safe YAML loading that remembers where every value came from.

pyyaml's loaders forget positions once a value is constructed, and silently keep the last of
two equal keys. ``load_yaml`` reads the parser's *event* stream (libyaml through
``CSafeLoader`` when available) and builds plain Python data from it itself, keeping a light
"shadow" tree of marks beside the data. Duplicate keys, unsupported tags, merge keys and
recursive aliases become problems with a position, and any later problem about a field path
can be mapped back to ``file:line:col`` with ``YamlDocument.position``.

Why events and not nodes: composing pyyaml nodes runs the Python resolver for every value
and cost about 1 s for a 10,000-VPS manifest here; building from events costs a fraction of
that, and plain scalars are resolved only when their first character could make them
something other than a string.

Only the YAML core types are built (mappings, sequences, strings, numbers, booleans, null,
timestamps); anything tagged otherwise is refused, so no YAML can construct Python objects.
Aliases share the anchored value instead of copying it.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

PathPart = str | int
FieldPath = tuple[PathPart, ...]

_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_SCALAR_TAGS = frozenset(
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "timestamp")
)
# Aliases can make a small file expand exponentially ("billion laughs"); no real manifest
# comes anywhere near this many values.
MAX_NODES = 2_000_000
# Nesting deeper than this is refused before the builder (which recurses per level) could
# run out of stack; real manifests and cloud-configs nest a handful of levels.
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class Position:
    """A 1-based line and column in a file."""

    line: int
    column: int


@dataclass(frozen=True, slots=True)
class YamlProblem:
    """A problem found while reading YAML: where, which field, what."""

    position: Position
    path: FieldPath
    message: str


def format_path(path: Sequence[PathPart]) -> str:
    """Render a field path as ``vps[3].readiness.port``."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            out.append(f".{part}" if out else str(part))
    return "".join(out)


def _pos(mark: Any) -> Position:
    return Position(mark.line + 1, mark.column + 1)


# The shadow tree: for a mapping, key -> (key mark, value mark, child shadow); for a
# sequence, a list of (value mark, child shadow); for a scalar, its style character.
Shadow = dict[Any, tuple[Any, Any, Any]] | list[tuple[Any, Any]] | str | None


class YamlDocument:
    """Data built from one YAML document, plus the marks to find positions in.

    ``data`` is plain Python (dict, list, str, int, float, bool, None, date). Where a key was
    duplicated, the first value is kept (and a problem recorded).
    """

    def __init__(self, data: Any, shadow: Shadow, root_mark: Any) -> None:
        self.data = data
        self._shadow = shadow
        self._root_mark = root_mark

    def _follow(self, path: Sequence[PathPart]) -> tuple[Any, Any, Shadow, int]:
        """Return (value mark, key mark, shadow, depth) of the deepest point ``path`` reaches."""
        mark, key_mark, shadow, depth = self._root_mark, None, self._shadow, 0
        for part in path:
            if isinstance(shadow, dict):
                entry = shadow.get(part)
                if entry is None:
                    break
                key_mark, mark, shadow = entry
            elif isinstance(shadow, list) and isinstance(part, int) and 0 <= part < len(shadow):
                key_mark = None
                mark, shadow = shadow[part]
            else:
                break
            depth += 1
        return mark, key_mark, shadow, depth

    def has(self, path: Sequence[PathPart]) -> bool:
        """Return whether the document has a value at ``path``."""
        return self._follow(path)[3] == len(path)

    def position(self, path: Sequence[PathPart], *, key: bool = False) -> Position:
        """Return where the value at ``path`` starts, or its nearest existing ancestor.

        With ``key=True`` and a path that ends at a mapping key, the key's own position is
        returned (used for "unknown key" problems).
        """
        mark, key_mark, _, depth = self._follow(path)
        if key and key_mark is not None and depth == len(path):
            return _pos(key_mark)
        return Position(1, 1) if mark is None else _pos(mark)

    def text_line(self, path: Sequence[PathPart]) -> int | None:
        """For a string at ``path``, return the file line its text starts on.

        A literal or folded block (``|`` / ``>``) starts on the line after its indicator;
        other scalars start where the value starts. None when nothing is at ``path``.
        """
        mark, _, shadow, depth = self._follow(path)
        if depth != len(path) or mark is None:
            return None
        line: int = mark.line + 1
        return line + 1 if shadow in ("|", ">") else line


_RESOLVER: Any = yaml.resolver.Resolver()


def plain_scalar_tag(value: str) -> str:
    """Return the short YAML type (``str``, ``int``, ``bool``...) of ``value`` written bare."""
    tag: str = _RESOLVER.resolve(yaml.ScalarNode, value, (True, False))
    return tag.rsplit(":", 1)[-1]


class YamlSyntaxError(Exception):
    """The text is not YAML at all; ``problem`` says where."""

    def __init__(self, problem: YamlProblem) -> None:
        self.problem = problem
        super().__init__(problem.message)


def load_yaml(text: str) -> tuple[YamlDocument, list[YamlProblem]]:
    """Parse one YAML document safely; return it with the problems found while building it.

    An empty text gives a document whose ``data`` is None. Raises ``YamlSyntaxError`` when
    the text cannot be parsed (the problem carries the parser's position and message).
    """
    loader: Any = _Loader(text)
    builder = _Builder(loader)
    # The builder makes hundreds of thousands of small containers that are never garbage;
    # the cyclic collector scanning them again and again tripled the load time (0.3 s -> 1 s
    # for 10,000 VPSes), so it is paused while building.
    collecting = gc.isenabled()
    gc.disable()
    try:
        data, shadow, mark = builder.document()
    except yaml.MarkedYAMLError as exc:
        raise YamlSyntaxError(_syntax_problem(exc)) from None
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(YamlProblem(Position(1, 1), (), str(exc))) from None
    finally:
        loader.dispose()
        if collecting:
            gc.enable()
    return YamlDocument(data, shadow, mark), builder.problems


def _syntax_problem(exc: yaml.MarkedYAMLError) -> YamlProblem:
    mark = exc.problem_mark or exc.context_mark
    position = _pos(mark) if mark is not None else Position(1, 1)
    parts = [p for p in (exc.context, exc.problem) if p]
    # The parser's own words only, never the snippet of the file str(exc) would append.
    message = "YAML syntax error: " + ", ".join(parts)
    if exc.context_mark is not None and exc.problem_mark is not None and exc.context:
        line = exc.context_mark.line + 1
        if line != position.line:
            message += f" (started on line {line})"
    return YamlProblem(position, (), message)


class _Builder:
    """Builds plain data and its shadow tree from parser events, recording problems."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader
        self._get: Callable[[], Any] = loader.get_event
        self._constructors = loader.yaml_constructors
        self._resolvers = loader.yaml_implicit_resolvers
        self._anchors: dict[str, tuple[Any, Shadow, int]] = {}
        self._count = 0
        self._depth = 0
        self.problems: list[YamlProblem] = []

    def _problem(self, mark: Any, path: FieldPath, message: str) -> None:
        self.problems.append(YamlProblem(_pos(mark), path, message))

    def document(self) -> tuple[Any, Shadow, Any]:
        """Read the stream; return (data, shadow, root mark) of its only document."""
        self._get()  # StreamStartEvent
        event = self._get()
        if isinstance(event, yaml.StreamEndEvent):
            return None, None, None
        first = self._get()  # after DocumentStartEvent: the root value
        data, shadow = self._value(first, ())
        self._get()  # DocumentEndEvent
        event = self._get()
        if not isinstance(event, yaml.StreamEndEvent):
            self._problem(event.start_mark, (), "expected one YAML document, found a second one")
        return data, shadow, first.start_mark

    def _grow(self, by: int, event: Any) -> None:
        self._count += by
        if self._count > MAX_NODES:
            # Fatal: later steps walk values in full, and aliases can make that exponential.
            raise YamlSyntaxError(
                YamlProblem(
                    _pos(event.start_mark),
                    (),
                    f"the document expands to over {MAX_NODES} values (aliases?); refused",
                )
            )

    def _value(self, event: Any, path: FieldPath) -> tuple[Any, Shadow]:
        self._grow(1, event)
        shadow: Shadow
        if isinstance(event, yaml.ScalarEvent):
            value, shadow = self._scalar(event, path), event.style or None
        elif isinstance(event, yaml.AliasEvent):
            anchored = self._anchors.get(event.anchor or "")
            if anchored is None:
                # libyaml reports unknown aliases itself; what is left is an alias used inside
                # the very value that defines its anchor.
                self._problem(event.start_mark, path, "recursive alias: a value contains itself")
                return None, None
            self._grow(anchored[2], event)
            return anchored[0], anchored[1]
        else:
            before = self._count
            self._depth += 1
            if self._depth > MAX_DEPTH:
                # Fatal: the rest of the document cannot be read without going deeper.
                raise YamlSyntaxError(
                    YamlProblem(
                        _pos(event.start_mark),
                        (),
                        f"values nested more than {MAX_DEPTH} levels deep; refused",
                    )
                )
            if isinstance(event, yaml.SequenceStartEvent):
                value, shadow = self._sequence(event, path)
            else:
                value, shadow = self._mapping(event, path)
            self._depth -= 1
            if event.anchor is not None:
                self._anchors[event.anchor] = (value, shadow, self._count - before)
            return value, shadow
        if event.anchor is not None:
            self._anchors[event.anchor] = (value, shadow, 1)
        return value, shadow

    def _tag(self, event: Any) -> str:
        tag: str | None = event.tag
        if tag is not None and tag != "!":
            return tag
        if event.implicit[0]:
            value: str = event.value
            # Only values whose first character some resolver claims can be non-strings.
            if value and value[0] not in self._resolvers:
                return _STR
            resolved: str = self._loader.resolve(yaml.ScalarNode, value, event.implicit)
            return resolved
        return _STR

    def _scalar(self, event: Any, path: FieldPath) -> Any:
        tag = self._tag(event)
        if tag == _STR:
            return event.value
        if tag not in _SCALAR_TAGS:
            if tag == _MERGE:
                return "<<"
            self._problem(
                event.start_mark, path, f"unsupported YAML tag {tag}; only plain values are read"
            )
            return None
        node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        try:
            return self._constructors[tag](self._loader, node)
        except (yaml.YAMLError, ValueError) as exc:
            self._problem(event.start_mark, path, f"cannot read this value: {exc}")
            return None

    def _collection_tag_ok(self, event: Any, expected: str, path: FieldPath) -> bool:
        tag = event.tag
        if tag is None or tag in ("!", expected):
            return True
        self._problem(event.start_mark, path, f"unsupported YAML tag {tag}")
        return False

    def _sequence(self, start: Any, path: FieldPath) -> tuple[Any, Shadow]:
        ok = self._collection_tag_ok(start, _SEQ, path)
        items: list[Any] = []
        shadow: list[tuple[Any, Any]] = []
        event = self._get()
        while not isinstance(event, yaml.SequenceEndEvent):
            value, child = self._value(event, (*path, len(items)))
            items.append(value)
            shadow.append((event.start_mark, child))
            event = self._get()
        return (items if ok else None), shadow

    def _mapping(self, start: Any, path: FieldPath) -> tuple[Any, Shadow]:
        ok = self._collection_tag_ok(start, _MAP, path)
        result: dict[Any, Any] = {}
        shadow: dict[Any, tuple[Any, Any, Any]] = {}
        event = self._get()
        while not isinstance(event, yaml.MappingEndEvent):
            key_mark = event.start_mark
            if not isinstance(event, yaml.ScalarEvent):
                self._problem(key_mark, path, "a mapping key must be a plain value")
                self._value(event, path)  # consume the key
                self._value(self._get(), path)  # and its value
                event = self._get()
                continue
            key = self._scalar(event, path)
            value_event = self._get()
            if self._tag(event) == _MERGE:
                self._problem(
                    key_mark,
                    path,
                    "YAML merge keys (<<) are not supported; put shared settings in "
                    "'defaults' or in a group",
                )
                self._value(value_event, path)
            elif key in shadow:
                self._problem(
                    key_mark,
                    (*path, key) if isinstance(key, str | int) else path,
                    f"duplicate key {key!r} (first on line {shadow[key][0].line + 1}); "
                    "YAML would silently keep only the last one",
                )
                self._value(value_event, path)
            else:
                child_path = (*path, key) if isinstance(key, str | int) else path
                value, child = self._value(value_event, child_path)
                try:
                    result[key] = value
                except TypeError:
                    self._problem(key_mark, path, "a mapping key must be a plain value")
                else:
                    shadow[key] = (key_mark, value_event.start_mark, child)
            event = self._get()
        return (result if ok else None), shadow
