"""Server text made safe to show and store: the one place it is cleaned.

Whatever the API (or anything between us and it) sends back may end up in an error message,
a journal row, a report or the operator's terminal. ``clean`` runs once, at the client
boundary, on every piece of server text: control, format and escape characters are shown
escaped (``\\x1b``, ``\\u202e``) instead of acting on a terminal, whitespace runs become one
space, and the length is capped. ``quotes`` spots server text that repeats a long run of
what we sent (the rendered user data), so the client can withhold it.
"""

from __future__ import annotations

import functools
import html
import ipaddress
import json
import re
import unicodedata
import urllib.parse
from collections.abc import Sequence
from typing import Any

from orchestrator.secrets import Redactor

MAX_TEXT = 300
"""The longest piece of server text kept, in characters (the rest becomes ``…``)."""

WITHHELD = "server text withheld: it quotes the user data sent"

QUOTE_RUN = 32
"""Server text sharing this many consecutive non-blank characters with the user data sent is
withheld: user data may hold secrets a template put there."""

# Unicode categories that never belong in a one-line message: controls (C0, DEL, C1: ESC
# starts terminal escape sequences), format characters (bidi overrides, zero-width joiners),
# line/paragraph separators, surrogates and unassigned code points.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Cn"})
_WHITESPACE = re.compile(r"[ \t\n\r\f\v]+")
_BLANKS = re.compile(r"\s+")


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """Return ``text`` on one line, unsafe characters escaped, at most ``limit`` characters.

    Never raises for any ``str``.
    """
    # Only the part that can survive the cap is examined: a 100 MiB text costs nothing more.
    text = _WHITESPACE.sub(" ", text[: limit * 4]).strip()
    out: list[str] = []
    size = 0
    for char in text:
        piece = char if unicodedata.category(char) not in _UNSAFE_CATEGORIES else _escape(char)
        size += len(piece)
        if size > limit - 1:
            out.append("…")
            break
        out.append(piece)
    return "".join(out)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def quotes(text: str, sent: str, run: int = QUOTE_RUN) -> bool:
    """Return whether ``text``, or its percent/HTML/JSON-decoded form, repeats ``run``
    consecutive non-blank characters of ``sent`` (blanks ignored on both sides)."""
    if not text or len(sent) < run:
        return False
    haystack = _BLANKS.sub("", sent)
    for candidate in _decodings(text):
        needle = _BLANKS.sub("", candidate)
        for start in range(0, len(needle) - run + 1):
            if needle[start : start + run] in haystack:
                return True
    return False


def _decodings(text: str) -> set[str]:
    forms = {
        text,
        urllib.parse.unquote_plus(text),
        urllib.parse.unquote(text),
        html.unescape(text),
    }
    for form in list(forms):
        try:
            decoded = json.loads(f'"{form}"')
        except (ValueError, RecursionError):
            continue
        if isinstance(decoded, str):
            forms.add(decoded)
    # Escaped control characters (\x0a from clean) read as the blanks they were.
    return {f.replace("\\x0a", " ").replace("\\x09", " ") for f in forms}


def scrub(message: str, secrets: Sequence[str], sent: str = "") -> str:
    """Return ``message`` with ``secrets`` masked in every encoding ``Redactor`` knows, or
    ``WITHHELD`` when it quotes ``QUOTE_RUN`` consecutive characters of ``sent`` (the user
    data: too long to fit whole in a capped message, so a quote is a run of it). Never raises.
    """
    short = sent if len(sent) <= 2 * QUOTE_RUN else ""  # short enough to be masked whole
    message = _redactor(tuple(s for s in (*secrets, short) if s))(message)
    if sent and quotes(message, sent):
        return WITHHELD
    return message


@functools.lru_cache(maxsize=256)
def _redactor(secrets: tuple[str, ...]) -> Redactor:
    # One per set of secrets (a VPS's signature and root password): built once, not per attempt.
    return Redactor(secrets)


def clean_details(data: dict[str, Any]) -> dict[str, Any]:
    """Return a ``get/details`` answer with every string cleaned and ``ip.ipv4`` reduced to
    IPv4 literals (``a.b.c.d`` or ``a.b.c.d/n``). Never raises."""
    cleaned = _clean_value(data, depth=0)
    assert isinstance(cleaned, dict)
    ip = cleaned.get("ip")
    if isinstance(ip, dict):
        addresses = ip.get("ipv4")
        if isinstance(addresses, str):
            addresses = [addresses]
        if isinstance(addresses, list):
            ip["ipv4"] = [a for a in addresses if isinstance(a, str) and _is_ipv4(a)]
    return cleaned


def _clean_value(value: object, depth: int) -> object:
    if isinstance(value, str):
        return clean(value, 200)
    if depth >= 4:
        return None  # deeper than any documented field
    if isinstance(value, dict):
        return {clean(str(k), 60): _clean_value(v, depth + 1) for k, v in list(value.items())[:64]}
    if isinstance(value, list):
        return [_clean_value(v, depth + 1) for v in value[:64]]
    return value


def _is_ipv4(text: str) -> bool:
    address = text.split("/", 1)[0].strip()
    try:
        ipaddress.IPv4Address(address)
    except ValueError:
        return False
    return True
