"""The Feedback screen (key 7) over a real SQLite file: complaint rates per domain from an
ingested report, and suppressions added and removed from the screen through the same functions
as `postwarden suppression`, audited."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from textual.widgets import DataTable, Input

from postwarden.config import load_config
from postwarden.feedback.ingest import ingest
from postwarden.store import migrate, open_db
from postwarden.tui.app import PostwardenApp
from postwarden.tui.backend import Backend
from postwarden.tui.feedback_screen import FeedbackScreen
from tests.helpers import write_config
from tests.tui.test_pilot_local import until
from tests.unit.test_feedback import _arf, _decision


def test_rates_and_suppressions_add_and_remove(tmp_path: Path) -> None:
    cfg_path = write_config(tmp_path)
    cfg = load_config(cfg_path)
    db = open_db(cfg.daemon.store.database)
    migrate(db)
    _decision(db)
    ingest(db, cfg, _arf(), now=datetime.now(UTC), send=lambda *a: None)
    app = PostwardenApp(Backend(cfg_path), poll_interval=3600, start="feedback")

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, FeedbackScreen)
            await until(pilot, lambda: len(screen.rows) == 2)
            table = screen.query_one("#table", DataTable)
            assert str(table.get_row_at(0)[0]) == "example.com !"  # 1 complaint over 1: alert
            assert [str(c) for c in table.get_row_at(0)[1:4]] == ["1", "1", "100.000%"]
            lower = screen.query_one("#suppressed", DataTable)
            assert lower.row_count == 1 and str(lower.get_row_at(0)[0]) == "bob@remote.test"
            # a: suppress dave for example.com (the highlighted domain is filled in).
            await pilot.press("a")
            await until(pilot, lambda: isinstance(app.screen, FeedbackScreen) is False)
            app.screen.query_one("#address", Input).value = "dave@remote.test"
            app.screen.query_one("#note", Input).value = "asked"
            await pilot.press("enter")
            await until(pilot, lambda: len(screen.entries) == 2)
            await until(pilot, lambda: lower.row_count == 2)
            # d on the lower table: unsuppress the highlighted one (dave, the newest), confirmed.
            lower.focus()
            await pilot.pause()
            assert str(lower.get_row_at(lower.cursor_row)[0]) == "dave@remote.test"
            await pilot.press("d")
            await pilot.pause()
            await pilot.press("y")
            await until(pilot, lambda: len(screen.entries) == 1)

    asyncio.run(main())
    actions = [r[0] for r in db.execute("SELECT action FROM audit ORDER BY id").fetchall()]
    assert actions == ["suppression.add", "suppression.remove"]
