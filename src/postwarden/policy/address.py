"""The header From address, read by a parser that cannot be fooled, in bounded time.

Exactly one From header holding exactly one address, in the plain grammar legitimate mail
uses: `addr-spec`, or `display-name <addr-spec>`. Everything outside it is a violation, never
a guess: groups, lists, route addresses, domain literals, quoted local parts, an encoded-word
inside the address, NUL, CR or LF, raw 8-bit bytes, unbalanced brackets or quotes, nested
comments, and an address (or a look-alike of one) in the display name or a comment.

Look-alikes: every RFC 2047 encoded-word in the display name (quoted or not) and in a comment
is decoded and NFKC-normalised, and the result may hold none of `@ < > , ; : "` (so U+FF20
FULLWIDTH COMMERCIAL AT, U+FE6B SMALL COMMERCIAL AT and ISO-2022-JP's full-width @ all count as
`@`), no angle-bracket look-alike NFKC leaves alone (U+2039, U+3008, U+27E8, ...), no control
character and no bidi override. Raw comments may hold no `@ < >`.

Last, Python's email package must read the same one address: a value two parsers read
differently is refused.

Bounded: a From value over MAX_FROM_LENGTH characters is refused before anything else reads it
(the email package's header parser is quadratic on long phrases), every step here is linear,
problem texts quote at most a short, escaped excerpt of the value, and the cache of results is
bounded in entries and in the characters its keys hold.
"""

from __future__ import annotations

import email.errors
import email.header
import email.policy
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass

# The longest From value read, in characters (after unfolding, a value is at most this long).
# A real From is one address and a name: under 200 characters, a few hundred when the name is
# encoded. 2,048 keeps the whole read, the email package included, around 30 ms at worst.
MAX_FROM_LENGTH = 2048
# Comments and quoted names are where the email package's cross-check spends its time (600
# comments in 2 KB took 0.1-0.2 s of held GIL); a real From has one or two of each.
MAX_FROM_COMMENTS = 8

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*$")
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# An unquoted display name: atoms and spaces (and dots, which real mail often has).
_PHRASE_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~. -]*$")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,64}\?[BbQq]\?[^?\s]*\?=")
# What a decoded, NFKC-normalised encoded-word may not hold: the characters that make
# an address, a list or a group, and brackets NFKC does not fold to < and >.
_SPECIALS = frozenset('@<>,;:"')
_ANGLE_LOOKALIKES = frozenset(
    "\u2039\u203a\u2329\u232a\u276c\u276d\u276e\u276f\u27e8\u27e9\u3008\u3009\u300a\u300b"
)
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

# The cache: results for the same From value again (a newsletter, a web form). Bounded in
# entries and in the characters of the values it keeps.
_CACHE_ENTRIES = 4096
_CACHE_CHARS = 2 * 1024 * 1024
_EXCERPT = 60


@dataclass(frozen=True)
class FromResult:
    address: str = ""
    domain: str = ""
    problem: str = ""  # why no single address could be read


def _fail(problem: str) -> FromResult:
    return FromResult(problem=problem)


def excerpt(value: str, limit: int = _EXCERPT) -> str:
    """A short, escaped quotation of a (possibly huge, possibly hostile) value for a problem
    text: at most `limit` characters of it, control characters escaped by repr()."""
    if len(value) <= limit:
        return repr(value)
    return repr(value[:limit]) + f"... ({len(value):,} characters)"


def from_size_problem(values: list[str] | tuple[str, ...]) -> str:
    """O(1) per header: the problem when the From headers cannot be read in bounded time (more
    than one, or one over MAX_FROM_LENGTH), else "". header_from() starts with this check;
    a caller may use it to refuse early without parsing."""
    if len(values) > 1:
        return f"the message has {len(values)} From headers; it needs exactly one"
    if values and len(values[0]) > MAX_FROM_LENGTH:
        return (
            f"the From header is {len(values[0]):,} characters long; postwarden reads at most "
            f"{MAX_FROM_LENGTH:,}: send one address and a short display name"
        )
    return ""


def _decoded_problem(text: str, where: str) -> str:
    """Decode the encoded-words in `text`; the problem when the decoded, NFKC-normalised result
    could be read as (part of) an address, or hides text."""
    if "=?" not in text:
        return ""
    try:
        decoded = str(email.header.make_header(email.header.decode_header(text)))
    except (email.errors.HeaderParseError, UnicodeDecodeError, LookupError, ValueError):
        return f"an undecodable encoded-word in the {where}"
    normal = unicodedata.normalize("NFKC", decoded)
    for ch in normal:
        if ch in _SPECIALS or ch in _ANGLE_LOOKALIKES:
            return f"an encoded-word in the {where} that decodes to {ch!r} (an address look-alike)"
        if ch in _BIDI or unicodedata.category(ch) == "Cc":
            return f"an encoded-word in the {where} that decodes to a control character"
    return ""


def _strip_comments(text: str) -> tuple[str, str]:
    """Remove (comments) outside quotes; a problem if one nests, is unbalanced, or holds an
    address or its look-alike (raw, or in an encoded-word)."""
    out: list[str] = []
    comment: list[str] = []
    depth, quoted, escaped = 0, False, False
    for ch in text:
        if escaped:
            (comment if depth else out).append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
            (comment if depth else out).append(ch)
        elif quoted:
            out.append(ch)
            if ch == '"':
                quoted = False
        elif ch == '"' and not depth:
            quoted = True
            out.append(ch)
        elif ch == "(":
            depth += 1
            if depth > 1:
                return "", "a nested comment"
        elif ch == ")":
            if not depth:
                return "", "an unbalanced ')'"
            depth -= 1
            body = "".join(comment)
            if "@" in body or "<" in body or ">" in body:
                return "", "a comment holding an address"
            if problem := _decoded_problem(body, "comment"):
                return "", problem
            comment = []
            out.append(" ")
        elif depth:
            comment.append(ch)
        else:
            out.append(ch)
    if depth or quoted:
        return "", "an unbalanced quote or comment"
    return "".join(out), ""


def _unescape(inner: str) -> tuple[str, bool]:
    """A quoted-string's content without its backslash escapes, and whether it held an
    unescaped quote (linear; no regex backtracking)."""
    out: list[str] = []
    escaped = False
    for ch in inner:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            return "", True
        else:
            out.append(ch)
    return "".join(out), escaped


def _display_name_problem(name: str) -> str:
    name = name.strip()
    if not name:
        return ""
    if name.startswith('"'):
        if not name.endswith('"') or len(name) < 2:
            return "a display name with stray quotes"
        text, stray = _unescape(name[1:-1])
        if stray:
            return "a display name with stray quotes"
    else:
        if '"' in name or not _PHRASE_ATOM.match(_ENCODED_WORD.sub("x", name)):
            return f"a display name with special characters ({excerpt(name)})"
        text = name
    if "@" in text or "<" in text or ">" in text:
        return "a display name holding an address"
    return _decoded_problem(text, "display name")


def _domain_ok(domain: str) -> bool:
    labels = domain.split(".")
    return len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def _python_reads(value: str) -> list[str]:
    try:
        header = email.policy.default.header_factory("From", value)
        return [a.addr_spec for a in header.addresses]
    except (email.errors.HeaderParseError, IndexError, ValueError, TypeError, AttributeError):
        return []


class _BoundedCache:
    """A thread-safe LRU of From results bounded in entries and in key characters."""

    def __init__(self, entries: int, chars: int) -> None:
        self._items: OrderedDict[str, FromResult] = OrderedDict()
        self._entries, self._chars, self._size = entries, chars, 0
        self._lock = threading.Lock()

    def get(self, key: str) -> FromResult | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, result: FromResult) -> None:
        with self._lock:
            if key in self._items:
                return
            self._items[key] = result
            self._size += len(key)
            while len(self._items) > self._entries or self._size > self._chars:
                old, _ = self._items.popitem(last=False)
                self._size -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0

    def stats(self) -> tuple[int, int]:
        """(entries, characters of the keys held)."""
        with self._lock:
            return len(self._items), self._size


_cache = _BoundedCache(_CACHE_ENTRIES, _CACHE_CHARS)


def header_from(values: list[str] | tuple[str, ...]) -> FromResult:
    """The one From address of a message, or why there is none. Linear in the values' size,
    never more than MAX_FROM_LENGTH characters read."""
    if not values:
        return _fail("the message has no From header")
    if problem := from_size_problem(values):
        return _fail(problem)
    value = values[0]
    found = _cache.get(value)
    if found is None:
        # Pure, and the same From comes again and again: reading it twice through the email
        # package costs more than the rest of the engine.
        found = _read(value)
        _cache.put(value, found)
    return found


def _read(raw: str) -> FromResult:
    value = _FOLD.sub(" ", raw)
    if any(c in value for c in "\0\r\n"):
        return _fail("the From header holds a NUL, CR or LF")
    if any(ord(c) > 126 or (ord(c) < 32 and c != "\t") for c in value):
        return _fail("the From header holds raw 8-bit or control characters")
    if value.count("(") > MAX_FROM_COMMENTS or value.count('"') > 2 * MAX_FROM_COMMENTS:
        return _fail(
            f"the From header holds more than {MAX_FROM_COMMENTS} comments or quoted names:"
            " send one name and one address"
        )
    text, problem = _strip_comments(value)
    if problem:
        return _fail(f"the From header holds {problem}")
    text = text.strip()
    if "<" in text or ">" in text:
        if text.count("<") != 1 or text.count(">") != 1 or not text.endswith(">"):
            return _fail(f"the From header must hold exactly one <address>, not {excerpt(value)}")
        name, _, rest = text.partition("<")
        addr = rest[:-1].strip()
        if problem := _display_name_problem(name):
            return _fail(f"the From header holds {problem}")
    else:
        addr = text
    if any(c in addr for c in ',;:"[]\\ ') or addr.startswith("@"):
        return _fail(f"the From header must hold one plain address, not {excerpt(value)}")
    if "=?" in addr:
        return _fail("the From header holds an encoded-word inside the address")
    local, at, domain = addr.rpartition("@")
    if not at or not _LOCAL.match(local) or not _domain_ok(domain):
        return _fail(f"the From header address {excerpt(addr)} is not a plain user@domain")
    if [a.lower() for a in _python_reads(value)] != [addr.lower()]:
        return _fail(f"the From header {excerpt(value)} reads differently to another parser")
    return FromResult(address=addr, domain=domain.lower())
