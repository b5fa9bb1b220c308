"""From what arrives (a report email, a bare .xml/.xml.gz/.zip/.json/.json.gz) to the report
documents inside it, bounded: no archive may decompress beyond MAX_OUTPUT bytes in all, nest
deeper than MAX_DEPTH, or hold more than MAX_MEMBERS members. Names inside an email or an
archive are never used as paths: everything happens in memory."""

from __future__ import annotations

import email
import email.message
import email.policy
import io
import re
import zipfile
import zlib
from dataclasses import dataclass

MAX_INPUT = 64 * 1024 * 1024  # what `reports ingest` reads of one file or stdin
MAX_OUTPUT = 32 * 1024 * 1024  # decompressed bytes, all of one input together
MAX_DEPTH = 4  # email > zip > gzip > gzip is 4
MAX_MEMBERS = 16  # zip members, email parts with a report
CHUNK = 64 * 1024

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
_HEADER_LINE = re.compile(rb"^[!-9;-~]{1,76}:[ \t]?", re.M)


class Refused(Exception):
    """A report that cannot be read, with the reason a person can act on."""


class TooLarge(Refused):
    """Over the decompression budget: the whole input is refused, not just one part."""


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def printable(text: str) -> str:
    """A report's text with control characters (terminal escapes among them) made spaces and
    runs of white space made one: it is printed to terminals and shown in the TUI."""
    return " ".join(_CONTROL.sub(" ", text).split())


@dataclass(frozen=True)
class Document:
    kind: str  # "xml" | "json"
    data: bytes


class Budget:
    """The decompressed bytes left for one input, shared by every archive inside it."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.limit = limit
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise TooLarge(
                f"decompresses to more than {self.limit // (1024 * 1024)} MiB: refused"
                " (a report is far smaller; this looks like a compression bomb)"
            )


def gunzip(data: bytes, budget: Budget) -> bytes:
    """Every gzip member, bounded; bytes after the last member (a trailing CRLF, padding) are
    ignored, as gzip(1) does with a warning."""
    out = bytearray()
    rest = data
    members = 0
    while rest[:2] == GZIP_MAGIC:
        members += 1
        if members > MAX_MEMBERS:
            raise Refused(f"more than {MAX_MEMBERS} gzip members")
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        buf = rest
        try:
            while True:
                chunk = d.decompress(buf, CHUNK)
                budget.take(len(chunk))
                out += chunk
                buf = d.unconsumed_tail
                if d.eof or (not buf and not chunk):
                    break
        except zlib.error as exc:
            if members == 1 and not out:
                raise Refused(f"broken gzip data: {exc}") from None
            break  # a damaged later member: keep what was read
        if not d.eof:
            if members == 1 and not out:
                raise Refused("truncated gzip data")
            break
        rest = d.unused_data
    return bytes(out)


def _declared_members(data: bytes) -> int | None:
    """The member count in the end-of-central-directory record, read before zipfile builds an
    object per member (a hostile directory could list a million)."""
    at = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_557))
    if at < 0 or at + 22 > len(data):
        return None
    return int.from_bytes(data[at + 10 : at + 12], "little")


def unzip(data: bytes, budget: Budget, depth: int) -> list[Document]:
    declared = _declared_members(data)
    if declared is not None and declared > MAX_MEMBERS:
        raise Refused(f"zip archive with {declared} members (at most {MAX_MEMBERS})")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise Refused(f"broken zip archive: {exc}") from None
    # ZipInfo.is_dir() fails on a member with an empty name, which some receivers send.
    members = [i for i in archive.infolist() if not i.filename.endswith("/")]
    if len(members) > MAX_MEMBERS:
        raise Refused(f"zip archive with {len(members)} members (at most {MAX_MEMBERS})")
    docs: list[Document] = []
    for info in members:
        if info.flag_bits & 0x1:
            raise Refused("encrypted zip member")
        out = bytearray()
        try:
            # The declared size is never trusted: read in chunks against the budget.
            with archive.open(info) as fh:
                while chunk := fh.read(CHUNK):
                    budget.take(len(chunk))
                    out += chunk
        except (
            zipfile.BadZipFile,
            zlib.error,
            NotImplementedError,
            EOFError,
            OSError,
            ValueError,  # a negative offset in a damaged central directory
        ) as exc:
            raise Refused(f"broken zip member: {exc}") from None
        docs += documents(bytes(out), budget, depth + 1)
    return docs


def _looks_like_email(data: bytes) -> bool:
    head = data[:4096].lstrip(b"\r\n")
    first = head.split(b"\n", 1)[0]
    return bool(_HEADER_LINE.match(first)) or first.startswith(b"From ")


def _part_is_report(part: email.message.Message) -> bool:
    ctype = part.get_content_type()
    name = (part.get_filename() or "").lower()
    if ctype.startswith("multipart/"):
        return False
    if ctype in (
        "application/zip",
        "application/x-zip-compressed",
        "application/gzip",
        "application/x-gzip",
        "application/xml",
        "text/xml",
        "application/json",
        "application/tlsrpt+json",
        "application/tlsrpt+gzip",
        "application/tlsrpt",
    ):
        return True
    return name.endswith((".xml", ".gz", ".zip", ".json", ".xml.gz", ".json.gz"))


MAX_MIME_LINES = 1000  # lines that may be MIME boundaries: a report email has a handful


def from_email(data: bytes, budget: Budget, depth: int) -> list[Document]:
    # Python's parser takes seconds over 100,000 parts and recurses once per nesting level:
    # an email with more possible boundaries than any report email has is refused unread.
    if data.count(b"\n--") > MAX_MIME_LINES:
        raise Refused(f"an email with more than {MAX_MIME_LINES} MIME boundaries: not a report")
    try:
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        parts = [p for p in msg.walk() if _part_is_report(p)]
    except RecursionError:
        raise Refused("an email with MIME parts nested too deep") from None
    return _email_parts(msg, parts, budget, depth)


def _email_parts(
    msg: email.message.Message,
    parts: list[email.message.Message],
    budget: Budget,
    depth: int,
) -> list[Document]:
    if not parts:
        # Inline: a text part that is itself the report.
        for p in msg.walk():
            if p.get_content_maintype() == "text":
                body = p.get_payload(decode=True)
                if isinstance(body, bytes) and (b"<feedback" in body or b"report-id" in body):
                    parts.append(p)
    if not parts:
        raise Refused("an email with no report in it (no .zip, .gz, .xml or .json attachment)")
    if len(parts) > MAX_MEMBERS:
        raise Refused(f"an email with {len(parts)} report parts (at most {MAX_MEMBERS})")
    docs: list[Document] = []
    problems: list[str] = []
    for p in parts:
        body = p.get_payload(decode=True)
        if not isinstance(body, bytes) or not body:
            problems.append("an empty attachment")
            continue
        try:
            docs += documents(body, budget, depth + 1)
        except TooLarge:
            raise
        except Refused as exc:
            problems.append(str(exc))
    if not docs:
        raise Refused(problems[0] if problems else "no report in the email")
    return docs


def documents(data: bytes, budget: Budget | None = None, depth: int = 0) -> list[Document]:
    """The report documents in `data`, whatever wraps them. Raises Refused."""
    budget = budget or Budget()
    if depth > MAX_DEPTH:
        raise Refused(f"nested more than {MAX_DEPTH} deep (archives inside archives)")
    if not data.strip():
        raise Refused("empty: no report in it")
    if data[:2] == GZIP_MAGIC:
        return documents(gunzip(data, budget), budget, depth + 1)
    if data[:4] == ZIP_MAGIC or data[:4] == b"PK\x05\x06":
        return unzip(data, budget, depth)
    text = data.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text[:1] in (b"{", b"["):
        return [Document("json", text)]
    if text[:1] == b"<":
        return [Document("xml", text)]
    if _looks_like_email(data):
        return from_email(data, budget, depth)
    # Stray bytes before the document.
    for marker, kind in ((b"<?xml", "xml"), (b"<feedback", "xml")):
        at = data.find(marker)
        if 0 <= at < 1024:
            return [Document(kind, data[at:])]
    raise Refused("not a report: neither XML, JSON, gzip, zip nor an email")
