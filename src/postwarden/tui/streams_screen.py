"""The Streams screen (key 7, streams.md): the bulk stream's pace (released in the current
window, waiting, the next slot), each warm-up's progress (day of the schedule, today's allowance
used per provider group, what waits), and every paced or warm-up hold with when it is due to
leave. Read through postwarden.schedule, what `quarantine list` and `senders` print, in a worker
thread; an admin releases or deletes these holds on the Quarantine screen like any other."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from postwarden import schedule
from postwarden.store import records
from postwarden.tui.screens import SCREENS, BaseScreen, Col, cell

MODE = "streams"
LABEL = "Streams"
NAV = [*SCREENS, ("reports", "Reports"), (MODE, LABEL)]


class NavBar(Static):
    def __init__(self) -> None:
        text = Text()
        for i, (mode, label) in enumerate(NAV, 1):
            text.append(f" {i} {label} ", style="reverse bold" if mode == MODE else "")
            text.append(" ")
        super().__init__(text, classes="navbar")


def due_text(iso: str, now: datetime) -> str:
    """ "12:00:05Z (in 5s)", or with the date when it is not today."""
    if not iso:
        return "-"
    when = datetime.fromisoformat(iso)
    left = int((when - now).total_seconds())
    at = when.strftime("%H:%M:%SZ") if when.date() == now.date() else when.strftime("%m-%d %H:%MZ")
    if left <= 0:
        return f"{at} (now)"
    if left < 3600:
        return f"{at} (in {left // 60}m{left % 60:02d}s)" if left >= 60 else f"{at} (in {left}s)"
    if left < 86400:
        return f"{at} (in {left // 3600}h{left % 3600 // 60:02d}m)"
    return f"{at} (in {left // 86400}d{left % 86400 // 3600:02d}h)"


class StreamsScreen(BaseScreen):
    MODE = MODE
    DEFAULT_CSS = """
    StreamsScreen #pace { height: auto; padding: 0 1; }
    StreamsScreen #table { height: 1fr; }
    StreamsScreen #warmups { height: auto; max-height: 40%; border-top: solid $primary; }
    """
    BINDINGS = [Binding("g", "refresh", "Refresh")]
    COLUMNS: list[Col] = [
        ("queue id", 8, 12),
        ("kind", 6, 20),
        ("sender", 16, 32),
        ("due", 14, 26),
        ("Subject", 10, None),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.progress: schedule.StreamProgress | None = None
        self.waiting: list[dict[str, Any]] = []

    def header(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield NavBar()

    def compose(self) -> ComposeResult:
        yield from self.header()
        yield Static("", id="pace")
        yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="warmups", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#warmups", DataTable).add_columns(
            "warm-up", "day", "group", "today", "waiting"
        )
        self.query_one("#table", DataTable).focus()
        self.set_status("reading the schedule...")
        self.load()
        interval = getattr(self.app, "poll_interval", 1.0)
        self.set_interval(max(1.0, interval), self.load)

    def action_refresh(self) -> None:
        self.load()

    @work(thread=True, exclusive=True, group="streams")
    def load(self) -> None:
        b = self.backend
        now = b.now()
        try:
            with b.lock:
                conn = b.db.conn
                progress = schedule.progress(conn, b.config.policy, now)
                dues = schedule.due(conn, b.config.policy, now)
                found = records.decisions_by_queue_id(b.db, list(dues))
        except (sqlite3.Error, ValueError) as exc:
            self.say(f"streams: {exc}", severity="error")
            return
        subjects = {q: subject for q, _, _, _, _, subject, _ in found}
        waiting = [
            {
                "queue_id": d.queue_id,
                "identity": d.identity,
                "kind": d.kind,
                "due": d.due,
                "state": d.state,
                "subject": subjects.get(d.queue_id, "") or "",
            }
            for d in sorted(dues.values(), key=lambda d: (d.due, d.queue_id))
        ]
        self.app.call_from_thread(self.show, progress, waiting, now)

    def show(
        self, progress: schedule.StreamProgress, waiting: list[dict[str, Any]], now: datetime
    ) -> None:
        self.progress, self.waiting = progress, waiting
        pace = Text()
        pace.append("bulk stream  ", style="bold")
        if progress.pace:
            pace.append(f"pace {progress.pace}: ")
            pace.append(
                f"{progress.released_in_window}/{progress.limit} released in the last"
                f" {progress.window}s",
                style="yellow" if progress.released_in_window >= progress.limit else "green",
            )
            pace.append(f" · {progress.waiting} waiting")
            if progress.next_due:
                pace.append(f" · next {due_text(progress.next_due, now)}")
        else:
            pace.append("no pace ([streams.bulk].pace unset): bulk mail leaves at once", "dim")
        self.query_one("#pace", Static).update(pace)
        self.refill(
            [
                (
                    w["queue_id"],
                    [
                        cell(w["queue_id"]),
                        cell(w["kind"] + (" (releasing)" if w["state"] == "releasing" else "")),
                        cell(w["identity"]),
                        cell(due_text(w["due"], now)),
                        cell(w["subject"]),
                    ],
                )
                for w in waiting
            ]
        )
        warm = self.query_one("#warmups", DataTable)
        warm.clear()
        for wp in progress.warmups:
            for g in wp.groups:
                over = g.allowance is not None and g.used >= g.allowance
                warm.add_row(
                    cell(wp.key),
                    f"{wp.day} of {wp.days}" if wp.day <= wp.days else f"done ({wp.day})",
                    cell(g.group),
                    Text(
                        f"{g.used}/{g.allowance}" if g.allowance is not None else f"{g.used}/-",
                        style="yellow" if over else "green",
                    ),
                    f"{g.waiting}",
                )
        self.set_status(
            f"{len(waiting)} on the schedule"
            + (f" · {len(progress.warmups)} warm-up(s)" if progress.warmups else " · no warm-up")
            + " · release or delete them on the Quarantine screen (2)"
        )
