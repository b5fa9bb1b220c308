"""The TUI's actions, driven through Textual's Pilot against a real private Postfix hold queue,
the running milter and its SQLite file: release, delete, delete selected, delete all of a
sender's, unlock, and a policy edit that the daemon reloads (and an invalid one it refuses).

Each test uses its own login, capped at 2/minute by policies/20-extra.toml: five messages give
two accepted and three held, and a lock. What each bad input gets is said at each test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Input, ListView, Static

from postwarden.store import open_db
from postwarden.tui.app import PostwardenApp
from postwarden.tui.backend import Backend
from postwarden.tui.modals import ConfirmScreen, MessageScreen, NoteScreen
from tests.e2e.conftest import Stack, module_stack
from tests.helpers import message

LOGINS = ["t-release", "t-delete", "t-bulk", "t-unlock", "t-policy", "t-view"]
EXTRA = "# the TUI tests' logins: a cap of 2/minute each\n" + "".join(
    f'[users."{login}@example.com"]\nrate = {{ messages = ["2/minute"] }}\n\n' for login in LOGINS
)


@pytest.fixture(scope="module")
def tui_stack() -> Iterator[Stack]:
    for s in module_stack("tui", EXTRA):
        s.start()
        yield s


def hold(stack: Stack, login: str, n: int = 5) -> list[str]:
    """Send n messages as login; return the queue ids of those held (n - 2)."""
    address = f"{login}@example.com"
    for i in range(n):
        r = stack.sandbox.smtp_send(
            message(from_=address, subject=f"{login} {i}"),
            address,
            ["x@remote.test"],
            login=address,
        )
        assert r.code == 250, r
    assert stack.sandbox.wait_for(lambda: len(held_ids(stack, login)) == n - 2)
    return held_ids(stack, login)


def held_ids(stack: Stack, login: str) -> list[str]:
    rows = {
        str(d["queue_id"])
        for d in stack.decisions(sender=f"sasl:{login}@example.com", action="quarantine")
    }
    return sorted(
        str(q["queue_id"])
        for q in stack.sandbox.queue()
        if q.get("queue_name") == "hold" and q["queue_id"] in rows
    )


def audit(stack: Stack, action: str) -> list[tuple[str, str]]:
    db = open_db(stack.db_path, readonly=True)
    return [
        (r[0], r[1])
        for r in db.execute("SELECT target, note FROM audit WHERE action = ?", [action]).fetchall()
    ]


async def until(pilot: Pilot[Any], predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            shown = [str(w.render()) for w in pilot.app.screen.query("#status, #errors")]
            raise AssertionError(f"timed out waiting for the TUI; it shows {shown}")
        await pilot.pause(0.05)


def run(stack: Stack, start: str, script: Callable[[PostwardenApp, Pilot[Any]], Any]) -> None:
    async def main() -> None:
        app = PostwardenApp(Backend(stack.config), poll_interval=0.2, start=start)
        async with app.run_test(size=(120, 40)) as pilot:
            await script(app, pilot)

    asyncio.run(main())


async def open_quarantine_for(app: PostwardenApp, pilot: Pilot[Any], login: str) -> Any:
    screen = app.screen
    await until(pilot, lambda: bool(getattr(screen, "items", None)))
    await pilot.press("slash", *f"sasl:{login}@example.com", "enter")
    await until(pilot, lambda: len(screen.shown) > 0 and screen.sender_filter != "")
    return screen


def test_release_one_after_a_cancel(tui_stack: Stack) -> None:
    """Esc and n cancel (nothing happens); y releases the message under the cursor, which
    reaches the sink with valid DKIM (checked in test_rate), and the audit names it."""
    ids = hold(tui_stack, "t-release")

    async def script(app: PostwardenApp, pilot: Pilot[Any]) -> None:
        screen = await open_quarantine_for(app, pilot, "t-release")
        first = screen.shown[0].queue_id
        await pilot.press("r")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.press("r", "n")
        await pilot.press("r", "enter")  # Enter lands on Cancel, which has the focus
        assert held_ids(tui_stack, "t-release") == ids
        await pilot.press("r", "y")
        await until(pilot, lambda: first not in held_ids(tui_stack, "t-release"))
        await until(pilot, lambda: first not in {m.queue_id for m in screen.items})

    run(tui_stack, "quarantine", script)
    assert tui_stack.sandbox.wait_for(lambda: ids[0] in tui_stack.sandbox.sink_queue_ids(), 90)
    assert held_ids(tui_stack, "t-release") == ids[1:]
    assert (ids[0], "tui") in audit(tui_stack, "quarantine.release")


def test_delete_the_marked_ones(tui_stack: Stack) -> None:
    """Space marks; d deletes the marked messages only, after y."""
    ids = hold(tui_stack, "t-delete")

    async def script(app: PostwardenApp, pilot: Pilot[Any]) -> None:
        screen = await open_quarantine_for(app, pilot, "t-delete")
        await pilot.press("space", "space")  # marks the first two (the cursor moves down)
        assert screen.selected == set(ids[:2])
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: held_ids(tui_stack, "t-delete") == ids[2:])

    run(tui_stack, "quarantine", script)
    deleted = {t for t, _ in audit(tui_stack, "quarantine.delete")}
    assert set(ids[:2]) <= deleted and ids[2] not in deleted
    assert not set(ids[:2]) & set(tui_stack.sandbox.sink_queue_ids())


def test_delete_all_of_a_sender(tui_stack: Stack) -> None:
    """D deletes every held message of the sender under the cursor, on every page."""
    ids = hold(tui_stack, "t-bulk", 7)
    other = hold(tui_stack, "t-view")

    async def script(app: PostwardenApp, pilot: Pilot[Any]) -> None:
        await open_quarantine_for(app, pilot, "t-bulk")
        await pilot.press("D")
        assert isinstance(app.screen, ConfirmScreen)
        assert "all 5 held message(s) of sasl:t-bulk@example.com" in str(
            app.screen.query_one(".dialog-title").render()
        )
        await pilot.press("y")
        await until(pilot, lambda: held_ids(tui_stack, "t-bulk") == [])

    run(tui_stack, "quarantine", script)
    assert set(ids) <= {t for t, _ in audit(tui_stack, "quarantine.delete")}
    assert held_ids(tui_stack, "t-view") == other  # another sender's mail is untouched


def test_view_a_held_message(tui_stack: Stack) -> None:
    """v shows the message as Postfix has it (postcat), with its decision; Esc closes."""
    hold_ids = held_ids(tui_stack, "t-view") or hold(tui_stack, "t-view")

    async def script(app: PostwardenApp, pilot: Pilot[Any]) -> None:
        await open_quarantine_for(app, pilot, "t-view")
        await pilot.press("v")
        assert isinstance(app.screen, MessageScreen)
        body = app.screen.query_one("#message", Static)
        await until(pilot, lambda: "t-view 2" in str(body.render()))
        assert "rate.locked" in str(body.render())
        await pilot.press("escape")
        assert not isinstance(app.screen, MessageScreen)

    run(tui_stack, "quarantine", script)
    assert held_ids(tui_stack, "t-view") == hold_ids  # viewing changes nothing


def test_unlock_with_a_note(tui_stack: Stack) -> None:
    """u asks for a note (Esc cancels); Enter unlocks; the next message is accepted."""
    hold(tui_stack, "t-unlock")
    who = "sasl:t-unlock@example.com"

    async def script(app: PostwardenApp, pilot: Pilot[Any]) -> None:
        screen = app.screen
        table = screen.query_one(DataTable)
        await until(pilot, lambda: who in [s.identity for s in screen.rows])
        table.move_cursor(row=[s.identity for s in screen.rows].index(who))
        await pilot.press("u")
        assert isinstance(app.screen, NoteScreen)
        await pilot.press("escape")
        assert not isinstance(app.screen, NoteScreen)
        await pilot.press("u", *"password reset", "enter")
        await until(pilot, lambda: (who, "password reset") in audit(tui_stack, "unlock"))
        # Unlocked, and its windows start afresh: it leaves the locked senders.
        await until(pilot, lambda: who not in [s.identity for s in screen.rows if s.locked])

    run(tui_stack, "senders", script)
    address = "t-unlock@example.com"
    r = tui_stack.sandbox.smtp_send(
        message(from_=address), address, ["x@remote.test"], login=address
    )
    assert tui_stack.decision_for(r.queue_id)["action"] == "accept"


def test_policy_edit_saves_and_reloads_and_an_invalid_one_is_refused(tui_stack: Stack) -> None:
    """A valid edit is written with its comments kept and the daemon reloads it; an invalid
    one shows the loader's own message in the form and writes nothing."""
    extra = tui_stack.config.parent / "policies" / "20-extra.toml"
    before = extra.read_text()

    def status_hash() -> str:
        db = open_db(tui_stack.db_path, readonly=True)
        return str(
            db.execute("SELECT policy_hash FROM daemon ORDER BY started_at DESC").fetchone()[0]
        )

    old_hash = status_hash()

    async def script(app: PostwardenApp, pilot: Pilot[Any]) -> None:
        screen = app.screen
        lv = screen.query_one("#entries", ListView)
        await until(pilot, lambda: len(screen.entries) > 0)
        lv.index = [e.label for e in screen.entries].index("user t-policy@example.com")
        await until(
            pilot, lambda: screen.entry is not None and screen.entry.name == "t-policy@example.com"
        )
        messages = screen.query_one("#user-messages", Input)
        assert messages.value == "2/minute"
        messages.value = "4/minute, 100/hour"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: "reloaded" in str(screen.query_one("#status", Static).render()))

        send_as = screen.query_one("#user-send-as", Input)
        send_as.value = "not a pattern"
        await pilot.press("ctrl+s")
        errors = screen.query_one("#errors", Static)
        await until(pilot, lambda: "not saved" in str(errors.render()))
        assert (
            'users."t-policy@example.com".send_as[0]: "not a pattern" is not a send_as pattern'
            in str(errors.render())
        )

    run(tui_stack, "policy", script)
    after = extra.read_text()
    assert "# the TUI tests' logins: a cap of 2/minute each" in after  # the comment survives
    assert 'rate = { messages = ["4/minute", "100/hour"] }' in after
    assert "not a pattern" not in after
    assert after.replace('["4/minute", "100/hour"]', '["2/minute"]', 1) == before
    assert status_hash() != old_hash  # the daemon took the new policy
    # The daemon enforces the new cap: 4 now go through in a fresh minute... the login has
    # sent nothing yet, so 4 accepted and the 5th held.
    address = "t-policy@example.com"
    for _ in range(5):
        tui_stack.sandbox.smtp_send(
            message(from_=address), address, ["x@remote.test"], login=address
        )

    def actions() -> list[object]:
        return [d["action"] for d in tui_stack.decisions(sender=f"sasl:{address}")]

    tui_stack.sandbox.wait_for(lambda: len(actions()) == 5, 15)  # the writer records after
    assert actions() == ["accept"] * 4 + ["quarantine"]


def test_decisions_screen_is_live(tui_stack: Stack) -> None:
    """A new decision appears on the open screen without a keypress."""

    async def script(app: PostwardenApp, pilot: Pilot[Any]) -> None:
        screen = app.screen
        status = screen.query_one("#status", Static)
        await until(pilot, lambda: str(status.render()).startswith("page 1"))
        address = "t-view@example.com"
        await asyncio.to_thread(
            tui_stack.sandbox.smtp_send,
            message(from_=address, subject="live one"),
            address,
            ["x@remote.test"],
            login=address,
        )
        await until(pilot, lambda: bool(screen.rows) and screen.rows[0]["subject"] == "live one")
        assert "live one" in str(screen.query_one("#detail", Static).render())

    run(tui_stack, "decisions", script)
