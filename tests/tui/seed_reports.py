"""Seeded DMARC and TLS reports for the Reports screen's tests, over tests/tui/seed.py's config
and frozen clock: example.com with 14 days of reports (a newsletter service, a spoofer, one
day with 3 DKIM failures of this server's own mail), example.net with 5 days, mostly failing;
a DNS zone with their DMARC records and the sources' reverse names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from postwarden.reports.ingest import ingest
from postwarden.store import migrate, open_db
from tests.dnsserver import txt
from tests.reportdata import R, aggregate_xml, tls_json
from tests.tui.seed import FROZEN, seed

SERVER = "192.0.2.25"
NEWSLETTER = "198.51.100.7"
SPOOFER = "203.0.113.66"

ZONE = "\n".join(
    [
        txt("_dmarc.example.com.", "v=DMARC1; p=none; rua=mailto:dmarc@example.com"),
        txt("_dmarc.example.net.", "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.net"),
        "25.2.0.192.in-addr.arpa. 300 IN PTR mx1.example.net.",
        "7.100.51.198.in-addr.arpa. 300 IN PTR out.newsletter.example.",
        "66.113.0.203.in-addr.arpa. 300 IN PTR host66.spammy.example.",
    ]
)


def _day(n: int) -> int:
    d = (FROZEN - timedelta(days=n)).date()
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


def seed_reports(root: Path, dns_address: str) -> Path:
    """The TUI seed plus reports; returns postwarden.toml's path."""
    cfg = seed(root)
    cfg.write_text(
        cfg.read_text()
        + f'[server]\nhostname = "mx1.example.net"\naddresses = ["{SERVER}"]\n'
        + f'[dns]\nnameservers = ["{dns_address}"]\ntimeout = 2.0\n'
    )
    db = open_db(root / "postwarden.db")
    migrate(db)
    for n in range(1, 15):
        rows = [R(SERVER, 100 + 7 * n), R(NEWSLETTER, 20 + n % 4, spf="fail")]
        if n % 3 == 0:
            rows.append(R(SPOOFER, n, dkim="fail", spf="fail", disposition="none"))
        if n == 4:
            rows.append(R(SERVER, 3, dkim="fail"))
        begin = _day(n)
        for org in ("google.com", "Outlook.com"):
            xml = aggregate_xml(org, f"{org}-{n}", "example.com", begin, begin + 86399, rows)
            ingest(db, xml, now=FROZEN)
    for n in range(1, 6):
        begin = _day(n)
        rows = [R(SERVER, 30, spf="fail"), R("192.0.2.200", 12, dkim="fail", spf="fail")]
        xml = aggregate_xml(
            "google.com", f"net-{n}", "example.net", begin, begin + 86399, rows, p="quarantine"
        )
        ingest(db, xml, now=FROZEN)
    day = (FROZEN - timedelta(days=1)).date().isoformat()
    ingest(
        db,
        tls_json(
            "google.com", "tls-1", "example.com", f"{day}T00:00:00Z", f"{day}T23:59:59Z", 480, 2
        ),
        now=FROZEN,
    )
    db.conn.close()
    return cfg
