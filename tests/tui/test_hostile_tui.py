"""The TUI against hostile mail and on day one (issue 13 point 9, issue 15 point 7): mail text
is never read as markup, control characters show as escapes, Subject gets the width, a DKIM
fix stays one copyable line, and quarantine ages move with the clock."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from textual.coordinate import Coordinate
from textual.pilot import Pilot
from textual.widgets import DataTable, Label, Static

from postwarden.store import open_db
from postwarden.tui.app import PostwardenApp
from postwarden.tui.screens import DecisionsScreen, DomainsScreen, PolicyScreen, QuarantineScreen
from tests.tui.seed import FROZEN, SeededBackend, decision, seed

HOSTILE_SUBJECTS = [
    "[/]",
    "[link=https://evil.test]x[/link]",
    "[bold red]URGENT[/] pay \x1b[2J now",
]


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the TUI"
        await pilot.pause(0.05)


def table_lines(table: DataTable[Any]) -> list[str]:
    return ["".join(seg.text for seg in table.render_line(y)) for y in range(table.size.height)]


def add_decisions(root: Path, rows: list[dict[str, Any]]) -> None:
    db = open_db(root / "postwarden.db")
    db["decisions"].insert_all(rows)
    db.conn.close()


def hostile_rows() -> list[dict[str, Any]]:
    rows = []
    for n, subject in enumerate(HOSTILE_SUBJECTS):
        row = decision(100 + n, FROZEN + timedelta(seconds=n + 1))
        row["subject"] = subject
        row["header_from"] = "[i]Boss[/i] <boss@example.com>"
        row["identity"] = "sasl:[u]x"
        row["reasons"] = json.dumps(
            [
                {
                    "check": "identity",
                    "code": "not_allowed",
                    "action": "reject",
                    "text": "[/] \x1b]0;t\x07",
                }
            ]
        )
        row["headers"] = f"Subject: {subject}\nX-Evil: \x1b[31mred\u202e"
        rows.append(row)
    return rows


def test_markup_in_mail_is_shown_literally_and_the_app_stays_up(tmp_path: Path) -> None:
    cfg = seed(tmp_path)
    add_decisions(tmp_path, hostile_rows())
    app = PostwardenApp(SeededBackend(cfg, now=lambda: FROZEN), poll_interval=3600)

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, DecisionsScreen)
            await until(pilot, lambda: len(screen.rows) > 40)
            table = screen.query_one(DataTable)
            subjects = [table.get_cell_at(Coordinate(r, 4)).plain for r in range(3)]
            assert subjects == [
                "[bold red]URGENT[/] pay \\x1b[2J now",
                "[link=https://evil.test]x[/link]",
                "[/]",
            ]
            lines = "\n".join(table_lines(table))
            assert "[link=https://evil.test]" in lines and "[/]" in lines
            assert "[i]Boss[/i]" in lines and "sasl:[u]x" in lines
            detail = str(screen.query_one("#detail", Static).render())
            assert "[bold red]URGENT[/] pay \\x1b[2J now" in detail
            assert "X-Evil: \\x1b[31mred\\u202e" in detail and "\x1b" not in detail
            assert "[/] \\x1b]0;t\\x07" in detail
            for _ in range(3):  # moving over the rows repaints each detail
                await pilot.press("down")
                await pilot.pause(0.05)
            assert app.is_running

    asyncio.run(main())


def test_the_policy_label_shows_its_brackets(tmp_path: Path) -> None:
    app = PostwardenApp(SeededBackend(seed(tmp_path), now=lambda: FROZEN), start="policy")

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, PolicyScreen))
            await pilot.pause(0.2)
            labels = [str(label.render()) for label in app.screen.query(Label)]
            assert "send_as (comma-separated; blank: [defaults])" in labels, labels

    asyncio.run(main())


def test_subject_gets_the_width_at_120_columns(tmp_path: Path) -> None:
    cfg = seed(tmp_path)
    row = decision(200, FROZEN + timedelta(seconds=5))
    row["identity"] = "sasl:a-rather-long-login-name@customer-domain.example"
    row["reasons"] = json.dumps(
        [
            {"check": "identity", "code": c, "action": "reject", "text": "x"}
            for c in ("not_allowed", "misaligned")
        ]
    )
    row["header_from"] = (
        "A Rather Long Display Name <a-rather-long-login-name@customer-domain.example>"
    )
    subject = "Your invoice for November is attached, please pay it"
    row["subject"] = subject
    add_decisions(tmp_path, [row])
    app = PostwardenApp(SeededBackend(cfg, now=lambda: FROZEN), poll_interval=3600)

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, DecisionsScreen)
            await until(pilot, lambda: len(screen.rows) > 40)
            await pilot.pause(0.2)
            table = screen.query_one(DataTable)
            widths = [c.width for c in table.ordered_columns]
            assert widths[4] >= 25, widths  # it was cut to 10
            assert sum(c.get_render_width(table) for c in table.ordered_columns) <= 120
            assert subject[: widths[4] - 1] in table_lines(table)[1]  # the header is line 0

    asyncio.run(main())


LONG_DKIM = (
    'rsa2027._domainkey.example.com. 3600 IN TXT "v=DKIM1; k=rsa; p='
    + "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA" * 8
    + '"'
)


def test_a_dkim_fix_is_one_line_and_copies_whole(tmp_path: Path) -> None:
    cfg = seed(tmp_path)
    db = open_db(tmp_path / "postwarden.db")
    run_at = (FROZEN - timedelta(hours=1)).isoformat()
    db["dns_checks"].insert_all(
        [
            {
                "run_at": run_at,
                "domain": "example.com",
                "area": "dkim",
                "status": "fail",
                "message": "rsa2027: not published",
                "fix": LONG_DKIM,
            },
            {
                "run_at": run_at,
                "domain": "example.com",
                "area": "spf",
                "status": "pass",
                "message": "one SPF record",
                "fix": "",
            },
        ]
    )
    db.conn.close()
    app = PostwardenApp(SeededBackend(cfg, now=lambda: FROZEN), start="domains")

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, DomainsScreen)
            await until(pilot, lambda: len(screen.rows) == 2)
            await pilot.pause(0.2)
            detail = screen.query_one("#detail", Static)
            text = str(detail.render())
            fix_lines = [line for line in text.splitlines() if "fix:" in line]
            assert fix_lines == [f"        fix: {LONG_DKIM}"]
            # laid out on one line: the widget is as wide as that line, as tall as its lines
            assert detail.size.width >= len(fix_lines[0]) > 120
            assert detail.size.height <= len(text.splitlines()) + 1  # the final newline
            await pilot.press("y")
            assert app.clipboard == LONG_DKIM + "\n"

    asyncio.run(main())


def test_quarantine_ages_follow_the_clock(tmp_path: Path) -> None:
    clock = [FROZEN]
    app = PostwardenApp(
        SeededBackend(seed(tmp_path), now=lambda: clock[0]), poll_interval=0.1, start="quarantine"
    )

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, QuarantineScreen)
            await until(pilot, lambda: len(screen.shown) == 12)
            table = screen.query_one(DataTable)

            def first_age() -> str:
                return str(table.get_cell_at(Coordinate(0, 2)).plain)

            assert first_age() == "50m00s"
            clock[0] = FROZEN + timedelta(minutes=2, seconds=5)
            await until(pilot, lambda: first_age() == "52m05s", timeout=5)
            clock[0] = FROZEN + timedelta(hours=2)
            await until(pilot, lambda: first_age() == "2h50m", timeout=5)

    asyncio.run(main())
