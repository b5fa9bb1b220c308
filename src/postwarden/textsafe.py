"""Hostile text made safe to show: on a terminal, and in a key=value log line.

Every header value, address and reason text postwarden prints came from a sender. A terminal
obeys what it is sent: ESC starts a command (clear the screen, retitle the window, rewrite
what the admin sees), CR and backspace overwrite a line, bidi overrides reverse it. So every
such character is printed as a visible escape instead:

- C0 controls, DEL and C1 controls: `\\x1b`, `\\x7f`, `\\x9b` (tab and newline too, in a field);
- bidi controls (U+202A-202E, U+2066-2069, U+200E, U+200F, U+061C), line and paragraph
  separators, and other invisible format characters that move or hide text: `\\u202e`;
- a byte that was not valid UTF-8 (kept by surrogateescape, as pymilter hands headers over):
  `\\xe9`.

Everything else, non-ASCII letters included, is shown as it is.
"""

from __future__ import annotations

import unicodedata

# Format characters that reorder or hide text. (Not every Cf: U+200D ZERO WIDTH JOINER is in
# every emoji family and U+00AD SOFT HYPHEN in hyphenated names.)
_INVISIBLE = frozenset(
    "\u061c\u200b\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2060\u2061\u2062\u2063\u2064"
    "\u2066\u2067\u2068\u2069\u206a\u206b\u206c\u206d\u206e\u206f\ufeff\ufff9\ufffa\ufffb"
)
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp", "Co", "Cn"})


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a raw byte kept by surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _unsafe(ch: str) -> bool:
    if " " <= ch <= "~":
        return False
    return ch in _INVISIBLE or unicodedata.category(ch) in _UNSAFE_CATEGORIES


def _render(value: str, keep: str) -> str:
    if value.isascii() and value.isprintable():
        return value
    return "".join(_escape(ch) if _unsafe(ch) and ch not in keep else ch for ch in value)


def printable(value: str) -> str:
    """`value` with every control, bidi or invisible character (newline and tab included) as a
    visible escape: safe to print in one table cell or line."""
    return _render(value, "")


def printable_lines(text: str) -> str:
    """Like printable() for a multi-line text (a message's headers): newlines and tabs are
    kept, CR and every other control shown as an escape."""
    return _render(text, "\n\t")


_PLAIN = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789@.-_+:/[]<>,;!#$%&'*?^`{|}~()"
)


def logfield(value: str) -> str:
    """`value` as one field of a key=value log line: as it is when it is plain (letters,
    digits and address punctuation), else in double quotes with `\\` and `"` escaped and every
    unsafe character as in printable(). A value can never end its field early or forge
    another (`"a b=c"` stays one field); "" is `""`."""
    if value and all(ch in _PLAIN for ch in value):
        return value
    inner = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + printable(inner) + '"'
