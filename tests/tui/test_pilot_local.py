"""Pilot tests that need no Postfix: a DNS check run from the Domains screen against a real
DNS server on loopback, and getting about with the command palette."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import ProgressBar, Static

from postwarden.store import open_db
from postwarden.tui.app import PostwardenApp
from postwarden.tui.screens import DomainsScreen, QuarantineScreen
from tests.dnsserver import LoopbackDNS
from tests.tui.seed import FROZEN, SeededBackend, seed

ZONE = """
example.com. 300 IN TXT "v=spf1 ip4:192.0.2.25 -all"
_dmarc.example.com. 300 IN TXT "v=DMARC1; p=reject; rua=mailto:d@example.com"
example.com. 300 IN MX 10 mail.example.com.
"""


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the TUI"
        await pilot.pause(0.05)


def test_a_dns_check_runs_from_the_domains_screen(tmp_path: Path) -> None:
    cfg = seed(tmp_path)
    with LoopbackDNS(ZONE) as dns:
        cfg.write_text(
            cfg.read_text()
            + '[server]\nhostname = "mail.example.com"\naddresses = ["192.0.2.25"]\n'
            + f'[dns]\nnameservers = ["{dns.address}"]\ntimeout = 2.0\n'
        )
        app = PostwardenApp(SeededBackend(cfg, now=lambda: FROZEN), start="domains")

        async def main() -> None:
            async with app.run_test(size=(120, 40)) as pilot:
                screen = app.screen
                assert isinstance(screen, DomainsScreen)
                await until(pilot, lambda: len(screen.rows) == 2)
                assert screen.rows[0]["checked_at"] == "2026-11-23T09:00:00+00:00"  # seeded
                shown: list[str] = []
                set_status = screen.set_status
                screen.set_status = lambda text: (shown.append(str(text)), set_status(text))  # type: ignore[method-assign]
                await pilot.press("a")
                await until(pilot, lambda: screen.rows[0]["checked_at"] == FROZEN.isoformat())
                assert not screen.query_one(ProgressBar).display
                # Progress, domain by domain, while the worker ran.
                assert "checking 2 domain(s)..." in shown
                assert any(t.startswith("checked 2/2: ") for t in shown), shown
                spf = [f for f in screen.rows[0]["findings"] if f.area == "spf"]
                assert spf and spf[0].status == "pass"
                dmarc = [f for f in screen.rows[1]["findings"] if f.area == "dmarc"]
                assert dmarc and dmarc[0].status == "fail" and "_dmarc.example.net" in dmarc[0].fix
                detail = str(screen.query_one("#detail", Static).render())
                assert "example.com" in detail and "PASS" in detail

        asyncio.run(main())
    runs = (
        open_db(tmp_path / "postwarden.db")
        .execute("SELECT COUNT(DISTINCT run_at) FROM dns_checks")
        .fetchone()[0]
    )
    assert runs == 2  # the seeded one and this one, stored as `dns-check` stores them


def test_the_command_palette_goes_to_a_screen(tmp_path: Path) -> None:
    app = PostwardenApp(SeededBackend(seed(tmp_path), now=lambda: FROZEN))

    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("ctrl+p", *"Go to Quarantine")
            await pilot.pause(0.3)
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, QuarantineScreen))

    asyncio.run(main())
