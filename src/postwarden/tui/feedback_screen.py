"""The Feedback screen (key 7): per From domain the complaints, delivered mail and complaint
rate over 7 and 30 days (a domain above [feedback].alert_rate flagged), and below it that
domain's suppressed recipients. `a` adds a suppression, `d` removes the highlighted one: the
same functions as `postwarden suppression add|remove`, audited the same way."""

from __future__ import annotations

import sqlite3
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, Static

from postwarden.feedback import suppression
from postwarden.feedback.stats import rates
from postwarden.store.shared import SharedUnavailable
from postwarden.tui.modals import ConfirmScreen
from postwarden.tui.screens import SCREENS, BaseScreen, Col

MODE = "feedback"
LABEL = "Feedback"


class NavBar(Static):
    """The screens and their keys, this one (key 7) highlighted."""

    def __init__(self) -> None:
        text = Text()
        for i, (mode, label) in enumerate([*SCREENS, ("reports", "Reports"), (MODE, LABEL)], 1):
            text.append(f" {i} {label} ", style="reverse bold" if mode == MODE else "")
            text.append(" ")
        super().__init__(text, classes="navbar")


class AddScreen(ModalScreen[tuple[str, str, str] | None]):
    """Address, domain (empty: every domain) and a note; None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, domain: str) -> None:
        super().__init__()
        self.domain = domain

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Suppress a recipient", classes="dialog-title")
            yield Input(placeholder="address: user@example.org", id="address")
            yield Input(
                value=self.domain, placeholder="From domain (empty: every domain)", id="domain"
            )
            yield Input(placeholder="note: why (recorded in the audit log)", id="note")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel (esc)", id="cancel")
                yield Button("Suppress (enter)", id="confirm", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#address", Input).focus()

    def _values(self) -> tuple[str, str, str]:
        return tuple(  # type: ignore[return-value]
            self.query_one(f"#{n}", Input).value.strip() for n in ("address", "domain", "note")
        )

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(self._values())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self._values() if event.button.id == "confirm" else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class FeedbackScreen(BaseScreen):
    COLUMNS: list[Col] = [
        ("domain", 12, None),
        ("7d complaints", 6, 13),
        ("7d delivered", 6, 12),
        ("7d rate", 6, 9),
        ("30d rate", 6, 9),
        ("suppressed", 6, 10),
    ]
    MODE = MODE
    DEFAULT_CSS = """
    FeedbackScreen #table { height: 1fr; }
    FeedbackScreen #suppressed { height: 50%; border-top: solid $primary; }
    AddScreen { align: center middle; }
    AddScreen Input { height: 1; border: none; padding: 0 1; margin-top: 1; background: $boost; }
    """
    BINDINGS = [
        Binding("a", "add", "Suppress"),
        Binding("d", "remove", "Unsuppress"),
        Binding("tab", "focus_next", "Switch", show=False),
        Binding("g", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []
        self.entries: list[dict[str, Any]] = []

    def header(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield NavBar()

    def compose(self) -> ComposeResult:
        yield from self.header()
        yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        yield DataTable(id="suppressed", cursor_type="row", zebra_stripes=True)
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one("#suppressed", DataTable).add_columns("address", "for", "since", "why")
        self.query_one("#table", DataTable).focus()
        self.load()

    # ---- data ---------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="feedback")
    def load(self) -> None:
        b = self.backend
        try:
            with b.lock:
                rows = rates(b.db, b.config, b.now(), shared=b.shared)
                entries = suppression.entries(b.db, shared=b.shared)
        except sqlite3.Error as exc:
            self.say(f"feedback: {exc}", severity="error")
            return
        except SharedUnavailable as exc:  # [store].shared: Redis down; the screen stays
            self.say(f"the shared store is unreachable: {exc}", severity="error")
            return
        self.app.call_from_thread(self.show, rows, entries)

    def show(self, rows: list[dict[str, Any]], entries: list[dict[str, Any]]) -> None:
        self.rows, self.entries = rows, entries
        lines = []
        for r in rows:
            w7, w30 = r["7d"], r["30d"]
            alert = r["above_alert_rate"]
            lines.append(
                (
                    r["domain"],
                    [
                        Text(
                            r["domain"] + (" !" if alert else ""), style="bold red" if alert else ""
                        ),
                        f"{w7['complaints']:,}",
                        f"{w7['delivered']:,}",
                        Text(f"{w7['rate']:.3%}", style="bold red" if alert else ""),
                        f"{w30['rate']:.3%}",
                        f"{r['suppressed']:,}",
                    ],
                )
            )
        self.refill(lines)
        alerts = sum(1 for r in rows if r["above_alert_rate"])
        limit = self.backend.config.policy.feedback.alert_rate
        self.set_status(
            f"{len(rows)} domain(s) · {len(entries)} suppressed recipient(s)"
            + (f" · {alerts} above the alert rate {limit:.3%}" if alerts else "")
            + " · a: suppress, d: unsuppress, tab: switch"
        )
        self.show_domain()

    def domain(self) -> str:
        r = self.under_cursor(self.rows)
        return str(r["domain"]) if r else ""

    def shown_entries(self) -> list[dict[str, Any]]:
        d = self.domain()
        return [e for e in self.entries if e["domain"] in ("", d)]

    @on(DataTable.RowHighlighted, "#table")
    def show_domain(self) -> None:
        table = self.query_one("#suppressed", DataTable)
        table.clear()
        for e in self.shown_entries():
            why = str(e["reason"]) + (f" ({e['note']})" if e["note"] else "")
            table.add_row(
                Text(str(e["address"])),
                Text(str(e["domain"] or "every domain")),
                str(e["created_at"])[:16].replace("T", " "),
                Text(why),
            )

    # ---- keys ---------------------------------------------------------------------------------

    def action_refresh(self) -> None:
        self.load()

    def action_add(self) -> None:
        def done(values: tuple[str, str, str] | None) -> None:
            if values is None:
                return
            address, domain, note = values
            self.change(
                lambda: suppression.add(
                    self.backend.db, address, domain or None, note, self.backend.shared
                )
            )

        self.app.push_screen(AddScreen(self.domain()), done)

    def action_remove(self) -> None:
        table = self.query_one("#suppressed", DataTable)
        entries = self.shown_entries()
        row = table.cursor_row
        if not (0 <= row < len(entries)):
            self.say("no suppressed recipient highlighted (tab to the lower table)")
            return
        e = entries[row]
        scope = e["domain"] or "every domain"

        def done(yes: bool | None) -> None:
            if yes:
                self.change(
                    lambda: suppression.remove(
                        self.backend.db, e["address"], e["domain"], "tui", self.backend.shared
                    )
                )

        self.app.push_screen(
            ConfirmScreen(
                "Unsuppress",
                f"Mail to {e['address']} from {scope} will be sent again.",
                "Unsuppress",
            ),
            done,
        )

    def change(self, fn: Any) -> None:
        try:
            with self.backend.lock:
                done = fn()
        except suppression.BadEntry as exc:
            self.say(str(exc), severity="error")
            return
        except sqlite3.Error as exc:
            self.say(f"feedback: {exc}", severity="error")
            return
        except SharedUnavailable as exc:
            self.say(f"not changed: the shared store is unreachable: {exc}", severity="error")
            return
        self.say("done" if done else "nothing changed")
        self.load()
