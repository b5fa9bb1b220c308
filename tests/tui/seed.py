"""Seeded data for the TUI's snapshot tests, screenshots and benchmark: a config with two
hosted domains, decisions, a locked sender, DNS findings and (for snapshots only) a fixed
hold queue. Everything is dated from one frozen clock, so a screen renders the same twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from postwarden.quarantine import Held
from postwarden.store import migrate, open_db
from postwarden.tui.backend import Backend
from tests.helpers import write_config, write_key

FROZEN = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)

POLICY = """\
# Seeded policy for the TUI tests: two hosted domains, one capped user.
[defaults]
alignment = "relaxed"
unknown_from_domain = "reject"   # a From domain not hosted here is refused
send_as = ["{login}"]

[domains."example.com"]
keys = [
  { selector = "rsa2026", file = "keys/example.com/rsa2026.key" },
  { selector = "ed2026",  file = "keys/example.com/ed2026.key" },
]

[domains."example.net"]
include_subdomains = true        # lists.example.net etc. are hosted too

[users."mallory@example.com"]    # a small cap, to show a lock
rate = { messages = ["5/minute"] }

[rate]
messages = ["30/minute", "500/hour", "2000/day"]
recipients = ["200/minute", "5000/day"]
"""

SENDERS = [
    ("sasl:alice@example.com", "alice@example.com", "Alice <alice@example.com>"),
    ("sasl:bob@example.net", "bob@example.net", "Bob Builder <bob@example.net>"),
    ("local:www-data", "www-data@example.com", "Contact form <contact@example.com>"),
    ("sasl:mallory@example.com", "mallory@example.com", "Mallory <mallory@example.com>"),
]


def decision(i: int, when: datetime) -> dict[str, Any]:
    identity, mail_from, header_from = SENDERS[i % len(SENDERS)]
    action, reasons = "accept", []
    if identity.endswith("mallory@example.com") and i > 20:
        action = "quarantine"
        reasons = [
            {
                "check": "rate",
                "code": "locked",
                "action": "quarantine",
                "text": "sasl:mallory@example.com is locked since it broke 5/minute",
            }
        ]
    elif i % 7 == 3:
        action = "reject"
        header_from = "PayPal <service@paypa1.example>"
        reasons = [
            {
                "check": "from_domain",
                "code": "not_hosted",
                "action": "reject",
                "text": "From domain paypa1.example is not hosted here",
            }
        ]
    elif i % 11 == 5:
        action = "reject"
        reasons = [
            {
                "check": "bulk",
                "code": "no_one_click",
                "action": "reject",
                "text": "bulk mail needs List-Unsubscribe-Post: List-Unsubscribe=One-Click",
            }
        ]
    domain = header_from.rpartition("@")[2].rstrip(">")
    signed = action in ("accept", "quarantine") and domain == "example.com"
    subject = f"Invoice {1000 + i} for November" if i % 2 else f"Meeting notes #{i}"
    return {
        "time": when.isoformat(),
        "hostname": "mx1.example.net",
        "queue_id": f"4Q{i:04X}AB{i % 10}",
        "client_addr": "203.0.113.10" if identity.startswith("sasl") else "",
        "client_name": "client.example.org" if identity.startswith("sasl") else "",
        "helo": "client.example.org" if identity.startswith("sasl") else "",
        "identity": identity,
        "mail_from": mail_from,
        "rcpts": json.dumps([f"user{i}@gmail.example", f"team{i}@outlook.example"][: 1 + i % 2]),
        "header_from": header_from,
        "subject": subject,
        "message_id": f"<{i}.seed@{domain}>",
        "size": 1800 + 37 * i,
        "outbound": 1,
        "action": action,
        "reasons": json.dumps(reasons),
        "signatures": json.dumps(
            [
                {"d": "example.com", "s": "rsa2026", "a": "rsa-sha256"},
                {"d": "example.com", "s": "ed2026", "a": "ed25519-sha256"},
            ]
            if signed
            else []
        ),
        "policy_hash": "3f9c0a1b2c4d",
        "duration_ms": 2.5 + (i % 5) / 10,
        "error": "",
        "headers": f"From: {header_from}\nTo: user{i}@gmail.example\nSubject: {subject}\n"
        f"Date: Mon, 23 Nov 2026 11:{i % 60:02d}:00 +0000\nMessage-ID: <{i}.seed@{domain}>",
    }


def held_messages() -> list[Held]:
    out = []
    for i in range(12):
        out.append(
            Held(
                queue_id=f"4QH{i:03d}XY",
                arrival_time=int((FROZEN - timedelta(minutes=50 - i)).timestamp()),
                sender="mallory@example.com",
                recipients=[f"victim{i}@gmail.example"],
                size=2100,
                identity="sasl:mallory@example.com",
                header_from="Mallory <mallory@example.com>",
                subject=f"You won a prize #{i}",
                reasons=["rate.locked"] if i else ["rate.exceeded", "rate.locked_now"],
            )
        )
    return out


class SeededBackend(Backend):
    """The real backend over a real seeded SQLite file, with the hold queue fixed: a snapshot
    cannot depend on a Postfix queue's random queue ids. The Pilot tests use the real one."""

    def held(self) -> list[Held]:
        return held_messages()

    def show(self, queue_id: str) -> str:
        return f"*** ENVELOPE RECORDS {queue_id} ***\nsender: mallory@example.com\n"


def seed(root: Path, decisions: int = 40) -> Path:
    """The config, keys and database under `root`; returns postwarden.toml's path."""
    cfg = write_config(root, POLICY)
    keys = root / "policies" / "keys" / "example.com"
    write_key(keys / "rsa2026.key", "rsa", 2048)
    write_key(keys / "ed2026.key", "ed25519")
    db = open_db(root / "postwarden.db")
    migrate(db)
    rows = [decision(i, FROZEN - timedelta(seconds=30 * (decisions - i))) for i in range(decisions)]
    db["decisions"].insert_all(rows, batch_size=1000)
    # mallory: 6 messages in the last minute (cap 5), locked at the sixth.
    events = []
    for n in range(1, 7):
        events.append(
            {
                "identity": "sasl:mallory@example.com",
                "time": (FROZEN - timedelta(seconds=50 - 5 * n)).timestamp(),
                "rcpts": 1,
                "queue_id": f"4QM{n}",
                "cum_msgs": n,
                "cum_rcpts": n,
            }
        )
    for n in range(1, 13):
        events.append(
            {
                "identity": "sasl:alice@example.com",
                "time": (FROZEN - timedelta(minutes=55 - 4 * n)).timestamp(),
                "rcpts": 2,
                "queue_id": f"4QA{n}",
                "cum_msgs": n,
                "cum_rcpts": 2 * n,
            }
        )
    db["rate_events"].insert_all(events)
    db["locks"].insert(
        {
            "identity": "sasl:mallory@example.com",
            "locked_at": (FROZEN - timedelta(seconds=20)).isoformat(),
            "cap": "5/minute",
            "queue_id": "4QM6",
        }
    )
    run_at = (FROZEN - timedelta(hours=3)).isoformat()
    findings = [
        ("example.com", "spf", "pass", "one SPF record; 3 DNS-querying terms of 10", ""),
        (
            "example.com",
            "dkim",
            "pass",
            "rsa2026: published, matches the key on disk (2048 bits)",
            "",
        ),
        ("example.com", "dkim", "pass", "ed2026: published, matches the key on disk (ed25519)", ""),
        (
            "example.com",
            "dmarc",
            "warn",
            "p=none: receivers are asked to do nothing",
            '_dmarc.example.com. 3600 IN TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.com"',
        ),
        ("example.com", "mx", "pass", "MX mx1.example.net", ""),
        (
            "example.net",
            "spf",
            "fail",
            "no SPF record",
            'example.net. 3600 IN TXT "v=spf1 ip4:203.0.113.25 -all"',
        ),
        (
            "example.net",
            "dmarc",
            "fail",
            "no DMARC record at _dmarc.example.net or example.net",
            '_dmarc.example.net. 3600 IN TXT "v=DMARC1; p=quarantine; rua=mailto:dmarc@example.net"',
        ),
        ("example.net", "mx", "warn", "no MX record", ""),
    ]
    db["dns_checks"].insert_all(
        [
            {"run_at": run_at, "domain": d, "area": a, "status": s, "message": m, "fix": f}
            for d, a, s, m, f in findings
        ]
    )
    db.conn.close()
    return cfg


def backend(root: Path, decisions: int = 40) -> SeededBackend:
    return SeededBackend(seed(root, decisions), now=lambda: FROZEN)
