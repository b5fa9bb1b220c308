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

import codecs
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


# ---- readable: text that encodes as UTF-8 whatever bytes it held (was store/text.py) ----


def _to_bytes(exc: UnicodeError) -> tuple[bytes, int]:
    # Encoding: an escaped byte (U+DC80..U+DCFF) becomes that byte; any other lone surrogate
    # becomes U+FFFD.
    assert isinstance(exc, UnicodeEncodeError)
    out = bytearray()
    for ch in exc.object[exc.start : exc.end]:
        code = ord(ch)
        out += bytes([code - 0xDC00]) if 0xDC80 <= code <= 0xDCFF else "\ufffd".encode()
    return bytes(out), exc.end


def _latin1(exc: UnicodeError) -> tuple[str, int]:
    assert isinstance(exc, UnicodeDecodeError)
    return exc.object[exc.start : exc.end].decode("latin-1"), exc.end


codecs.register_error("postwarden.to_bytes", _to_bytes)
codecs.register_error("postwarden.latin1", _latin1)


def readable(text: str) -> str:
    """`text` as valid Unicode that encodes as UTF-8, its undecodable bytes read as Latin-1."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    return text.encode("utf-8", "postwarden.to_bytes").decode("utf-8", "postwarden.latin1")


def readable_value(value: object) -> object:
    return readable(value) if isinstance(value, str) else value
