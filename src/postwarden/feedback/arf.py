"""Reading a feedback-loop report (RFC 5965 ARF, and the shapes providers really send).

Every report is hostile: the input is bounded (MAX_INPUT), header blocks and lines are cut
(MAX_HEADER_BLOCK, MAX_LINE), the MIME tree is walked with a work list, never by recursion,
at most MAX_DEPTH levels and MAX_PARTS parts deep, and nothing here raises on bad input: what
cannot be read is a report with `problem` set.

Shapes read: multipart/report; report-type=feedback-report with a message/feedback-report part
(or a misspelt one: message/feedback_report, text/feedback-report, ...) and the reported message
as message/rfc822 or text/rfc822-headers; a report nested in multipart/mixed; a forwarded
message/rfc822 with no feedback part (taken as an abuse complaint); CRLF, LF or bare-CR line
ends; an mbox "From " line before the reported message's headers. The reported message's own
headers (the last such part) say which message it was.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from dataclasses import dataclass, field

MAX_INPUT = 8 * 1024 * 1024  # a report larger than this is not read (ignored with the reason)
MAX_HEADER_BLOCK = 256 * 1024  # of one part's header block
MAX_LINE = 8 * 1024  # of one header value, unfolded
MAX_HEADERS = 500
MAX_DEPTH = 8
MAX_PARTS = 200

KNOWN_TYPES = ("abuse", "fraud", "virus", "not-spam", "auth-failure", "other")

_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]{1,200})"|([^\s;"]{1,200}))', re.I)
_ADDRESS = re.compile(r"<?([^<>\s@,;:\"]{1,256}@[^<>\s@,;:\"]{1,256})>?")
_MSGID = re.compile(r"<[^<>\s]{1,500}>|[^<>\s]{1,500}@[^<>\s]{1,500}")
_NAME = re.compile(rb"[!-9;-~]{1,76}")
_POSTFIX_ID = re.compile(
    r"\(Postfix[^)]{0,200}\)\s+(?:with\s+\S{1,40}\s+)?id\s+([0-9A-Za-z]{6,40})"
)


@dataclass
class Report:
    """What was read from one report."""

    problem: str = ""  # why it is not a report we can use ("" = it is one)
    feedback_type: str = ""  # lower-case: abuse, not-spam, ...
    user_agent: str = ""
    reporter: str = ""  # the reporting organisation (Reporting-MTA, else the report's From domain)
    original_rcpt_to: str = ""
    original_mail_from: str = ""
    original_envelope_id: str = ""
    recipient: str = ""  # the complained recipient: Original-Rcpt-To, else the reported To
    message_id: str = ""
    reported_from: str = ""
    reported_subject: str = ""
    reported_date: str = ""
    queue_ids: list[str] = field(default_factory=list)  # from Postfix's Received lines
    shape: str = ""  # arf | nested | forwarded
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


Headers = list[tuple[str, str]]


def normalise(data: bytes) -> bytes:
    """CRLF, bare CR and LF line ends, all as LF."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _clean(value: str, limit: int = 998) -> str:
    """A header value as one line of printable text, cut to `limit`."""
    value = re.sub(r"[\x00-\x1f\x7f]+", " ", value).strip()
    return value[:limit]


def split_headers(block: bytes) -> tuple[Headers, bytes]:
    """(headers, body) of one part: unfolded, bounded; lines that are not headers (an mbox
    "From " line, garbage) are skipped."""
    end = block.find(b"\n\n")
    if block.startswith(b"\n"):
        head, body = b"", block[1:]
    elif end < 0:
        head, body = block, b""
    else:
        head, body = block[:end], block[end + 2 :]
    if len(head) > MAX_HEADER_BLOCK:
        head = head[:MAX_HEADER_BLOCK]
    headers: Headers = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and headers:
            name, value = headers[-1]
            if len(value) < MAX_LINE:
                headers[-1] = (name, (value + " " + _text(line[:MAX_LINE]).strip())[:MAX_LINE])
            continue
        raw_name, sep, raw_value = line.partition(b":")
        if not sep or not _NAME.fullmatch(raw_name):
            continue
        if len(headers) >= MAX_HEADERS:
            break
        headers.append((_text(raw_name), _text(raw_value[:MAX_LINE]).strip()))
    return headers, body


def first(headers: Headers, name: str) -> str:
    lname = name.lower()
    for k, v in headers:
        if k.lower() == lname:
            return v
    return ""


def every(headers: Headers, name: str) -> list[str]:
    lname = name.lower()
    return [v for k, v in headers if k.lower() == lname]


def content_type(headers: Headers) -> tuple[str, str]:
    """(type/subtype lower-cased, the full value)."""
    value = first(headers, "Content-Type")
    kind = value.split(";", 1)[0].strip().lower()
    return kind, value


def _decode(headers: Headers, body: bytes) -> bytes:
    cte = first(headers, "Content-Transfer-Encoding").strip().lower()
    try:
        if cte == "base64":
            return base64.b64decode(re.sub(rb"[^A-Za-z0-9+/=]", b"", body) + b"==", validate=False)
        if cte == "quoted-printable":
            return quopri.decodestring(body)
    except (binascii.Error, ValueError):
        return body
    return body


def _children(body: bytes, boundary: str) -> list[bytes]:
    """The parts of a multipart body, by its boundary (no preamble, no epilogue)."""
    delim = b"\n--" + boundary.encode("latin-1", errors="replace")
    text = b"\n" + body
    parts: list[bytes] = []
    pos = text.find(delim)
    while pos >= 0 and len(parts) < MAX_PARTS:
        start = pos + len(delim)
        if text[start : start + 2] == b"--":
            break
        line_end = text.find(b"\n", start)
        if line_end < 0:
            break
        nxt = text.find(delim, line_end)
        parts.append(text[line_end + 1 : nxt if nxt >= 0 else len(text)])
        pos = nxt
    return parts


def is_feedback_type(kind: str) -> bool:
    """message/feedback-report and its misspellings."""
    major, _, minor = kind.partition("/")
    return major in ("message", "text", "application") and minor.replace("_", "-").startswith(
        ("feedback-report", "feedbackreport", "feedback")
    )


def is_reported_type(kind: str) -> bool:
    return kind in ("message/rfc822", "text/rfc822-headers", "message/rfc822-headers")


@dataclass
class _Part:
    headers: Headers
    body: bytes
    depth: int


def parse(data: bytes) -> Report:
    """What one report says. Never raises on its content."""
    if len(data) > MAX_INPUT:
        return Report(problem=f"larger than {MAX_INPUT // (1024 * 1024)} MiB: not read")
    if not data.strip():
        return Report(problem="empty")
    data = normalise(data)
    top_headers, top_body = split_headers(data)
    if not top_headers:
        return Report(problem="no mail header: not a report")
    report = Report()
    report.reporter = _domain_of(first(top_headers, "From"))
    feedback: _Part | None = None
    reported: _Part | None = None
    nested = False
    # Walk the tree in document order with a work list: no recursion, bounded depth and parts.
    work = [_Part(top_headers, top_body, 0)]
    seen = 0
    while work:
        part = work.pop()
        seen += 1
        if seen > MAX_PARTS:
            report.warnings.append(f"more than {MAX_PARTS} parts: the rest not read")
            break
        kind, full = content_type(part.headers)
        if kind.startswith("multipart/"):
            if part.depth >= MAX_DEPTH:
                report.warnings.append(f"multipart nested deeper than {MAX_DEPTH}: not read")
                continue
            if part.depth > 0 and kind == "multipart/report":
                nested = True
            m = _BOUNDARY.search(full)
            if not m:
                continue
            children = [
                _Part(*split_headers(c), part.depth + 1)
                for c in _children(part.body, m.group(1) or m.group(2))
            ]
            work.extend(reversed(children))
        elif is_feedback_type(kind):
            if feedback is None:
                feedback = part
        elif is_reported_type(kind) and (part.depth > 0 or kind == "message/rfc822"):
            inner = _decode(part.headers, part.body)
            inner_headers, inner_body = split_headers(inner)
            inner_kind, _ = content_type(inner_headers)
            if feedback is None and inner_kind == "multipart/report" and part.depth < MAX_DEPTH:
                # A forwarded ARF report: read the report inside.
                nested = True
                work.append(_Part(inner_headers, inner_body, part.depth + 1))
                continue
            reported = _Part(inner_headers, inner_body, part.depth)
    if feedback is None and reported is None:
        report.problem = "no feedback report and no reported message in it"
        return report
    if feedback is not None:
        fields, _ = split_headers(_decode(feedback.headers, feedback.body).lstrip(b"\n"))
        ftype = _clean(first(fields, "Feedback-Type"), 64).lower()
        report.feedback_type = ftype if ftype in KNOWN_TYPES else ("other" if ftype else "abuse")
        if ftype and ftype not in KNOWN_TYPES:
            report.warnings.append(f"unknown Feedback-Type {ftype!r}: taken as other")
        report.user_agent = _clean(first(fields, "User-Agent"), 200)
        report.original_rcpt_to = _address(first(fields, "Original-Rcpt-To"))
        report.original_mail_from = _address(first(fields, "Original-Mail-From"))
        report.original_envelope_id = _clean(first(fields, "Original-Envelope-Id"), 200)
        mta = first(fields, "Reporting-MTA")
        if mta:
            report.reporter = _clean(mta.split(";")[-1], 200).lower()
        report.shape = "nested" if nested else "arf"
    else:
        report.feedback_type = "abuse"
        report.shape = "forwarded"
        report.warnings.append("no feedback part: a forwarded message, taken as abuse")
    if reported is not None:
        h = reported.headers
        report.message_id = _msgid(first(h, "Message-ID"))
        report.reported_from = _clean(first(h, "From"), 500)
        report.reported_subject = _clean(first(h, "Subject"), 500)
        report.reported_date = _clean(first(h, "Date"), 200)
        for received in every(h, "Received")[:20]:
            m = _POSTFIX_ID.search(received)
            if m:
                report.queue_ids.append(m.group(1))
        report.recipient = report.original_rcpt_to or _address(first(h, "To"))
        if report.recipient.partition("@")[0] in ("redacted", "redacted-address"):
            # AOL's FBL hides the recipient: there is no one to suppress.
            report.warnings.append(f"the recipient is redacted ({report.recipient})")
            report.recipient = ""
    else:
        report.recipient = report.original_rcpt_to
        report.warnings.append("no reported message: nothing says which message it was")
    return report


def _address(value: str) -> str:
    m = _ADDRESS.search(value[:2000])
    return m.group(1).lower() if m else ""


def _domain_of(value: str) -> str:
    return _address(value).rpartition("@")[2]


def _msgid(value: str) -> str:
    m = _MSGID.search(value[:2000])
    return m.group(0) if m else ""
