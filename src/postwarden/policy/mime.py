"""The MIME structure of a message body, read in one linear pass and bounded in depth.

Python's email parser recurses once per nested multipart or message/* part: about 1,000
levels raise RecursionError, and its boundary test runs every enclosing boundary on every line.
MimeScanner reads the same structure as the email package does (the same header-line test,
boundary lines matched as its feedparser matches them, multipart/digest parts defaulting to
message/rfc822), streaming, in linear time and bounded memory, and stops at MAX_MIME_DEPTH:
`problem` then says why the message cannot be taken. It never recurses and never raises on
hostile input.

Used two ways:
- streaming, by the milter as body chunks arrive (feed(), then close()): `problem` is the
  reason to refuse the message, "" when its structure is fine;
- on a whole body, with keep_leaves=True: the byte offsets of each leaf part's headers and
  content, so an edit (wrap_bare_html) replaces that part where it is and nowhere else.
"""

from __future__ import annotations

import email.message
import email.policy
import functools
import re
from dataclasses import dataclass, field

# Nesting limit: multipart and message/* parts inside one another. Real mail nests a few
# levels (mixed > alternative > related; a forward adds two); Postfix's own
# mime_nesting_limit is 100, Python's parser dies near 1,000.
MAX_MIME_DEPTH = 32
# Longest boundary taken (RFC 2046 allows 70) and longest Content-Type header read.
MAX_BOUNDARY = 200
MAX_CONTENT_TYPE = 8192
# Bytes of a line kept: enough for any boundary line or Content-Type line; of a boundary
# line, the rest only has to be blank.
_LINE_KEEP = MAX_CONTENT_TYPE + 16

# The email package's test for a header line (email.feedparser.headerRE).
_HEADER_LINE = re.compile(rb"^(From |[\041-\071\073-\176]*:|[\t ])")
_BLANK_TAIL = re.compile(rb"[ \t]*")
_NAME_ONLY = re.compile(rb"[\041-\071\073-\176]*")
_NEWLINE = re.compile(rb"\r\n|\r|\n")


@dataclass
class Leaf:
    """A part that holds content (not a multipart or message/* container), as byte offsets
    into the body: its own headers are body[header_start:content_start] (empty for the
    top-level entity, whose headers are the message's), its content body[content_start:end]
    (the line break before the next boundary belongs to the boundary, not to the content)."""

    content_type: str
    header_start: int
    content_start: int
    end: int = -1
    top: bool = False  # the message itself: its headers are the message's, not in the body
    # Its content begins with a "From " line that ended its headers (the email package reads it
    # as the content's first line and also drops the blank line after it; offsets keep both).
    from_first: bool = False


@dataclass
class _Entity:
    header_start: int
    default_type: str = "text/plain"
    in_headers: bool = True
    content_type_lines: list[bytes] = field(default_factory=list)
    content_type_size: int = 0
    header_lines: int = 0
    from_line: int = -1  # where its last header line starts, when that is a "From " line
    capturing: bool = False  # the header being read is the first Content-Type
    kind: str = ""  # "multipart", "message" or "leaf", once the headers are read
    boundary: bytes = b""
    phase: str = "preamble"  # a multipart's: "preamble", "part" (inside one), "epilogue"
    digest: bool = False  # a multipart/digest: its parts default to message/rfc822
    part: bool = False  # a multipart's part (begun by a boundary line)
    leaf: Leaf | None = None


def _header_value(lines: list[bytes]) -> str:
    """A header's value from its lines, as the email package (compat32) makes it."""
    return b"".join(lines).decode("ascii", "surrogateescape").lstrip(" \t").rstrip("\r\n")


@functools.lru_cache(maxsize=512)
def _content_type(value: str, default: str) -> tuple[str, str]:
    """(type, boundary) as the email package reads this Content-Type value. Cached: parts of
    one message (and messages of one sender) repeat their Content-Types."""
    if not value:
        return default, ""
    msg = email.message.Message(policy=email.policy.compat32)
    msg.set_default_type(default)
    if value:
        msg["Content-Type"] = value
    ctype = msg.get_content_type()
    boundary = msg.get_boundary() if ctype.startswith("multipart/") else None
    return ctype, boundary or ""


class MimeScanner:
    """Feed it the body after the message's own headers; read `problem`, `depth`, `leaves`."""

    def __init__(self, headers: list[tuple[str, str]], *, keep_leaves: bool = False) -> None:
        self.problem = ""
        self.depth = 0  # deepest nesting of containers seen (a plain message is 0)
        self.leaves: list[Leaf] = []
        self._keep = keep_leaves
        self._pos = 0  # offset of the next byte fed
        self._line_start = 0
        self._head = bytearray()  # the first _LINE_KEEP bytes of the line being read
        self._tail_blank = True  # every byte after them is a space or tab
        self._cr = -1  # where the data so far ended with a CR (a LF may follow), else -1
        self._prev_newline = 0  # length of the line break before the current line
        self._term = b""  # the line break of the line being handled
        self._stack: list[_Entity] = []
        values = [v for k, v in headers if k.lower() == "content-type"]
        top = _Entity(header_start=0)
        top.in_headers = False
        self._root = top
        self._stack.append(top)
        self._delims: tuple[bytes, ...] = ()
        self._typed(top, values[0] if values else "", 0)
        self._update_delims()

    def _update_delims(self) -> None:
        """The delimiters a line must start with to be a boundary of an open multipart."""
        self._delims = tuple(b"--" + e.boundary for e in self._stack if e.kind == "multipart")

    # ---- input ---------------------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if self.problem or not data:
            self._pos += len(data)
            return
        base = self._pos
        self._pos += len(data)
        at = 0
        if self._cr >= 0:
            if data[:1] == b"\n":
                at = 1
            cr, self._cr = self._cr, -1
            self._term = b"\r\n" if at else b"\r"
            self._line(base + at, cr)
            if self.problem:
                return
        size = len(data)
        while at < size:
            if not self._head and not self._stack[-1].in_headers:
                # Content, at a line start: skip every line that cannot matter.
                at = self._skip(data, at, base)
                if at == size:
                    return
            # One line by itself: a header line, a line that may be a boundary, the chunk's
            # last (partial) line, or one that ends in a CR at the chunk's end.
            match = _NEWLINE.search(data, at)
            if match is None:
                break
            nxt = match.end()
            if (
                not self._head
                and not self._stack[-1].in_headers
                and (nxt < size or data[nxt - 1] == 10)
                and (
                    not data.startswith(self._delims, at)
                    or (
                        match.start() - at <= _LINE_KEEP
                        and self._boundary_owner(data[at : match.start()], True) is None
                    )
                )
            ):
                # content starting with "--" that is no boundary of an open multipart
                self._line_start = base + nxt
                self._prev_newline = nxt - match.start()
                at = nxt
                continue
            self._add(data, at, match.start())
            if match.group() == b"\r" and nxt == size:
                self._cr = base + match.start()  # a LF in the next chunk makes it one CRLF
                return
            self._term = match.group()
            self._line(base + nxt, base + match.start())
            at = nxt
            if self.problem:
                return
        self._add(data, at, size)

    def _skip(self, data: bytes, at: int, base: int) -> int:
        """Content from `at`, a line start: move the offsets past every line that cannot
        matter, at C speed, and return where the next line that may matter starts (len(data)
        when none does). Such a line begins with "--" while a multipart is open (it may be a
        boundary), or is the chunk's last: without a line break, or ending in a CR that may
        join a LF in the next chunk. Every other content line only moves the offsets on."""
        size = len(data)
        if self._delims:
            if data.startswith(b"--", at):
                return at
            # memchr first: most content (base64 above all) has no "-" at all
            dash = data.find(b"-", at)
            brk = -1 if dash < 0 else data.find(b"\n--", max(at, dash - 1))
            if dash >= 0:
                lone_cr = data.find(b"\r--", max(at, dash - 1), size if brk < 0 else brk)
                if lone_cr >= 0:
                    brk = lone_cr
            if brk >= 0:
                # data[brk] ends the line before a line that begins with "--"
                self._line_start = base + brk + 1
                self._prev_newline = 2 if brk > at and data[brk - 1 : brk + 1] == b"\r\n" else 1
                return brk + 1
        # No line up to the chunk's end can matter: skip to after its last line break, but not
        # a CR last in the chunk (a LF may follow in the next one).
        stop = size - 1 if data[size - 1] == 13 else size
        brk = max(data.rfind(b"\n", at, stop), data.rfind(b"\r", at, stop))
        if brk < 0:
            return at
        self._line_start = base + brk + 1
        self._prev_newline = 2 if brk > at and data[brk - 1 : brk + 1] == b"\r\n" else 1
        return brk + 1

    def close(self) -> None:
        """The end of the body: every open part ends here."""
        if self.problem:
            return
        if self._cr >= 0:
            cr, self._cr = self._cr, -1
            self._term = b"\r"
            self._line(self._pos, cr)
        elif self._pos > self._line_start:
            self._term = b""
            self._line(self._pos, self._pos)  # a last line without a line break
        self._end_above(-1, self._pos)

    def _add(self, data: bytes, start: int, end: int) -> None:
        room = _LINE_KEEP - len(self._head)
        if room > 0:
            self._head += data[start : min(end, start + room)]
            start += room
        if start < end and self._tail_blank:
            self._tail_blank = _BLANK_TAIL.fullmatch(data, start, end) is not None

    # ---- one line ------------------------------------------------------------------------------

    def _line(self, next_start: int, content_end: int) -> None:
        """A whole line has been read: bytes [self._line_start, content_end) plus its line
        break up to next_start."""
        start, head, blank = self._line_start, bytes(self._head), self._tail_blank
        self._line_start = next_start
        self._head.clear()
        self._tail_blank = True
        long_line = content_end - start > len(head)
        self._handle(start, head, blank, long_line)
        self._update_delims()
        self._prev_newline = next_start - content_end

    def _boundary_owner(self, head: bytes, tail_blank: bool) -> tuple[int, bool] | None:
        """The entity a boundary line belongs to, and whether it closes: the outermost open
        multipart whose boundary it matches (the email package's false-EOF stack), the
        innermost only while in its preamble, none in its epilogue."""
        if not head.startswith(b"--") or not tail_blank:
            return None
        top = len(self._stack) - 1
        for i, entity in enumerate(self._stack):
            if entity.kind != "multipart":
                continue
            if entity.phase != "part" and not (i == top and entity.phase == "preamble"):
                continue
            b = entity.boundary
            if not head.startswith(b, 2):
                continue
            rest = head[2 + len(b) :]
            closes = rest.startswith(b"--")
            if _BLANK_TAIL.fullmatch(rest[2:] if closes else rest):
                return i, closes
        return None

    def _handle(self, start: int, head: bytes, tail_blank: bool, long_line: bool) -> None:
        owner = self._boundary_owner(head, tail_blank)
        if owner is not None:
            i, closes = owner
            part = self._stack[-1]
            if len(self._stack) == i + 2 and part.part and part.header_start == start:
                # Boundary lines in a row after a delimiter, a close one too, are read as
                # one by the email package: the part begins after the last of them.
                part.header_start = self._line_start
                return
            end = max(start - self._prev_newline, 0)
            self._end_above(i, end)
            multipart = self._stack[i]
            if closes:
                multipart.phase = "epilogue"
                return
            multipart.phase = "part"
            self._stack.append(
                _Entity(
                    header_start=self._line_start,
                    default_type="message/rfc822" if multipart.digest else "text/plain",
                    part=True,
                )
            )
            return
        top = self._stack[-1]
        if not top.in_headers:
            return  # content, preamble or epilogue: nothing to read in it
        if long_line and _NAME_ONLY.fullmatch(head):
            self.problem = f"a MIME header line over {_LINE_KEEP:,} characters without a colon"
            return
        if head and _HEADER_LINE.match(head):
            self._header_line(top, head, long_line, start)
            return
        # The end of this part's headers: a blank line is theirs; any other line is content.
        blank = head == b"" and not long_line
        top.in_headers = False
        value = _header_value(top.content_type_lines)
        content_start = self._line_start if blank else start
        if top.from_line >= 0:
            # A "From " line last in the headers is the content's first line (the email
            # package pushes it back), the blank line after it dropped.
            content_start = top.from_line
        self._typed(top, value, content_start)
        if top.leaf is not None and top.from_line >= 0:
            top.leaf.from_first = blank
        if not blank and not self.problem:
            self._handle(start, head, tail_blank, long_line)

    def _end_above(self, i: int, end: int) -> None:
        """Every entity above the i-th ends at `end`; one still in its headers is an empty
        leaf, as the email package makes it."""
        for entity in self._stack[i + 1 :]:
            if entity.in_headers and self._keep:
                ctype, _ = _content_type(
                    _header_value(entity.content_type_lines), entity.default_type
                )
                start = entity.from_line if entity.from_line >= 0 else end
                if ctype.startswith("message/") and ctype != "message/delivery-status":
                    # the message inside it, empty (a From line is its envelope line)
                    ctype, start = "text/plain", end
                self.leaves.append(Leaf(ctype, entity.header_start, start, max(start, end)))
            elif entity.leaf is not None and entity.leaf.end < 0:
                entity.leaf.end = max(end, entity.leaf.content_start)
        del self._stack[i + 1 :]

    def _header_line(self, entity: _Entity, head: bytes, long_line: bool, start: int) -> None:
        first = entity.header_lines == 0
        entity.header_lines += 1
        entity.from_line = -1
        if head[:1] in (b" ", b"\t"):
            if entity.capturing:
                self._capture(entity, head, long_line)
            return
        entity.capturing = False  # any other line ends the header before it
        if head.startswith(b"From "):
            # The email package: an mbox From line first is the envelope, elsewhere ignored
            # (and a continuation after it too), last the content's first line.
            if not first:
                entity.from_line = start
            return
        if head[:13].lower() == b"content-type:" and not entity.content_type_lines:
            entity.capturing = True
            self._capture(entity, head[13:], long_line)

    def _capture(self, entity: _Entity, text: bytes, long_line: bool) -> None:
        entity.content_type_size += len(text)
        if long_line or entity.content_type_size > MAX_CONTENT_TYPE:
            self.problem = (
                f"a Content-Type header over {MAX_CONTENT_TYPE:,} characters: "
                "send a plain MIME structure"
            )
            return
        entity.content_type_lines.append(text + self._term)  # kept as the email package keeps it

    # ---- the structure -------------------------------------------------------------------------

    def _typed(self, entity: _Entity, value: str, content_start: int) -> None:
        """The entity's headers are read: it is a multipart, a message/* or a leaf."""
        ctype, boundary = _content_type(value, entity.default_type)
        if ctype.startswith("multipart/") and boundary:
            raw = boundary.encode("ascii", "surrogateescape")
            if len(raw) > MAX_BOUNDARY:
                self.problem = (
                    f"a MIME boundary over {MAX_BOUNDARY} characters (RFC 2046 allows 70)"
                )
                return
            entity.kind, entity.boundary = "multipart", raw
            entity.digest = ctype == "multipart/digest"
            self._deeper()
        elif ctype.startswith("message/") and ctype != "message/delivery-status":
            entity.kind = "message"
            self._deeper()
            if not self.problem:
                self._stack.append(_Entity(header_start=content_start))
        else:
            entity.kind = "leaf"
            entity.leaf = Leaf(ctype, entity.header_start, content_start, top=entity is self._root)
            if self._keep:
                self.leaves.append(entity.leaf)

    def _deeper(self) -> None:
        depth = sum(1 for e in self._stack if e.kind in ("multipart", "message"))
        self.depth = max(self.depth, depth)
        if depth > MAX_MIME_DEPTH:
            self.problem = (
                f"MIME parts nested more than {MAX_MIME_DEPTH} deep: "
                "send the content with a plain MIME structure"
            )


def mime_problem(headers: list[tuple[str, str]], body: bytes) -> str:
    """Why a message with these headers and this body cannot be taken (MIME nested over
    MAX_MIME_DEPTH, an oversized Content-Type or boundary), or "" when its structure is fine.
    Linear in the body's size; never raises RecursionError."""
    scanner = MimeScanner(headers)
    scanner.feed(body)
    scanner.close()
    return scanner.problem
