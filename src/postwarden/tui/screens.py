"""The five screens. Each reads through the Backend in a worker thread and paints on the UI
thread, so a slow query or a 100,000-message hold queue never freezes the keyboard.

Everything shown that came from mail or from a sender (Subject, From, identities, reasons,
headers) is a rich Text, never markup (a Subject of `[/]` would crash the table, `[link=...]`
disguise it), with control characters shown as escapes (textsafe.printable)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import events, on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, ScrollableContainer, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import (
    Checkbox,
    ContentSwitcher,
    DataTable,
    Footer,
    Header,
    Input,
    Label,
    ListItem,
    ListView,
    ProgressBar,
    Select,
    Static,
    TextArea,
)

from postwarden import policyedit
from postwarden.quarantine import Held, PostfixError, by_sender, page
from postwarden.store.shared import SharedUnavailable
from postwarden.textsafe import printable, printable_lines
from postwarden.tui.backend import HELD_PAGE, PAGE, Backend, DecisionFilter, Saved
from postwarden.tui.modals import ConfirmScreen, MessageScreen, NoteScreen

SCREENS = [
    ("decisions", "Decisions"),
    ("quarantine", "Quarantine"),
    ("senders", "Senders"),
    ("domains", "Domains"),
    ("policy", "Policy"),
]
ACTION_STYLE = {
    "accept": "green",
    "quarantine": "yellow",
    "tempfail": "magenta",
    "reject": "bold red",
}
STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "unknown": "magenta"}


class NavBar(Static):
    """The screens and their keys, the current one highlighted."""

    def __init__(self, current: str) -> None:
        text = Text()
        for i, (mode, label) in enumerate(SCREENS, 1):
            style = "reverse bold" if mode == current else ""
            text.append(f" {i} {label} ", style=style)
            text.append(" ")
        super().__init__(text, classes="navbar")


def cell(value: Any, style: str = "") -> Text:
    """A table cell from data: plain text (never markup), control characters escaped, one
    line, cut with an ellipsis when its column is narrower."""
    return Text(printable(str(value)), style=style, no_wrap=True, overflow="ellipsis", end="")


# A table column: label, narrowest and widest width. The one with no widest ("flex") gets what
# the screen's width leaves, so at 120 columns Subject shows whole instead of 10 characters.
Col = tuple[str, int, int | None]


def fit_widths(
    columns: list[Col], rows: list[list[Any]], width: int, padding: int = 1
) -> list[int]:
    """Column widths that fit `width` cells: each column as wide as its content up to its
    widest; when that is too wide, the others narrow towards their narrowest before the flex
    column does; spare room goes to the flex column, up to its content."""
    content = [len(label) for label, _, _ in columns]
    for cells in rows:
        for i, value in enumerate(cells[: len(columns)]):
            n = value.cell_len if isinstance(value, Text) else len(str(value))
            content[i] = max(content[i], n)
    want = [
        max(low, min(content[i], high if high is not None else content[i]))
        for i, (_, low, high) in enumerate(columns)
    ]
    room = width - 2 * padding * len(columns) - 2  # the vertical scrollbar
    flex = [i for i, (_, _, high) in enumerate(columns) if high is None]
    over = sum(want) - room
    while over > 0:
        slack = [(want[i] - columns[i][1], i) for i in range(len(columns)) if i not in flex]
        most, i = max(slack, default=(0, -1))
        if most <= 0:
            break
        cut = min(most, over, max(1, most - max((s for s, j in slack if j != i), default=0)))
        want[i] -= cut
        over -= cut
    for i in flex:
        if over > 0:
            cut = min(over, want[i] - columns[i][1])
            want[i] -= cut
            over -= cut
    return want


def short_time(iso: str) -> str:
    return iso[5:10] + " " + iso[11:19] if len(iso) >= 19 else iso


def age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def reason_keys(row: dict[str, Any]) -> str:
    return ",".join(f"{r['check']}.{r['code']}" for r in row.get("reasons", []))


def decision_detail(row: dict[str, Any]) -> Text:
    """Every fact, reason and signature of a decision, then the headers."""
    t = Text()

    def line(label: str, value: Any, style: str = "") -> None:
        t.append(f"{label:<12}", style="bold")
        t.append(f"{printable(str(value))}\n", style=style)

    line("queue id", row.get("queue_id") or "NOQUEUE")
    line("time", row.get("time", ""))
    line("action", row.get("action", ""), ACTION_STYLE.get(row.get("action", ""), ""))
    line("identity", row.get("identity", ""))
    line("client", f"{row.get('client_addr', '')} {row.get('client_name', '')}".strip())
    line("helo", row.get("helo", ""))
    line("mail from", f"<{row.get('mail_from', '')}>")
    rcpts = row.get("rcpts", [])
    line("rcpts", f"{len(rcpts)}: " + ", ".join(rcpts[:10]) + (" ..." if len(rcpts) > 10 else ""))
    line("From", row.get("header_from", ""))
    line("Subject", row.get("subject", ""))
    line("Message-ID", row.get("message_id", ""))
    line("size", row.get("size", ""))
    line("outbound", "yes" if row.get("outbound") else "no")
    line("policy", row.get("policy_hash", ""))
    line("took", f"{row.get('duration_ms') or 0:.2f} ms")
    if row.get("error"):
        line("error", row["error"], "bold red")
    t.append("reasons\n", style="bold underline")
    for r in row.get("reasons", []) or []:
        t.append(
            printable(f"  {r['check']}.{r['code']} "),
            style=ACTION_STYLE.get(r.get("action", ""), ""),
        )
        t.append(printable(f"({r.get('action', '')}) {r.get('text', '')}") + "\n")
    if not row.get("reasons"):
        t.append("  none\n")
    t.append("signatures\n", style="bold underline")
    for s in row.get("signatures", []) or []:
        t.append(printable(f"  d={s.get('d', '')} s={s.get('s', '')} a={s.get('a', '')}") + "\n")
    if not row.get("signatures"):
        t.append("  none\n")
    t.append("headers\n", style="bold underline")
    t.append(printable_lines(row.get("headers") or "  (not recorded)") + "\n")
    return t


class BaseScreen(Screen[None]):
    MODE = ""
    COLUMNS: list[Col] = []

    @property
    def backend(self) -> Backend:
        return self.app.backend  # type: ignore[attr-defined,no-any-return]

    def header(self) -> ComposeResult:
        yield Header(show_clock=False)
        yield NavBar(self.MODE)

    def set_status(self, text: str | Text) -> None:
        # Text, never markup: a filter or a sender may hold "[", which markup would misread.
        self.query_one("#status", Static).update(Text(text) if isinstance(text, str) else text)

    def under_cursor(self, items: list[Any]) -> Any | None:
        """The item shown on the table's cursor row, or None when the table is empty."""
        row = self.query_one(DataTable).cursor_row
        return items[row] if 0 <= row < len(items) else None

    def refill(self, rows: list[tuple[str, list[Any]]], keep: str | None = None) -> None:
        """Replace the table's rows (key, cells), keeping the cursor on the row `keep` when
        given, else on the same line; the columns sized to the screen's width."""
        self._rows = rows
        table = self.query_one(DataTable)
        cursor = table.cursor_row
        table.clear(columns=True)
        widths = fit_widths(self.COLUMNS, [cells for _, cells in rows], self.size.width or 80)
        for (label, _, _), width in zip(self.COLUMNS, widths, strict=True):
            table.add_column(Text(label), width=width)
        for key, cells in rows:
            table.add_row(*cells, key=key)
        if keep is not None and keep in table.rows:
            table.move_cursor(row=table.get_row_index(keep))
        elif rows:
            table.move_cursor(row=min(cursor, len(rows) - 1))

    def on_resize(self, event: events.Resize) -> None:
        if getattr(self, "_rows", None) is not None:
            self.refill(self._rows, self._cursor_key())

    def _cursor_key(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def say(self, message: str, severity: str = "information", timeout: float = 6) -> None:
        """A toast, from any thread, never read as markup."""
        level = severity if severity in ("warning", "error") else "information"

        def show() -> None:
            self.notify(message, severity=level, timeout=timeout, markup=False)  # type: ignore[arg-type]

        if self.app._thread_id == threading.get_ident():
            show()
        else:
            self.app.call_from_thread(show)


# ---- decisions ---------------------------------------------------------------------------------


class DecisionsScreen(BaseScreen):
    MODE = "decisions"
    COLUMNS: list[Col] = [
        ("time (UTC)", 14, 14),
        ("action", 10, 10),
        ("identity", 24, 32),  # sasl:mallory@example.com whole
        ("reasons", 10, 30),
        ("Subject", 10, None),
        ("From", 12, 34),
        ("queue id", 8, 12),
    ]
    BINDINGS = [
        Binding("slash", "filter", "Filter"),
        Binding("right_square_bracket", "older", "Older"),
        Binding("left_square_bracket", "newer", "Newer"),
        Binding("escape", "focus_table", "Table", show=False),
        Binding("tab", "focus_next", "Detail", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.flt = DecisionFilter()
        self.rows: list[dict[str, Any]] = []
        self.pages: list[int | None] = [None]  # before_id of each page shown, newest first
        self.busy = False

    def compose(self) -> ComposeResult:
        yield from self.header()
        yield Input(
            placeholder="/ filter: sender: domain: action: reason: since: until: or any text",
            id="filter",
        )
        yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        with VerticalScroll(id="detail-pane"):
            yield Static("", id="detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        self.refill([])
        table.focus()
        self.load()
        self.set_interval(self.app.poll_interval, self.poll)  # type: ignore[attr-defined]

    @property
    def live(self) -> bool:
        return len(self.pages) == 1

    @work(thread=True, exclusive=True, group="decisions")
    def load(self) -> None:
        self.busy = True
        try:
            rows = self.backend.decisions(self.flt, before_id=self.pages[-1], limit=PAGE)
        except ValueError as exc:
            self.app.call_from_thread(self.set_status, Text(str(exc), style="bold red"))
            return
        finally:
            self.busy = False
        self.app.call_from_thread(self.show_rows, rows, False)

    @work(thread=True, exclusive=True, group="poll")
    def fetch_new(self, after_id: int) -> None:
        try:
            rows = self.backend.decisions(self.flt, after_id=after_id, limit=PAGE)
        except ValueError:
            return
        if rows:
            self.app.call_from_thread(self.show_rows, rows, True)

    def poll(self) -> None:
        # Live only on the newest page: an admin paging back keeps a still view.
        if self.live and not self.busy:
            self.fetch_new(self.rows[0]["id"] if self.rows else 0)

    def show_rows(self, rows: list[dict[str, Any]], new: bool) -> None:
        table = self.query_one(DataTable)
        keep = None
        if table.row_count and table.cursor_row > 0:
            keep = str(self.rows[table.cursor_row]["id"])
        self.rows = (rows + self.rows)[:PAGE] if new else rows
        self.refill(
            [
                (
                    str(r["id"]),
                    [
                        cell(short_time(r["time"])),
                        cell(r["action"], ACTION_STYLE.get(r["action"], "")),
                        cell(r["identity"]),
                        cell(reason_keys(r)),
                        cell(r["subject"]),
                        cell(r["header_from"]),
                        cell(r["queue_id"] or "NOQUEUE"),
                    ],
                )
                for r in self.rows
            ],
            keep,
        )
        if keep is None and table.row_count:
            table.move_cursor(row=0)
        page_no = len(self.pages)
        state = "live" if self.live else "paused: [ for newer"
        flt = f" · filter: {self.flt}" if str(self.flt) else ""
        status = Text(f"page {page_no} · {len(self.rows)} decisions, newest first · {state}{flt}")
        lost = self.app.backend.lost_rows  # type: ignore[attr-defined]
        if lost:
            status.append(
                f" · {lost} decision rows not recorded (see the daemon's log)", "bold red"
            )
        self.set_status(status)
        self.show_detail()

    @on(DataTable.RowHighlighted)
    def show_detail(self) -> None:
        row = self.under_cursor(self.rows)
        self.query_one("#detail", Static).update(
            decision_detail(row) if row else "no decisions match"
        )

    @on(Input.Submitted, "#filter")
    def apply_filter(self, event: Input.Submitted) -> None:
        try:
            self.flt = DecisionFilter.parse(event.value)
        except ValueError as exc:
            self.set_status(Text(str(exc), style="bold red"))
            return
        self.pages = [None]
        self.query_one(DataTable).focus()
        self.load()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one(DataTable).focus()

    def action_older(self) -> None:
        if len(self.rows) == PAGE:
            self.pages.append(self.rows[-1]["id"])  # rows are newest first
            self.load()

    def action_newer(self) -> None:
        if len(self.pages) > 1:
            self.pages.pop()
            self.load()


# ---- quarantine --------------------------------------------------------------------------------


class QuarantineScreen(BaseScreen):
    MODE = "quarantine"
    COLUMNS: list[Col] = [
        (" ", 1, 1),
        ("queue id", 8, 12),
        ("age", 6, 6),
        ("sender", 24, 32),
        ("reasons", 10, 30),
        ("Subject", 10, None),
        ("From", 12, 34),
    ]
    BINDINGS = [
        Binding("space", "mark", "Mark"),
        Binding("v", "view", "View"),
        Binding("r", "release", "Release"),
        Binding("d", "delete", "Delete"),
        Binding("R", "release_sender", "Rel. sender"),
        Binding("D", "delete_sender", "Del. sender"),
        Binding("right_square_bracket", "next_page", "Next"),
        Binding("left_square_bracket", "prev_page", "Prev"),
        Binding("g", "refresh", "Refresh", show=False),
        Binding("slash", "filter", "Filter", show=False),
        Binding("escape", "focus_table", "Table", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: list[Held] = []
        self.matching: list[Held] = []  # items, through the sender filter
        self.shown: list[Held] = []
        self.selected: set[str] = set()
        self.sender_filter = ""
        self.page_no = 1

    def compose(self) -> ComposeResult:
        yield from self.header()
        yield Input(placeholder="/ sender: an identity or envelope sender", id="filter")
        yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        self.refill([])
        table.focus()
        self.action_refresh()
        # Ages move on without a new read of the hold queue.
        self.set_interval(self.app.poll_interval, self.tick_ages)  # type: ignore[attr-defined]

    def tick_ages(self) -> None:
        """Every shown age, brought up to the clock (one cell each; no Postfix call)."""
        table = self.query_one(DataTable)
        if not self.shown or len(table.ordered_columns) < 3:
            return
        column = table.ordered_columns[2].key
        now = self.backend.now().timestamp()
        for m in self.shown:
            if m.queue_id in table.rows:
                table.update_cell(m.queue_id, column, cell(age(now - m.arrival_time)))

    def action_refresh(self) -> None:
        # No loading overlay on the table: it would take the focus, and with it the keys.
        self.set_status("reading the hold queue from Postfix...")
        self.load()

    @work(thread=True, exclusive=True, group="held")
    def load(self) -> None:
        try:
            items = self.backend.held()
        except PostfixError as exc:
            self.app.call_from_thread(self.failed, str(exc))
            return
        self.app.call_from_thread(self.loaded, items)

    def failed(self, message: str) -> None:
        self.set_status(Text(f"Postfix: {message}", style="bold red"))

    def loaded(self, items: list[Held]) -> None:
        self.items = items
        present = {m.queue_id for m in items}
        self.selected &= present
        self.filter_items()

    def filter_items(self) -> None:
        """The sender filter, applied when the items or the filter change (with 100,000 held,
        not on every page turn or mark)."""
        self.matching = (
            by_sender(self.items, self.sender_filter) if self.sender_filter else self.items
        )
        self.render_page()

    def pages(self) -> int:
        return max(1, -(-len(self.matching) // HELD_PAGE))

    def render_page(self) -> None:
        self.page_no = min(self.page_no, self.pages())
        self.shown = page(self.matching, self.page_no, HELD_PAGE)
        now = self.backend.now().timestamp()
        self.refill(
            [
                (
                    m.queue_id,
                    [
                        "●" if m.queue_id in self.selected else " ",
                        cell(m.queue_id),
                        cell(age(now - m.arrival_time)),
                        cell(m.identity or m.sender),
                        cell(",".join(m.reasons) + (f" due {m.due[11:19]}Z" if m.due else "")),
                        cell(m.subject),
                        cell(m.header_from),
                    ],
                )
                for m in self.shown
            ]
        )
        self.show_counts()

    def show_counts(self) -> None:
        flt = f" · sender {self.sender_filter}" if self.sender_filter else ""
        sel = f" · {len(self.selected)} selected" if self.selected else ""
        self.set_status(
            f"{len(self.matching)} held{flt} · page {self.page_no} of {self.pages()}{sel}"
        )

    def current(self) -> Held | None:
        return self.under_cursor(self.shown)

    def action_mark(self) -> None:
        m = self.current()
        if m is None:
            return
        self.selected ^= {m.queue_id}
        table = self.query_one(DataTable)
        table.update_cell(
            m.queue_id, table.ordered_columns[0].key, "●" if m.queue_id in self.selected else " "
        )
        self.show_counts()
        if table.cursor_row + 1 < len(self.shown):
            table.move_cursor(row=table.cursor_row + 1)

    def action_view(self) -> None:
        m = self.current()
        if m is not None:
            decision = printable(
                f"postwarden: {m.identity or m.sender} · From {m.header_from} · "
                f"{', '.join(m.reasons) or 'no reasons recorded'}"
            )
            self.app.push_screen(MessageScreen(m.queue_id, decision))

    def _targets(self) -> list[str]:
        if self.selected:
            return sorted(self.selected)
        m = self.current()
        return [m.queue_id] if m else []

    def _confirm(self, action: str, ids: list[str], sender: str = "") -> None:
        if not ids and not sender:
            self.say("nothing to act on", severity="warning")
            return
        verb = {"release": "Release", "delete": "Delete"}[action]
        if sender:
            n = len(by_sender(self.items, sender))
            title = f"{verb} all {n} held message(s) of {printable(sender)}?"
        else:
            title = f"{verb} {len(ids)} held message(s)?"
        body = (
            "They will be sent now (postsuper -H, then a queue flush)."
            if action == "release"
            else "They will be deleted from Postfix's queue. This cannot be undone."
        )
        if ids and not sender:
            body += "\n" + " ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.set_status(f"{verb.lower()[:-1]}ing... (postsuper)")
                self.apply_action(action, ids, sender)

        self.app.push_screen(ConfirmScreen(title, body, verb), done)

    @work(thread=True, exclusive=True, group="act")
    def apply_action(self, action: str, ids: list[str], sender: str) -> None:
        try:
            outcome = self.backend.act(action, [] if sender else ids, sender=sender)
        except PostfixError as exc:
            self.say(f"Postfix: {exc}", severity="error")
            return
        verb = {"release": "released", "delete": "deleted"}[action]
        msg = f"{verb} {len(outcome.done)} message(s) in {outcome.seconds:.1f}s"
        if outcome.missing:
            msg += f"; {len(outcome.missing)} no longer held"
        self.say(msg)
        self.app.call_from_thread(self.acted)

    def acted(self) -> None:
        self.selected.clear()
        self.action_refresh()

    def action_release(self) -> None:
        self._confirm("release", self._targets())

    def action_delete(self) -> None:
        self._confirm("delete", self._targets())

    def _sender(self) -> str:
        m = self.current()
        return (m.identity or m.sender) if m else ""

    def action_release_sender(self) -> None:
        self._confirm("release", [], self._sender())

    def action_delete_sender(self) -> None:
        self._confirm("delete", [], self._sender())

    def action_next_page(self) -> None:
        if self.page_no < self.pages():
            self.page_no += 1
            self.render_page()

    def action_prev_page(self) -> None:
        if self.page_no > 1:
            self.page_no -= 1
            self.render_page()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        self.query_one(DataTable).focus()

    @on(Input.Submitted, "#filter")
    def apply_filter(self, event: Input.Submitted) -> None:
        self.sender_filter = event.value.strip()
        self.page_no = 1
        self.query_one(DataTable).focus()
        self.filter_items()


# ---- senders -----------------------------------------------------------------------------------


def caps_text(caps: list[dict[str, Any]]) -> Text:
    t = Text()
    for c in caps:
        ratio = c["used"] / c["limit"] if c["limit"] else 0
        style = "bold red" if ratio >= 1 else "yellow" if ratio >= 0.8 else ""
        t.append(f"{c['used']}/{c['limit']} per {c['cap'].split('/')[1]}", style=style)
        t.append("  ")
    return t


class SendersScreen(BaseScreen):
    MODE = "senders"
    COLUMNS: list[Col] = [
        ("identity", 20, None),
        ("lock", 16, 30),
        ("messages", 20, 60),
        ("recipients", 16, 40),
    ]
    BINDINGS = [Binding("u", "unlock", "Unlock"), Binding("g", "refresh", "Refresh")]

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Any] = []

    def compose(self) -> ComposeResult:
        yield from self.header()
        yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        self.refill([])
        table.focus()
        self.load()
        self.set_interval(max(self.app.poll_interval, 2.0), self.load)  # type: ignore[attr-defined]

    @work(thread=True, exclusive=True, group="senders")
    def load(self) -> None:
        try:
            rows = self.backend.senders()
        except SharedUnavailable as exc:  # [store].shared: Redis down; the screen stays
            self.say(f"the shared store is unreachable: {exc}", severity="error")
            return
        self.app.call_from_thread(self.show_rows, rows)

    def show_rows(self, rows: list[Any]) -> None:
        self.rows = rows
        self.refill(
            [
                (
                    s.identity,
                    [
                        cell(s.identity),
                        cell(f"LOCKED {s.locked_at[11:19]} {s.lock_cap}", "bold red")
                        if s.locked
                        else "",
                        caps_text(s.messages),
                        caps_text(s.recipients),
                    ],
                )
                for s in rows
            ]
        )
        locked = sum(1 for s in rows if s.locked)
        self.set_status(
            f"{len(rows)} sender(s) with mail counted in the last day · {locked} locked"
        )

    def action_refresh(self) -> None:
        self.load()

    def action_unlock(self) -> None:
        s = self.under_cursor(self.rows)
        if s is None:
            return
        if not s.locked:
            self.say(f"{printable(s.identity)} is not locked", severity="warning")
            return

        def done(note: str | None) -> None:
            if note is not None:
                self.unlock(s.identity, note)

        self.app.push_screen(
            NoteScreen(
                f"Unlock {printable(s.identity)}?",
                f"Locked since {short_time(s.locked_at)} for breaking {s.lock_cap} "
                f"({s.lock_queue_id}). Its windows start afresh; its held mail stays held.",
                "Unlock",
            ),
            done,
        )

    @work(thread=True, group="unlock")
    def unlock(self, identity: str, note: str) -> None:
        try:
            ok = self.backend.unlock(identity, note)
        except SharedUnavailable as exc:
            self.say(f"not unlocked: the shared store is unreachable: {exc}", severity="error")
            return
        self.say(f"unlocked {identity}" if ok else f"{identity} was not locked")
        self.app.call_from_thread(self.load)


# ---- domains -----------------------------------------------------------------------------------


class DomainsScreen(BaseScreen):
    MODE = "domains"
    BINDINGS = [
        Binding("c", "check_one", "Check this"),
        Binding("a", "check_all", "Check all"),
        Binding("y", "copy_fix", "Copy fix"),
        Binding("g", "refresh", "Refresh"),
    ]
    COLUMNS: list[Col] = [
        ("domain", 12, 40),
        ("keys", 8, None),
        ("SPF", 4, 7),
        ("DKIM", 4, 7),
        ("DMARC", 5, 7),
        ("MX", 4, 7),
        ("checked (UTC)", 14, 14),
    ]
    AREAS = ("spf", "dkim", "dmarc", "mx")

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield from self.header()
        yield DataTable(id="table", cursor_type="row", zebra_stripes=True)
        yield ProgressBar(id="progress", show_eta=False)
        yield Static("", id="status")
        # Scrolls sideways: a fix is a DNS record, shown on one line so it can be copied whole
        # (and `y` copies it to the clipboard).
        with ScrollableContainer(id="detail-pane"):
            yield Static("", id="detail")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        self.refill([])
        self.query_one("#detail", Static).styles.width = "auto"
        self.query_one(ProgressBar).display = False
        table.focus()
        self.load()

    @work(thread=True, exclusive=True, group="domains")
    def load(self) -> None:
        rows = self.backend.domains()
        self.app.call_from_thread(self.show_rows, rows)

    def show_rows(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        lines = []
        for d in rows:
            keys = ", ".join(
                f"{k['selector']}:{k['algorithm']}" + ("" if k["active"] else " (staged)")
                for k in d["keys"]
            )
            cells: list[Any] = [
                cell(d["domain"] + (" +sub" if d["include_subdomains"] else "")),
                cell(keys or "none"),
            ]
            for area in self.AREAS:
                statuses = [f.status for f in d["findings"] if f.area == area]
                worst = next((s for s in ("fail", "unknown", "warn", "pass") if s in statuses), "")
                cells.append(Text(worst or "-", style=STATUS_STYLE.get(worst, "dim")))
            cells.append(cell(short_time(d["checked_at"]) if d["checked_at"] else "never"))
            lines.append((d["domain"], cells))
        self.refill(lines)
        never = sum(1 for d in rows if not d["checked_at"])
        self.set_status(
            f"{len(rows)} hosted domain(s)"
            + (f" · {never} never checked: press a" if never else "")
        )
        self.show_detail()

    @on(DataTable.RowHighlighted)
    def show_detail(self) -> None:
        d = self.under_cursor(self.rows)
        if d is None:
            return
        t = Text(no_wrap=True, overflow="ignore")
        t.append(printable(d["domain"]), style="bold")
        t.append(f"  last checked {d['checked_at'] or 'never'}\n")
        for f in d["findings"]:
            t.append(f"{f.status.upper():<8}", style=STATUS_STYLE.get(f.status, ""))
            t.append(printable(f"{f.area:<6} {f.message}") + "\n")
            for fix in f.fix.splitlines():
                # One line, never wrapped: a record split over lines cannot be pasted.
                t.append(printable(f"        fix: {fix}") + "\n", style="cyan")
        if any(f.fix for f in d["findings"]):
            t.append("y copies the fixes (one record a line) to the clipboard\n", style="dim")
        if not d["findings"]:
            t.append("no dns-check yet: press c to check this domain, a for all\n")
        self.query_one("#detail", Static).update(t)

    def action_refresh(self) -> None:
        self.load()

    def fixes(self) -> list[str]:
        """The fix records of the domain under the cursor, one a line, as dns-check gives them."""
        d = self.under_cursor(self.rows)
        if d is None:
            return []
        return [line for f in d["findings"] for line in f.fix.splitlines() if line.strip()]

    def action_copy_fix(self) -> None:
        fixes = self.fixes()
        if not fixes:
            self.say("no fix to copy for this domain", severity="warning")
            return
        self.app.copy_to_clipboard("\n".join(fixes) + "\n")
        self.say(f"copied {len(fixes)} fix record(s) to the clipboard")

    def action_check_one(self) -> None:
        d = self.under_cursor(self.rows)
        if d is not None:
            self.check([d["domain"]])

    def action_check_all(self) -> None:
        self.check(None)

    @work(thread=True, exclusive=True, group="dns-check")
    def check(self, domains: list[str] | None) -> None:
        bar = self.query_one(ProgressBar)
        total = len(domains) if domains else len(self.rows)

        def start() -> None:
            bar.display = True
            bar.update(total=total, progress=0)
            self.set_status(f"checking {total} domain(s)...")

        def progress(done: int, total: int, name: str) -> None:
            self.app.call_from_thread(bar.update, total=total, progress=done)
            self.app.call_from_thread(self.set_status, f"checked {done}/{total}: {name}")

        self.app.call_from_thread(start)
        try:
            report = self.backend.dns_check(domains, progress)
        except (sqlite3.Error, OSError) as exc:
            self.say(f"dns-check: {exc}", severity="error")
            return
        finally:
            self.app.call_from_thread(setattr, bar, "display", False)
        if report.unreachable:
            self.say("DNS is unreachable: nothing recorded", severity="error")
        else:
            c = report.counts()
            self.say(
                f"{len(report.domains)} domain(s): {c['pass']} pass, {c['warn']} warn, "
                f"{c['fail']} fail, {c['unknown']} unknown"
            )
        self.app.call_from_thread(self.load)


# ---- policy ------------------------------------------------------------------------------------


class PolicyScreen(BaseScreen):
    MODE = "policy"
    BINDINGS = [
        Binding("ctrl+s", "save", "Save+reload"),
        Binding("f2", "toggle_file", "File view"),
        Binding("f3", "new_user", "New user"),
        Binding("f4", "new_domain", "New domain"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[policyedit.Entry] = []
        self.entry: policyedit.Entry | None = None

    def compose(self) -> ComposeResult:
        yield from self.header()
        with Horizontal(id="policy-body"):
            yield ListView(id="entries")
            with Vertical(id="policy-right"):
                with ContentSwitcher(initial="form-user", id="forms"):
                    with Vertical(id="form-user", classes="form"):
                        yield Label("login (SASL)")
                        yield Input(id="user-login", placeholder="alice@example.com")
                        yield Label("send_as (comma-separated; blank: [defaults])", markup=False)
                        yield Input(id="user-send-as", placeholder="{login}, *@example.com")
                        yield Label("rate messages (blank: inherited)")
                        yield Input(id="user-messages", placeholder="30/minute, 500/hour")
                        yield Label("rate recipients (blank: inherited)")
                        yield Input(id="user-recipients", placeholder="200/minute")
                        yield Checkbox("bulk sender", id="user-bulk")
                    with Vertical(id="form-domain", classes="form"):
                        yield Label("domain")
                        yield Input(id="domain-name", placeholder="example.com")
                        yield Checkbox("include_subdomains", id="domain-subdomains")
                        yield Label('keys: "selector file", "staged" after it if not signing')
                        yield TextArea(id="domain-keys", soft_wrap=False)
                    with Vertical(id="form-defaults", classes="form"):
                        yield Label("alignment")
                        yield Select(
                            [("relaxed", "relaxed"), ("strict", "strict")],
                            id="defaults-alignment",
                            allow_blank=False,
                        )
                        yield Label("unknown_from_domain")
                        yield Select(
                            [(a, a) for a in ("reject", "tempfail", "quarantine", "accept")],
                            id="defaults-unknown",
                            allow_blank=False,
                        )
                        yield Label("send_as (comma-separated)")
                        yield Input(id="defaults-send-as")
                    yield TextArea(id="file-view", read_only=True, soft_wrap=False)
                yield Static("", id="errors")
        yield Static("", id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.refresh_entries()

    def refresh_entries(self, select: tuple[str, str] | None = None) -> None:
        self.entries = self.backend.policy_entries()
        lv = self.query_one("#entries", ListView)
        lv.clear()
        for e in self.entries:
            lv.append(ListItem(Label(e.label, markup=False)))
        index = 0
        if select:
            index = next((i for i, e in enumerate(self.entries) if (e.kind, e.name) == select), 0)
        if self.entries:
            lv.index = index
            self.open_entry(self.entries[index])
        lv.focus()

    @on(ListView.Highlighted, "#entries")
    def entry_highlighted(self, event: ListView.Highlighted) -> None:
        lv = self.query_one("#entries", ListView)
        if lv.index is not None and lv.index < len(self.entries):
            self.open_entry(self.entries[lv.index])

    @on(ListView.Selected, "#entries")
    def entry_selected(self) -> None:
        switcher = self.query_one("#forms", ContentSwitcher)
        if switcher.current and switcher.current != "file-view":
            self.query_one(f"#{switcher.current}").query(Input).first().focus()

    def open_entry(self, entry: policyedit.Entry, form: policyedit.Form | None = None) -> None:
        if entry == self.entry and form is None:
            return
        self.entry = entry
        form = form or policyedit.read_form(entry)
        self.query_one("#errors", Static).update("")
        if isinstance(form, policyedit.UserForm):
            self.query_one("#user-login", Input).value = form.login
            self.query_one("#user-login", Input).disabled = bool(entry.name)
            self.query_one("#user-send-as", Input).value = form.send_as
            self.query_one("#user-messages", Input).value = form.messages
            self.query_one("#user-recipients", Input).value = form.recipients
            self.query_one("#user-bulk", Checkbox).value = form.bulk
            self.query_one("#forms", ContentSwitcher).current = "form-user"
        elif isinstance(form, policyedit.DomainForm):
            self.query_one("#domain-name", Input).value = form.name
            self.query_one("#domain-name", Input).disabled = bool(entry.name)
            self.query_one("#domain-subdomains", Checkbox).value = form.include_subdomains
            self.query_one("#domain-keys", TextArea).text = form.keys
            self.query_one("#forms", ContentSwitcher).current = "form-domain"
        else:
            self.query_one("#defaults-alignment", Select).value = form.alignment
            self.query_one("#defaults-unknown", Select).value = form.unknown_from_domain
            self.query_one("#defaults-send-as", Input).value = form.send_as
            self.query_one("#forms", ContentSwitcher).current = "form-defaults"
        self.query_one("#file-view", TextArea).text = entry.file.read_text()
        self.set_status(f"{entry.label} in {entry.file} · ctrl+s saves and reloads the milter")

    def read_form(self) -> policyedit.Form:
        assert self.entry is not None
        if self.entry.kind == "user":
            return policyedit.UserForm(
                login=self.query_one("#user-login", Input).value.strip(),
                send_as=self.query_one("#user-send-as", Input).value,
                messages=self.query_one("#user-messages", Input).value,
                recipients=self.query_one("#user-recipients", Input).value,
                bulk=self.query_one("#user-bulk", Checkbox).value,
            )
        if self.entry.kind == "domain":
            return policyedit.DomainForm(
                name=self.query_one("#domain-name", Input).value.strip(),
                include_subdomains=self.query_one("#domain-subdomains", Checkbox).value,
                keys=self.query_one("#domain-keys", TextArea).text,
            )
        return policyedit.DefaultsForm(
            alignment=str(self.query_one("#defaults-alignment", Select).value),
            unknown_from_domain=str(self.query_one("#defaults-unknown", Select).value),
            send_as=self.query_one("#defaults-send-as", Input).value,
        )

    def action_toggle_file(self) -> None:
        switcher = self.query_one("#forms", ContentSwitcher)
        if switcher.current == "file-view" and self.entry:
            switcher.current = f"form-{self.entry.kind}"
        else:
            switcher.current = "file-view"

    def _new(self, kind: str) -> None:
        try:
            home = policyedit.home_for(self.backend.config.daemon.policies, kind)
        except policyedit.FormError as exc:
            self.say(str(exc), severity="error")
            return
        entry = policyedit.Entry(kind, "", home)
        form: policyedit.Form = (
            policyedit.UserForm(login="") if kind == "user" else policyedit.DomainForm(name="")
        )
        self.open_entry(entry, form)
        self.query_one("#user-login" if kind == "user" else "#domain-name", Input).focus()
        self.set_status(f"new {kind}, to be added to {home} · ctrl+s saves and reloads")

    def action_new_user(self) -> None:
        self._new("user")

    def action_new_domain(self) -> None:
        self._new("domain")

    def action_save(self) -> None:
        if self.entry is None:
            return
        try:
            form = self.read_form()
            text = policyedit.apply(self.entry.file.read_text(), form)
        except (policyedit.FormError, OSError) as exc:
            self.show_errors(str(exc))
            return
        name = (
            form.login
            if isinstance(form, policyedit.UserForm)
            else (form.name if isinstance(form, policyedit.DomainForm) else "")
        )
        self.set_status("checking with the daemon's loader...")
        self.save(self.entry.file, text, (self.entry.kind, name))

    @work(thread=True, exclusive=True, group="save")
    def save(self, file: Path, text: str, select: tuple[str, str]) -> None:
        result = self.backend.save_and_reload(file, text)
        self.app.call_from_thread(self.saved, result, select)

    def saved(self, result: Saved, select: tuple[str, str]) -> None:
        if not result.written:
            self.show_errors("not saved: the loader refused it\n" + result.message)
            self.set_status(Text("not saved", style="bold red"))
            return
        self.entry = None
        self.refresh_entries(select)
        severity = "information" if result.code == 0 else "warning"
        self.say(f"saved; {result.message}", severity=severity, timeout=8)
        self.set_status(f"saved · {result.message}")

    def show_errors(self, message: str) -> None:
        self.query_one("#errors", Static).update(Text(message, style="bold red"))
