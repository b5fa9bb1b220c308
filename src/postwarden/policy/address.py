"""The header From address, read by a parser that cannot be fooled.

Exactly one From header holding exactly one address, in the plain grammar legitimate mail
uses: `addr-spec`, or `display-name <addr-spec>`. Everything outside it is a violation, never
a guess: groups, lists, route addresses, domain literals, quoted local parts, an address in
the display name or a comment (also once decoded from an encoded-word), NUL, CR or LF, raw
8-bit bytes, unbalanced brackets. Last, Python's email package must read the same one
address: a value two parsers read differently is refused.
"""

from __future__ import annotations

import email.errors
import email.header
import email.policy
import functools
import re
from dataclasses import dataclass

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*$")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(r"^(?:" + _LABEL + r"\.)+" + _LABEL + r"$")
# An unquoted display name: atoms and spaces (and dots, which real mail often has).
_PHRASE_ATOM = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~. -]*$")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=")


@dataclass(frozen=True)
class FromResult:
    address: str = ""
    domain: str = ""
    problem: str = ""  # why no single address could be read


def _fail(problem: str) -> FromResult:
    return FromResult(problem=problem)


def _strip_comments(text: str) -> tuple[str, str]:
    """Remove (comments) outside quotes; a problem if one nests, is unbalanced or holds @."""
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
            if "@" in "".join(comment):
                return "", "a comment holding an address"
            comment = []
            out.append(" ")
        elif depth:
            comment.append(ch)
        else:
            out.append(ch)
    if depth or quoted:
        return "", "an unbalanced quote or comment"
    return "".join(out), ""


def _display_name_problem(name: str) -> str:
    name = name.strip()
    if not name:
        return ""
    if name.startswith('"'):
        if not name.endswith('"') or len(name) < 2:
            return "a display name with stray quotes"
        inner = name[1:-1]
        if re.search(r'(?<!\\)"', inner):
            return "a display name with stray quotes"
        text = re.sub(r"\\(.)", r"\1", inner)
    else:
        if '"' in name or not _PHRASE_ATOM.match(re.sub(_ENCODED_WORD, "x", name)):
            return f"a display name with special characters ({name!r})"
        text = name
    if "@" in text or "<" in text or ">" in text:
        return "a display name holding an address"
    if "=?" in text:
        try:
            decoded = str(email.header.make_header(email.header.decode_header(text)))
        except (email.errors.HeaderParseError, UnicodeDecodeError, LookupError, ValueError):
            return "an undecodable encoded-word in the display name"
        if "@" in decoded or "<" in decoded or "," in decoded:
            return "an encoded-word that decodes to an address"
    return ""


def _python_reads(value: str) -> list[str]:
    try:
        header = email.policy.default.header_factory("From", value)
        return [a.addr_spec for a in header.addresses]
    except (email.errors.HeaderParseError, IndexError, ValueError, TypeError, AttributeError):
        return []


def header_from(values: list[str]) -> FromResult:
    return _header_from(tuple(values))


@functools.lru_cache(maxsize=4096)
def _header_from(values: tuple[str, ...]) -> FromResult:
    # Pure, and the same From comes again and again (a newsletter, a web form): reading it
    # twice through the email package costs more than the rest of the engine.
    if not values:
        return _fail("the message has no From header")
    if len(values) > 1:
        return _fail(f"the message has {len(values)} From headers; it needs exactly one")
    raw = values[0]
    value = _FOLD.sub(" ", raw)
    if any(c in value for c in "\0\r\n"):
        return _fail("the From header holds a NUL, CR or LF")
    if any(ord(c) > 126 or (ord(c) < 32 and c != "\t") for c in value):
        return _fail("the From header holds raw 8-bit or control characters")
    text, problem = _strip_comments(value)
    if problem:
        return _fail(f"the From header holds {problem}")
    text = text.strip()
    if "<" in text or ">" in text:
        if text.count("<") != 1 or text.count(">") != 1 or not text.endswith(">"):
            return _fail(f"the From header must hold exactly one <address>, not {value!r}")
        name, _, rest = text.partition("<")
        addr = rest[:-1].strip()
        if problem := _display_name_problem(name):
            return _fail(f"the From header holds {problem}")
    else:
        addr = text
    if any(c in addr for c in ',;:"[]\\ ') or addr.startswith("@"):
        return _fail(f"the From header must hold one plain address, not {value!r}")
    local, at, domain = addr.rpartition("@")
    if not at or not _LOCAL.match(local) or not _DOMAIN.match(domain):
        return _fail(f"the From header address {addr!r} is not a plain user@domain")
    if [a.lower() for a in _python_reads(value)] != [addr.lower()]:
        return _fail(f"the From header {value!r} reads differently to another parser")
    return FromResult(address=addr, domain=domain.lower())
