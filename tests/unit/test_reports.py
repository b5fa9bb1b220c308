"""DMARC aggregate and TLS reports (reports.md): every report of the real corpora read, the
broken ones parsedmarc recovers, mail-auth's expected parses matched; the three source groups
and the DKIM alert; one report in four wrappings stored once; hostile input refused fast with
bounded memory; the DMARC advice against a DNS server on loopback."""

from __future__ import annotations

import io
import json
import os
import random
import re
import sqlite3
import subprocess
import sys
import time
import zipfile
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from postwarden.cli import main
from postwarden.config import load_config
from postwarden.reports import dmarc, tlsrpt
from postwarden.reports.advice import Readiness, advise
from postwarden.reports.ingest import ingest, read_reports
from postwarden.reports.summary import summarise
from postwarden.reports.unpack import MAX_DEPTH, Budget, Refused, documents, gunzip
from postwarden.store import migrate, open_db
from tests.dnsserver import LoopbackDNS, txt
from tests.helpers import SHARED, write_config
from tests.reportdata import R, aggregate_xml, as_email, as_gzip, as_zip, tls_json

CORPORA = SHARED / "corpora"
DMARC_DIR = CORPORA / "dmarc-aggregate"
TLS_DIR = CORPORA / "tlsrpt"
SERVER = "192.0.2.25"
NOW = datetime.now(UTC).replace(microsecond=0)


def _config(tmp_path: Path, dns: str = "127.0.0.1:9", extra_policy: str = "") -> Path:
    policy = '[domains."example.com"]\n[domains."example.org"]\n' + extra_policy
    return write_config(
        tmp_path,
        policy,
        daemon_extra=f"""
        [server]
        hostname = "mail.example.com"
        addresses = ["{SERVER}"]
        [dns]
        nameservers = ["{dns}"]
        timeout = 1.0
        """,
    )


def _ingest(cfg: Path, *paths: Path | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["--config", str(cfg), "reports", "ingest", *map(str, paths)])
    out = capsys.readouterr()
    return code, out.out + out.err


def _reports_json(cfg: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> Any:
    capsys.readouterr()
    assert main(["--config", str(cfg), "reports", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _db(tmp_path: Path) -> Any:
    db = open_db(tmp_path / "postwarden.db")
    migrate(db)
    return db


# ---- the corpora ----------------------------------------------------------------------------------


def corpus_files() -> tuple[list[Path], list[Path]]:
    """Every report in the two corpora (not mail-auth's expected parses, not licences)."""
    if not DMARC_DIR.is_dir() or not TLS_DIR.is_dir():
        pytest.fail(f"the report corpora are missing: {DMARC_DIR}, {TLS_DIR}")
    dmarc_files = sorted(
        p
        for p in DMARC_DIR.rglob("*")
        if p.is_file()
        and not p.name.startswith("LICENSE")
        and not (p.suffix == ".json" and p.parent.name == "mail-auth")
    )
    # rptNN.json beside rptNN.eml is the expected parse, and itself a valid report.
    tls_files = sorted(
        p for p in TLS_DIR.rglob("*") if p.is_file() and not p.name.startswith("LICENSE")
    )
    return dmarc_files, tls_files


def test_every_corpus_report_ingests_with_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    dmarc_files, tls_files = corpus_files()
    assert (len(dmarc_files), len(tls_files)) == (35, 5)
    refused = []
    for path in [*dmarc_files, *tls_files]:
        code, out = _ingest(cfg, path, capsys=capsys)
        assert code == 0, f"{path}: {out}"
        assert "Traceback" not in out
        if "refused:" in out:
            refused.append((path.name, out.split("refused: ", 1)[1].strip()))
    # empty.xml is the only one that cannot be read, and says why.
    assert refused == [("empty.xml", "empty: no report in it")]
    db = open_db(tmp_path / "postwarden.db")
    kinds = dict(db.execute("SELECT kind, COUNT(*) FROM reports GROUP BY kind").fetchall())
    # 34 readable DMARC files hold 28 distinct reports (nice-input as .xml, .gz and .zip; two
    # pairs and a triple sharing an organisation and report id); 5 TLS files, 3 reports.
    assert kinds == {"dmarc": 28, "tlsrpt": 3}
    assert db.execute("SELECT COUNT(*) FROM report_refused").fetchone()[0] == 1
    assert db.execute("SELECT SUM(count) FROM report_rows").fetchone()[0] > 8000


def test_the_rpt_json_beside_the_emails_are_the_same_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    pairs = sorted((TLS_DIR / "mail-auth").glob("rpt*.eml"))
    assert len(pairs) == 2
    for eml in pairs:
        _, first = _ingest(cfg, eml, capsys=capsys)
        _, again = _ingest(cfg, eml.with_suffix(".json"), capsys=capsys)
        assert "stored: TLS report" in first and "already stored: TLS report" in again


def _norm(value: Any) -> str:
    text = str(value or "").lower()
    return "" if text == "unspecified" else text


@pytest.mark.parametrize(
    "number", ["001", "002", "003", "004", "005", "100", "101", "102", "103", "104"]
)
def test_mail_auth_parses_match_their_json(number: str) -> None:
    src = DMARC_DIR / "mail-auth" / (f"{number}.xml" if int(number) < 100 else f"{number}.eml")
    if not src.exists():
        pytest.fail(f"{src} is missing")
    expected = json.loads((src.with_suffix(".json")).read_text())
    [(_, rep)] = read_reports(src.read_bytes())
    assert isinstance(rep, dmarc.Aggregate)
    meta, pub = expected["report_metadata"], expected["policy_published"]
    assert (rep.org_name, rep.report_id) == (meta["org_name"], meta["report_id"])
    assert (rep.begin, rep.end) == (meta["date_range"]["begin"], meta["date_range"]["end"])
    assert rep.domain == pub["domain"]
    assert rep.policy.get("p", "") == _norm(pub["p"])
    assert len(rep.rows) == len(expected["record"])
    for row, exp in zip(rep.rows, expected["record"], strict=True):
        er, pe = exp["row"], exp["row"]["policy_evaluated"]
        assert row.source_ip == er["source_ip"]
        assert row.count == er["count"]
        assert row.disposition == (_norm(pe["disposition"]) or "none")
        assert (row.dkim, row.spf) == (_norm(pe["dkim"]), _norm(pe["spf"]))
        assert row.header_from == exp["identifiers"]["header_from"].lower()
        assert [(a["domain"], a["result"]) for a in row.dkim_auth] == [
            (a["domain"].lower(), _norm(a["result"])) for a in exp["auth_results"]["dkim"]
        ]
        assert [(a["domain"], a["result"]) for a in row.spf_auth] == [
            (a["domain"].lower(), _norm(a["result"])) for a in exp["auth_results"]["spf"]
        ]


@pytest.mark.parametrize(
    ("name", "org", "rows"),
    [
        ("aggregate/invalid_xml.xml", "veeam.com", 1),  # a raw <bad-xml@...> inside <email>
        ("aggregate/invalid_utf_8.xml", "accurateplastics.com", 1),  # a stray 0x91 byte
        ("aggregate/ikea.com!example.de!1538690400!1538776800.xml", "ikea.com", 1),  # xs:schema
        ("aggregate/mimecast-weird-gzip.eml", "Mimecast", 1),  # CRLF after the gzip stream
        ("aggregate_invalid/report_with_upper_cased_pass.xml", "example.com", 1),
        ("aggregate/rfc9990-sample.xml", "Sample Reporter", 1),  # DMARCbis namespace
        ("aggregate/old_draft_from_wiki.xml", "acme.com", 1),
    ],
)
def test_the_broken_ones_parsedmarc_recovers_are_read(name: str, org: str, rows: int) -> None:
    [(_, rep)] = read_reports((DMARC_DIR / "parsedmarc" / name).read_bytes())
    assert isinstance(rep, dmarc.Aggregate)
    assert rep.org_name == org and len(rep.rows) == rows
    assert all(r.dkim == r.dkim.lower() and r.spf == r.spf.lower() for r in rep.rows)


def test_upper_case_pass_counts_as_pass() -> None:
    path = DMARC_DIR / "parsedmarc" / "aggregate_invalid" / "report_with_upper_cased_pass.xml"
    assert b"Pass" in path.read_bytes()
    [(_, rep)] = read_reports(path.read_bytes())
    assert isinstance(rep, dmarc.Aggregate)
    assert "pass" in (rep.rows[0].dkim, rep.rows[0].spf)


def test_empty_xml_is_refused_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    code, out = _ingest(cfg, DMARC_DIR / "parsedmarc" / "empty.xml", capsys=capsys)
    assert code == 0 and "refused: empty: no report in it" in out
    row = open_db(tmp_path / "postwarden.db").execute("SELECT reason, size FROM report_refused")
    assert row.fetchall() == [("empty: no report in it", 0)]


# ---- lenient reading ---------------------------------------------------------------------------


def test_float_timestamps_double_gzip_trailing_bytes_and_an_empty_member_name() -> None:
    xml = aggregate_xml("g.example", "f1", "example.com", 0, 0, [R("192.0.2.1", 2)])
    xml = xml.replace(b"<begin>0</begin>", b"<begin>1700000000.0</begin>").replace(
        b"<end>0</end>", b"<end>1700086399.5</end>"
    )
    for wrapped in (
        as_gzip(as_gzip(xml)),
        as_gzip(xml) + b"\r\n\x00garbage",
        as_zip(xml, name=""),
        b"\xef\xbb\xbf  \r\n" + xml,
        xml.replace(b'encoding="UTF-8"', b'encoding="windows-1252"'),
    ):
        [(_, rep)] = read_reports(wrapped)
        assert isinstance(rep, dmarc.Aggregate)
        assert (rep.begin, rep.end, rep.rows[0].count) == (1700000000, 1700086399, 2)


def test_a_report_inline_in_an_email_body_is_read() -> None:
    xml = aggregate_xml("inline.example", "i1", "example.com", 1, 2, [R("192.0.2.1", 1)])
    raw = b"From: a@b.example\r\nSubject: report\r\nContent-Type: text/xml\r\n\r\n" + xml
    [(_, rep)] = read_reports(raw)
    assert isinstance(rep, dmarc.Aggregate) and rep.report_id == "i1"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"<html><body>hello</body></html>", "not a DMARC aggregate report"),
        (b'{"hello": 1}', "not a TLS report"),
        (b"\x00\x01\x02 binary", "not a report"),
        (b"From: a@b.example\r\nSubject: hi\r\n\r\njust text\r\n", "no report in it"),
        (b"\x1f\x8b\x08\x00broken", "gzip"),
        (b"PK\x03\x04broken", "zip"),
    ],
)
def test_what_cannot_be_read_is_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(Refused, match=reason):
        read_reports(data)


def test_nesting_is_bounded() -> None:
    data = aggregate_xml("n.example", "n1", "example.com", 1, 2, [R("192.0.2.1", 1)])
    for _ in range(MAX_DEPTH + 1):
        data = as_gzip(data)
    with pytest.raises(Refused, match="nested"):
        documents(data)


# ---- hostile input -------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<feedback><report_metadata><org_name>&lol9;</org_name><report_id>bl</report_id>
<date_range><begin>1</begin><end>2</end></date_range></report_metadata>
<policy_published><domain>example.com</domain><p>none</p></policy_published></feedback>
"""

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE feedback [ <!ENTITY xxe SYSTEM "file:///etc/passwd"> ]>
<feedback><report_metadata><org_name>&xxe;</org_name><report_id>xxe</report_id>
<date_range><begin>1</begin><end>2</end></date_range></report_metadata>
<policy_published><domain>example.com</domain><p>none</p></policy_published>
<record><row><source_ip>192.0.2.1</source_ip><count>1</count></row>
<identifiers><header_from>&xxe;</header_from></identifiers></record></feedback>
"""


def zip_of_zeros(path: Path, size: int = 2 * 1024**3) -> Path:
    """A zip holding `size` bytes of zeros, written streamed (about 9 MB on disk)."""
    chunk = bytes(1024 * 1024)
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z,
        z.open("report.xml", "w", force_zip64=True) as fh,
    ):
        for _ in range(size // len(chunk)):
            fh.write(chunk)
    return path


# The child's own peak: VmHWM of its memory after exec. (wait4's ru_maxrss would include the
# pages it shared with this pytest process at fork, which after the whole suite is ~400 MB.)
_HWM_CHILD = (
    "import atexit, os, sys\n"
    "def hwm():\n"
    "    line = [x for x in open('/proc/self/status') if x.startswith('VmHWM')][0]\n"
    "    open(os.environ['POSTWARDEN_TEST_HWM'], 'w').write(line.split()[1])\n"
    "atexit.register(hwm)\n"
    "from postwarden.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _run_ingest(cfg: Path, path: Path) -> tuple[int, str, float, int]:
    """`postwarden reports ingest` in its own process: (exit, output, seconds, peak RSS KiB)."""
    hwm = path.with_suffix(".hwm")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", _HWM_CHILD, "--config", str(cfg), "reports", "ingest", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "POSTWARDEN_TEST_HWM": str(hwm)},
        check=False,
    )
    seconds = time.monotonic() - started
    return proc.returncode, proc.stdout.decode(), seconds, int(hwm.read_text())


@pytest.mark.parametrize("name", ["billion-laughs.xml", "xxe.xml", "zeros-2g.zip"])
def test_hostile_reports_are_refused_fast_with_bounded_memory(tmp_path: Path, name: str) -> None:
    cfg = _config(tmp_path)
    path = tmp_path / name
    if name == "billion-laughs.xml":
        path.write_bytes(BILLION_LAUGHS)
    elif name == "xxe.xml":
        path.write_bytes(XXE)
    else:
        zip_of_zeros(path)
        assert zipfile.ZipFile(path).infolist()[0].file_size == 2 * 1024**3
    code, out, seconds, rss_kib = _run_ingest(cfg, path)
    assert code == 0 and "refused:" in out, out
    assert "Traceback" not in out
    assert seconds < 10, seconds
    assert rss_kib < 300 * 1024, f"peak RSS {rss_kib} KiB"
    db_path = tmp_path / "postwarden.db"
    db = open_db(db_path)
    assert db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0
    assert db.execute("SELECT COUNT(*) FROM report_refused").fetchone()[0] == 1
    reason = db.execute("SELECT reason FROM report_refused").fetchone()[0]
    assert ("entities" in reason) if name.endswith(".xml") else ("MiB" in reason), reason
    # Nothing of the password file anywhere: not printed, not stored.
    passwd = Path("/etc/passwd").read_text().splitlines()[0]
    db.conn.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("postwarden.db*"))
    assert passwd not in out and passwd.encode() not in stored


def test_a_gzip_bomb_stops_at_the_budget() -> None:
    comp = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    bomb = b"".join(comp.compress(chunk) for _ in range(512)) + comp.flush()

    def hwm_kib() -> int:
        line = [
            x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM")
        ]
        return int(line[0].split()[1])

    def rss_kib() -> int:
        line = [
            x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS")
        ]
        return int(line[0].split()[1])

    # The peak from here on (Linux resets VmHWM to the current RSS on "5" in clear_refs).
    Path("/proc/self/clear_refs").write_text("5")
    before = rss_kib()
    started = time.monotonic()
    with pytest.raises(Refused, match="MiB"):
        gunzip(bomb, Budget())
    assert time.monotonic() - started < 5
    grew = hwm_kib() - before
    assert grew < 128 * 1024, grew  # KiB: far below the 512 MiB the bomb holds


def test_archive_member_names_are_never_paths(tmp_path: Path) -> None:
    xml = aggregate_xml("p.example", "p1", "example.com", 1, 2, [R("192.0.2.1", 1)])
    target = tmp_path / "escaped.xml"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(f"../../../../{target}", xml)
        z.writestr("/etc/cron.d/evil", xml)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        found = read_reports(buf.getvalue())
    finally:
        os.chdir(cwd)
    assert len(found) == 2 and not target.exists() and not Path("/etc/cron.d/evil").exists()


# ---- stored once ----------------------------------------------------------------------------------


def test_the_same_report_in_four_forms_is_stored_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    xml = aggregate_xml(
        "google.com", "42-once", "example.com", 1700000000, 1700086399, [R(SERVER, 5)]
    )
    forms = {
        "r.xml": xml,
        "r.xml.gz": as_gzip(xml),
        "r.zip": as_zip(xml, "google.com!example.com!1700000000!1700086399.xml"),
        "r.eml": as_email(as_zip(xml), "google.com!example.com!1700000000!1700086399.zip"),
    }
    outputs = []
    for name, data in forms.items():
        (tmp_path / name).write_bytes(data)
        code, out = _ingest(cfg, tmp_path / name, capsys=capsys)
        assert code == 0
        outputs.append(out)
    assert "stored: DMARC aggregate report '42-once'" in outputs[0]
    assert all("already stored" in o for o in outputs[1:]), outputs
    db = open_db(tmp_path / "postwarden.db")
    assert db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 1
    assert db.execute("SELECT COUNT(*), SUM(count) FROM report_rows").fetchone() == (1, 5)
    # The raw report is kept, compressed.
    raw, size = db.execute("SELECT raw, raw_size FROM reports").fetchone()
    assert size == len(xml) and zlib.decompress(raw, 16 + zlib.MAX_WBITS) == xml


def test_stdin_is_read_when_no_file_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    data = as_email(
        tls_json(
            "mx.example",
            "t-1",
            "example.com",
            "2026-11-01T00:00:00Z",
            "2026-11-01T23:59:59Z",
            10,
            2,
        ),
        "r.json.gz",
        "application/tlsrpt+gzip",
    )

    class Stdin:
        buffer = io.BytesIO(data)

    monkeypatch.setattr(sys, "stdin", Stdin)
    code, out = _ingest(cfg, capsys=capsys)
    assert code == 0 and "stored: TLS report 't-1'" in out


def test_a_locked_database_is_exit_75(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    xml = tmp_path / "r.xml"
    xml.write_bytes(aggregate_xml("o.example", "l1", "example.com", 1, 2, [R(SERVER, 1)]))
    _db(tmp_path)
    monkeypatch.setattr("postwarden.store.db.BUSY_TIMEOUT_MS", 50)
    holder = sqlite3.connect(tmp_path / "postwarden.db")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, out = _ingest(cfg, xml, capsys=capsys)
    finally:
        holder.rollback()
        holder.close()
    assert code == 75 and "retry later" in out


def test_an_unreadable_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _ingest(_config(tmp_path), tmp_path / "missing.xml", capsys=capsys)
    assert code == 2 and "missing.xml" in out


def test_reports_received_before_the_retention_are_pruned(tmp_path: Path) -> None:
    db = _db(tmp_path)
    old = aggregate_xml("o.example", "old", "example.com", 1, 2, [R(SERVER, 1)])
    new = aggregate_xml("o.example", "new", "example.com", 1, 2, [R(SERVER, 1)])
    ingest(db, old, now=NOW - timedelta(days=100), retention_days=90)
    ingest(db, new, now=NOW, retention_days=90)
    assert [r[0] for r in db.execute("SELECT report_id FROM reports").fetchall()] == ["new"]
    assert db.execute("SELECT COUNT(*) FROM report_rows").fetchone()[0] == 1


# ---- what it shows -------------------------------------------------------------------------------

ELSEWHERE = "198.51.100.7"
SPOOFER = "203.0.113.66"


def three_groups(begin: int, end: int) -> bytes:
    return aggregate_xml(
        "google.com",
        "three-groups",
        "example.com",
        begin,
        end,
        [
            R(SERVER, 120),  # this server, passing
            R(SERVER, 3, dkim="fail", spf="pass"),  # this server, DKIM broken on the way
            R(ELSEWHERE, 40, dkim="pass", spf="fail"),  # a newsletter service, aligned DKIM
            R(SPOOFER, 7, dkim="fail", spf="fail", disposition="reject"),
        ],
    )


def zone(p: str = "none") -> str:
    return "\n".join(
        [
            txt("_dmarc.example.com.", f"v=DMARC1; p={p}; rua=mailto:dmarc@example.com"),
            "25.2.0.192.in-addr.arpa. 300 IN PTR mail.example.com.",
            "7.100.51.198.in-addr.arpa. 300 IN PTR out.newsletter.example.",
        ]
    )


def test_three_groups_with_counts_pass_share_and_the_dkim_alert(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with LoopbackDNS(zone()) as dns:
        cfg = _config(tmp_path, dns.address)
        day = int((NOW - timedelta(days=1)).timestamp())
        (tmp_path / "r.xml").write_bytes(three_groups(day - 43200, day + 43199))
        assert _ingest(cfg, tmp_path / "r.xml", capsys=capsys)[0] == 0
        summary = _reports_json(cfg, capsys)
    [d] = summary["domains"]
    assert d["domain"] == "example.com"
    assert d["messages"] == 170 and d["dmarc_pass"] == 163
    assert d["pass_share"] == round(163 / 170, 4)
    assert d["dispositions"] == {"none": 163, "reject": 7}
    assert d["reporters"] == [{"org_name": "google.com", "report_ids": ["three-groups"]}]
    g = d["groups"]
    assert (g["this_server"]["messages"], g["this_server"]["dkim_fail"]) == (123, 3)
    assert (g["authorised_elsewhere"]["messages"], g["failing"]["messages"]) == (40, 7)
    assert [s["ip"] for s in g["this_server"]["sources"]] == [SERVER]
    assert g["this_server"]["sources"][0]["name"] == "mail.example.com"
    assert g["authorised_elsewhere"]["sources"][0]["name"] == "out.newsletter.example"
    assert g["failing"]["sources"][0]["ip"] == SPOOFER
    assert g["failing"]["sources"][0]["name"] == ""  # no PTR: known to have no name
    assert len(d["alerts"]) == 1 and "3 message(s) from this server failed DKIM" in d["alerts"][0]
    assert d["advice"]["step"] == "stay" and "failed DKIM" in d["advice"]["message"]
    assert d["own"]["reported"] == 123 and d["own"]["signed"] == 0
    # The text form says the same.
    assert main(["--config", str(cfg), "reports"]) == 0
    text = capsys.readouterr().out
    assert "ALERT: 3 message(s) from this server failed DKIM" in text
    assert "this server: 123 message(s)" in text and "failing" in text


def test_reverse_names_are_cached_and_dns_down_is_no_name_not_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    day = int((NOW - timedelta(days=1)).timestamp())
    (tmp_path / "r.xml").write_bytes(three_groups(day, day + 3600))
    with LoopbackDNS(zone()) as dns:
        cfg = _config(tmp_path, dns.address)
        _ingest(cfg, tmp_path / "r.xml", capsys=capsys)
        _reports_json(cfg, capsys)
    # The DNS server is gone: the names come from the cache.
    cached = _reports_json(cfg, capsys)["domains"][0]["groups"]["this_server"]["sources"][0]
    assert cached["name"] == "mail.example.com"
    # A fresh database with DNS unreachable: no names, quickly, no error.
    other = tmp_path / "other"
    other.mkdir()
    cfg2 = _config(other, "127.0.0.1:9")
    _ingest(cfg2, tmp_path / "r.xml", capsys=capsys)
    started = time.monotonic()
    summary = _reports_json(cfg2, capsys)
    assert time.monotonic() - started < 6
    src = summary["domains"][0]["groups"]["this_server"]["sources"][0]
    assert src["name"] is None
    assert summary["domains"][0]["advice"]["current"] == "?"


def _clean_days(tmp_path: Path, days: int, p: str = "none") -> Path:
    db = _db(tmp_path)
    today = NOW.date()
    for n in range(1, days + 1):
        d = today - timedelta(days=n)
        begin = int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())
        xml = aggregate_xml(
            "google.com",
            f"clean-{n}",
            "example.com",
            begin,
            begin + 86399,
            [R(SERVER, 100), R(ELSEWHERE, 10, spf="fail")],
            p=p,
        )
        ingest(db, xml, now=NOW)
    return tmp_path


def test_fourteen_clean_days_at_p_none_advise_quarantine_naming_the_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _clean_days(tmp_path, 14)
    with LoopbackDNS(zone("none")) as dns:
        cfg = _config(tmp_path, dns.address)
        summary = _reports_json(cfg, capsys, "--domain", "example.com")
        [d] = summary["domains"]
        assert d["readiness"]["days"] == 14 and d["readiness"]["ready"] is True
        assert d["advice"]["step"] == "quarantine"
        assert d["advice"]["record"] == (
            '_dmarc.example.com. IN TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"'
        )
        # dns-check gives the same advice and record.
        capsys.readouterr()
        main(["--config", str(cfg), "dns-check", "example.com", "--json"])
        findings = json.loads(capsys.readouterr().out)["domains"]["example.com"]
        dmarc_warn = [f for f in findings if f["area"] == "dmarc" and f["status"] == "warn"]
        assert dmarc_warn[0]["fix"] == d["advice"]["record"]
        assert d["advice"]["message"] in dmarc_warn[0]["message"]


def test_thirteen_days_are_not_enough(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _clean_days(tmp_path, 13)
    with LoopbackDNS(zone("none")) as dns:
        cfg = _config(tmp_path, dns.address)
        [d] = _reports_json(cfg, capsys)["domains"]
    assert d["advice"]["step"] == "stay"
    assert "13 of the 14 days" in d["advice"]["message"]


def test_quarantine_moves_to_reject_and_reject_stays() -> None:
    ready = Readiness(
        days=14, messages=100, passed=99, own_dkim_failures=0, ready_days=14, ready_share=0.98
    )
    a = advise(
        "example.com",
        "_dmarc.example.com",
        "v=DMARC1; p=quarantine; pct=100; rua=mailto:x@example.com",
        ready,
    )
    assert a.step == "reject"
    assert (
        a.record
        == '_dmarc.example.com. IN TXT "v=DMARC1; p=reject; pct=100; rua=mailto:x@example.com"'
    )
    assert advise("example.com", "_dmarc.example.com", "v=DMARC1; p=reject", ready).step == "stay"
    low = Readiness(
        days=14, messages=100, passed=90, own_dkim_failures=0, ready_days=14, ready_share=0.98
    )
    assert (
        "90.0% passed DMARC"
        in advise("example.com", "_dmarc.example.com", "v=DMARC1; p=none", low).message
    )
    assert advise("example.com", "_dmarc.example.com", "", None).step == "publish"


def test_ready_share_and_days_come_from_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _clean_days(tmp_path, 5)
    with LoopbackDNS(zone("none")) as dns:
        cfg = _config(tmp_path, dns.address, "[reports]\nready_days = 5\nready_share = 0.9\n")
        [d] = _reports_json(cfg, capsys)["domains"]
    assert d["readiness"]["ready_days"] == 5 and d["advice"]["step"] == "quarantine"


def test_since_and_domain_filter_by_overlapping_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _db(tmp_path)
    old = int((NOW - timedelta(days=40)).timestamp())
    ingest(
        db,
        aggregate_xml("o.example", "old", "example.com", old, old + 86399, [R(SERVER, 1)]),
        now=NOW,
    )
    ingest(
        db,
        aggregate_xml("o.example", "org", "example.org", old, old + 86400 * 20, [R(SERVER, 2)]),
        now=NOW,
    )
    cfg = _config(tmp_path)
    summary = _reports_json(cfg, capsys)
    assert [d["domain"] for d in summary["domains"]] == ["example.org"]  # overlaps the 30 days
    assert [
        d["domain"]
        for d in _reports_json(cfg, capsys, "--since", "60d", "--domain", "example.com")["domains"]
    ] == ["example.com"]
    assert main(["--config", str(cfg), "reports", "--since", "yesterday"]) == 2


def test_tls_reports_per_policy_domain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _db(tmp_path)
    day = (NOW - timedelta(days=1)).date().isoformat()
    for org, ok, bad in (("google.com", 100, 3), ("microsoft.com", 50, 0)):
        ingest(
            db,
            tls_json(
                org, f"{org}-1", "example.com", f"{day}T00:00:00Z", f"{day}T23:59:59Z", ok, bad
            ),
            now=NOW,
        )
    [t] = _reports_json(_config(tmp_path), capsys)["tls"]
    assert t == {
        "policy_domain": "example.com",
        "policy_types": ["sts"],
        "successful": 150,
        "failed": 3,
        "failures": {"certificate-expired": 3},
    }


def test_summarise_reads_the_config_model(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path), validate_keys=False)
    assert cfg.policy.reports.ready_days == 14 and cfg.policy.reports.ready_share == 0.98
    assert summarise(_db(tmp_path), cfg, NOW, resolve=False)["domains"] == []


def test_tls_parse_refuses_a_report_without_an_id() -> None:
    with pytest.raises(Refused, match="report-id"):
        tlsrpt.parse(b'{"organization-name": "x", "policies": []}')


def test_terminal_escapes_in_a_report_are_not_passed_on() -> None:
    xml = aggregate_xml(
        "evil\x1b[2J\x1b]0;pwned\x07.example", "id\x1b[31m", "example.com", 1, 2, [R(SERVER, 1)]
    )
    [(_, rep)] = read_reports(xml)  # raw control bytes, which XML never allows
    assert "\x1b" not in rep.org_name + rep.report_id and "\x07" not in rep.org_name
    # A C1 control (CSI) is a valid XML character reference, and still not passed on.
    [(_, rep)] = read_reports(xml.replace(b"\x1b[", b"&#x9b;"))
    assert "\x9b" not in rep.org_name + rep.report_id


def test_an_external_dtd_is_never_fetched(tmp_path: Path) -> None:
    doc = aggregate_xml("o.example", "dtd", "example.com", 1, 2, [R(SERVER, 1)]).replace(
        b"<feedback>", b'<!DOCTYPE feedback SYSTEM "file:///etc/passwd">\n<feedback>', 1
    )
    db = _db(tmp_path)
    [outcome] = ingest(db, doc, now=NOW)
    passwd = Path("/etc/passwd").read_text().splitlines()[0]
    assert outcome.status in ("stored", "refused")
    db.conn.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("postwarden.db*"))
    assert passwd.encode() not in stored and passwd not in outcome.line()


def test_rows_without_policy_evaluated_are_judged_from_auth_results() -> None:
    xml = aggregate_xml(
        "o.example",
        "pe",
        "example.com",
        1,
        2,
        [R(SERVER, 1), R(SPOOFER, 2, dkim="fail", spf="fail")],
    )
    xml = re.sub(rb"<policy_evaluated>.*?</policy_evaluated>", b"", xml, flags=re.S)
    [(_, rep)] = read_reports(xml)
    assert isinstance(rep, dmarc.Aggregate)
    assert [(r.dkim, r.spf) for r in rep.rows] == [("pass", "pass"), ("fail", "fail")]


def test_a_bomb_in_one_attachment_refuses_the_whole_email() -> None:
    comp = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = b"".join(comp.compress(bytes(1024 * 1024)) for _ in range(64)) + comp.flush()
    good = aggregate_xml("o.example", "ok", "example.com", 1, 2, [R(SERVER, 1)])
    msg = as_email(bomb, "a.xml.gz", "application/gzip")
    with pytest.raises(Refused, match="MiB"):
        read_reports(msg)
    assert read_reports(as_email(good, "b.xml", "text/xml"))


def test_a_config_error_makes_ingest_retry_later_not_bounce(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text() + "[nosuchsection]\n")
    code, out = _ingest(cfg, DMARC_DIR / "mail-auth" / "001.xml", capsys=capsys)
    assert code == 75 and "nosuchsection" in out and "retry later" in out
    with pytest.raises(SystemExit) as exc:  # the other commands keep exit 78
        main(["--config", str(cfg), "reports"])
    assert exc.value.code == 78


def test_mutated_corpus_reports_are_stored_or_refused_never_an_exception(tmp_path: Path) -> None:
    """600 random mutations (flipped, cut and inserted bytes) of the corpus files, each through
    ingest into a real SQLite file: every one is stored or refused with a reason."""
    dmarc_files, tls_files = corpus_files()
    sources = [p.read_bytes() for p in [*dmarc_files, *tls_files] if p.stat().st_size]
    rnd = random.Random(17)
    db = _db(tmp_path)
    statuses: dict[str, int] = {}
    for _ in range(600):
        data = bytearray(rnd.choice(sources))
        for _ in range(rnd.randint(1, 8)):
            pos = rnd.randrange(len(data))
            op = rnd.random()
            if op < 0.4:
                data[pos] = rnd.randrange(256)
            elif op < 0.7:
                del data[pos : pos + rnd.randint(1, 50)]
            else:
                data[pos:pos] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 10)))
            if not data:
                break
        for outcome in ingest(db, bytes(data), now=NOW):
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
            assert outcome.status != "refused" or outcome.reason
    assert sum(statuses.values()) >= 600 and statuses.get("refused", 0) > 0


@pytest.mark.parametrize(
    "data",
    [
        b"<feedback>" + b"<!--" * 262_144,
        b"<feedback>" + b"<?xml" * 200_000,
        b"<feedback>" + b"<![CDATA[" * 100_000,
        b"<feedback>" + b"<" * 1_000_000,
        b"<feedback>" + b"<a>" * 300_000 + b"<bad@",
        b"<feedback><a><b>" + b"</zz>" * 200_000 + b"<bad@",
        b"<feedback>" + b"<xs:schema" * 100_000,
        b"<feedback>" + b"&" * 1_000_000 + b"<bad@",
    ],
    ids=["comments", "declarations", "cdata", "lt", "nesting", "closings", "schema", "amp"],
)
def test_pathological_broken_xml_is_refused_in_linear_time(data: bytes) -> None:
    started = time.process_time()
    with pytest.raises(Refused):
        read_reports(data)
    assert time.process_time() - started < 5


def _nested_email(depth: int) -> bytes:
    head = b"From: a@b.example\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
    opens = b"".join(
        f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode()
        for i in range(depth)
    )
    closes = b"".join(f"--b{i}--\r\n".encode() for i in reversed(range(depth)))
    return head + opens + b"Content-Type: text/plain\r\n\r\nhello\r\n" + closes


@pytest.mark.parametrize(
    "data",
    [
        _nested_email(5000),
        _nested_email(450),
        b'From: a@b.example\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="x"\r\n\r\n'
        + b"--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n" * 200_000
        + b"--x--\r\n",
    ],
    ids=["nested-5000", "nested-450", "200000-parts"],
)
def test_hostile_mime_structure_is_refused_quickly(data: bytes) -> None:
    started = time.process_time()
    with pytest.raises(Refused):
        read_reports(data)
    assert time.process_time() - started < 3


def test_a_zip_listing_many_members_is_refused_before_they_are_read() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(5000):
            z.writestr(f"{i}.xml", b"")
    started = time.process_time()
    with pytest.raises(Refused, match="5000 members"):
        read_reports(buf.getvalue())
    assert time.process_time() - started < 1


def test_own_count_is_over_the_reports_ranges_only() -> None:
    from postwarden.reports.summary import merge_ranges

    day = 86400
    assert merge_ranges({(0, day - 1), (day, 2 * day - 1), (5 * day, 6 * day - 1), (10, 20)}) == [
        (0, 2 * day - 1),
        (5 * day, 6 * day - 1),
    ]


def test_own_signed_counts_decisions_inside_the_ranges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _db(tmp_path)
    start = (NOW - timedelta(days=20)).date()
    base = datetime(start.year, start.month, start.day, tzinfo=UTC)
    sig = json.dumps([{"d": "example.com", "s": "s1", "a": "rsa-sha256"}])
    other = json.dumps([{"d": "other.example", "s": "s1", "a": "rsa-sha256"}])
    rows = []
    for hours, action, sigs in [
        (1, "accept", sig),  # day 1: counted
        (5, "accept", sig),  # day 1: counted
        (7, "reject", sig),  # not passed on
        (8, "accept", other),  # another domain
        (30, "accept", sig),  # day 2: no report covers it
        (50, "accept", sig),  # day 3: counted
    ]:
        rows.append(
            {
                "time": (base + timedelta(hours=hours)).isoformat(),
                "action": action,
                "outbound": 1,
                "signatures": sigs,
            }
        )
    db["decisions"].insert_all(rows, alter=False)
    for n in (0, 2):
        b = int((base + timedelta(days=n)).timestamp())
        ingest(
            db,
            aggregate_xml("g.example", f"own-{n}", "example.com", b, b + 86399, [R(SERVER, 5)]),
            now=NOW,
        )
    cfg = _config(tmp_path)
    [d] = _reports_json(cfg, capsys, "--since", "60d")["domains"]
    assert d["own"] == {
        "reported": 10,
        "signed": 3,
        "ranges": 2,
        "from": base.isoformat(),
        "until": (base + timedelta(days=3)).isoformat(),
    }


def test_ingest_json_lists_each_outcome(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path)
    good = tmp_path / "r.xml"
    good.write_bytes(aggregate_xml("o.example", "j1", "example.com", 1, 2, [R(SERVER, 1)]))
    empty = tmp_path / "e.xml"
    empty.write_bytes(b"")
    capsys.readouterr()
    assert (
        main(
            ["--config", str(cfg), "reports", "ingest", "--json", str(good), str(empty), str(good)]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [(o["source"], o["status"]) for o in out] == [
        (str(good), "stored"),
        (str(empty), "refused"),
        (str(good), "duplicate"),
    ]
    assert out[0]["report_id"] == "j1" and out[1]["reason"] == "empty: no report in it"
