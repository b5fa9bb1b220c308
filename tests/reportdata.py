"""Crafted DMARC aggregate and TLS reports for the tests, the TUI seed and the benchmark."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass
from email.message import EmailMessage


@dataclass(frozen=True)
class R:
    """One report row: a source address, a count and the aligned results."""

    ip: str
    count: int
    dkim: str = "pass"
    spf: str = "pass"
    disposition: str = "none"
    header_from: str = ""


def aggregate_xml(
    org: str,
    report_id: str,
    domain: str,
    begin: int,
    end: int,
    rows: list[R],
    p: str = "none",
    namespace: str = "",
) -> bytes:
    records = []
    for r in rows:
        hf = r.header_from or domain
        records.append(
            f"""  <record>
    <row>
      <source_ip>{r.ip}</source_ip>
      <count>{r.count}</count>
      <policy_evaluated>
        <disposition>{r.disposition}</disposition>
        <dkim>{r.dkim}</dkim>
        <spf>{r.spf}</spf>
      </policy_evaluated>
    </row>
    <identifiers>
      <header_from>{hf}</header_from>
    </identifiers>
    <auth_results>
      <dkim>
        <domain>{hf}</domain>
        <selector>s1</selector>
        <result>{r.dkim}</result>
      </dkim>
      <spf>
        <domain>{hf}</domain>
        <result>{r.spf}</result>
      </spf>
    </auth_results>
  </record>
"""
        )
    ns = f' xmlns="{namespace}"' if namespace else ""
    return f"""<?xml version="1.0" encoding="UTF-8" ?>
<feedback{ns}>
  <version>1.0</version>
  <report_metadata>
    <org_name>{org}</org_name>
    <email>noreply-dmarc@{org}</email>
    <report_id>{report_id}</report_id>
    <date_range>
      <begin>{begin}</begin>
      <end>{end}</end>
    </date_range>
  </report_metadata>
  <policy_published>
    <domain>{domain}</domain>
    <adkim>r</adkim>
    <aspf>r</aspf>
    <p>{p}</p>
    <sp>{p}</sp>
    <pct>100</pct>
  </policy_published>
{"".join(records)}</feedback>
""".encode()


def tls_json(
    org: str, report_id: str, domain: str, start: str, end: str, ok: int, bad: int
) -> bytes:
    return json.dumps(
        {
            "organization-name": org,
            "date-range": {"start-datetime": start, "end-datetime": end},
            "contact-info": f"tls-reports@{org}",
            "report-id": report_id,
            "policies": [
                {
                    "policy": {"policy-type": "sts", "policy-domain": domain},
                    "summary": {
                        "total-successful-session-count": ok,
                        "total-failure-session-count": bad,
                    },
                    "failure-details": [
                        {"result-type": "certificate-expired", "failed-session-count": bad}
                    ]
                    if bad
                    else [],
                }
            ],
        }
    ).encode()


def as_gzip(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


def as_zip(data: bytes, name: str = "report.xml") -> bytes:
    if not name:
        return _zip_with_empty_name(data)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return buf.getvalue()


def _zip_with_empty_name(data: bytes) -> bytes:
    """One deflated member whose name is empty, as some receivers send (zipfile refuses to
    write that, so the headers are put together here)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = comp.compress(data) + comp.flush()
    crc = zlib.crc32(data)
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(body), len(data), 0, 0
    )
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        20,
        20,
        0,
        8,
        0,
        0x21,
        crc,
        len(body),
        len(data),
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    )
    offset = len(local) + len(body)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), offset, 0)
    return local + body + central + end


def as_email(data: bytes, filename: str, ctype: str = "application/zip") -> bytes:
    msg = EmailMessage()
    msg["From"] = "noreply-dmarc-support@google.com"
    msg["To"] = "dmarc-reports@example.com"
    msg["Subject"] = "Report domain: example.com Submitter: google.com"
    msg.set_content("This is an aggregate report from google.com.")
    maintype, subtype = ctype.split("/")
    msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    return msg.as_bytes()
