"""The Reports screen over seeded reports (tests/tui/seed_reports.py) and a real DNS server on
loopback: a Pilot test (pass share per domain, the daily charts, drill-down to the sources, the
advice, the window key) and snapshots at 80x24 and 120x40. After a deliberate change, look at
the new SVGs and accept them with `pytest tests/tui/test_reports_screen.py --snapshot-update`."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Sparkline, Static

from postwarden.tui.app import PostwardenApp
from postwarden.tui.reports_screen import ReportsScreen
from tests.dnsserver import LoopbackDNS
from tests.tui.seed import FROZEN, SeededBackend
from tests.tui.seed_reports import SERVER, SPOOFER, ZONE, seed_reports
from tests.tui.test_pilot_local import until
from tests.tui.test_snapshots import settle

ROOT = Path("/tmp/postwarden-tui-reports-snapshots")


@pytest.fixture
def dns() -> Iterator[LoopbackDNS]:
    with LoopbackDNS(ZONE) as server:
        yield server


def _app(root: Path, dns: LoopbackDNS) -> PostwardenApp:
    cfg = seed_reports(root, dns.address)
    return PostwardenApp(
        SeededBackend(cfg, now=lambda: FROZEN), poll_interval=3600, start="reports"
    )


def test_the_reports_screen_shows_domains_charts_sources_and_advice(
    tmp_path: Path, dns: LoopbackDNS
) -> None:
    app = _app(tmp_path, dns)

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            assert isinstance(screen, ReportsScreen)
            await until(pilot, lambda: len(screen.rows) == 2)
            table = screen.query_one("#table", DataTable)
            assert [str(table.get_row_at(i)[0]) for i in range(2)] == [
                "example.com !",
                "example.net",
            ]
            com = screen.rows[0]
            # 14 days, two reporters a day: the chart has a bar per day.
            history = screen.query_one("#history", Sparkline)
            assert len(list(history.data or [])) == 14
            failing = screen.query_one("#failing", Sparkline)
            assert sum(failing.data or []) == com["messages"] - com["dmarc_pass"]
            assert com["groups"]["this_server"]["dkim_fail"] == 6  # 3, reported by both
            detail = str(screen.query_one("#detail", Static).render())
            assert "ALERT" in detail and "failed DKIM" in detail
            assert "stay for now" in detail
            # Enter drills down to the sources, with their reverse names.
            await pilot.press("enter")
            sources = screen.query_one("#sources", DataTable)
            assert sources.has_focus
            cells = [[str(c) for c in sources.get_row_at(i)] for i in range(sources.row_count)]
            assert cells[0][:3] == ["server", SERVER, "mx1.example.net"]
            assert any(c[1] == SPOOFER and c[0] == "failing" for c in cells)
            assert any(c[2] == "out.newsletter.example" and c[0] == "elsewhere" for c in cells)
            # Back, down to example.net: its own chart and advice.
            await pilot.press("escape", "down")
            await pilot.pause()
            assert len(list(history.data or [])) == 5
            assert "p=quarantine: stay for now" in str(screen.query_one("#detail", Static).render())
            # The window key reads the last 7 days.
            await pilot.press("w")
            await until(
                pilot, lambda: screen.window == "7d" and len(list(history.data or [])) in (5, 7)
            )
            await until(
                pilot, lambda: "last 7d" in str(screen.query_one("#status", Static).render())
            )
            assert "TLS: 1 policy domain(s), 2 failed session(s)" in str(
                screen.query_one("#status", Static).render()
            )

    asyncio.run(main())


def test_key_6_and_the_palette_reach_the_reports_screen(tmp_path: Path, dns: LoopbackDNS) -> None:
    app = _app(tmp_path, dns)
    app.start = "decisions"

    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("6")
            await until(pilot, lambda: isinstance(app.screen, ReportsScreen))

    asyncio.run(main())


@pytest.fixture
def snap_app(dns: LoopbackDNS) -> PostwardenApp:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    return _app(ROOT, dns)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_reports_snapshot(
    snap_compare: Any, snap_app: PostwardenApp, size: tuple[int, int]
) -> None:
    assert snap_compare(snap_app, terminal_size=size, run_before=settle)


def test_reports_sources_snapshot(snap_compare: Any, snap_app: PostwardenApp) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("enter", "down")
        await settle(pilot)

    assert snap_compare(snap_app, terminal_size=(120, 40), run_before=run_before)
