"""Secret values and the one redaction filter used by logs, reports and the journal.

A ``Secret`` never shows its value in ``str``, ``repr`` or f-strings; code that must send the
value calls ``reveal()`` at the last moment (the HTTP form body), and nowhere else.
"""

from __future__ import annotations

import base64
import html
import json
import re
import urllib.parse
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
    """Replaces every known secret value in a text by ``***``, in every encoding it travels in.

    A secret goes out form-encoded and may come back quoted by a server or a proxy, so each
    registered value is matched raw and as: percent/form encoding (``+`` or ``%20`` for a
    space, upper- or lower-case hex), JSON string escaping (with and without ``\\/`` and
    ``\\uXXXX``), HTML entities, and base64 of the whole value (standard and URL-safe, with
    or without padding). A line that still decodes (percent, HTML or JSON unescaping) to a
    text containing a secret is replaced whole, for the encodings not enumerated here.

    Secrets shorter than 4 characters are not registered: replacing them would mangle
    ordinary text and they would not be secret anyway. This is the one redaction rule of
    edis-fleet: the API client, the journal, the reports and the terminal all use it.
    """

    MIN_LEN = 4
    WITHHELD = "*** (a line quoting a secret was withheld)"

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
        forms = {form for value in self._values for form in encodings(value)}
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(forms, key=len, reverse=True)
        # Case-sensitive: a secret that happens to be a word must not mask other words; the
        # case variants of escapes (%2f, \u00E9) are enumerated by ``encodings``.
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        """Return ``text`` with every registered secret, in any known encoding, masked."""
        if self._pattern is None:
            return text
        text = self._pattern.sub("***", text)
        if not _ENCODED.search(text):
            return text
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if _ENCODED.search(line) and any(
                self._pattern.search(decoded) for decoded in _decodings(line)
            ):
                lines[i] = self.WITHHELD
        return "\n".join(lines)


_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")
_UNICODE_ESCAPE = re.compile(r"(?<=\\u)[0-9a-f]{4}")
# Characters that start an escape in one of the encodings _decodings undoes.
_ENCODED = re.compile(r"[%+&\\]")


def encodings(value: str) -> set[str]:
    """Return ``value`` and the forms it takes when form-, JSON-, HTML- or base64-encoded."""
    forms = {value}
    for safe in ("", "/", "~", "-_.!~*'()"):
        for quoted in (
            urllib.parse.quote(value, safe=safe),
            urllib.parse.quote_plus(value, safe=safe),
        ):
            forms.add(quoted)
            forms.add(_HEX_ESCAPE.sub(lambda m: m.group().lower(), quoted))
    for ascii_only in (True, False):
        escaped = json.dumps(value, ensure_ascii=ascii_only)[1:-1]
        for form in (escaped, _UNICODE_ESCAPE.sub(lambda m: m.group().upper(), escaped)):
            forms.add(form)
            forms.add(form.replace("/", "\\/"))
    for quote in (True, False):
        forms.add(html.escape(value, quote=quote))
    forms.add(html.escape(value).replace("&#x27;", "&#39;"))
    raw = value.encode("utf-8")
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode("ascii")
        forms.update((text, text.rstrip("=")))
    return {f for f in forms if len(f) >= Redactor.MIN_LEN}


def _decodings(line: str) -> list[str]:
    """Return ``line`` undone from percent/form, HTML and JSON escaping (each and chained)."""
    out = []
    for decoded in (
        urllib.parse.unquote_plus(line),
        urllib.parse.unquote(line),
        html.unescape(line),
        html.unescape(urllib.parse.unquote_plus(line)),
        urllib.parse.unquote_plus(html.unescape(line)),
    ):
        out.append(decoded)
        out.append(_json_unescape(decoded))
    return out


def _json_unescape(text: str) -> str:
    # Undo \n, \", \/ and \uXXXX escapes; anything unreadable is left as it was.
    try:
        result = json.loads(f'"{text}"')
    except (ValueError, RecursionError):
        return text.replace("\\/", "/")
    return result if isinstance(result, str) else text
