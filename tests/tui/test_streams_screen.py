"""The Streams screen (key 7) over a seeded schedule and a frozen clock: the pace's progress,
each paced message's due time (one slot after another), warm-up progress per provider group
and a warm-up hold due the next day. A Pilot test and a snapshot; after a deliberate change,
accept the new SVG with `pytest tests/tui/test_streams_screen.py --snapshot-update`."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from textual.widgets import DataTable, Static

from postwarden.store import open_db, pacing
from postwarden.tui.app import PostwardenApp
from postwarden.tui.streams_screen import StreamsScreen
from tests.tui.seed import FROZEN, SeededBackend, decision, seed
from tests.tui.test_pilot_local import until
from tests.tui.test_snapshots import settle

ROOT = Path("/tmp/postwarden-tui-streams-snapshots")
STREAMS = """
[streams.bulk]
pace = "10/minute"

[warmup."example.com"]
start = 2026-11-20
daily = [10, 20, 30, 50, 100]
providers = ["gmail", "microsoft"]
"""


def seeded(root: Path) -> PostwardenApp:
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cfg = seed(root)
    (root / "policies" / "20-streams.toml").write_text(STREAMS)
    db = open_db(root / "postwarden.db")
    conn = db.conn
    now = FROZEN.timestamp()
    rows = []
    for i in range(5):
        q = f"4QP{i:03d}BK"
        pacing.enqueue(conn, q, now - 60 + i, "local:www-data", True, ())
        d = decision(2, FROZEN)
        d.update(queue_id=q, subject=f"November newsletter part {i + 1}", action="quarantine")
        rows.append(d)
    for i in range(2):
        q = f"4QW{i:03d}GM"
        pacing.enqueue(
            conn, q, now - 30 + i, "sasl:alice@example.com", False, (("example.com", "gmail", 1),)
        )
        d = decision(0, FROZEN)
        d.update(queue_id=q, subject=f"Welcome aboard #{i}", action="quarantine")
        rows.append(d)
    for k in range(6):  # six released in the last minute, the latest 2.3 s ago
        conn.execute(
            "INSERT INTO pace_releases (time, queue_id) VALUES (?, ?)",
            [now - 2.3 - 9 * k, f"4QR{k}"],
        )
    pacing.add_warmup(
        conn,
        FROZEN.date().isoformat(),
        [("example.com", "gmail", 50), ("example.com", "microsoft", 12)],
    )
    conn.commit()
    db["decisions"].insert_all(rows)
    db.conn.close()
    return PostwardenApp(
        SeededBackend(cfg, now=lambda: FROZEN), poll_interval=3600, start="streams"
    )


def test_the_streams_screen_shows_each_paced_message_due(tmp_path: Path) -> None:
    app = seeded(tmp_path / "s")

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, StreamsScreen)
            await until(pilot, lambda: len(screen.waiting) == 7)
            table = screen.query_one("#table", DataTable)
            cells = [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]
            # The next slot: 6.3 s after the release 2.3 s ago, then one every 6.3 s.
            assert cells[0][0] == "4QP000BK" and cells[0][3] == "12:00:04Z (in 4s)"
            assert cells[1][0] == "4QP001BK" and cells[1][3] == "12:00:10Z (in 10s)"
            assert cells[0][4] == "November newsletter part 1"
            # gmail's 50 for day 4 are used up: the warm-up holds leave tomorrow at 00:00 UTC.
            assert cells[-1][0] == "4QW001GM" and cells[-1][3] == "11-24 00:00Z (in 12h00m)"
            pace = str(screen.query_one("#pace", Static).render())
            assert "6/10 released in the last 60s" in pace and "5 waiting" in pace
            warm = screen.query_one("#warmups", DataTable)
            rows = [[str(c) for c in warm.get_row_at(i)] for i in range(warm.row_count)]
            assert rows == [
                ["example.com", "4 of 5", "gmail", "50/50", "2"],
                ["example.com", "4 of 5", "microsoft", "12/50", "0"],
            ]

    asyncio.run(main())


def test_streams_snapshot(snap_compare: Any) -> None:
    assert snap_compare(seeded(ROOT), terminal_size=(120, 40), run_before=settle)
