"""DMARC aggregate reports (RFC 7489 Appendix C, the older draft, DMARCbis) from XML, read
with defusedxml: no DTD entities, no external entities, ever. What a person could still read
is read (a wrong encoding declaration, stray bytes, a stray tag, upper-case results, float
timestamps, namespaces); the rest is refused with the reason."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from postwarden.reports.unpack import Refused, printable

MAX_ROWS = 200_000
MAX_COUNT = 10**9
MAX_TIME = 2**40  # seconds since 1970: far beyond any report, far inside SQLite's integers
_DECL = re.compile(r"<\?xml[^>]{0,500}\?>")
_SCHEMA = re.compile(r"</?xs:schema[^>]{0,2000}>")
_DECLARED_ENCODING = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
# A tag, for the recovering pass: bounded by the next < or >, so scanning stays linear.
_TAG = re.compile(r"<(/?)([A-Za-z_][\w.\-]*(?::[A-Za-z_][\w.\-]*)?)((?:\s[^<>]{0,2000}?)?)\s*(/?)>")
_ATTRS = re.compile(r"""(\s+[\w:.\-]+\s*=\s*("[^"<]*"|'[^'<]*'))*\s*""")
MAX_NESTING = 64
_ENTITY = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#[0-9]+|#x[0-9A-Fa-f]+);)")


@dataclass
class Row:
    source_ip: str
    count: int
    disposition: str
    dkim: str  # policy_evaluated: the DMARC-aligned DKIM result
    spf: str  # policy_evaluated: the DMARC-aligned SPF result
    header_from: str
    envelope_from: str = ""
    dkim_auth: list[dict[str, str]] = field(default_factory=list)
    spf_auth: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_ip": self.source_ip,
            "count": self.count,
            "disposition": self.disposition,
            "dkim": self.dkim,
            "spf": self.spf,
            "header_from": self.header_from,
            "envelope_from": self.envelope_from,
            "dkim_auth": self.dkim_auth,
            "spf_auth": self.spf_auth,
        }


@dataclass
class Aggregate:
    org_name: str
    email: str
    report_id: str
    begin: int
    end: int
    domain: str
    policy: dict[str, str]  # p, sp, pct, adkim, aspf, np as published
    rows: list[Row]
    recovered: bool = False  # the XML was broken and read by the recovering pass


def _decode(data: bytes) -> str:
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    m = _DECLARED_ENCODING.match(data)
    if m:
        try:
            return data.decode(m.group(1).decode())
        except (LookupError, UnicodeDecodeError):
            pass
    return data.decode("utf-8", errors="replace")


_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _clean(text: str) -> str:
    text = _NOT_XML.sub(" ", text)  # characters XML 1.0 never allows: stray bytes
    text = _DECL.sub("", text)
    text = _SCHEMA.sub("", text)
    start, end = text.find("<"), text.rfind(">")
    if start < 0 or end < start:
        raise Refused("no XML element in it")
    return text[start : end + 1]


def _recover(text: str) -> str:
    """Rebuild a well-formed document from the tags that are tags: a `<` that starts no tag
    is text, comments, declarations and processing instructions are dropped, unknown entities
    are text, unclosed elements are closed. One pass, linear in the text (every search that
    fails ends the scan). The result goes through defusedxml again."""
    out: list[str] = []
    stack: list[str] = []
    pos, n = 0, len(text)

    def text_out(chunk: str) -> None:
        if chunk:
            chunk = _ENTITY.sub("&amp;", chunk)
            out.append(chunk.replace("<", "&lt;").replace(">", "&gt;"))

    while pos < n:
        lt = text.find("<", pos)
        if lt < 0:
            text_out(text[pos:])
            break
        text_out(text[pos:lt])
        if text.startswith("<!--", lt):
            end = text.find("-->", lt + 4)
            pos = n if end < 0 else end + 3
            continue
        if text.startswith("<![CDATA[", lt):
            end = text.find("]]>", lt + 9)
            if end < 0:
                text_out(text[lt + 9 :])
                break
            out.append(text[lt : end + 3])
            pos = end + 3
            continue
        if text.startswith(("<!", "<?"), lt):
            end = text.find(">", lt)
            pos = n if end < 0 else end + 1
            continue
        m = _TAG.match(text, lt)
        if m is None:
            text_out("<")
            pos = lt + 1
            continue
        pos = m.end()
        closing, name, attrs, empty = m.group(1), m.group(2), m.group(3) or "", m.group(4)
        if closing:
            if name in stack:
                while stack:
                    top = stack.pop()
                    out.append(f"</{top}>")
                    if top == name:
                        break
            continue
        if len(stack) >= MAX_NESTING:
            raise Refused(f"broken XML nested more than {MAX_NESTING} deep")
        attrs = attrs if _ATTRS.fullmatch(attrs) else ""
        out.append(f"<{name}{attrs}{'/' if empty else ''}>")
        if not empty:
            stack.append(name)
    out += [f"</{name}>" for name in reversed(stack)]
    return "".join(out)


def _parse(text: str) -> Element:
    try:
        return SafeET.fromstring(text, forbid_dtd=False)
    except DefusedXmlException as exc:
        raise Refused(
            f"XML that declares entities ({type(exc).__name__}): refused, never expanded"
        ) from None


def _strip_namespaces(root: Element) -> None:
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.rsplit("}", 1)[1]
        if isinstance(el.tag, str) and ":" in el.tag:
            el.tag = el.tag.rsplit(":", 1)[1]


def _text(el: Element | None, path: str, default: str = "") -> str:
    if el is None:
        return default
    found = el.find(path)
    if found is None or found.text is None:
        return default
    return printable(found.text)


def _int(value: str, what: str) -> int:
    try:
        n = int(float(value))
    except (ValueError, OverflowError):
        raise Refused(f"{what} is not a number: {value[:40]!r}") from None
    if n < 0 or n > MAX_TIME:
        raise Refused(f"{what} is out of range: {value[:40]!r}")
    return n


def _result(value: str) -> str:
    return value.strip().lower()


def _auth(record: Element, kind: str) -> list[dict[str, str]]:
    out = []
    for el in record.findall(f"auth_results/{kind}"):
        entry = {"domain": _text(el, "domain").lower(), "result": _result(_text(el, "result"))}
        if kind == "dkim":
            entry["selector"] = _text(el, "selector")
        else:
            entry["scope"] = _result(_text(el, "scope"))
        out.append(entry)
    return out


def _row(record: Element) -> Row | None:
    row = record.find("row")
    if row is None:
        return None
    ip = _text(row, "source_ip")
    try:
        ip = str(ipaddress.ip_address(ip))
    except ValueError:
        return None  # no address: nothing to say about a source
    count = min(_int(_text(row, "count", "0") or "0", "a row's count"), MAX_COUNT)
    pe = row.find("policy_evaluated")
    ids = record.find("identifiers")
    if ids is None:
        ids = record.find("identities")  # the old draft's name
    header_from = _text(ids, "header_from").lower().rstrip(".")
    dkim_auth, spf_auth = _auth(record, "dkim"), _auth(record, "spf")
    dkim, spf = _result(_text(pe, "dkim")), _result(_text(pe, "spf"))
    # No policy_evaluated result: a pass in auth_results for a domain aligned (relaxed) with
    # header_from counts as aligned, as the receiver would have evaluated it.
    if not dkim:
        dkim = "pass" if _aligned_pass(dkim_auth, header_from) else "fail"
    if not spf:
        spf = "pass" if _aligned_pass(spf_auth, header_from) else "fail"
    return Row(
        source_ip=ip,
        count=count,
        disposition=_result(_text(pe, "disposition", "none")) or "none",
        dkim=dkim,
        spf=spf,
        header_from=header_from,
        envelope_from=_text(ids, "envelope_from").lower(),
        dkim_auth=dkim_auth,
        spf_auth=spf_auth,
    )


def _aligned_pass(results: list[dict[str, str]], header_from: str) -> bool:
    """Relaxed alignment, approximated without the Public Suffix List: the same domain, or
    one a subdomain of the other."""
    for r in results:
        d = r["domain"].rstrip(".")
        if (
            r["result"] == "pass"
            and header_from
            and (d == header_from or d.endswith("." + header_from) or header_from.endswith("." + d))
        ):
            return True
    return False


def parse(data: bytes) -> Aggregate:
    """An aggregate report from XML bytes. Raises Refused with the reason."""
    if not data.strip():
        raise Refused("empty: no report in it")
    text = _clean(_decode(data))
    recovered = False
    try:
        root = _parse(text)
    except ParseError as exc:
        if "<!ENTITY" in text or "<!DOCTYPE" in text:
            raise Refused(f"broken XML with a DTD: refused ({exc})") from None
        try:
            root = _parse(_recover(text))
        except ParseError:
            raise Refused(f"not well-formed XML and not recoverable: {exc}") from None
        recovered = True
    _strip_namespaces(root)
    feedback = root if root.tag == "feedback" else root.find(".//feedback")
    if feedback is None:
        raise Refused(f"XML, but not a DMARC aggregate report (its root is <{root.tag}>)")
    meta = feedback.find("report_metadata")
    pub = feedback.find("policy_published")
    if meta is None or pub is None:
        raise Refused("a <feedback> without report_metadata or policy_published")
    org = _text(meta, "org_name")
    if not org and "@" in _text(meta, "email"):
        org = _text(meta, "email").rpartition("@")[2]  # as parsedmarc does
    report_id = _text(meta, "report_id")
    domain = _text(pub, "domain").lower().rstrip(".")
    if not org or not report_id or not domain:
        missing = [
            n for n, v in (("org_name", org), ("report_id", report_id), ("domain", domain)) if not v
        ]
        raise Refused(f"a DMARC report without {', '.join(missing)}")
    begin = _int(_text(meta, "date_range/begin", "0") or "0", "date_range/begin")
    end = _int(_text(meta, "date_range/end", "0") or "0", "date_range/end")
    if end < begin:
        begin, end = end, begin
    records = feedback.findall("record")
    if len(records) > MAX_ROWS:
        raise Refused(f"{len(records)} records (at most {MAX_ROWS})")
    rows = [r for r in (_row(rec) for rec in records) if r is not None]
    policy = {
        k: _result(_text(pub, k))
        for k in ("p", "sp", "pct", "adkim", "aspf", "np", "testing")
        if _text(pub, k)
    }
    return Aggregate(
        org_name=org[:200],
        email=_text(meta, "email")[:200],
        report_id=report_id[:200],
        begin=begin,
        end=end,
        domain=domain[:253],
        policy=policy,
        rows=rows,
        recovered=recovered,
    )
