"""Every screen at 80x24 and 120x40, from seeded data and a frozen clock (tests/tui/seed.py),
compared with the SVGs under __snapshots__. After a deliberate change to a screen, look at the
new SVGs and accept them with `pytest tests/tui --snapshot-update`."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from postwarden.tui.app import PostwardenApp
from tests.tui.seed import backend

# A fixed folder: the config path shows in the header and the Policy screen's status line.
ROOT = Path("/tmp/postwarden-tui-snapshots")
SIZES = [(80, 24), (120, 40)]
SCREENS = ["decisions", "quarantine", "senders", "domains", "policy"]


@pytest.fixture
def app() -> PostwardenApp:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    # A long poll interval: the seeded data does not change, and a snapshot wants no timer.
    return PostwardenApp(backend(ROOT), poll_interval=3600)


async def settle(pilot: Pilot[Any]) -> None:
    """The workers' results painted and the tables' column widths worked out: a DataTable
    sizes its columns on a later refresh, so a single pause can catch them half-done."""
    await pilot.pause()
    await pilot.app.workers.wait_for_complete()
    for _ in range(3):
        await pilot.pause(0.05)
    await pilot.wait_for_scheduled_animations()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("screen", SCREENS)
def test_screen(snap_compare: Any, app: PostwardenApp, screen: str, size: tuple[int, int]) -> None:
    app.start = screen
    assert snap_compare(app, terminal_size=size, run_before=settle)


@pytest.mark.parametrize(
    ("name", "screen", "keys"),
    [
        ("confirm_delete_sender", "quarantine", ["D"]),
        ("confirm_release_marked", "quarantine", ["space", "space", "r"]),
        ("message_view", "quarantine", ["v"]),
        ("unlock_note", "senders", ["u"]),
        ("policy_user_form", "policy", ["down", "down", "down"]),
        ("policy_file_view", "policy", ["f2"]),
        ("decisions_filtered", "decisions", ["slash", *"action:reject", "enter"]),
    ],
)
def test_dialog(
    snap_compare: Any, app: PostwardenApp, name: str, screen: str, keys: list[str]
) -> None:
    app.start = screen

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press(*keys)
        await settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=run_before)
