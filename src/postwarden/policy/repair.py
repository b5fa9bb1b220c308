"""Header repairs made before signing ([headers].repair): pure, linear, and never a guess.

Two repairs, for what PHP's mail(), CMS plugins and old clients write and every big receiver
accepts:

- **encode**: valid UTF-8 text in a header of a message sent without SMTPUTF8 becomes RFC 2047
  encoded words (`=?utf-8?q?...?=`, at most 75 characters each), reading the same once
  decoded. In Subject and the other unstructured headers every run of words holding non-ASCII
  characters is encoded (ASCII words stay as they are); in an address header (From, To, ...)
  only a display name is encoded, whole. An address itself is never encoded: a non-ASCII
  address needs SMTPUTF8.
- **refold**: a header line over 998 octets (RFC 5322 2.1.1) is folded: an address header
  after the comma between two addresses (one address per line), and any header at whitespace,
  greedily, into lines of at most 78 octets where it can.

What cannot be repaired stays a problem, with a text that names the header and says what to
do: bytes that are not UTF-8 (pymilter hands them over as surrogate escapes, Latin-1 `\\xe9` as
`'\\udce9'`), non-ASCII text in an address or in a structured header (Date, Message-ID,
Content-Type, ...), and a line with no place to fold.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

MAX_LINE = 998  # octets, RFC 5322 2.1.1, without the CRLF
FOLD_TO = 78  # the line length RFC 5322 asks for, where whitespace allows
MAX_WORD = 75  # RFC 2047: an encoded word is at most 75 characters
# The longest value encoded, in characters: a real Subject or display name is far shorter, and
# encoding is linear but per character (16,384 take well under 0.1 s).
MAX_ENCODE = 16384

ADDRESS_HEADERS = frozenset(
    {
        "from",
        "sender",
        "reply-to",
        "to",
        "cc",
        "bcc",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
        "resent-bcc",
        "disposition-notification-to",
        "return-receipt-to",
        "errors-to",
        "mail-followup-to",
        "mail-reply-to",
        "apparently-to",
        "delivered-to",
        "x-original-to",
        "x-envelope-to",
        "x-envelope-from",
    }
)
# Structured headers: their syntax has no place for an encoded word.
STRUCTURED = frozenset(
    {
        "date",
        "resent-date",
        "message-id",
        "resent-message-id",
        "in-reply-to",
        "references",
        "received",
        "return-path",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "content-id",
        "dkim-signature",
        "authentication-results",
        "arc-seal",
        "arc-message-signature",
        "arc-authentication-results",
        "precedence",
        "auto-submitted",
    }
)

_FOLD = re.compile(r"\r?\n(?=[ \t])")
_ENCODED_WORD = re.compile(r"^=\?[^?\s]+\?[BbQq]\?[^?\s]*\?=$")
_WORDS = re.compile(r"[ \t]+|[^ \t]+")
_Q_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_Q_PREFIX = "=?utf-8?q?"


@dataclass(frozen=True)
class Change:
    """The index-th (1-based, per name) copy of `name` gets `value`; `kinds` says why."""

    name: str
    index: int
    value: str
    kinds: tuple[str, ...]  # "encoded", "refolded"


@dataclass(frozen=True)
class Problem:
    """What could not be repaired: the reason code (eight_bit, too_long) and a sentence."""

    code: str
    name: str
    text: str


@dataclass(frozen=True)
class Repairs:
    headers: tuple[tuple[str, str], ...]  # the header as it will leave, once `changes` are made
    changes: tuple[Change, ...] = ()
    problems: tuple[Problem, ...] = ()


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _non_ascii(text: str) -> bool:
    return not text.isascii()


def long_line(name: str, value: str) -> bool:
    """Whether `name: value` has a line over MAX_LINE octets."""
    if len(name) + 2 + len(value) <= MAX_LINE and value.isascii():
        return False  # the common case, without encoding anything
    return any(_octets(line.rstrip("\r")) > MAX_LINE for line in f"{name}: {value}".split("\n"))


# ---- RFC 2047 --------------------------------------------------------------------------------


def encode_words(text: str) -> list[str]:
    """`text` as one or more utf-8 Q encoded words, each at most MAX_WORD characters. Adjacent
    encoded words decode as one text (the whitespace between them is dropped), so a text may be
    split anywhere between two characters."""
    room = MAX_WORD - len(_Q_PREFIX) - 2
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for ch in text:
        if ch in _Q_SAFE:
            piece = ch
        elif ch == " ":
            piece = "_"
        else:
            piece = "".join(f"={b:02X}" for b in ch.encode("utf-8"))
        if size + len(piece) > room:
            words.append(_Q_PREFIX + "".join(chunk) + "?=")
            chunk, size = [], 0
        chunk.append(piece)
        size += len(piece)
    if chunk or not words:
        words.append(_Q_PREFIX + "".join(chunk) + "?=")
    return words


def encode_unstructured(value: str, prefix: int = 0) -> str:
    """An unstructured value with each run of non-ASCII words encoded; ASCII words unchanged.
    The result is folded at whitespace (LF + the whitespace) into lines of at most FOLD_TO
    octets where its words allow; `prefix` is the octets before the value on its first line."""
    tokens = _WORDS.findall(_FOLD.sub("", value))
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token[0] in " \t" or not _non_ascii(token):
            out.append(token)
            i += 1
            continue
        # A run: this word, and the following words up to the last non-ASCII one before an
        # ASCII word (whitespace inside the run is encoded with it).
        j = i
        end = i
        while j < len(tokens):
            if tokens[j][0] not in " \t":
                if not _non_ascii(tokens[j]):
                    break
                end = j
            j += 1
        run = "".join(tokens[i : end + 1])
        # Whitespace between an encoded word and a neighbouring encoded word (one the sender
        # wrote) would vanish on decoding: carry it inside ours.
        if len(out) >= 2 and out[-1][0] in " \t" and _ENCODED_WORD.match(out[-2]):
            run = out.pop() + run
        after = end + 1
        if (
            after + 1 < len(tokens)
            and tokens[after][0] in " \t"
            and _ENCODED_WORD.match(tokens[after + 1])
        ):
            run += tokens[after]
            after += 1
        out.append(" ".join(encode_words(run)))
        i = after
    text = "".join(out)
    folded = _fold_at_whitespace(prefix, text)
    return text if folded is None else folded


def _split_top_level(value: str) -> list[str] | None:
    """The elements of an address list, split at commas outside quotes, comments and angle
    brackets (each with its own whitespace); None when quotes or brackets do not balance."""
    parts: list[str] = []
    start = 0
    quoted = escaped = False
    depth = angle = 0
    for i, ch in enumerate(value):
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == '"' and not depth:
            quoted = True
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth:
            continue
        elif ch == "<":
            angle += 1
        elif ch == ">" and angle:
            angle -= 1
        elif ch == "," and not angle:
            parts.append(value[start:i])
            start = i + 1
    if quoted or depth or angle:
        return None
    parts.append(value[start:])
    return parts


def _unquote(name: str) -> str:
    if len(name) >= 2 and name.startswith('"') and name.endswith('"'):
        return re.sub(r"\\(.)", r"\1", name[1:-1])
    return name


def encode_address_list(value: str) -> tuple[str, str]:
    """(the value with every non-ASCII display name encoded, "") or ("", why it cannot be)."""
    parts = _split_top_level(_FOLD.sub("", value))
    if parts is None:
        return "", "unbalanced quotes or brackets"
    out: list[str] = []
    for part in parts:
        if not _non_ascii(part):
            out.append(part)
            continue
        lt = part.rfind("<")
        if lt < 0 or _non_ascii(part[lt:]):
            return "", "a non-ASCII address (it needs SMTPUTF8)"
        name = part[:lt].strip()
        if ":" in name or "(" in name:
            return "", "non-ASCII text in a group name or comment"
        lead = part[: len(part) - len(part.lstrip())]
        if "=?" in name and not name.startswith('"'):
            # Encoded words the sender wrote stay as they are: only the raw words are encoded.
            encoded = encode_unstructured(name)
        else:
            encoded = "\n ".join(encode_words(_unquote(name)))
        out.append(lead + encoded + " " + part[lt:])
    return ",".join(out), ""


# ---- folding -----------------------------------------------------------------------------------


def _fold_at_whitespace(first_prefix: int, text: str) -> str | None:
    """`text` (no line breaks) folded before whitespace, greedily into lines of at most FOLD_TO
    octets where a word allows, never over MAX_LINE; None when some word alone is too long."""
    tokens = _WORDS.findall(text)
    lines: list[str] = []
    line: list[str] = []
    words = 0  # words on this line
    size = first_prefix
    for i, token in enumerate(tokens):
        n = _octets(token)
        blank = token[0] in " \t"
        if blank and words and i + 1 < len(tokens):
            nxt = _octets(tokens[i + 1])
            if size + n + nxt > FOLD_TO:
                lines.append("".join(line))
                line, size, words = [], 0, 0
        line.append(token)
        words += not blank
        size += n
        if size > MAX_LINE:
            return None
    lines.append("".join(line))
    return "\n".join(lines)


def refold(name: str, value: str) -> str | None:
    """A value whose lines are each at most MAX_LINE octets, reading the same once unfolded;
    None when there is no place to fold."""
    prefix = _octets(name) + 2
    if name.lower() in ADDRESS_HEADERS:
        parts = _split_top_level(_FOLD.sub("", value))
        if parts is not None and len(parts) > 1:
            lines = []
            for i, part in enumerate(parts):
                piece = part.strip() + ("," if i + 1 < len(parts) else "")
                # One address per line; an address whose line is still too long is folded at
                # its own whitespace.
                width = prefix if i == 0 else 1
                if width + _octets(piece) > MAX_LINE:
                    folded = _fold_at_whitespace(width, piece)
                    if folded is None:
                        return None
                    piece = folded
                lines.append(piece)
            return "\n ".join(lines)
    # Fold each existing line that is too long; keep the sender's own folds.
    lines = re.split(r"\r?\n", value)
    out = []
    for i, line in enumerate(lines):
        width = prefix if i == 0 else 0
        if width + _octets(line) > MAX_LINE:
            folded = _fold_at_whitespace(width, line)
            if folded is None:
                return None
            line = folded
        out.append(line)
    return "\n".join(out)


# ---- the whole header --------------------------------------------------------------------------


def _eight_bit_problem(name: str, why: str) -> Problem:
    return Problem("eight_bit", name, f"the {name} header holds {why}")


def repair_headers(
    headers: Iterable[tuple[str, str]],
    *,
    smtputf8: bool,
    enabled: bool,
    skip: Iterable[str] = (),
) -> Repairs:
    """Repair what can be repaired (when `enabled`), and name what cannot. Headers in `skip`
    (they are removed before signing) are neither repaired nor judged."""
    headers = tuple(headers)
    if all(
        len(name) + 2 + len(value) <= MAX_LINE and name.isascii() and value.isascii()
        for name, value in headers
    ):
        # Nothing to encode, no line to fold, whatever `smtputf8`, `enabled` and `skip` say:
        # most mail, in one pass without the per-header bookkeeping below.
        return Repairs(tuple(headers))
    skipped = {s.lower() for s in skip}
    out: list[tuple[str, str]] = []
    changes: list[Change] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for name, value in headers:
        lname = name.lower()
        seen[lname] = seen.get(lname, 0) + 1
        if lname in skipped:
            out.append((name, value))
            continue
        new = value
        kinds: list[str] = []
        eight_bit = not smtputf8 and _non_ascii(name + value)
        if eight_bit:
            if _has_surrogates(name + value):
                problems.append(
                    _eight_bit_problem(
                        name,
                        "bytes that are not UTF-8 (Latin-1 or another 8-bit charset): encode"
                        " it as RFC 2047 encoded words in its charset, or send it as UTF-8",
                    )
                )
                out.append((name, value))
                continue
            if enabled and len(value) > MAX_ENCODE:
                problems.append(
                    _eight_bit_problem(
                        name,
                        f"raw 8-bit text in {len(value):,} characters, more than postwarden"
                        f" encodes ({MAX_ENCODE:,}): encode it (RFC 2047) or send with SMTPUTF8",
                    )
                )
                out.append((name, value))
                continue
            if not enabled or _non_ascii(name):
                problems.append(
                    _eight_bit_problem(
                        name, "raw 8-bit bytes: encode it (RFC 2047) or send with SMTPUTF8"
                    )
                )
                out.append((name, value))
                continue
            if lname in ADDRESS_HEADERS:
                new, why = encode_address_list(value)
                if why:
                    problems.append(
                        _eight_bit_problem(
                            name,
                            f"raw 8-bit text postwarden cannot encode ({why}): send with"
                            " SMTPUTF8, or encode the display names (RFC 2047)",
                        )
                    )
                    out.append((name, value))
                    continue
            elif lname in STRUCTURED or lname.startswith("list-"):
                problems.append(
                    _eight_bit_problem(
                        name,
                        "raw 8-bit bytes, and it is a structured header with no place for"
                        " encoded words: use ASCII in it (RFC 2231 for parameters) or send"
                        " with SMTPUTF8",
                    )
                )
                out.append((name, value))
                continue
            else:
                new = encode_unstructured(value, _octets(name) + 2)
            kinds.append("encoded")
        if long_line(name, new):
            folded = refold(name, new) if enabled else None
            if folded is None or long_line(name, folded):
                hint = (
                    "it has no whitespace to fold at: shorten it"
                    if enabled
                    else "fold it (RFC 5322 2.2.3)"
                )
                problems.append(
                    Problem(
                        "too_long",
                        name,
                        f"the {name} header has a line over {MAX_LINE} octets; {hint}",
                    )
                )
                out.append((name, value))
                continue
            new = folded
            kinds.append("refolded")
        if kinds:
            changes.append(Change(name, seen[lname], new, tuple(kinds)))
        out.append((name, new))
    return Repairs(tuple(out), tuple(changes), tuple(problems))
